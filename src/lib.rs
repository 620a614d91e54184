//! dbt-cloud-operator: run dbt Cloud jobs the Kubernetes way.
pub mod controller;
pub mod crd;
pub mod dbt_cloud;
