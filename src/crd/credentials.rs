//! `DbtCloudCredentials` (namespaced) and `ClusterDbtCloudCredentials` (cluster-scoped): which dbt
//! Cloud account to talk to, on which host, with which API key.
// `printcolumn(...)` entries repeat `type_ = ...`, which clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Default dbt Cloud access host.
pub const DEFAULT_HOST: &str = "cloud.getdbt.com";
/// Default key inside the referenced Secret that holds the API key.
pub const DEFAULT_SECRET_KEY: &str = "apiKey";

/// Pattern for a DNS host name (lower case, at least two labels, alphabetic top-level label). It
/// excludes IP literals, ports, paths, user info and schemes by construction.
pub const HOST_PATTERN: &str =
    r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$";

/// Spec of `DbtCloudCredentials`: a dbt Cloud account, its access host, and the Secret holding an
/// API key (a service token `dbtc_…` or a personal access token `dbtu_…`).
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dbtcloud.io",
    version = "v1alpha1",
    kind = "DbtCloudCredentials",
    plural = "dbtcloudcredentials",
    singular = "dbtcloudcredentials",
    namespaced,
    status = "CredentialsStatus",
    shortname = "dbtcred",
    category = "dbtcloud",
    doc = "Credentials for one dbt Cloud account. The operator validates the API key against dbt Cloud and reports the result in the Ready condition. The Secret must live in the same namespace.",
    printcolumn(name = "Account", type_ = "integer", json_path = ".spec.accountId"),
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DbtCloudCredentialsSpec {
    /// dbt Cloud account id (the number after `/accounts/` in dbt Cloud URLs).
    #[schemars(range(min = 1))]
    pub account_id: i64,
    /// dbt Cloud access host name, without scheme or path: `cloud.getdbt.com` (default),
    /// `emea.dbt.com`, `au.dbt.com`, a cell-based host such as `ab123.us1.dbt.com`, an
    /// account-scoped host such as `abc123.dbt.com`, or a single-tenant host allowed by the
    /// operator's `--allowed-host-suffix` setting.
    #[serde(default = "default_host")]
    #[schemars(length(min = 3, max = 253), regex(pattern = HOST_PATTERN))]
    pub host: String,
    /// The Secret (in this namespace) and key holding the dbt Cloud API key.
    pub api_key_secret_ref: SecretKeyRef,
}

/// Spec of `ClusterDbtCloudCredentials`: like `DbtCloudCredentials`, shared with chosen namespaces.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dbtcloud.io",
    version = "v1alpha1",
    kind = "ClusterDbtCloudCredentials",
    plural = "clusterdbtcloudcredentials",
    singular = "clusterdbtcloudcredentials",
    status = "CredentialsStatus",
    shortname = "cdbtcred",
    category = "dbtcloud",
    doc = "Cluster-wide credentials for one dbt Cloud account, usable by DbtCloudJobRuns in the namespaces listed in allowedNamespaces. The Secret lives in the operator's own namespace.",
    printcolumn(name = "Account", type_ = "integer", json_path = ".spec.accountId"),
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDbtCloudCredentialsSpec {
    /// dbt Cloud account id.
    #[schemars(range(min = 1))]
    pub account_id: i64,
    /// dbt Cloud access host name (see `DbtCloudCredentials.spec.host`).
    #[serde(default = "default_host")]
    #[schemars(length(min = 3, max = 253), regex(pattern = HOST_PATTERN))]
    pub host: String,
    /// The Secret and key holding the API key. The Secret must be in the operator's own namespace
    /// (like cert-manager's ClusterIssuer), so that namespace users cannot read it.
    pub api_key_secret_ref: SecretKeyRef,
    /// Namespaces whose `DbtCloudJobRun`s may use these credentials. Empty means none, not all.
    #[serde(default)]
    pub allowed_namespaces: AllowedNamespaces,
}

/// Namespaces allowed to use cluster-wide credentials: listed by name and/or matched by labels.
/// A namespace is allowed when it is listed or matches the selector; when both are empty, none is.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Namespace names allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Label selector over namespaces; an empty selector `{}` matches every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Reference to a key of a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data that holds the API key. Defaults to `apiKey`.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Observed state of dbt Cloud credentials.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (reasons: Valid, SecretNotFound, SecretKeyMissing, InvalidHost, Unauthorized,
    /// Forbidden, AccountNotAccessible, Unreachable, RateLimited) and the kstatus pair
    /// `Reconciling`/`Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Name of the dbt Cloud account, as dbt Cloud reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// When the key was last checked against dbt Cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_validated_time: Option<Time>,
    /// A fingerprint (truncated SHA-256, not reversible) of the key that was validated, so a
    /// rotation is noticed. Never the key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
}

fn default_host() -> String {
    DEFAULT_HOST.to_string()
}

fn default_secret_key() -> String {
    DEFAULT_SECRET_KEY.to_string()
}

/// The parts of either credentials kind that the operator needs to build a client.
#[derive(Clone, Debug, PartialEq)]
pub struct CredentialsTarget {
    /// dbt Cloud account id.
    pub account_id: i64,
    /// Access host.
    pub host: String,
    /// Secret reference.
    pub secret: SecretKeyRef,
    /// Namespace in which the Secret lives.
    pub secret_namespace: String,
}

impl DbtCloudCredentials {
    /// What the operator needs to build a client (the Secret is in the object's own namespace).
    pub fn target(&self) -> CredentialsTarget {
        CredentialsTarget {
            account_id: self.spec.account_id,
            host: self.spec.host.clone(),
            secret: self.spec.api_key_secret_ref.clone(),
            secret_namespace: self.metadata.namespace.clone().unwrap_or_default(),
        }
    }
}

impl ClusterDbtCloudCredentials {
    /// What the operator needs to build a client (the Secret is in the operator's namespace).
    pub fn target(&self, operator_namespace: &str) -> CredentialsTarget {
        CredentialsTarget {
            account_id: self.spec.account_id,
            host: self.spec.host.clone(),
            secret: self.spec.api_key_secret_ref.clone(),
            secret_namespace: operator_namespace.to_string(),
        }
    }
}
