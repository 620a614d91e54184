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

/// Errors of the operator's reconcilers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
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
