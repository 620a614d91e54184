//! Every `reason` the operator writes, in condition `reason`s, Event reasons and
//! `lastSkipped.reason`: one enum, with each wire string in one place.
//!
//! The strings are a stable API: `kubectl wait`, Argo CD's Lua health checks (`deploy/`), Flux and
//! users' alerts match on them. Renaming a variant is fine; changing its string is not.

use std::fmt;

macro_rules! reasons {
    ($($(#[doc = $doc:expr])+ $name:ident = $wire:literal,)+) => {
        /// A CamelCase reason, as written to conditions and Events.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])+ $name,)+
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)+];

            /// The reason as written to the API server.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => $wire,)+
                }
            }

            /// The reason a wire string names, if it is one of ours.
            pub fn parse(wire: &str) -> Option<Reason> {
                match wire {
                    $($wire => Some(Reason::$name),)+
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    // --- Phases of a run, used as reasons while it is in them or when it ended there. ---
    /// The run waits to be triggered (or is being triggered).
    Pending = "Pending",
    /// The dbt Cloud run is queued.
    Queued = "Queued",
    /// The dbt Cloud run is starting.
    Starting = "Starting",
    /// The dbt Cloud run is running.
    Running = "Running",
    /// The dbt Cloud run succeeded.
    Succeeded = "Succeeded",
    /// The run failed (as a phase).
    Failed = "Failed",
    /// The run was cancelled.
    Cancelled = "Cancelled",
    /// `timeoutSeconds` expired.
    TimedOut = "TimedOut",

    // --- DbtCloudJobRun ---
    /// `Reconciling`/`Stalled` of a run that ended.
    Finished = "Finished",
    /// `spec.suspend` holds the run (or the trigger).
    Suspended = "Suspended",
    /// The dbt Cloud run failed (the `Failed` condition's reason).
    RunFailed = "RunFailed",
    /// `spec.job` names no job the token can see.
    JobNotFound = "JobNotFound",
    /// `spec.job`'s names match several jobs.
    JobNameAmbiguous = "JobNameAmbiguous",
    /// dbt Cloud refused a trigger.
    TriggerRejected = "TriggerRejected",
    /// A recorded trigger was not sent before its deadline; it is decided again.
    TriggerNotSent = "TriggerNotSent",
    /// A trigger's answer was lost; its run is searched for before anything else.
    TriggerOutcomeUnknown = "TriggerOutcomeUnknown",
    /// No run of a recorded trigger appeared within the confirm window; it is sent again.
    TriggerNotFound = "TriggerNotFound",
    /// Whether a recorded trigger reached dbt Cloud cannot be told.
    TriggerUnconfirmed = "TriggerUnconfirmed",
    /// An attempt started.
    Triggered = "Triggered",
    /// The run of an earlier, unrecorded trigger was found and is followed.
    Adopted = "Adopted",
    /// A failed attempt is retried.
    Retrying = "Retrying",
    /// dbt Cloud cannot retry a run natively; the whole job is triggered.
    RetryFallbackFull = "RetryFallbackFull",
    /// A second run with the same attempt marker was cancelled.
    DuplicateRunCancelled = "DuplicateRunCancelled",
    /// The deletion timeout passed before the dbt Cloud run could be cancelled.
    CancelAbandoned = "CancelAbandoned",
    /// dbt Cloud reports a run status code this operator does not know.
    UnknownRunStatus = "UnknownRunStatus",
    /// A reconcile failed (Warning Event with the error).
    ReconcileFailed = "ReconcileFailed",

    // --- A run's view of its credentials ---
    /// The credentials are usable (`CredentialsReady`).
    Ready = "Ready",
    /// The credentials have not been validated yet.
    CredentialsNotValidated = "CredentialsNotValidated",
    /// The referenced credentials do not exist (or are being deleted).
    CredentialsNotFound = "CredentialsNotFound",
    /// Cluster credentials do not allow the run's namespace.
    NamespaceNotAllowed = "NamespaceNotAllowed",

    // --- Credentials ---
    /// The API key was validated.
    Valid = "Valid",
    /// Event: the credentials became ready.
    Validated = "Validated",
    /// Event: a new key was found in the Secret and validated.
    KeyRotated = "KeyRotated",
    /// `spec.host` is not an allowed dbt Cloud host.
    InvalidHost = "InvalidHost",
    /// The Secret does not exist.
    SecretNotFound = "SecretNotFound",
    /// The Secret could not be read.
    SecretUnreadable = "SecretUnreadable",
    /// The Secret lacks the key.
    SecretKeyMissing = "SecretKeyMissing",
    /// The Secret's key does not hold a usable token.
    SecretKeyInvalid = "SecretKeyInvalid",
    /// A client could not be built from the credentials.
    InvalidCredentials = "InvalidCredentials",
    /// dbt Cloud rejected the key (401).
    Unauthorized = "Unauthorized",
    /// The key cannot access the account.
    AccountNotAccessible = "AccountNotAccessible",
    /// dbt Cloud cannot be reached (outage, transport error).
    Unreachable = "Unreachable",

    // --- dbt Cloud errors (see `DbtCloudError::condition_reason`) ---
    /// 403.
    Forbidden = "Forbidden",
    /// 404.
    NotFound = "NotFound",
    /// 429.
    RateLimited = "RateLimited",
    /// 5xx.
    ServerError = "ServerError",
    /// 400.
    BadRequest = "BadRequest",
    /// An unexpected redirect.
    Redirect = "Redirect",
    /// The connection failed.
    TransportError = "TransportError",
    /// The request timed out.
    Timeout = "Timeout",
    /// The request was not sent before its deadline.
    NotSent = "NotSent",
    /// The answer could not be decoded.
    DecodeError = "DecodeError",
    /// The answer was too large.
    ResponseTooLarge = "ResponseTooLarge",
    /// The request was refused before sending.
    InvalidRequest = "InvalidRequest",

    // --- DbtCloudJobTrigger ---
    /// The schedule does not parse or never fires.
    InvalidSchedule = "InvalidSchedule",
    /// The time zone is unknown.
    InvalidTimeZone = "InvalidTimeZone",
    /// The API server refused a run made from the template.
    RunTemplateRejected = "RunTemplateRejected",
    /// The trigger's name leaves no room for its runs' suffixes.
    NameTooLong = "NameTooLong",
    /// A schedule slot was missed.
    MissedSchedule = "MissedSchedule",
    /// `lastSkipped`: a slot was later than `startingDeadlineSeconds`.
    MissedDeadline = "MissedDeadline",
    /// Event: a run was not started (concurrency policy).
    RunSkipped = "RunSkipped",
    /// Event: active runs are cancelled to start a new one (`Replace`).
    RunReplaced = "RunReplaced",
    /// Event: finished runs beyond the history limits were deleted.
    RunsDeleted = "RunsDeleted",
    /// `lastSkipped`: an object of another owner has the run's name.
    NameTaken = "NameTaken",
    /// Event: an object of another owner has the run's name.
    RunNameTaken = "RunNameTaken",
    /// Event: a run was created.
    RunStarted = "RunStarted",
    /// `lastSkipped`: superseded by a run started at the same moment (`Replace`).
    Superseded = "Superseded",
    /// `Ready` of a trigger with a schedule.
    Scheduled = "Scheduled",
    /// `Ready` of a trigger without a schedule.
    Waiting = "Waiting",
}

/// Event to publish (type, reason, note).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// Why.
    pub reason: Reason,
    /// Human-readable note.
    pub note: String,
}

impl EventNote {
    /// A `Normal` Event.
    pub fn normal(reason: Reason, note: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            note: note.into(),
        }
    }

    /// A `Warning` Event.
    pub fn warning(reason: Reason, note: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            note: note.into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Reason> for String {
    fn from(reason: Reason) -> Self {
        reason.as_str().to_string()
    }
}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Reason {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Reason> for &str {
    fn eq(&self, other: &Reason) -> bool {
        *self == other.as_str()
    }
}

impl From<crate::crd::job_run::RunPhase> for Reason {
    fn from(phase: crate::crd::job_run::RunPhase) -> Self {
        use crate::crd::job_run::RunPhase;
        match phase {
            RunPhase::Pending => Reason::Pending,
            RunPhase::Queued => Reason::Queued,
            RunPhase::Starting => Reason::Starting,
            RunPhase::Running => Reason::Running,
            RunPhase::Succeeded => Reason::Succeeded,
            RunPhase::Failed => Reason::Failed,
            RunPhase::Cancelled => Reason::Cancelled,
            RunPhase::TimedOut => Reason::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::job_run::RunPhase;

    #[test]
    fn wire_strings_are_unique_camel_case_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
                "{s}"
            );
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
            assert_eq!(Reason::parse(s), Some(*r));
            assert_eq!(r.to_string(), s);
        }
        assert_eq!(Reason::parse("NoSuchReason"), None);
    }

    #[test]
    fn phases_map_to_their_own_names() {
        for phase in [
            RunPhase::Pending,
            RunPhase::Queued,
            RunPhase::Starting,
            RunPhase::Running,
            RunPhase::Succeeded,
            RunPhase::Failed,
            RunPhase::Cancelled,
            RunPhase::TimedOut,
        ] {
            assert_eq!(Reason::from(phase).as_str(), phase.as_str());
        }
    }
}

/// What the operator was doing when it published an Event (the Event's `action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventAction {
    /// Reconciling the object (deciding and following).
    Reconcile,
    /// Triggering a dbt Cloud run.
    Trigger,
    /// Handling the object's deletion (cancelling its dbt Cloud run).
    Delete,
    /// Validating credentials against dbt Cloud.
    Validate,
}

impl EventAction {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Reconcile => "Reconcile",
            EventAction::Trigger => "Trigger",
            EventAction::Delete => "Delete",
            EventAction::Validate => "Validate",
        }
    }
}

#[cfg(test)]
mod action_tests {
    use super::EventAction;

    #[test]
    fn actions_are_camel_case_words() {
        for a in [
            EventAction::Reconcile,
            EventAction::Trigger,
            EventAction::Delete,
            EventAction::Validate,
        ] {
            assert!(a.as_str().chars().all(|c| c.is_ascii_alphabetic()));
            assert_eq!(format!("{a:?}"), a.as_str());
        }
    }
}
