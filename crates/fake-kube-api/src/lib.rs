//! An in-memory Kubernetes API server implemented as a [`tower::Service`], so that
//! `kube::Client::new(server.service(), "default")` can drive real controller code in tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use fake_kube_api::FakeApiServer;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//!
//! let server = FakeApiServer::new();
//! let api: Api<ConfigMap> = Api::default_namespaced(server.client());
//! let mut cm = ConfigMap::default();
//! cm.metadata.name = Some("settings".into());
//! api.create(&PostParams::default(), &cm).await.unwrap();
//! assert!(server.get("v1", "configmaps", Some("default"), "settings").is_some());
//! # }
//! ```
//!
//! # What behaves like the real kube-apiserver
//!
//! - URL routing for core (`/api/v1/...`) and grouped (`/apis/{group}/{version}/...`) resources,
//!   namespaced, cluster-scoped and all-namespaces collections, `/status` subresources. The scope
//!   is learned from the URL, so any resource (including CRDs) works without registration.
//! - create (uid, global monotonically increasing `resourceVersion`, `creationTimestamp`,
//!   `generation`, `generateName`, 409 `AlreadyExists`), get, list (label selectors `a=b`,
//!   `a!=b`, `a`, `!a`, `a in (..)`, `a notin (..)`; field selectors on any dotted path;
//!   `limit`/`continue` paging), delete and deletecollection (finalizers → `deletionTimestamp`,
//!   removal once the last finalizer is gone; `preconditions`; 404 for missing objects).
//! - watch: newline-delimited `ADDED`/`MODIFIED`/`DELETED` events after `resourceVersion`,
//!   synthetic `ADDED` events for `resourceVersion` unset or `0`, `sendInitialEvents=true` with
//!   the `k8s.io/initial-events-end` bookmark, `410 Expired` ERROR events once the bounded history
//!   (10 000 events by default) no longer covers the requested version, `timeoutSeconds`, and
//!   selector transitions (an object that stops matching is reported as `DELETED`).
//! - PUT with `resourceVersion` preconditions (409 `Conflict`), PATCH with
//!   `application/merge-patch+json`, `application/json-patch+json` (a failing `test` op → 422
//!   `Invalid`; `test` for `null` on a missing path succeeds, as kube's finalizer helper expects),
//!   and server-side apply (`application/apply-patch+yaml`, `fieldManager` required, `force`).
//!   A patch or apply whose result carries a different `metadata.resourceVersion` → 409.
//! - Server-side apply conflicts: a minimal field-ownership model (per manager, leaf paths)
//!   reports 409 `Conflict` when a non-forced apply changes a field owned by another manager.
//!   kube-lease-manager relies on this for mutual exclusion.
//! - Status subresource semantics, `generation` bumps (not for status or metadata changes),
//!   no-op writes that change nothing do not bump `resourceVersion` nor emit events, no new
//!   finalizers on objects being deleted, `dryRun=All`.
//! - `PartialObjectMetadata` responses when asked via the `Accept` header (metadata watchers).
//! - Errors are `metav1.Status` bodies, so kube reports them as `kube::Error::Api`.
//!
//! # Simplifications
//!
//! - `application/strategic-merge-patch+json` is treated as a JSON merge patch (lists replaced).
//! - Server-side apply on the main resource merges like a JSON merge patch (lists are atomic)
//!   and removes fields the same manager applied before but no longer applies. Apply on the
//!   `/status` subresource **replaces the whole `.status`** with the applied one (the operator
//!   always applies the whole status from one field manager). `managedFields` is not exposed.
//! - No validation against schemas, no defaulting, no admission, no namespace existence checks,
//!   no garbage collection of owned objects, no cascading namespace deletion, no RBAC.
//! - Different versions of one resource are stored separately (no conversion).
//! - `metadata.generation` is kept for every group except core, `coordination.k8s.io` and
//!   `events.k8s.io`; the status subresource is on by default for the same set
//!   (change with [`FakeApiServer::set_status_subresource`]).

#![warn(missing_docs)]

mod error;
mod fields;
mod selector;
mod state;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use serde_json::Value;

use crate::error::ApiError;
use crate::state::{Query, Reply, Req, ResourceType, State};

/// Response body type of [`FakeService`]: a full JSON body or a streaming watch body.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// One request seen by the server, for assertions in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: Method,
    /// URL path, e.g. `/apis/example.com/v1/namespaces/default/widgets/w/status`.
    pub path: String,
    /// Raw query string (without `?`), empty if none.
    pub query: String,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// HTTP status code answered.
    pub status: u16,
}

/// An injected failure (see [`FakeApiServer::fail_next`]).
#[derive(Clone, Debug)]
pub(crate) struct FailRule {
    method: Method,
    path_contains: String,
    status: u16,
    remaining: u32,
}

/// Handle to an in-memory API server. Cheap to clone; all clones share the same state, so
/// several [`kube::Client`]s (e.g. two operator replicas) can talk to one server.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("resource_version", &self.lock().resource_version())
            .finish()
    }
}

impl FakeApiServer {
    /// A new, empty server.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The [`tower::Service`] answering HTTP requests against this server.
    pub fn service(&self) -> FakeService {
        FakeService {
            server: self.clone(),
        }
    }

    /// A [`kube::Client`] talking to this server, with default namespace `default`.
    ///
    /// Must be called inside a Tokio runtime (kube spawns a buffer task).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.service(), "default")
    }

    /// A [`kube::Client`] with the given default namespace.
    pub fn client_with_namespace(&self, namespace: &str) -> kube::Client {
        kube::Client::new(self.service(), namespace)
    }

    /// Builder-style [`set_status_subresource`](Self::set_status_subresource).
    #[must_use]
    pub fn with_status_subresource(self, group: &str, plural: &str, enabled: bool) -> Self {
        self.set_status_subresource(group, plural, enabled);
        self
    }

    /// Declares whether `group`/`plural` (group `""` for core) has a `/status` subresource.
    /// Default: every group except core, `coordination.k8s.io` and `events.k8s.io` has one.
    pub fn set_status_subresource(&self, group: &str, plural: &str, enabled: bool) {
        self.lock()
            .status_overrides
            .insert((group.to_string(), plural.to_string()), enabled);
    }

    /// Limits the watch history (default 10 000 events). Watches resuming from a
    /// `resourceVersion` older than the retained history get a `410 Expired` ERROR event.
    pub fn set_history_limit(&self, limit: usize) {
        let mut s = self.lock();
        s.history_limit = limit.max(1);
        s.trim_history();
    }

    /// The current global `resourceVersion` (that of the latest write).
    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version()
    }

    /// Number of watch streams currently open (useful to wait until a watcher is connected).
    pub fn active_watches(&self) -> usize {
        self.lock().active_watches()
    }

    /// The stored object, e.g. `get("example.com/v1", "widgets", Some("default"), "w")`.
    /// `api_version` is `"v1"` for core resources.
    pub fn get(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.lock().get(
            &ResourceType::from_api_version(api_version, plural),
            namespace,
            name,
        )
    }

    /// Stored objects of a type, in one namespace or (with `None`) everywhere.
    pub fn list(&self, api_version: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        self.lock().list(
            &ResourceType::from_api_version(api_version, plural),
            namespace,
        )
    }

    /// Creates or overwrites an object directly (including `.status`), bypassing preconditions
    /// and subresource rules. The namespace comes from `metadata.namespace` (absent = cluster
    /// scoped). Bumps the resourceVersion and emits the ADDED/MODIFIED watch event (or DELETED
    /// when it sets `deletionTimestamp` without finalizers). Returns the stored object.
    ///
    /// # Panics
    /// If `obj` is not an object with `metadata.name`.
    pub fn put_object(&self, api_version: &str, plural: &str, obj: Value) -> Value {
        self.lock()
            .put(&ResourceType::from_api_version(api_version, plural), obj)
            .unwrap_or_else(|e| panic!("put_object: {e}"))
    }

    /// Removes an object at once, ignoring finalizers, emitting a DELETED event.
    pub fn remove_object(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.lock().remove(
            &ResourceType::from_api_version(api_version, plural),
            namespace,
            name,
        )
    }

    /// Every request answered so far (oldest first).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Answers the next `count` requests with this `method` whose URL path contains
    /// `path_contains` with an error `Status` of code `status`, without executing them.
    pub fn fail_next(&self, method: Method, path_contains: &str, status: u16, count: u32) {
        self.lock().failures.push(FailRule {
            method,
            path_contains: path_contains.to_string(),
            status,
            remaining: count,
        });
    }

    /// While `true`, every request is answered with 503 ServiceUnavailable (an API outage).
    /// Turning it on also ends all open watch streams.
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut s = self.lock();
        s.unavailable = unavailable;
        if unavailable {
            s.close_watches();
        }
    }

    /// Events in a namespace: `events.k8s.io/v1` events followed by core `v1` events.
    pub fn events(&self, namespace: &str) -> Vec<Value> {
        let s = self.lock();
        let mut out = s.list(
            &ResourceType::from_api_version("events.k8s.io/v1", "events"),
            Some(namespace),
        );
        out.extend(s.list(
            &ResourceType::from_api_version("v1", "events"),
            Some(namespace),
        ));
        out
    }

    fn handle(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        content_type: Option<String>,
        accept: Option<String>,
        body: &[u8],
    ) -> Reply {
        let mut s = self.lock();
        let injected = if s.unavailable {
            Some(ApiError::from_code(
                503,
                "the server is currently unable to handle the request",
            ))
        } else if let Some(rule) = s
            .failures
            .iter_mut()
            .find(|r| r.remaining > 0 && r.method == method && path.contains(&r.path_contains))
        {
            rule.remaining -= 1;
            Some(ApiError::from_code(
                rule.status,
                format!("injected failure ({}) for {method} {path}", rule.status),
            ))
        } else {
            None
        };
        s.failures.retain(|r| r.remaining > 0);
        let reply = match injected {
            Some(e) => Reply::Json(e.code, e.to_json()),
            None => s.handle(&Req {
                method,
                path,
                query: Query::parse(query),
                content_type: content_type.clone(),
                accept,
                body,
            }),
        };
        let status = match &reply {
            Reply::Json(code, _) => *code,
            Reply::Watch(..) => 200,
        };
        s.requests.push(RequestRecord {
            method: method.clone(),
            path: path.to_string(),
            query: query.to_string(),
            content_type,
            status,
        });
        reply
    }
}

/// The [`tower::Service`] of a [`FakeApiServer`]; pass it to [`kube::Client::new`].
#[derive(Clone, Debug)]
pub struct FakeService {
    server: FakeApiServer,
}

impl<B> tower::Service<Request<B>> for FakeService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let header = |name: http::header::HeaderName| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            };
            let reply = server.handle(
                &parts.method,
                parts.uri.path(),
                parts.uri.query().unwrap_or(""),
                header(http::header::CONTENT_TYPE),
                header(http::header::ACCEPT),
                &body,
            );
            let response =
                Response::builder().header(http::header::CONTENT_TYPE, "application/json");
            let response = match reply {
                Reply::Json(code, value) => response.status(code).body(
                    Full::new(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
                        .boxed_unsync(),
                ),
                Reply::Watch(rx, timeout) => {
                    let frames = rx.map(|b| Ok::<_, Infallible>(http_body::Frame::data(b)));
                    let body = match timeout {
                        Some(d) => {
                            StreamBody::new(frames.take_until(Box::pin(tokio::time::sleep(d))))
                                .boxed_unsync()
                        }
                        None => StreamBody::new(frames).boxed_unsync(),
                    };
                    response.status(200).body(body)
                }
            };
            Ok(response.expect("valid response"))
        })
    }
}
