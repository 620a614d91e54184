//! The error of the user commands: a message printed after `error: `, and readable messages for
//! Kubernetes API failures.

use std::fmt;
use std::io;

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
