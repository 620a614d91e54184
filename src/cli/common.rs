//! What the user commands (`login`, `accounts`, `status`, `runs`, `open`, `logout`) share: the
//! injectable terminal ([`Ctx`], [`Prompt`]), the error type, flag groups, the dbt Cloud client
//! settings, and a small table printer.
//!
//! Commands take their dependencies as parameters (a `kube::Client`, a dbt Cloud
//! [`ClientConfig`], a [`Ctx`]), so tests can drive them against an in-memory Kubernetes API and
//! a dbt Cloud simulator. The API key travels as a [`SecretString`] and is never printed.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use crate::dbt_cloud::{
    allowed_suffixes_with, http_client, AccessHost, Account, AccountLimits, ClientConfig,
    DbtCloudClient, DbtCloudError, NoopObserver,
};

/// Field manager of the CLI's server-side applies.
pub const FIELD_MANAGER: &str = "dbt-cloud-operator-cli";
/// Label key marking objects the CLI created.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label value marking objects the CLI created.
pub const MANAGED_BY_VALUE: &str = "dbt-cloud-operator-cli";
/// Default name of the credentials object `login` writes and `logout` deletes.
pub const DEFAULT_CREDENTIALS_NAME: &str = "dbt-cloud";
/// Default namespace of the operator (where Secrets of cluster-wide credentials live).
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "dbt-cloud-operator";
/// Environment variable read for the API key.
pub const API_KEY_ENV: &str = "DBT_CLOUD_API_KEY";

/// A failed command: the message printed after `error: `. Never contains the API key.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl CliError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        CliError(message.into())
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError(format!("terminal I/O failed: {e}"))
    }
}

impl From<kube::Error> for CliError {
    fn from(e: kube::Error) -> Self {
        CliError(kube_message(&e))
    }
}

/// Result of a user command.
pub type CliResult<T = ()> = Result<T, CliError>;

/// A readable message for a Kubernetes API error.
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "Kubernetes refused the request (403 Forbidden): {}; check your RBAC permissions",
            status.message
        ),
        kube::Error::Api(status) => format!(
            "Kubernetes API error ({} {}): {}",
            status.code, status.reason, status.message
        ),
        other => format!("cannot talk to the Kubernetes API: {other}"),
    }
}

/// Is this a Kubernetes 404?
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

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

/// Parses an API key flag value into a secret (so `Debug` never shows it).
pub fn parse_key(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.trim().to_string()))
}

/// `--key`, read also from `DBT_CLOUD_API_KEY` (its value is never shown by `--help`).
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// dbt Cloud API key: a service token (`dbtc_…`) or personal access token (`dbtu_…`).
    /// Prefer the environment variable or the hidden prompt: flags show up in the process list.
    #[arg(long, env = API_KEY_ENV, hide_env_values = true, value_parser = parse_key)]
    pub key: Option<SecretString>,
}

/// Flags choosing where the API key is sent.
#[derive(Debug, Clone, Args)]
pub struct DbtArgs {
    /// dbt Cloud access host: `cloud.getdbt.com` (default), `emea.dbt.com`, `au.dbt.com`,
    /// a cell-based host such as `ab123.us1.dbt.com`, or an allowed single-tenant host.
    #[arg(long)]
    pub host: Option<String>,
    /// Extra host suffixes the API key may be sent to (single-tenant hosts), besides getdbt.com
    /// and dbt.com. Repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    pub allowed_host_suffix: Vec<String>,
    /// DEVELOPMENT ONLY: send dbt Cloud requests to this base URL (e.g. the simulator).
    #[arg(long, env = "DEV_DBT_CLOUD_BASE_URL", hide = true)]
    pub dev_dbt_cloud_base_url: Option<url::Url>,
}

impl DbtArgs {
    /// Client settings for an interactive tool: few retries, short backoff.
    pub fn client_config(&self) -> ClientConfig {
        let allowed = allowed_suffixes_with(&self.allowed_host_suffix);
        ClientConfig {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_attempts: 2,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(5),
            allowed_host_suffixes: allowed,
            insecure_base_url_override: self.dev_dbt_cloud_base_url.clone(),
            ..ClientConfig::default()
        }
    }
}

/// Validates a host with the configured allow-list.
pub fn parse_host(host: Option<&str>, config: &ClientConfig) -> CliResult<AccessHost> {
    let host = host.unwrap_or(crate::dbt_cloud::DEFAULT_HOST);
    AccessHost::parse(host, &config.allowed_host_suffixes)
        .map_err(|e| CliError::new(format!("--host: {e}")))
}

/// Whether a key has the shape of a dbt Cloud token.
pub fn key_looks_like_token(key: &SecretString) -> bool {
    let k = key.expose_secret();
    k.starts_with("dbtc_") || k.starts_with("dbtu_")
}

/// The key from the flag / environment, or a hidden prompt on a terminal.
pub fn key_or_prompt(
    key: Option<SecretString>,
    ctx: &mut Ctx<'_>,
    non_interactive_hint: &str,
) -> CliResult<SecretString> {
    if let Some(k) = key {
        if k.expose_secret().is_empty() {
            return Err(CliError::new("the API key given is empty"));
        }
        return Ok(k);
    }
    if !ctx.interactive {
        return Err(CliError::new(format!(
            "no API key given and no terminal to prompt on: {non_interactive_hint}"
        )));
    }
    let key = ctx.prompt.secret(
        "dbt Cloud API key (service token dbtc_... or personal access token dbtu_...; input hidden): ",
    )?;
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(CliError::new("no API key entered"));
    }
    Ok(SecretString::from(key))
}

/// Lists the accounts `key` can access on `host` (`GET /api/v3/accounts/`), explaining failures.
pub async fn list_accounts(
    host: &AccessHost,
    key: &SecretString,
    config: &ClientConfig,
) -> CliResult<Vec<Account>> {
    let http = http_client(config).map_err(|e| CliError::new(e.to_string()))?;
    let client = DbtCloudClient::new(
        host.clone(),
        1, // `/api/v3/accounts/` does not name an account
        key.clone(),
        http,
        AccountLimits::unlimited(),
        Arc::new(config.clone()),
        Arc::new(NoopObserver),
    )
    .map_err(|e| CliError::new(format!("cannot use this API key: {e}")))?;
    client
        .list_accounts()
        .await
        .map_err(|e| explain_dbt_error(&e, host, key_looks_like_token(key)))
}

/// A message telling what went wrong with dbt Cloud and what to do.
pub fn explain_dbt_error(e: &DbtCloudError, host: &AccessHost, looks_like_token: bool) -> CliError {
    let shape = if looks_like_token {
        String::new()
    } else {
        "\nhint: the key does not look like a dbt Cloud service token (`dbtc_…`) or personal \
         access token (`dbtu_…`); copy the whole token, without a `Token ` or `Bearer ` prefix"
            .to_string()
    };
    let from_dbt = e
        .user_message()
        .map(|m| format!(" (dbt Cloud says: {m})"))
        .unwrap_or_default();
    let msg = match e {
        DbtCloudError::Unauthorized { .. } => format!(
            "dbt Cloud at {host} rejected the API key (401 Unauthorized){from_dbt}. Ensure your \
             credentials are correct and unexpired, and that the key belongs to this host \
             (--host; e.g. emea.dbt.com or a cell-based host such as ab123.us1.dbt.com).{shape}"
        ),
        DbtCloudError::Forbidden { .. } => format!(
            "dbt Cloud at {host} accepted the key but denied listing accounts (403 Forbidden)\
             {from_dbt}; give the token account access (e.g. a service token with Job Admin \
             or Account Viewer permission).{shape}"
        ),
        DbtCloudError::Transport { .. } | DbtCloudError::Timeout { .. } => format!(
            "cannot reach dbt Cloud at {host}: {e}. Check --host and your network or proxy."
        ),
        DbtCloudError::Redirect { .. } | DbtCloudError::NotFound { .. } => format!(
            "{e}. Check --host: your account may live on another access host (see Account \
             settings → Access URLs in dbt Cloud)."
        ),
        other => format!("dbt Cloud at {host}: {other}{shape}"),
    };
    CliError(msg)
}

/// `id name` for an account.
pub fn account_label(a: &Account) -> String {
    match a.name.as_deref() {
        Some(n) if !n.is_empty() => format!("{} ({n})", a.id),
        _ => a.id.to_string(),
    }
}

/// Checks a Kubernetes object name (RFC 1123 subdomain).
pub fn check_name(flag: &str, name: &str) -> CliResult {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "{flag} `{name}` is not a valid Kubernetes name: use lower-case letters, digits, `-` and `.`"
        )))
    }
}

/// Whether an object's labels say the CLI created it.
pub fn is_managed(meta: &kube::api::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// A plain, left-aligned text table.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether the table has no data rows.
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// Writes the table, columns separated by three spaces.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let pad = widths[c] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Shortens text for a table cell.
pub fn ellipsize(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["1".into(), "Acme".into()]);
        t.row(vec!["1234".into(), "B".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID     NAME\n1      Acme\n1234   B\n"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("--name", "dbt-cloud").is_ok());
        assert!(check_name("--name", "a.b-c").is_ok());
        assert!(check_name("--name", "Bad").is_err());
        assert!(check_name("--name", "-x").is_err());
        assert!(check_name("--name", "").is_err());
    }

    #[test]
    fn key_debug_is_redacted() {
        let args = KeyArgs {
            key: Some(parse_key(" dbtc_supersecret ").unwrap()),
        };
        assert!(!format!("{args:?}").contains("supersecret"));
        assert_eq!(
            args.key.unwrap().expose_secret(),
            "dbtc_supersecret",
            "trimmed"
        );
    }
}
