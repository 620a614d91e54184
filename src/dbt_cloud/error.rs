//! The error type of the dbt Cloud client.
//!
//! Errors never contain request headers (so never the API key); messages
//! from dbt Cloud's response envelope (`status.user_message`) are carried
//! when present.

use std::time::Duration;

/// Hint added to 401 errors when the key looks like neither token kind.
pub(crate) const TOKEN_SHAPE_HINT: &str = "the API key does not look like a dbt Cloud service token (`dbtc_…`) \
     or personal access token (`dbtu_…`); check that the Secret holds only the token, without a `Token ` prefix";

/// An error from the dbt Cloud API client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbtCloudError {
    /// 401: the token was rejected.
    #[error(
        "dbt Cloud rejected the API token (401 Unauthorized){}{}",
        hint_suffix(*.token_shape_hint),
        msg_suffix(.user_message)
    )]
    Unauthorized {
        /// True when the key looks like neither `dbtc_…` nor `dbtu_…` (a hint only).
        token_shape_hint: bool,
        /// `status.user_message` from the response envelope.
        user_message: Option<String>,
    },
    /// 403: the token is valid but lacks permission.
    #[error(
        "dbt Cloud denied access for {endpoint} (403 Forbidden): the token lacks permission{}",
        msg_suffix(.user_message)
    )]
    Forbidden {
        /// Endpoint label.
        endpoint: &'static str,
        /// `status.user_message` from the response envelope.
        user_message: Option<String>,
    },
    /// 404: the object does not exist, or the token cannot see it.
    #[error(
        "dbt Cloud returned 404 Not Found for {endpoint} (dbt Cloud also answers 404 when the token \
         cannot see the object: check the id and the token's permissions){}",
        msg_suffix(.user_message)
    )]
    NotFound {
        /// Endpoint label.
        endpoint: &'static str,
        /// `status.user_message` from the response envelope.
        user_message: Option<String>,
    },
    /// 429: dbt Cloud throttled the request.
    #[error(
        "dbt Cloud rate limit hit for {endpoint} (429){}{}",
        retry_after_suffix(.retry_after),
        msg_suffix(.user_message)
    )]
    RateLimited {
        /// Endpoint label.
        endpoint: &'static str,
        /// The `Retry-After` header (seconds or HTTP-date), clamped to the client's ceiling;
        /// `None` when absent or unparseable.
        retry_after: Option<Duration>,
        /// `status.user_message` from the response envelope.
        user_message: Option<String>,
    },
    /// 5xx: dbt Cloud failed.
    #[error("dbt Cloud server error {status} for {endpoint}{}", msg_suffix(.user_message))]
    Server {
        /// Endpoint label.
        endpoint: &'static str,
        /// HTTP status code (500..=599).
        status: u16,
        /// `status.user_message` from the response envelope.
        user_message: Option<String>,
    },
    /// 400 (or another unexpected 4xx): the request was refused.
    #[error(
        "dbt Cloud refused the request for {endpoint} ({status}){}",
        msg_suffix(.user_message)
    )]
    BadRequest {
        /// Endpoint label.
        endpoint: &'static str,
        /// HTTP status code.
        status: u16,
        /// The envelope's `user_message` (or `developer_message` when there is none).
        user_message: Option<String>,
    },
    /// A 3xx answer; redirects are never followed (the key must not leave dbt Cloud).
    #[error(
        "dbt Cloud answered {endpoint} with a redirect ({status}) to host `{}`; redirects are not followed — \
         check the access host (the account may live on another host)",
        .location_host.as_deref().unwrap_or("<none>")
    )]
    Redirect {
        /// Endpoint label.
        endpoint: &'static str,
        /// HTTP status code (3xx).
        status: u16,
        /// Host named by the `Location` header, if any.
        location_host: Option<String>,
    },
    /// The connection failed or dropped.
    #[error("transport error calling dbt Cloud {endpoint}: {message}")]
    Transport {
        /// Endpoint label.
        endpoint: &'static str,
        /// Error chain (may include the URL, which holds no secret).
        message: String,
        /// False when the request provably never left (connect failure).
        request_sent: bool,
    },
    /// The request was not sent: it could not leave before its send deadline (e.g. it waited
    /// that long for the account's rate limit). Nothing reached dbt Cloud.
    #[error("did not call dbt Cloud {endpoint}: it could not be sent before its deadline ({waited:?} spent waiting for the account's rate limit)")]
    NotSent {
        /// Endpoint label.
        endpoint: &'static str,
        /// Time spent waiting for the rate limiter.
        waited: Duration,
    },
    /// The per-request timeout elapsed.
    #[error("timed out calling dbt Cloud {endpoint}")]
    Timeout {
        /// Endpoint label.
        endpoint: &'static str,
    },
    /// The response could not be decoded.
    #[error("could not decode dbt Cloud response for {endpoint}: {message}")]
    Decode {
        /// Endpoint label.
        endpoint: &'static str,
        /// Decoder message.
        message: String,
    },
    /// A success response larger than the configured limit: reading stopped at the limit (the
    /// body is never buffered whole). For a trigger, the run may exist.
    #[error(
        "dbt Cloud's response for {endpoint} is larger than the {limit}-byte limit; reading \
         stopped there (raise the operator's --max-response-bytes / --max-artifact-bytes if \
         such responses are expected)"
    )]
    ResponseTooLarge {
        /// Endpoint label.
        endpoint: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// The access host failed validation.
    #[error("invalid dbt Cloud access host `{host}`: {reason}")]
    InvalidHost {
        /// The host as given (truncated).
        host: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The request (or client configuration) is invalid; nothing was sent.
    #[error("invalid dbt Cloud request: {message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
}

fn msg_suffix(m: &Option<String>) -> String {
    match m {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

fn hint_suffix(hint: bool) -> String {
    if hint {
        format!("; hint: {TOKEN_SHAPE_HINT}")
    } else {
        String::new()
    }
}

fn retry_after_suffix(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!(", retry after {}s", d.as_secs()),
        None => String::new(),
    }
}

impl DbtCloudError {
    /// Whether retrying the same (idempotent) request later may succeed:
    /// 429, 5xx, transport errors and timeouts.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            DbtCloudError::RateLimited { .. }
                | DbtCloudError::Server { .. }
                | DbtCloudError::Transport { .. }
                | DbtCloudError::Timeout { .. }
                | DbtCloudError::NotSent { .. }
        )
    }

    /// Whether a POST that failed this way might still have created a run:
    /// a transport error after sending, a timeout, a 5xx, or a success answer
    /// that could not be decoded or was too large. The caller must look for the run before triggering again.
    pub fn is_ambiguous_for_trigger(&self) -> bool {
        match self {
            DbtCloudError::Transport { request_sent, .. } => *request_sent,
            DbtCloudError::Timeout { .. }
            | DbtCloudError::Server { .. }
            | DbtCloudError::Decode { .. }
            | DbtCloudError::ResponseTooLarge { .. } => true,
            _ => false,
        }
    }

    /// A short, stable CamelCase reason for status conditions and metric labels (the string of
    /// [`DbtCloudError::condition_reason`]).
    pub fn reason(&self) -> &'static str {
        self.condition_reason().as_str()
    }

    /// The typed condition reason of this error.
    pub fn condition_reason(&self) -> crate::crd::reasons::Reason {
        use crate::crd::reasons::Reason;
        match self {
            DbtCloudError::Unauthorized { .. } => Reason::Unauthorized,
            DbtCloudError::Forbidden { .. } => Reason::Forbidden,
            DbtCloudError::NotFound { .. } => Reason::NotFound,
            DbtCloudError::RateLimited { .. } => Reason::RateLimited,
            DbtCloudError::Server { .. } => Reason::ServerError,
            DbtCloudError::BadRequest { .. } => Reason::BadRequest,
            DbtCloudError::Redirect { .. } => Reason::Redirect,
            DbtCloudError::Transport { .. } => Reason::TransportError,
            DbtCloudError::Timeout { .. } => Reason::Timeout,
            DbtCloudError::NotSent { .. } => Reason::NotSent,
            DbtCloudError::Decode { .. } => Reason::DecodeError,
            DbtCloudError::ResponseTooLarge { .. } => Reason::ResponseTooLarge,
            DbtCloudError::InvalidHost { .. } => Reason::InvalidHost,
            DbtCloudError::InvalidRequest { .. } => Reason::InvalidRequest,
        }
    }

    /// The HTTP status that caused the error, if any.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            DbtCloudError::Unauthorized { .. } => Some(401),
            DbtCloudError::Forbidden { .. } => Some(403),
            DbtCloudError::NotFound { .. } => Some(404),
            DbtCloudError::RateLimited { .. } => Some(429),
            DbtCloudError::Server { status, .. }
            | DbtCloudError::BadRequest { status, .. }
            | DbtCloudError::Redirect { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The envelope's `status.user_message`, if dbt Cloud sent one.
    pub fn user_message(&self) -> Option<&str> {
        match self {
            DbtCloudError::Unauthorized { user_message, .. }
            | DbtCloudError::Forbidden { user_message, .. }
            | DbtCloudError::NotFound { user_message, .. }
            | DbtCloudError::RateLimited { user_message, .. }
            | DbtCloudError::Server { user_message, .. }
            | DbtCloudError::BadRequest { user_message, .. } => user_message.as_deref(),
            _ => None,
        }
    }

    /// `Retry-After` of a 429, if given.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DbtCloudError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn invalid_request(message: impl Into<String>) -> Self {
        DbtCloudError::InvalidRequest {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = DbtCloudError::Transport {
            endpoint: "trigger_run",
            message: "connection reset".into(),
            request_sent: true,
        };
        assert!(e.is_retryable() && e.is_ambiguous_for_trigger());
        let e = DbtCloudError::Transport {
            endpoint: "trigger_run",
            message: "connection refused".into(),
            request_sent: false,
        };
        assert!(e.is_retryable() && !e.is_ambiguous_for_trigger());
        let e = DbtCloudError::Server {
            endpoint: "trigger_run",
            status: 502,
            user_message: None,
        };
        assert!(e.is_ambiguous_for_trigger());
        assert_eq!(e.reason(), "ServerError");
        let e = DbtCloudError::BadRequest {
            endpoint: "trigger_run",
            status: 400,
            user_message: Some("bad cause".into()),
        };
        assert!(!e.is_retryable() && !e.is_ambiguous_for_trigger());
        assert!(e.to_string().contains("bad cause"));
        assert_eq!(e.user_message(), Some("bad cause"));
    }

    #[test]
    fn unauthorized_hint() {
        let with = DbtCloudError::Unauthorized {
            token_shape_hint: true,
            user_message: Some("Invalid token.".into()),
        };
        assert!(with.to_string().contains("dbtc_"));
        assert!(with.to_string().contains("Invalid token."));
        let without = DbtCloudError::Unauthorized {
            token_shape_hint: false,
            user_message: None,
        };
        assert!(!without.to_string().contains("dbtc_"));
        assert_eq!(without.reason(), "Unauthorized");
    }

    #[test]
    fn not_found_mentions_visibility() {
        let e = DbtCloudError::NotFound {
            endpoint: "get_job",
            user_message: None,
        };
        assert!(e.to_string().contains("cannot see"));
    }

    #[test]
    fn rate_limited_mentions_retry_after() {
        let e = DbtCloudError::RateLimited {
            endpoint: "get_run",
            retry_after: Some(Duration::from_secs(7)),
            user_message: None,
        };
        assert!(e.to_string().contains("retry after 7s"));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.reason(), "RateLimited");
    }
}
