//! Validated dbt Cloud access hosts and the URLs derived from them.
//!
//! The API key is only ever sent to a host that passed [`AccessHost::parse`]:
//! a bare DNS name (no scheme, port, path, userinfo or query) that equals or
//! ends with one of the allowed suffixes.

use std::fmt;

use super::error::DbtCloudError;

/// The default access host (US multi-tenant).
pub const DEFAULT_HOST: &str = "cloud.getdbt.com";

/// Host suffixes allowed by default. Configuration may add single-tenant hosts.
pub const DEFAULT_ALLOWED_SUFFIXES: &[&str] = &["getdbt.com", "dbt.com"];

/// [`DEFAULT_ALLOWED_SUFFIXES`] as owned strings (handy for configuration defaults).
pub fn default_allowed_suffixes() -> Vec<String> {
    DEFAULT_ALLOWED_SUFFIXES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The default suffixes plus `extra` ones (single-tenant hosts from the configuration); empty
/// entries are ignored.
pub fn allowed_suffixes_with(extra: &[String]) -> Vec<String> {
    let mut all = default_allowed_suffixes();
    all.extend(
        extra
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    all
}

/// A validated, lower-cased dbt Cloud access host (e.g. `cloud.getdbt.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessHost {
    host: String,
}

impl AccessHost {
    /// Validates `host` against `allowed_suffixes` (each entry matches itself and
    /// any subdomain of it). Uppercase is normalised; surrounding whitespace is trimmed.
    /// Refuses schemes, ports, paths, userinfo, queries, IP literals and empty labels.
    pub fn parse<S: AsRef<str>>(host: &str, allowed_suffixes: &[S]) -> Result<Self, DbtCloudError> {
        let original = host;
        let err = |reason: String| DbtCloudError::InvalidHost {
            host: truncate_for_message(original),
            reason,
        };
        let host = host.trim();
        if host.is_empty() {
            return Err(err(format!(
                "the host is empty; use a dbt Cloud access host such as `{DEFAULT_HOST}`"
            )));
        }
        if host.contains("://") {
            return Err(err(
                "remove the scheme (e.g. `https://`): give only the host name, such as `cloud.getdbt.com`"
                    .into(),
            ));
        }
        if host.contains('@') {
            return Err(err(
                "remove the user info (`user@`): give only the host name".into(),
            ));
        }
        if host.contains('/') {
            return Err(err(
                "remove the path: give only the host name, such as `cloud.getdbt.com`".into(),
            ));
        }
        if host.contains('?') || host.contains('#') {
            return Err(err(
                "remove the query or fragment: give only the host name".into()
            ));
        }
        if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
            return Err(err(
                "IP addresses are not allowed: use the dbt Cloud host name".into(),
            ));
        }
        if host.contains(':') {
            return Err(err(
                "remove the port: dbt Cloud is reached over HTTPS on the default port".into(),
            ));
        }
        let host = host.to_ascii_lowercase();
        if host.len() > 253 {
            return Err(err("the host name is longer than 253 characters".into()));
        }
        let labels: Vec<&str> = host.split('.').collect();
        if labels.iter().any(|l| l.is_empty()) {
            return Err(err(
                "the host has an empty label (a leading, trailing or doubled `.`); remove the extra dot"
                    .into(),
            ));
        }
        for label in &labels {
            if label.len() > 63 {
                return Err(err(format!(
                    "the label `{label}` is longer than 63 characters"
                )));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(err(format!(
                    "the label `{label}` may only contain letters, digits and `-`"
                )));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(err(format!(
                    "the label `{label}` must not start or end with `-`"
                )));
            }
        }
        if labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            return Err(err(
                "IP addresses are not allowed: use the dbt Cloud host name".into(),
            ));
        }
        let allowed = allowed_suffixes.iter().any(|s| {
            let s = normalise_suffix(s.as_ref());
            !s.is_empty() && (host == s || host.ends_with(&format!(".{s}")))
        });
        if !allowed {
            let list: Vec<String> = allowed_suffixes
                .iter()
                .map(|s| normalise_suffix(s.as_ref()))
                .collect();
            return Err(err(format!(
                "the host is not a dbt Cloud host: it must be or end with one of [{}]; \
                 single-tenant hosts must be added to the operator's allowed host list",
                list.join(", ")
            )));
        }
        Ok(AccessHost { host })
    }

    /// The host name.
    pub fn as_str(&self) -> &str {
        &self.host
    }

    /// `https://<host>` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("https://{}", self.host)
    }
}

impl fmt::Display for AccessHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

/// Lower-cases and strips a leading `.` / surrounding whitespace from an allow-list entry.
fn normalise_suffix(s: &str) -> String {
    s.trim().trim_start_matches('.').to_ascii_lowercase()
}

fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 100;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(h: &str) -> Result<AccessHost, DbtCloudError> {
        AccessHost::parse(h, DEFAULT_ALLOWED_SUFFIXES)
    }

    fn reason(h: &str) -> String {
        match parse(h) {
            Err(DbtCloudError::InvalidHost { reason, .. }) => reason,
            other => panic!("expected InvalidHost for {h:?}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_known_hosts() {
        for h in [
            "cloud.getdbt.com",
            "emea.dbt.com",
            "au.dbt.com",
            "ab123.us1.dbt.com",
            "xy9.eu2.dbt.com",
            "abc123.dbt.com",
        ] {
            assert_eq!(parse(h).unwrap().as_str(), h);
        }
    }

    #[test]
    fn normalises_case_and_whitespace() {
        assert_eq!(
            parse("  Cloud.GetDBT.com ").unwrap().as_str(),
            "cloud.getdbt.com"
        );
    }

    #[test]
    fn rejects_malformed_hosts_with_actionable_messages() {
        assert!(reason("https://cloud.getdbt.com").contains("scheme"));
        assert!(reason("cloud.getdbt.com/api").contains("path"));
        assert!(reason("cloud.getdbt.com:443").contains("port"));
        assert!(reason("user@cloud.getdbt.com").contains("user info"));
        assert!(reason("cloud.getdbt.com?x=1").contains("query"));
        assert!(reason("127.0.0.1").contains("IP"));
        assert!(reason("[::1]").contains("IP"));
        assert!(reason("::1").contains("IP"));
        assert!(reason("cloud..getdbt.com").contains("empty label"));
        assert!(reason("cloud.getdbt.com.").contains("empty label"));
        assert!(reason("").contains("empty"));
        assert!(reason("evil.example.com").contains("not a dbt Cloud host"));
        assert!(reason("getdbt.com.evil.io").contains("not a dbt Cloud host"));
        assert!(reason("notdbt.com").contains("not a dbt Cloud host"));
        assert!(reason("cl_oud.getdbt.com").contains("letters, digits"));
        assert!(reason("-x.getdbt.com").contains("start or end"));
    }

    #[test]
    fn configured_single_tenant_hosts_are_allowed() {
        let allowed = ["getdbt.com", "dbt.com", ".Dbt.Acme.Internal"];
        let h = AccessHost::parse("dbt.acme.internal", &allowed).unwrap();
        assert_eq!(h.base_url(), "https://dbt.acme.internal");
        assert!(AccessHost::parse("other.internal", &allowed).is_err());
    }
}
