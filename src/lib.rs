//! dbt-cloud-operator: run dbt Cloud jobs the Kubernetes way.
//!
//! Modules: [`crd`] (custom resource types), [`dbt_cloud`] (API client), [`controller`]
//! (reconcilers and the pure run lifecycle), [`operator`] (the process: controllers, leader
//! election, probes, shutdown), [`probes`] (probes and metrics server), [`leader`] (leader
//! election), [`metrics`], [`telemetry`], [`sync`] (the lock-poisoning policy), [`cli`] (command
//! line).

pub mod cli;
pub mod controller;
pub mod crd;
pub mod dbt_cloud;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod probes;
pub mod sync;
pub mod telemetry;

/// The stage of a reconcile an error happened in, so that every failure says where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading the credentials a run uses.
    ResolveCredentials,
    /// Looking for the run of a recorded trigger.
    FindRun,
    /// Recording and sending a trigger (or a native retry).
    Trigger,
    /// Reading the state of the current dbt Cloud run.
    Follow,
    /// Cancelling a dbt Cloud run.
    Cancel,
    /// Writing the object's status.
    WriteStatus,
    /// Deleting an object whose `ttlSecondsAfterFinished` expired.
    Delete,
    /// Cancelling what a deleted object left in flight.
    Cleanup,
    /// Removing the finalizer.
    RemoveFinalizer,
    /// Creating, cancelling or deleting a trigger's runs.
    ManageRuns,
}

impl Stage {
    /// What the stage does, as error messages say it.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::ResolveCredentials => "resolving the credentials",
            Stage::FindRun => "searching for the run of a recorded trigger",
            Stage::Trigger => "triggering the run",
            Stage::Follow => "following the run",
            Stage::Cancel => "cancelling the run",
            Stage::WriteStatus => "writing status",
            Stage::Delete => "deleting the finished object",
            Stage::Cleanup => "cleaning up after deletion",
            Stage::RemoveFinalizer => "removing the finalizer",
            Stage::ManageRuns => "managing the trigger's runs",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Errors of the operator's reconcilers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error in a stage of a reconcile (the message names the stage first).
    #[error("{stage}: {source}")]
    InStage {
        /// Where it happened.
        stage: Stage,
        /// What happened.
        #[source]
        source: Box<Error>,
    },
    /// The Kubernetes API failed.
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// dbt Cloud failed.
    #[error("dbt Cloud: {0}")]
    DbtCloud(#[from] dbt_cloud::DbtCloudError),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object changed since it was read (a resourceVersion precondition failed).
    #[error("object changed concurrently: {0}")]
    Conflict(String),
    /// The object is not usable as it is.
    #[error("invalid object: {0}")]
    Invalid(String),
    /// Deletion waits for something (ready credentials, the confirmation of a recorded trigger)
    /// before it can cancel the dbt Cloud run; the finalizer stays and the cleanup is retried after
    /// `retry_in` (bounded by the deletion timeout). An error, because a finalizer's cleanup that
    /// returns `Ok` lets the object go at once.
    #[error("deletion waits: {message}")]
    DeletionPending {
        /// What it waits for.
        message: String,
        /// When to try again.
        retry_in: std::time::Duration,
    },
}

impl Error {
    /// The error, placed in `stage` (an error already placed keeps its own, more precise stage).
    pub fn in_stage(self, stage: Stage) -> Error {
        match self {
            placed @ Error::InStage { .. } => placed,
            other => Error::InStage {
                stage,
                source: Box::new(other),
            },
        }
    }

    /// The stage the error happened in, when known.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            Error::InStage { stage, .. } => Some(*stage),
            _ => None,
        }
    }

    /// What happened, whatever the stage.
    pub fn cause(&self) -> &Error {
        match self {
            Error::InStage { source, .. } => source.cause(),
            other => other,
        }
    }

    /// Whether a failed reconcile is worth a Warning Event: not for conflicts (routine: another
    /// write came first, the object is read again) nor for a deletion that waits.
    pub fn is_reportable(&self) -> bool {
        !matches!(
            self.cause(),
            Error::Conflict(_) | Error::DeletionPending { .. }
        )
    }

    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InStage { source, .. } => source.metric_label(),
            Error::Kube(_) => "kube",
            Error::DbtCloud(e) => e.reason(),
            Error::Finalizer(_) => "finalizer",
            Error::Conflict(_) => "conflict",
            Error::Invalid(_) => "invalid",
            Error::DeletionPending { .. } => "deletion_pending",
        }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Places the error of a result in a reconcile [`Stage`].
pub trait InStage<T> {
    /// The result, its error placed in `stage`.
    fn in_stage(self, stage: Stage) -> Result<T>;
}

impl<T, E: Into<Error>> InStage<T> for std::result::Result<T, E> {
    fn in_stage(self, stage: Stage) -> Result<T> {
        self.map_err(|e| e.into().in_stage(stage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_errors_say_where_and_keep_their_cause_and_label() {
        let e = Error::Conflict("rv 5".into()).in_stage(Stage::WriteStatus);
        assert_eq!(
            e.to_string(),
            "writing status: object changed concurrently: rv 5"
        );
        assert_eq!(e.stage(), Some(Stage::WriteStatus));
        assert!(matches!(e.cause(), Error::Conflict(_)));
        assert_eq!(e.metric_label(), "conflict");
        assert!(!e.is_reportable());
        // The innermost stage is kept.
        let e = e.in_stage(Stage::Trigger);
        assert_eq!(e.stage(), Some(Stage::WriteStatus));
        let r: Result<()> = Err(Error::Invalid("x".into())).in_stage(Stage::Follow);
        let e = r.unwrap_err();
        assert_eq!(e.to_string(), "following the run: invalid object: x");
        assert_eq!(e.metric_label(), "invalid");
        assert!(e.is_reportable());
        let pending = Error::DeletionPending {
            message: "m".into(),
            retry_in: std::time::Duration::from_secs(1),
        }
        .in_stage(Stage::Cleanup);
        assert!(!pending.is_reportable());
        assert_eq!(pending.metric_label(), "deletion_pending");
    }
}
