//! Controllers: shared context, the credentials and job-run reconcilers, and the pure run lifecycle.
pub mod lifecycle;
