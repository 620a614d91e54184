//! Custom resource types (group `dbtcloud.io`, version `v1alpha1`). Their doc comments are the
//! user documentation `kubectl explain` shows.

pub mod conditions;
pub mod credentials;
pub mod job_run;
pub mod job_trigger;
pub mod reasons;

pub use credentials::{
    ClusterDbtCloudCredentials, ClusterDbtCloudCredentialsSpec, CredentialsStatus,
    CredentialsTarget, DbtCloudCredentials, DbtCloudCredentialsSpec, SecretKeyRef,
};
pub use job_run::{DbtCloudJobRun, DbtCloudJobRunSpec, DbtCloudJobRunStatus, RunPhase};
pub use job_trigger::{
    ConcurrencyPolicy, DbtCloudJobTrigger, DbtCloudJobTriggerSpec, DbtCloudJobTriggerStatus,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every custom resource of this operator.
pub const GROUP: &str = "dbtcloud.io";
/// API version served.
pub const VERSION: &str = "v1alpha1";

/// Every CRD this operator serves.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        DbtCloudCredentials::crd(),
        ClusterDbtCloudCredentials::crd(),
        DbtCloudJobRun::crd(),
        DbtCloudJobTrigger::crd(),
    ]
}

/// File name (under `crds/`) for each CRD, paired with its YAML document, sorted by file name.
pub fn files() -> Vec<(String, String)> {
    let mut crds = all();
    crds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    crds.into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_yaml::to_string(&crd).expect("a CRD always serialises to YAML");
            (format!("{name}.yaml"), format!("---\n{yaml}"))
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream (what `dbt-cloud-operator crds` prints): the files of
/// [`files`] concatenated in order.
pub fn yaml() -> String {
    files().into_iter().map(|(_, yaml)| yaml).collect()
}
