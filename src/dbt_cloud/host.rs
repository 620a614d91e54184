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

/// What kind of dbt Cloud deployment a host names; decides the Discovery URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    /// `cloud.getdbt.com`, `emea.dbt.com`, `au.dbt.com`.
    MultiTenant,
    /// Cell-based multi-tenant: `PREFIX.REGION.dbt.com`, e.g. `ab123.us1.dbt.com`.
    CellBased {
        /// The account prefix (first label).
        prefix: String,
        /// The cell region, e.g. `us1`, `eu2`.
        region: String,
    },
    /// Account-scoped host such as `abc123.dbt.com`.
    AccountScoped,
    /// Any other allowed host (single-tenant / vanity).
    SingleTenant,
}

/// A validated, lower-cased dbt Cloud access host (e.g. `cloud.getdbt.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessHost {
    host: String,
}

const MULTI_TENANT: &[&str] = &["cloud.getdbt.com", "emea.dbt.com", "au.dbt.com"];

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

    /// The default host, `cloud.getdbt.com`.
    pub fn default_host() -> Self {
        AccessHost {
            host: DEFAULT_HOST.to_string(),
        }
    }

    /// The host name.
    pub fn as_str(&self) -> &str {
        &self.host
    }

    /// Classifies the host (decides the Discovery API host).
    pub fn kind(&self) -> HostKind {
        if MULTI_TENANT.contains(&self.host.as_str()) {
            return HostKind::MultiTenant;
        }
        if let Some(rest) = self.host.strip_suffix(".dbt.com") {
            let labels: Vec<&str> = rest.split('.').collect();
            match labels.as_slice() {
                [prefix, region] if is_region(region) => {
                    return HostKind::CellBased {
                        prefix: prefix.to_string(),
                        region: region.to_string(),
                    }
                }
                [_] => return HostKind::AccountScoped,
                _ => {}
            }
        }
        HostKind::SingleTenant
    }

    /// `https://<host>` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("https://{}", self.host)
    }

    /// The Discovery (metadata) API host: `metadata.<host>`, or for cell-based
    /// hosts `PREFIX.metadata.REGION.dbt.com`.
    pub fn discovery_host(&self) -> String {
        match self.kind() {
            HostKind::CellBased { prefix, region } => {
                format!("{prefix}.metadata.{region}.dbt.com")
            }
            _ => format!("metadata.{}", self.host),
        }
    }

    /// `https://<discovery host>/graphql`.
    pub fn discovery_url(&self) -> String {
        format!("https://{}/graphql", self.discovery_host())
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

/// Region labels of cell-based hosts: letters followed by digits (`us1`, `eu2`).
fn is_region(label: &str) -> bool {
    let letters = label.bytes().take_while(|b| b.is_ascii_lowercase()).count();
    letters >= 2 && letters < label.len() && label.bytes().skip(letters).all(|b| b.is_ascii_digit())
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
        assert_eq!(h.kind(), HostKind::SingleTenant);
        assert_eq!(
            h.discovery_url(),
            "https://metadata.dbt.acme.internal/graphql"
        );
        assert!(AccessHost::parse("other.internal", &allowed).is_err());
    }

    #[test]
    fn discovery_urls() {
        let cases = [
            (
                "cloud.getdbt.com",
                "https://metadata.cloud.getdbt.com/graphql",
            ),
            ("emea.dbt.com", "https://metadata.emea.dbt.com/graphql"),
            ("au.dbt.com", "https://metadata.au.dbt.com/graphql"),
            ("abc123.dbt.com", "https://metadata.abc123.dbt.com/graphql"),
            (
                "ab123.us1.dbt.com",
                "https://ab123.metadata.us1.dbt.com/graphql",
            ),
            (
                "ab123.eu2.dbt.com",
                "https://ab123.metadata.eu2.dbt.com/graphql",
            ),
            (
                "acme.getdbt.com",
                "https://metadata.acme.getdbt.com/graphql",
            ),
        ];
        for (h, url) in cases {
            assert_eq!(parse(h).unwrap().discovery_url(), url, "{h}");
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(
            parse("cloud.getdbt.com").unwrap().kind(),
            HostKind::MultiTenant
        );
        assert_eq!(
            parse("abc123.dbt.com").unwrap().kind(),
            HostKind::AccountScoped
        );
        assert_eq!(
            parse("ab1.us1.dbt.com").unwrap().kind(),
            HostKind::CellBased {
                prefix: "ab1".into(),
                region: "us1".into()
            }
        );
        assert_eq!(
            parse("a.b.c.dbt.com").unwrap().kind(),
            HostKind::SingleTenant
        );
        assert_eq!(
            parse("x.usa.dbt.com").unwrap().kind(),
            HostKind::SingleTenant
        );
    }
}
