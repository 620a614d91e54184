//! The injectable terminal of the user commands: where they print ([`Ctx`]) and how they ask
//! ([`Prompt`]: the real terminal, or scripted answers in tests).

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};

use super::error::{CliError, CliResult};

/// Asks the user things. [`TerminalPrompt`] uses the real terminal; [`ScriptedPrompt`] answers
/// from a list (tests).
pub trait Prompt: Send {
    /// Reads a line without echoing it (for the API key).
    fn secret(&mut self, prompt: &str) -> io::Result<String>;
    /// Shows `prompt` and reads one visible line; `None` at end of input.
    fn line(&mut self, prompt: &str) -> io::Result<Option<String>>;
}

/// Prompts on the process's terminal: hidden input through `rpassword` (on `/dev/tty`),
/// visible lines on standard error / standard input.
#[derive(Debug, Default)]
pub struct TerminalPrompt;

impl Prompt for TerminalPrompt {
    fn secret(&mut self, prompt: &str) -> io::Result<String> {
        rpassword::prompt_password(prompt)
    }

    fn line(&mut self, prompt: &str) -> io::Result<Option<String>> {
        let mut err = io::stderr();
        err.write_all(prompt.as_bytes())?;
        err.flush()?;
        let mut line = String::new();
        if io::stdin().lock().read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
    }
}

/// Answers prompts from a list, in order, and records the prompts shown (for tests).
#[derive(Debug, Default)]
pub struct ScriptedPrompt {
    answers: VecDeque<String>,
    /// Every prompt shown, in order.
    pub prompts: Vec<String>,
}

impl ScriptedPrompt {
    /// A prompt answering with `answers` in order; end of input afterwards.
    pub fn new<I, S>(answers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ScriptedPrompt {
            answers: answers.into_iter().map(Into::into).collect(),
            prompts: Vec::new(),
        }
    }
}

impl Prompt for ScriptedPrompt {
    fn secret(&mut self, prompt: &str) -> io::Result<String> {
        self.prompts.push(prompt.to_string());
        self.answers
            .pop_front()
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no more answers"))
    }

    fn line(&mut self, prompt: &str) -> io::Result<Option<String>> {
        self.prompts.push(prompt.to_string());
        Ok(self.answers.pop_front())
    }
}

/// The terminal of a command: where to print, how to ask, and whether asking is possible.
pub struct Ctx<'a> {
    /// Standard output: tables, URLs, dry-run YAML.
    pub out: &'a mut (dyn Write + Send),
    /// Standard error: progress and explanations.
    pub err: &'a mut (dyn Write + Send),
    /// How to ask the user.
    pub prompt: &'a mut dyn Prompt,
    /// Whether a person is at a terminal (prompts allowed).
    pub interactive: bool,
}

impl Ctx<'_> {
    /// Prints a line on standard error (progress, notes).
    pub fn note(&mut self, message: impl AsRef<str>) -> CliResult {
        writeln!(self.err, "{}", message.as_ref())?;
        Ok(())
    }

    /// Asks a yes/no question (default no). Errors when nobody can answer.
    pub fn confirm(&mut self, question: &str) -> CliResult<bool> {
        for _ in 0..3 {
            match self.prompt.line(&format!("{question} [y/N]: "))? {
                None => return Ok(false),
                Some(a) => match a.trim().to_ascii_lowercase().as_str() {
                    "y" | "yes" => return Ok(true),
                    "" | "n" | "no" => return Ok(false),
                    _ => self.note("Please answer y or n.")?,
                },
            }
        }
        Ok(false)
    }

    /// Asks to choose one of `items` by number; returns its index.
    pub fn choose(&mut self, title: &str, items: &[String]) -> CliResult<usize> {
        self.note(title)?;
        for (i, item) in items.iter().enumerate() {
            self.note(format!("  {:>2}) {item}", i + 1))?;
        }
        for _ in 0..3 {
            let Some(answer) = self
                .prompt
                .line(&format!("Select an account [1-{}]: ", items.len()))?
            else {
                break;
            };
            match answer.trim().parse::<usize>() {
                Ok(n) if (1..=items.len()).contains(&n) => return Ok(n - 1),
                _ => self.note(format!(
                    "Please enter a number between 1 and {}.",
                    items.len()
                ))?,
            }
        }
        Err(CliError::new("no account selected"))
    }
}
