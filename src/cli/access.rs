//! How the user commands reach dbt Cloud: the `--key` and host flags, the client settings
//! of an interactive tool, the API key from a flag or a hidden prompt, and account listing with
//! failures explained. The API key travels as a [`SecretString`] and is never printed.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use super::error::{CliError, CliResult};
use super::terminal::Ctx;
use crate::dbt_cloud::{
    allowed_suffixes_with, http_client, AccessHost, Account, AccountLimits, ClientConfig,
    DbtCloudClient, DbtCloudError, NoopObserver,
};

/// Environment variable read for the API key.
pub const API_KEY_ENV: &str = "DBT_CLOUD_API_KEY";

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

#[cfg(test)]
mod tests {
    use super::*;

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
