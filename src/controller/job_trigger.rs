//! Reconciler of `DbtCloudJobTrigger` (work in progress).
