//! What a credentials object's state means, as pure functions: from what the reconciler observed
//! (the host check, the Secret, the key, dbt Cloud's answer, the time) to the [`Assessment`], the
//! status to write, the Event to publish and when to look again. No IO happens here; the IO shell
//! is [`super::credentials`].

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::conditions::{self, Conditions};
use crate::crd::credentials::{CredentialsStatus, CredentialsTarget};
use crate::crd::reasons::{EventNote, Reason};

/// Why the key in a Secret cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretProblem {
    /// `SecretKeyMissing` or `SecretKeyInvalid`.
    pub reason: Reason,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// How a call to dbt Cloud failed, as the policy needs to know it (the shell maps the client's
/// error to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// 401: the key is wrong or expired.
    Unauthorized,
    /// 403 or 404: the key cannot access the account.
    NoAccess,
    /// 429.
    RateLimited,
    /// Any other failure that may pass (5xx, transport, timeout).
    Unreachable,
    /// Anything else, with the error's own reason.
    Other(Reason),
}

impl FailureKind {
    /// Whether calling again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, FailureKind::RateLimited | FailureKind::Unreachable)
    }
}

/// A failed call to dbt Cloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The error as text (no secrets).
    pub error: String,
}

/// dbt Cloud's answer about the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validation {
    /// Not asked: this key and spec were validated recently (see [`needs_validation`]).
    Recent,
    /// The key reads the account.
    Valid {
        /// The account's name, when dbt Cloud reports it.
        account_name: Option<String>,
    },
    /// The call failed.
    Failed {
        /// How.
        failure: CallFailure,
        /// The accounts the key can access (`"id (name)"`), listed when it cannot access the one
        /// asked for (see [`wants_accessible_accounts`]); `None` when not listed or the listing
        /// failed.
        accessible: Option<Vec<String>>,
    },
}

/// How far the reconciler got with the credentials, and what it saw there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// `spec.host` is not an allowed dbt Cloud host.
    InvalidHost(String),
    /// The Secret does not exist.
    SecretMissing,
    /// The Secret could not be read.
    SecretUnreadable(String),
    /// The Secret does not hold a usable key.
    BadKey(SecretProblem),
    /// A client could not be built with the key.
    InvalidClient {
        /// The key's fingerprint.
        fingerprint: String,
        /// Why.
        error: String,
    },
    /// A key was found; dbt Cloud's answer about it.
    Key {
        /// The key's fingerprint.
        fingerprint: String,
        /// dbt Cloud's answer.
        validation: Validation,
    },
}

/// The facts about the object every decision needs.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// Where the key is and what it is for.
    pub target: &'a CredentialsTarget,
    /// The object's current status.
    pub old: &'a CredentialsStatus,
    /// The object's spec generation.
    pub generation: Option<i64>,
    /// Current time.
    pub now: Timestamp,
}

/// The result of checking credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// Whether the credentials are usable (a client is kept for them).
    pub ready: bool,
    /// Reason of the `Ready` condition.
    pub reason: Reason,
    /// Message of the `Ready` condition.
    pub message: String,
    /// Only a user change can fix it (as opposed to an outage or rate limit).
    pub stalled: bool,
    /// The account's name, when known from this check.
    pub account_name: Option<String>,
    /// Fingerprint of the key checked, when one was found.
    pub fingerprint: Option<String>,
    /// When the key was validated, when it is (or was recently).
    pub validated_at: Option<Timestamp>,
}

impl Assessment {
    fn failed(reason: Reason, message: String, stalled: bool) -> Self {
        Self {
            ready: false,
            reason,
            message,
            stalled,
            account_name: None,
            fingerprint: None,
            validated_at: None,
        }
    }

    fn with_fingerprint(mut self, fingerprint: &str) -> Self {
        self.fingerprint = Some(fingerprint.to_string());
        self
    }

    /// The key validated earlier is still the one in the Secret: keep its Ready state.
    fn still_valid(old: &CredentialsStatus, fingerprint: &str) -> Self {
        Self {
            ready: true,
            reason: Reason::Valid,
            message: conditions::find(&old.conditions, conditions::READY)
                .map(|c| c.message.clone())
                .unwrap_or_default(),
            stalled: false,
            account_name: old.account_name.clone(),
            fingerprint: Some(fingerprint.to_string()),
            validated_at: old.last_validated_time.as_ref().map(|t| t.0),
        }
    }
}

/// Extracts the API key from a Secret, or explains what is wrong with it.
pub fn key_from_secret(
    secret: &Secret,
    target: &CredentialsTarget,
) -> Result<String, SecretProblem> {
    let name = &target.secret.name;
    let key = &target.secret.key;
    let problem = |reason, message| Err(SecretProblem { reason, message });
    let data = secret.data.clone().unwrap_or_default();
    let Some(value) = data.get(key) else {
        let mut present: Vec<&String> = data.keys().collect();
        present.sort();
        return problem(
            Reason::SecretKeyMissing,
            format!(
                "Secret '{name}' has no key '{key}' (keys present: {}). Add the key, or set spec.apiKeySecretRef.key to the key that holds the API key",
                if present.is_empty() { "none".to_string() } else { present.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ") }
            ),
        );
    };
    let Ok(text) = std::str::from_utf8(&value.0) else {
        return problem(
            Reason::SecretKeyInvalid,
            format!("The value of key '{key}' in Secret '{name}' is not text; it must hold the dbt Cloud API key as plain text"),
        );
    };
    let text = text.trim();
    if text.is_empty() {
        return problem(
            Reason::SecretKeyInvalid,
            format!("The value of key '{key}' in Secret '{name}' is empty"),
        );
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return problem(
            Reason::SecretKeyInvalid,
            format!("The value of key '{key}' in Secret '{name}' contains spaces or control characters; it must hold only the token (no `Token ` prefix, no line breaks)"),
        );
    }
    Ok(text.to_string())
}

/// Whether the key must be checked against dbt Cloud: unless this exact key (`fingerprint`) and
/// spec were validated (and found `Ready`) less than `revalidate_every` ago.
pub fn needs_validation(facts: &Facts<'_>, fingerprint: &str, revalidate_every: Duration) -> bool {
    let old = facts.old;
    let recent = old.last_validated_time.as_ref().is_some_and(|t| {
        facts.now.as_second() - t.0.as_second() < revalidate_every.as_secs() as i64
    });
    !(conditions::is_true(&old.conditions, conditions::READY)
        && old.key_fingerprint.as_deref() == Some(fingerprint)
        && old.observed_generation == facts.generation
        && recent)
}

/// Whether a failed validation should list the accounts the key can access (to say which).
pub fn wants_accessible_accounts(failure: &CallFailure) -> bool {
    failure.kind == FailureKind::NoAccess
}

/// Whether a failed validation leaves the key valid: a transient failure does not invalidate the
/// key that was valid a moment ago.
pub fn keeps_valid(facts: &Facts<'_>, fingerprint: &str, failure: &CallFailure) -> bool {
    failure.kind.is_retryable()
        && facts.old.key_fingerprint.as_deref() == Some(fingerprint)
        && conditions::is_true(&facts.old.conditions, conditions::READY)
}

/// Explains a failed validation: reason, message, and whether only a user change helps.
fn explain(failure: &CallFailure, account_id: i64, accessible: Option<&[String]>) -> Assessment {
    let e = &failure.error;
    match &failure.kind {
        FailureKind::Unauthorized => Assessment::failed(
            Reason::Unauthorized,
            format!(
                "{}. Ensure the credentials are correct and unexpired",
                e.trim_end_matches('.')
            ),
            true,
        ),
        FailureKind::NoAccess => {
            let list = accessible
                .map(|a| {
                    if a.is_empty() {
                        "none".to_string()
                    } else {
                        a.join(", ")
                    }
                })
                .map(|a| format!(" Accounts this key can access: {a}."))
                .unwrap_or_default();
            Assessment::failed(
                Reason::AccountNotAccessible,
                format!("The key cannot access dbt Cloud account {account_id} (check spec.accountId and the token's permissions).{list}"),
                true,
            )
        }
        FailureKind::RateLimited => {
            Assessment::failed(Reason::RateLimited, format!("{e}; will retry"), false)
        }
        FailureKind::Unreachable => Assessment::failed(
            Reason::Unreachable,
            format!("Cannot reach dbt Cloud: {e}; will retry"),
            false,
        ),
        FailureKind::Other(reason) => Assessment::failed(*reason, e.clone(), true),
    }
}

/// The assessment of what was observed.
pub fn assess(facts: &Facts<'_>, observed: &Observed) -> Assessment {
    let target = facts.target;
    match observed {
        Observed::InvalidHost(e) => {
            Assessment::failed(Reason::InvalidHost, format!("spec.host: {e}"), true)
        }
        Observed::SecretMissing => Assessment::failed(
            Reason::SecretNotFound,
            format!(
                "Secret '{}' not found in namespace '{}'. Create it: kubectl create secret generic {} -n {} --from-literal={}=<dbt Cloud API token>",
                target.secret.name, target.secret_namespace, target.secret.name, target.secret_namespace, target.secret.key
            ),
            true,
        ),
        Observed::SecretUnreadable(e) => Assessment::failed(
            Reason::SecretUnreadable,
            format!(
                "Cannot read Secret '{}' in namespace '{}': {e}",
                target.secret.name, target.secret_namespace
            ),
            false,
        ),
        Observed::BadKey(problem) => {
            Assessment::failed(problem.reason, problem.message.clone(), true)
        }
        Observed::InvalidClient { fingerprint, error } => {
            Assessment::failed(Reason::InvalidCredentials, error.clone(), true)
                .with_fingerprint(fingerprint)
        }
        Observed::Key {
            fingerprint,
            validation,
        } => match validation {
            Validation::Recent => Assessment::still_valid(facts.old, fingerprint),
            Validation::Valid { account_name } => Assessment {
                ready: true,
                reason: Reason::Valid,
                message: format!(
                    "API key validated for dbt Cloud account {}{} on {}",
                    target.account_id,
                    account_name
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default(),
                    target.host
                ),
                stalled: false,
                account_name: account_name.clone(),
                fingerprint: Some(fingerprint.clone()),
                validated_at: Some(facts.now),
            },
            Validation::Failed {
                failure,
                accessible,
            } => {
                if keeps_valid(facts, fingerprint, failure) {
                    Assessment::still_valid(facts.old, fingerprint)
                } else {
                    explain(failure, target.account_id, accessible.as_deref())
                        .with_fingerprint(fingerprint)
                }
            }
        },
    }
}

/// The status to write for an assessment: the whole status this operator owns (conditions
/// `Ready`, `Reconciling` and `Stalled`, the account name, the key's fingerprint, the last
/// validation time).
pub fn status_for(facts: &Facts<'_>, a: &Assessment) -> CredentialsStatus {
    let old = facts.old;
    let mut status = old.clone();
    status.observed_generation = facts.generation;
    status.account_name = a.account_name.clone().or(if a.ready {
        old.account_name.clone()
    } else {
        None
    });
    status.key_fingerprint = a.fingerprint.clone();
    status.last_validated_time = a.validated_at.map(Time).or(old.last_validated_time.clone());
    let mut c = Conditions::new(&mut status.conditions, facts.generation, facts.now);
    c.set(conditions::READY, a.ready, a.reason, &a.message);
    c.set(
        conditions::RECONCILING,
        !a.ready && !a.stalled,
        a.reason,
        &a.message,
    );
    c.set(
        conditions::STALLED,
        !a.ready && a.stalled,
        a.reason,
        &a.message,
    );
    status
}

/// The Event for a status change from `old` to `new`: `Validated` when the credentials become
/// ready, a Warning with the reason when `Ready` changes otherwise, `KeyRotated` when a new key was
/// validated; none when nothing changed.
pub fn event_for(
    old: &CredentialsStatus,
    new: &CredentialsStatus,
    a: &Assessment,
) -> Option<EventNote> {
    if old == new {
        return None;
    }
    let was_ready = conditions::find(&old.conditions, conditions::READY)
        .map(|c| (c.status.clone(), c.reason.clone()));
    let now_ready = (conditions::status_str(a.ready), a.reason.to_string());
    if was_ready.as_ref() != Some(&now_ready) {
        Some(if a.ready {
            EventNote::normal(Reason::Validated, a.message.clone())
        } else {
            EventNote::warning(a.reason, a.message.clone())
        })
    } else if old.key_fingerprint.is_some() && old.key_fingerprint != new.key_fingerprint {
        Some(EventNote::normal(
            Reason::KeyRotated,
            "A new API key was found in the Secret and validated",
        ))
    } else {
        None
    }
}

/// When to check again: after `secret_refresh` when ready or waiting for a user's fix, after
/// `retry` while an outage or rate limit may pass.
pub fn requeue_after(a: &Assessment, secret_refresh: Duration, retry: Duration) -> Duration {
    if a.ready || a.stalled {
        secret_refresh
    } else {
        retry
    }
}

#[cfg(test)]
#[path = "credentials_policy_tests.rs"]
mod tests;
