//! A sliver of the Discovery (metadata) GraphQL API: `{ __typename }` and
//! `job(id: Int!, runId: Int) { models { uniqueId name status executionTime ... } }`, answered from
//! the run's `run_results.json`. Like any GraphQL server, every answer is HTTP 200; problems come back
//! in an `errors` array.

use serde_json::{json, Map, Value};

/// A parsed field: response key, name, arguments (raw values), sub-selection.
#[derive(Debug)]
pub struct Field {
    key: String,
    name: String,
    args: Vec<(String, Arg)>,
    selection: Vec<Field>,
}

/// An argument value.
#[derive(Debug, Clone)]
pub enum Arg {
    /// `$name`.
    Var(String),
    /// Any literal (numbers, strings without quotes, enums).
    Lit(String),
}

#[derive(Debug, PartialEq)]
enum Tok {
    Name(String),
    Punct(char),
    Str(String),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == ',' {
            chars.next();
        } else if c == '#' {
            while chars.next().is_some_and(|c| c != '\n') {}
        } else if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' {
                    s.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Name(s));
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(c) => s.push(c),
                    None => return Err("Syntax Error: Unterminated string.".into()),
                }
            }
            out.push(Tok::Str(s));
        } else if "{}()[]:$!=@".contains(c) {
            out.push(Tok::Punct(c));
            chars.next();
        } else {
            return Err(format!("Syntax Error: Unexpected character \"{c}\"."));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn punct(&mut self, c: char) -> Result<(), String> {
        match self.toks.get(self.pos) {
            Some(Tok::Punct(p)) if *p == c => {
                self.pos += 1;
                Ok(())
            }
            Some(t) => Err(format!("Syntax Error: Expected \"{c}\", found {t:?}.")),
            None => Err(format!("Syntax Error: Expected \"{c}\", found <EOF>.")),
        }
    }
    fn name(&mut self) -> Result<String, String> {
        match self.toks.get(self.pos) {
            Some(Tok::Name(n)) => {
                self.pos += 1;
                Ok(n.clone())
            }
            Some(t) => Err(format!("Syntax Error: Expected Name, found {t:?}.")),
            None => Err("Syntax Error: Expected Name, found <EOF>.".into()),
        }
    }
    fn document(&mut self) -> Result<Vec<Field>, String> {
        if let Some(Tok::Name(n)) = self.peek() {
            if n != "query" {
                return Err(format!("Syntax Error: Unexpected Name \"{n}\"."));
            }
            self.pos += 1;
            if let Some(Tok::Name(_)) = self.peek() {
                self.pos += 1;
            }
            if self.peek() == Some(&Tok::Punct('(')) {
                // Variable definitions are not checked.
                let mut depth = 0;
                while let Some(t) = self.toks.get(self.pos) {
                    self.pos += 1;
                    match t {
                        Tok::Punct('(') => depth += 1,
                        Tok::Punct(')') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let selection = self.selection()?;
        if let Some(t) = self.peek() {
            return Err(format!("Syntax Error: Unexpected {t:?}."));
        }
        Ok(selection)
    }
    fn selection(&mut self) -> Result<Vec<Field>, String> {
        self.punct('{')?;
        let mut fields = Vec::new();
        while self.peek() != Some(&Tok::Punct('}')) {
            let key = self.name()?;
            let mut name = key.clone();
            if self.peek() == Some(&Tok::Punct(':')) {
                self.pos += 1;
                name = self.name()?;
            }
            let mut args = Vec::new();
            if self.peek() == Some(&Tok::Punct('(')) {
                self.pos += 1;
                while self.peek() != Some(&Tok::Punct(')')) {
                    let arg = self.name()?;
                    self.punct(':')?;
                    let value = match self.toks.get(self.pos) {
                        Some(Tok::Punct('$')) => {
                            self.pos += 1;
                            Arg::Var(self.name()?)
                        }
                        Some(Tok::Name(v)) | Some(Tok::Str(v)) => {
                            let v = v.clone();
                            self.pos += 1;
                            Arg::Lit(v)
                        }
                        t => return Err(format!("Syntax Error: Unexpected {t:?}.")),
                    };
                    args.push((arg, value));
                }
                self.punct(')')?;
            }
            let selection = if self.peek() == Some(&Tok::Punct('{')) {
                self.selection()?
            } else {
                Vec::new()
            };
            fields.push(Field {
                key,
                name,
                args,
                selection,
            });
        }
        self.punct('}')?;
        Ok(fields)
    }
}

/// Parses a query document into its top-level selection.
pub fn parse(query: &str) -> Result<Vec<Field>, String> {
    let toks = lex(query)?;
    if toks.is_empty() {
        return Err("Syntax Error: Unexpected <EOF>.".into());
    }
    Parser { toks, pos: 0 }.document()
}

/// Fields of the supported types.
fn fields_of(ty: &str) -> &'static [&'static str] {
    match ty {
        "Query" => &["job", "__typename"],
        "JobNode" => &["id", "runId", "models", "__typename"],
        "ModelNode" => &[
            "uniqueId",
            "name",
            "status",
            "executionTime",
            "error",
            "runId",
            "jobId",
            "resourceType",
            "__typename",
        ],
        _ => &[],
    }
}

/// Checks every selected field exists on its type; the GraphQL error message otherwise.
pub fn check(fields: &[Field], ty: &str) -> Result<(), String> {
    for f in fields {
        if !fields_of(ty).contains(&f.name.as_str()) {
            return Err(format!(
                "Cannot query field \"{}\" on type \"{ty}\".",
                f.name
            ));
        }
        let child = match (ty, f.name.as_str()) {
            ("Query", "job") => "JobNode",
            ("JobNode", "models") => "ModelNode",
            _ => "",
        };
        if !child.is_empty() && f.selection.is_empty() {
            return Err(format!(
                "Field \"{}\" of type \"{child}\" must have a selection of subfields.",
                f.name
            ));
        }
        if child.is_empty() && !f.selection.is_empty() {
            return Err(format!(
                "Field \"{}\" must not have a selection since its type has no subfields.",
                f.name
            ));
        }
        check(&f.selection, child)?;
    }
    Ok(())
}

/// An integer argument of a field, literal or from `variables`.
pub fn int_arg(field: &Field, name: &str, variables: &Value) -> Option<i64> {
    let (_, arg) = field.args.iter().find(|(n, _)| n == name)?;
    match arg {
        Arg::Var(v) => variables.get(v).and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        }),
        Arg::Lit(l) => l.parse().ok(),
    }
}

/// Renders `fields` of one object, reading values through `get`.
pub fn render(fields: &[Field], get: &dyn Fn(&Field) -> Value) -> Value {
    let mut out = Map::new();
    for f in fields {
        out.insert(f.key.clone(), get(f));
    }
    Value::Object(out)
}

/// The `{"errors": [...]}` body of a failed query.
pub fn errors(message: &str) -> Value {
    json!({"errors": [{"message": message, "locations": [{"line": 1, "column": 1}]}]})
}

impl Field {
    /// Field name (not the alias).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Sub-selection.
    pub fn selection(&self) -> &[Field] {
        &self.selection
    }
}
