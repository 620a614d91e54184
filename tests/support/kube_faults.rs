//! Fault injection and request accounting against the real kube-apiserver: a tower layer around
//! the real `kube::Client` stack. It records every request the operator sends (method, path,
//! query, response status) and can answer chosen requests with an error `Status` instead of
//! sending them, as an API server that fell over would.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use kube::client::Body;
use tower::{BoxError, Layer, Service};

/// One request as the API server (or the injected fault) answered it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: Method,
    /// URL path.
    pub path: String,
    /// URL query (without `?`).
    pub query: String,
    /// `Content-Type` of the request, when it had one.
    pub content_type: Option<String>,
    /// Response status (0 when the request failed below HTTP).
    pub status: u16,
}

struct FailRule {
    method: Method,
    path_contains: String,
    status: u16,
    remaining: u32,
}

#[derive(Default)]
struct State {
    requests: Vec<RecordedRequest>,
    rules: Vec<FailRule>,
}

/// The layer and its controls (cheap clone; every clone shares the same state).
#[derive(Clone, Default)]
pub struct KubeFaults {
    state: Arc<Mutex<State>>,
}

impl KubeFaults {
    /// Answers the next `count` requests with this `method` whose URL path contains
    /// `path_contains` with an error `Status` of code `status`, without sending them.
    pub fn fail_next(&self, method: Method, path_contains: &str, status: u16, count: u32) {
        self.state.lock().unwrap().rules.push(FailRule {
            method,
            path_contains: path_contains.to_string(),
            status,
            remaining: count,
        });
    }

    /// Drops every failure rule not used up yet.
    pub fn clear_failures(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Every request recorded so far (watch requests are recorded when their response starts).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    fn take_failure(&self, method: &Method, path: &str) -> Option<u16> {
        let mut s = self.state.lock().unwrap();
        let rule = s
            .rules
            .iter_mut()
            .find(|r| r.remaining > 0 && r.method == method && path.contains(&r.path_contains))?;
        rule.remaining -= 1;
        Some(rule.status)
    }

    fn record(&self, r: RecordedRequest) {
        self.state.lock().unwrap().requests.push(r);
    }
}

impl<S> Layer<S> for KubeFaults {
    type Service = KubeFaultsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KubeFaultsService {
            inner,
            faults: self.clone(),
        }
    }
}

/// The service [`KubeFaults`] wraps around the client's stack.
#[derive(Clone)]
pub struct KubeFaultsService<S> {
    inner: S,
    faults: KubeFaults,
}

/// The response body type of the wrapped stack.
pub type AnyBody = UnsyncBoxBody<Bytes, BoxError>;

fn status_body(code: u16) -> AnyBody {
    let reason = match code {
        409 => "Conflict",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        500 => "InternalError",
        _ => "InternalError",
    };
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": format!("injected fault ({code})"),
        "reason": reason, "code": code
    });
    Full::new(Bytes::from(status.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

impl<S, B> Service<Request<Body>> for KubeFaultsService<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<AnyBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let faults = self.faults.clone();
        if let Some(code) = faults.take_failure(&method, &path) {
            faults.record(RecordedRequest {
                method,
                path,
                query,
                content_type,
                status: code,
            });
            let resp = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(status_body(code))
                .expect("static response");
            return Box::pin(async move { Ok(resp) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await.map_err(Into::into);
            faults.record(RecordedRequest {
                method,
                path,
                query,
                content_type,
                status: result.as_ref().map(|r| r.status().as_u16()).unwrap_or(0),
            });
            let resp = result?;
            Ok(resp.map(|b| b.map_err(Into::into).boxed_unsync()))
        })
    }
}
