//! The Kubernetes objects the user commands write: field manager, the label marking them, default
//! names, and the name check.

use super::error::{CliError, CliResult};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("--name", "dbt-cloud").is_ok());
        assert!(check_name("--name", "a.b-c").is_ok());
        assert!(check_name("--name", "Bad").is_err());
        assert!(check_name("--name", "-x").is_err());
        assert!(check_name("--name", "").is_err());
    }
}
