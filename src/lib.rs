//! dbt-cloud-operator: run dbt Cloud jobs the Kubernetes way.
pub mod crd;
