//! The in-memory store and the request handlers.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use http::Method;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::fields::{
    apply_json_patch, changed_paths, dotted, leaves, normalize, related, remove_path, Managers,
};
use crate::selector::Filter;
use crate::{FailRule, RequestRecord};

/// Default number of watch events kept for resuming watches.
pub(crate) const DEFAULT_HISTORY_LIMIT: usize = 10_000;

/// A resource type: API group, version and plural name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ResourceType {
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) plural: String,
}

impl ResourceType {
    pub(crate) fn from_api_version(api_version: &str, plural: &str) -> Self {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        Self {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether `metadata.generation` is maintained (CRDs and most non-core types; not for
    /// core/v1, Leases or Events, like the real apiserver).
    fn tracks_generation(&self) -> bool {
        !matches!(
            self.group.as_str(),
            "" | "coordination.k8s.io" | "events.k8s.io"
        )
    }

    /// Whether a successful DELETE answers with the object (CRDs) or a `Status` (built-ins).
    fn delete_returns_object(&self) -> bool {
        self.group.contains('.') && !self.group.ends_with("k8s.io")
    }

    /// Whether PUT on a missing object creates it (true for Leases and Events).
    fn allow_create_on_update(&self) -> bool {
        matches!(
            (self.group.as_str(), self.plural.as_str()),
            ("coordination.k8s.io", "leases") | ("events.k8s.io", "events") | ("", "events")
        )
    }
}

/// Storage key of one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ObjKey {
    pub(crate) rt: ResourceType,
    pub(crate) ns: Option<String>,
    pub(crate) name: String,
}

struct Stored {
    value: Value,
    managers: Managers,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EvType {
    Added,
    Modified,
    Deleted,
}

struct HistoryEntry {
    rv: u64,
    key: ObjKey,
    et: EvType,
    obj: Value,
    prev: Option<Value>,
}

struct WatchSub {
    rt: ResourceType,
    ns: Option<String>,
    filter: Filter,
    partial: bool,
    tx: UnboundedSender<Bytes>,
}

impl WatchSub {
    fn line_for(&self, e: &HistoryEntry) -> Option<Bytes> {
        if e.key.rt != self.rt || (self.ns.is_some() && e.key.ns != self.ns) {
            return None;
        }
        let now = self.filter.matches(&e.obj);
        let t = match e.et {
            EvType::Added => now.then_some("ADDED"),
            EvType::Deleted => now.then_some("DELETED"),
            EvType::Modified => {
                let before = e.prev.as_ref().is_none_or(|p| self.filter.matches(p));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }?;
        Some(event_line(t, &present(&e.obj, self.partial)))
    }
}

fn event_line(t: &str, obj: &Value) -> Bytes {
    let mut s = serde_json::to_vec(&json!({"type": t, "object": obj})).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

fn present(obj: &Value, partial: bool) -> Value {
    if partial {
        json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })
    } else {
        obj.clone()
    }
}

/// Parsed query string.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: &str) -> Self {
        Self(form_urlencoded::parse(q.as_bytes()).into_owned().collect())
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

/// One HTTP request, as seen by the handlers.
pub(crate) struct Req<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: Query,
    pub(crate) content_type: Option<String>,
    pub(crate) accept: Option<String>,
    pub(crate) body: &'a [u8],
}

impl Req<'_> {
    fn partial(&self) -> bool {
        self.accept
            .as_deref()
            .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
    }

    fn manager(&self) -> String {
        self.query
            .get("fieldManager")
            .unwrap_or("unknown")
            .to_string()
    }
}

/// What to answer.
pub(crate) enum Reply {
    Json(u16, Value),
    Watch(UnboundedReceiver<Bytes>, Option<Duration>),
}

enum Target {
    Version,
    Api,
    Apis,
    GroupVersion(String, String),
    Resource(Route),
}

struct Route {
    rt: ResourceType,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Some(Target::Version),
        ["api"] => return Some(Target::Api),
        ["apis"] => return Some(Target::Apis),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let rt = |plural: &str| ResourceType {
        group: group.to_string(),
        version: version.to_string(),
        plural: plural.to_string(),
    };
    let s = |x: Option<&&str>| x.map(|x| (*x).to_string());
    let route = match rest {
        [] => return Some(Target::GroupVersion(group.into(), version.into())),
        ["namespaces", ns, plural, tail @ ..]
            if tail.len() <= 2
                && !(tail.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            Route {
                rt: rt(plural),
                ns: Some((*ns).to_string()),
                name: s(tail.first()),
                sub: s(tail.get(1)),
            }
        }
        [plural, tail @ ..] if tail.len() <= 2 => Route {
            rt: rt(plural),
            ns: None,
            name: s(tail.first()),
            sub: s(tail.get(1)),
        },
        _ => return None,
    };
    Some(Target::Resource(route))
}

fn now_ts() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

fn new_uid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn kind_guess(plural: &str) -> String {
    let known = [
        ("configmaps", "ConfigMap"),
        ("secrets", "Secret"),
        ("leases", "Lease"),
        ("events", "Event"),
        ("namespaces", "Namespace"),
        ("pods", "Pod"),
        ("services", "Service"),
        ("serviceaccounts", "ServiceAccount"),
        ("deployments", "Deployment"),
        ("jobs", "Job"),
    ];
    if let Some((_, k)) = known.iter().find(|(p, _)| *p == plural) {
        return (*k).to_string();
    }
    let singular = plural
        .strip_suffix("ies")
        .map(|s| format!("{s}y"))
        .or_else(|| plural.strip_suffix('s').map(str::to_string))
        .unwrap_or_else(|| plural.to_string());
    let mut c = singular.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn meta(v: &Value) -> Option<&Map<String, Value>> {
    v.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(v: &'a Value, f: &str) -> Option<&'a str> {
    meta(v).and_then(|m| m.get(f)).and_then(Value::as_str)
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    let obj = v.as_object_mut().expect("object");
    let m = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut().expect("metadata object")
}

fn finalizers(v: &Value) -> Vec<String> {
    meta(v)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn is_status_path(p: &str) -> bool {
    p == "/status" || p.starts_with("/status/")
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("unable to decode request body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    Ok(v)
}

fn details(rt: &ResourceType, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": rt.plural});
    if !rt.group.is_empty() {
        d["group"] = json!(rt.group);
    }
    d
}

fn not_found(rt: &ResourceType, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", rt.group_resource()),
    )
    .with_details(details(rt, name))
}

fn conflict_modified(rt: &ResourceType, name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            rt.group_resource()
        ),
    )
    .with_details(details(rt, name))
}

/// Optimistic-concurrency preconditions of a write: a non-empty `metadata.resourceVersion` in
/// the body (PUT), the patched result (PATCH) or the applied configuration (apply) must equal
/// the stored one, and likewise `metadata.uid`; otherwise 409 Conflict.
fn check_preconditions(
    current: &Value,
    incoming: &Value,
    rt: &ResourceType,
    name: &str,
) -> Result<(), ApiError> {
    if let Some(rv) = meta_str(incoming, "resourceVersion").filter(|r| !r.is_empty()) {
        if rv != meta_str(current, "resourceVersion").unwrap_or_default() {
            return Err(conflict_modified(rt, name));
        }
    }
    if let Some(uid) = meta_str(incoming, "uid").filter(|u| !u.is_empty()) {
        let have = meta_str(current, "uid").unwrap_or_default();
        if uid != have {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {have}",
                    rt.group_resource()
                ),
            )
            .with_details(details(rt, name)));
        }
    }
    Ok(())
}

/// Who is writing, for the field-ownership model.
enum Owner {
    /// A non-apply write (create/PUT/PATCH) by this field manager.
    Update(String),
    /// A server-side apply by this manager of these leaf paths.
    Apply {
        manager: String,
        paths: BTreeSet<String>,
        status_scope: bool,
    },
    /// A test hook write: changed fields lose their owners.
    Hook,
}

/// The whole server state, behind one mutex.
pub(crate) struct State {
    rv: u64,
    objects: BTreeMap<ObjKey, Stored>,
    history: VecDeque<HistoryEntry>,
    history_floor: u64,
    pub(crate) history_limit: usize,
    watchers: Vec<WatchSub>,
    kinds: HashMap<ResourceType, String>,
    pub(crate) requests: Vec<RequestRecord>,
    pub(crate) failures: Vec<FailRule>,
    pub(crate) unavailable: bool,
    pub(crate) status_overrides: HashMap<(String, String), bool>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_floor: 0,
            history_limit: DEFAULT_HISTORY_LIMIT,
            watchers: Vec::new(),
            kinds: HashMap::new(),
            requests: Vec::new(),
            failures: Vec::new(),
            unavailable: false,
            status_overrides: HashMap::new(),
        }
    }
}

impl State {
    /// Current global resourceVersion.
    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Number of open watch streams.
    pub(crate) fn active_watches(&mut self) -> usize {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.len()
    }

    /// Ends every open watch stream.
    pub(crate) fn close_watches(&mut self) {
        self.watchers.clear();
    }

    fn has_status(&self, rt: &ResourceType) -> bool {
        if let Some(b) = self
            .status_overrides
            .get(&(rt.group.clone(), rt.plural.clone()))
        {
            return *b;
        }
        !matches!(
            rt.group.as_str(),
            "" | "coordination.k8s.io" | "events.k8s.io"
        )
    }

    fn kind_for(&self, rt: &ResourceType) -> String {
        self.kinds
            .get(rt)
            .cloned()
            .unwrap_or_else(|| kind_guess(&rt.plural))
    }

    fn emit(&mut self, et: EvType, key: &ObjKey, obj: &Value, prev: Option<Value>) {
        let entry = HistoryEntry {
            rv: self.rv,
            key: key.clone(),
            et,
            obj: obj.clone(),
            prev,
        };
        self.watchers.retain(|w| match w.line_for(&entry) {
            Some(line) => w.tx.unbounded_send(line).is_ok(),
            None => !w.tx.is_closed(),
        });
        self.history.push_back(entry);
        while self.history.len() > self.history_limit.max(1) {
            if let Some(e) = self.history.pop_front() {
                self.history_floor = e.rv;
            }
        }
    }

    /// Drops old history so that only the last `limit` events can be resumed from.
    pub(crate) fn trim_history(&mut self) {
        while self.history.len() > self.history_limit.max(1) {
            if let Some(e) = self.history.pop_front() {
                self.history_floor = e.rv;
            }
        }
    }

    /// Test hook: the stored object.
    pub(crate) fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Option<Value> {
        let key = ObjKey {
            rt: rt.clone(),
            ns: ns.map(String::from),
            name: name.to_string(),
        };
        self.objects.get(&key).map(|s| s.value.clone())
    }

    /// Test hook: objects of a type, optionally in one namespace.
    pub(crate) fn list(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, _)| &k.rt == rt && (ns.is_none() || k.ns.as_deref() == ns))
            .map(|(_, s)| s.value.clone())
            .collect()
    }

    /// Test hook: create or overwrite an object directly (no preconditions, no subresource rules).
    pub(crate) fn put(&mut self, rt: &ResourceType, mut obj: Value) -> Result<Value, String> {
        if !obj.is_object() {
            return Err("object must be a JSON object".into());
        }
        let name = meta_str(&obj, "name")
            .ok_or("object must have metadata.name")?
            .to_string();
        let ns = meta_str(&obj, "namespace").map(String::from);
        let key = ObjKey {
            rt: rt.clone(),
            ns,
            name,
        };
        if obj.get("apiVersion").is_none() {
            obj["apiVersion"] = json!(rt.api_version());
        }
        match obj.get("kind").and_then(Value::as_str) {
            Some(k) => {
                self.kinds.insert(rt.clone(), k.to_string());
            }
            None => obj["kind"] = json!(self.kind_for(rt)),
        }
        normalize(&mut obj);
        self.rv += 1;
        let rv = self.rv;
        let old = self.objects.get(&key).map(|s| s.value.clone());
        {
            let m = meta_mut(&mut obj);
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            let old_meta = old.as_ref().and_then(meta);
            for f in ["uid", "creationTimestamp"] {
                if !m.contains_key(f) {
                    let v = old_meta
                        .and_then(|om| om.get(f).cloned())
                        .unwrap_or_else(|| json!(if f == "uid" { new_uid() } else { now_ts() }));
                    m.insert(f.into(), v);
                }
            }
        }
        if rt.tracks_generation() && meta(&obj).and_then(|m| m.get("generation")).is_none() {
            let gen = match &old {
                Some(o) => {
                    let g = meta(o)
                        .and_then(|m| m.get("generation"))
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    if self.spec_changed(rt, o, &obj) {
                        g + 1
                    } else {
                        g
                    }
                }
                None => 1,
            };
            meta_mut(&mut obj).insert("generation".into(), json!(gen));
        }
        match old {
            Some(old) => {
                let mut managers = self.objects[&key].managers.clone();
                update_ownership(&mut managers, &old, &obj, &Owner::Hook, false);
                if meta(&obj).is_some_and(|m| m.contains_key("deletionTimestamp"))
                    && finalizers(&obj).is_empty()
                {
                    self.objects.remove(&key);
                    self.emit(EvType::Deleted, &key, &obj, Some(old));
                } else {
                    self.objects.insert(
                        key.clone(),
                        Stored {
                            value: obj.clone(),
                            managers,
                        },
                    );
                    self.emit(EvType::Modified, &key, &obj, Some(old));
                }
            }
            None => {
                self.objects.insert(
                    key.clone(),
                    Stored {
                        value: obj.clone(),
                        managers: Managers::new(),
                    },
                );
                self.emit(EvType::Added, &key, &obj, None);
            }
        }
        Ok(obj)
    }

    /// Test hook: remove an object at once, ignoring finalizers.
    pub(crate) fn remove(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let key = ObjKey {
            rt: rt.clone(),
            ns: ns.map(String::from),
            name: name.to_string(),
        };
        let stored = self.objects.remove(&key)?;
        self.rv += 1;
        let mut obj = stored.value;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.emit(EvType::Deleted, &key, &obj, None);
        Some(obj)
    }

    fn spec_changed(&self, rt: &ResourceType, old: &Value, new: &Value) -> bool {
        let has_status = self.has_status(rt);
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                if has_status {
                    m.remove("status");
                }
            }
            v
        };
        strip(old) != strip(new)
    }

    /// Handles one API request.
    pub(crate) fn handle(&mut self, req: &Req<'_>) -> Reply {
        match self.dispatch(req) {
            Ok(r) => r,
            Err(e) => Reply::Json(e.code, e.to_json()),
        }
    }

    fn dispatch(&mut self, req: &Req<'_>) -> Result<Reply, ApiError> {
        let target = parse_path(req.path).ok_or_else(ApiError::not_found_path)?;
        if !matches!(target, Target::Resource(_)) && req.method != Method::GET {
            return Err(ApiError::from_code(405, "method not allowed"));
        }
        match target {
            Target::Version => Ok(Reply::Json(
                200,
                json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
                    "platform": "linux/amd64"
                }),
            )),
            Target::Api => Ok(Reply::Json(
                200,
                json!({"kind": "APIVersions", "apiVersion": "v1", "versions": ["v1"],
                       "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "fake-kube-api:443"}]}),
            )),
            Target::Apis => {
                let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for rt in self.known_types() {
                    if !rt.group.is_empty() {
                        groups
                            .entry(rt.group.clone())
                            .or_default()
                            .insert(rt.version.clone());
                    }
                }
                let groups: Vec<Value> = groups
                    .into_iter()
                    .map(|(g, vs)| {
                        let versions: Vec<Value> = vs
                            .iter()
                            .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                            .collect();
                        json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
                    })
                    .collect();
                Ok(Reply::Json(
                    200,
                    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                ))
            }
            Target::GroupVersion(g, v) => {
                let gv = if g.is_empty() {
                    v.clone()
                } else {
                    format!("{g}/{v}")
                };
                let resources: Vec<Value> = self
                    .known_types()
                    .into_iter()
                    .filter(|rt| rt.group == g && rt.version == v)
                    .map(|rt| {
                        let namespaced = self.objects.keys().any(|k| k.rt == rt && k.ns.is_some());
                        json!({"name": rt.plural, "singularName": "", "namespaced": namespaced,
                               "kind": self.kind_for(&rt),
                               "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]})
                    })
                    .collect();
                Ok(Reply::Json(
                    200,
                    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
                ))
            }
            Target::Resource(route) => self.resource(&route, req),
        }
    }

    fn known_types(&self) -> BTreeSet<ResourceType> {
        self.kinds
            .keys()
            .cloned()
            .chain(self.objects.keys().map(|k| k.rt.clone()))
            .collect()
    }

    fn resource(&mut self, route: &Route, req: &Req<'_>) -> Result<Reply, ApiError> {
        let status_scope = match route.sub.as_deref() {
            None => false,
            Some("status") if self.has_status(&route.rt) => true,
            Some(_) => return Err(ApiError::not_found_path()),
        };
        let ns = route.ns.as_deref();
        match (req.method, route.name.as_deref()) {
            (&Method::GET, None) if req.query.flag("watch") => self.watch(route, None, req),
            (&Method::GET, Some(name)) if req.query.flag("watch") => {
                self.watch(route, Some(name), req)
            }
            (&Method::GET, None) => self.list_req(route, req),
            (&Method::GET, Some(name)) => {
                let key = self.key(&route.rt, ns, name);
                let obj = self
                    .objects
                    .get(&key)
                    .ok_or_else(|| not_found(&route.rt, name))?;
                Ok(Reply::Json(200, present(&obj.value, req.partial())))
            }
            (&Method::POST, None) => {
                let body = parse_object(req.body)?;
                let obj = self.insert_new(
                    &route.rt,
                    ns,
                    body,
                    req.query.dry_run(),
                    Owner::Update(req.manager()),
                )?;
                Ok(Reply::Json(201, obj))
            }
            (&Method::PUT, Some(name)) => self.replace(route, name, status_scope, req),
            (&Method::PATCH, Some(name)) => self.patch(route, name, status_scope, req),
            (&Method::DELETE, Some(name)) => {
                let opts = if req.body.is_empty() {
                    json!({})
                } else {
                    serde_json::from_slice(req.body).map_err(|e| {
                        ApiError::bad_request(format!("unable to decode DeleteOptions: {e}"))
                    })?
                };
                let key = self.key(&route.rt, ns, name);
                let (code, obj) = self.delete(&key, &opts, req.query.dry_run())?;
                Ok(Reply::Json(code, obj))
            }
            (&Method::DELETE, None) => self.delete_collection(route, req),
            _ => Err(ApiError::from_code(
                405,
                "the server does not allow this method on the requested resource",
            )),
        }
    }

    fn key(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> ObjKey {
        ObjKey {
            rt: rt.clone(),
            ns: ns.map(String::from),
            name: name.to_string(),
        }
    }

    fn filter(req: &Req<'_>, name: Option<&str>) -> Result<Filter, ApiError> {
        let mut fields = req.query.get("fieldSelector").map(String::from);
        if let Some(n) = name {
            let extra = format!("metadata.name={n}");
            fields = Some(match fields {
                Some(f) if !f.is_empty() => format!("{f},{extra}"),
                _ => extra,
            });
        }
        Filter::parse(req.query.get("labelSelector"), fields.as_deref())
            .map_err(ApiError::bad_request)
    }

    fn matching<'s>(
        &'s self,
        rt: &'s ResourceType,
        ns: Option<&'s str>,
        filter: &'s Filter,
    ) -> impl Iterator<Item = (&'s ObjKey, &'s Stored)> + 's {
        self.objects.iter().filter(move |(k, s)| {
            &k.rt == rt && (ns.is_none() || k.ns.as_deref() == ns) && filter.matches(&s.value)
        })
    }

    fn list_req(&mut self, route: &Route, req: &Req<'_>) -> Result<Reply, ApiError> {
        let filter = Self::filter(req, None)?;
        let partial = req.partial();
        let limit: usize = req
            .query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let after = req
            .query
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.split_once('/')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| ApiError::bad_request("invalid continue token"))
            })
            .transpose()?;
        let mut items = Vec::new();
        let mut next = None;
        for (k, s) in self.matching(&route.rt, route.ns.as_deref(), &filter) {
            let pos = (k.ns.clone().unwrap_or_default(), k.name.clone());
            if after.as_ref().is_some_and(|a| &pos <= a) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                next = Some(format!("{}/{}", pos.0, pos.1));
                break;
            }
            items.push((pos, present(&s.value, partial)));
        }
        let mut list_meta = json!({"resourceVersion": self.rv.to_string()});
        if next.is_some() {
            if let Some(((ns, name), _)) = items.last() {
                list_meta["continue"] = json!(format!("{ns}/{name}"));
            }
        }
        let items: Vec<Value> = items.into_iter().map(|(_, v)| v).collect();
        let (api_version, kind) = if partial {
            (
                "meta.k8s.io/v1".to_string(),
                "PartialObjectMetadataList".to_string(),
            )
        } else {
            (
                route.rt.api_version(),
                format!("{}List", self.kind_for(&route.rt)),
            )
        };
        Ok(Reply::Json(
            200,
            json!({"apiVersion": api_version, "kind": kind, "metadata": list_meta, "items": items}),
        ))
    }

    fn watch(
        &mut self,
        route: &Route,
        name: Option<&str>,
        req: &Req<'_>,
    ) -> Result<Reply, ApiError> {
        let filter = Self::filter(req, name)?;
        let timeout = req
            .query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| *t > 0)
            .map(Duration::from_secs);
        let (tx, rx) = unbounded();
        let sub = WatchSub {
            rt: route.rt.clone(),
            ns: route.ns.clone(),
            filter,
            partial: req.partial(),
            tx,
        };
        let rv_param = req.query.get("resourceVersion").filter(|r| !r.is_empty());
        let send_initial = req.query.flag("sendInitialEvents");
        if send_initial || rv_param.is_none() || rv_param == Some("0") {
            for (_, s) in self.matching(&sub.rt, sub.ns.as_deref(), &sub.filter) {
                let _ = sub
                    .tx
                    .unbounded_send(event_line("ADDED", &present(&s.value, sub.partial)));
            }
            if send_initial {
                let bookmark = json!({
                    "apiVersion": route.rt.api_version(),
                    "kind": self.kind_for(&route.rt),
                    "metadata": {
                        "resourceVersion": self.rv.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                });
                let _ = sub.tx.unbounded_send(event_line("BOOKMARK", &bookmark));
            }
        } else {
            let n: u64 = rv_param.unwrap_or_default().parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "resourceVersion: Invalid value: {:?}: invalid resource version",
                    rv_param.unwrap_or_default()
                ))
            })?;
            if n < self.history_floor {
                let status = ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {n} ({})", self.history_floor + 1),
                )
                .to_json();
                let _ = sub.tx.unbounded_send(event_line("ERROR", &status));
                return Ok(Reply::Watch(rx, timeout));
            }
            for e in self.history.iter().filter(|e| e.rv > n) {
                if let Some(line) = sub.line_for(e) {
                    let _ = sub.tx.unbounded_send(line);
                }
            }
        }
        self.watchers.push(sub);
        Ok(Reply::Watch(rx, timeout))
    }

    /// Creates a new object (POST, PUT-create on Leases/Events, server-side apply create).
    fn insert_new(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        dry: bool,
        owner: Owner,
    ) -> Result<Value, ApiError> {
        if obj.get("apiVersion").is_none() {
            obj["apiVersion"] = json!(rt.api_version());
        }
        match obj.get("kind").and_then(Value::as_str) {
            Some(k) => {
                self.kinds.insert(rt.clone(), k.to_string());
            }
            None => obj["kind"] = json!(self.kind_for(rt)),
        }
        let m = meta_mut(&mut obj);
        match (ns, m.get("namespace").and_then(Value::as_str)) {
            (Some(url_ns), Some(body_ns)) if url_ns != body_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (Some(url_ns), _) => {
                m.insert("namespace".into(), json!(url_ns));
            }
            (None, _) => {
                m.remove("namespace");
            }
        }
        let name = match (
            m.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()),
            m.get("generateName").and_then(Value::as_str),
        ) {
            (Some(n), _) => n.to_string(),
            (None, Some(g)) => format!("{g}{}", random_suffix()),
            (None, None) => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        self.kind_for(rt)
                    ),
                ))
            }
        };
        m.insert("name".into(), json!(name));
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            m.remove(f);
        }
        let key = self.key(rt, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", rt.group_resource()),
            )
            .with_details(details(rt, &name)));
        }
        if self.has_status(rt) {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        normalize(&mut obj);
        let rv = if dry { self.rv } else { self.rv + 1 };
        let m = meta_mut(&mut obj);
        m.insert("uid".into(), json!(new_uid()));
        m.insert("resourceVersion".into(), json!(rv.to_string()));
        m.insert("creationTimestamp".into(), json!(now_ts()));
        if rt.tracks_generation() {
            m.insert("generation".into(), json!(1));
        }
        if dry {
            return Ok(obj);
        }
        self.rv = rv;
        let mut managers = Managers::new();
        match owner {
            Owner::Update(mgr) => {
                managers.insert(mgr, leaves(&obj).into_keys().collect());
            }
            Owner::Apply { manager, paths, .. } => {
                managers.insert(manager, paths);
            }
            Owner::Hook => {}
        }
        managers.retain(|_, s| !s.is_empty());
        self.objects.insert(
            key.clone(),
            Stored {
                value: obj.clone(),
                managers,
            },
        );
        self.emit(EvType::Added, &key, &obj, None);
        Ok(obj)
    }

    /// Writes `candidate` over an existing object, applying the status-subresource rules,
    /// system-metadata preservation, generation and resourceVersion bumps, no-op detection and
    /// finalizer-completed deletion. Preconditions are checked by the callers.
    fn write(
        &mut self,
        key: &ObjKey,
        candidate: Value,
        status_scope: bool,
        owner: Owner,
        dry: bool,
    ) -> Result<(u16, Value), ApiError> {
        let stored = self
            .objects
            .get(key)
            .ok_or_else(|| not_found(&key.rt, &key.name))?;
        let old = stored.value.clone();
        let has_status = self.has_status(&key.rt);
        let mut new = if status_scope {
            let mut n = old.clone();
            match candidate.get("status").filter(|s| !s.is_null()) {
                Some(s) => n["status"] = s.clone(),
                None => {
                    n.as_object_mut().map(|o| o.remove("status"));
                }
            }
            n
        } else {
            let mut n = candidate;
            if !n.is_object() {
                return Err(ApiError::bad_request("object must be a JSON object"));
            }
            n["apiVersion"] = old["apiVersion"].clone();
            n["kind"] = old["kind"].clone();
            let old_meta = meta(&old).cloned().unwrap_or_default();
            let m = meta_mut(&mut n);
            for f in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
                "selfLink",
            ] {
                match old_meta.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            if has_status {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        n.as_object_mut().map(|o| o.remove("status"));
                    }
                }
            }
            n
        };
        normalize(&mut new);
        let deleting = meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp"));
        if deleting {
            let before = finalizers(&old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} \"{}\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                        self.kind_for(&key.rt),
                        key.name
                    ),
                ));
            }
        }
        let mut managers = stored.managers.clone();
        update_ownership(&mut managers, &old, &new, &owner, has_status);
        if new == old {
            if !dry {
                if let Some(s) = self.objects.get_mut(key) {
                    s.managers = managers;
                }
            }
            return Ok((200, old));
        }
        if key.rt.tracks_generation() && self.spec_changed(&key.rt, &old, &new) {
            let g = meta(&old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if dry {
            return Ok((200, new));
        }
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
        if deleting && finalizers(&new).is_empty() {
            self.objects.remove(key);
            self.emit(EvType::Deleted, key, &new, Some(old));
        } else {
            self.objects.insert(
                key.clone(),
                Stored {
                    value: new.clone(),
                    managers,
                },
            );
            self.emit(EvType::Modified, key, &new, Some(old));
        }
        Ok((200, new))
    }

    fn replace(
        &mut self,
        route: &Route,
        name: &str,
        status_scope: bool,
        req: &Req<'_>,
    ) -> Result<Reply, ApiError> {
        let body = parse_object(req.body)?;
        if let Some(n) = meta_str(&body, "name").filter(|n| !n.is_empty()) {
            if n != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        if let (Some(url_ns), Some(body_ns)) = (route.ns.as_deref(), meta_str(&body, "namespace")) {
            if url_ns != body_ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let key = self.key(&route.rt, route.ns.as_deref(), name);
        let Some(stored) = self.objects.get(&key) else {
            if route.rt.allow_create_on_update() && !status_scope {
                let mut body = body;
                meta_mut(&mut body).insert("name".into(), json!(name));
                let obj = self.insert_new(
                    &route.rt,
                    route.ns.as_deref(),
                    body,
                    req.query.dry_run(),
                    Owner::Update(req.manager()),
                )?;
                return Ok(Reply::Json(201, obj));
            }
            return Err(not_found(&route.rt, name));
        };
        check_preconditions(&stored.value, &body, &route.rt, name)?;
        let (code, obj) = self.write(
            &key,
            body,
            status_scope,
            Owner::Update(req.manager()),
            req.query.dry_run(),
        )?;
        Ok(Reply::Json(code, obj))
    }

    fn patch(
        &mut self,
        route: &Route,
        name: &str,
        status_scope: bool,
        req: &Req<'_>,
    ) -> Result<Reply, ApiError> {
        let ct = req
            .content_type
            .as_deref()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let dry = req.query.dry_run();
        let key = self.key(&route.rt, route.ns.as_deref(), name);
        if ct == "application/apply-patch+yaml" {
            return self.apply(route, &key, status_scope, req);
        }
        let stored = self
            .objects
            .get(&key)
            .ok_or_else(|| not_found(&route.rt, name))?;
        let old = &stored.value;
        let result = match ct.as_str() {
            "application/json-patch+json" => {
                let ops: json_patch::Patch = serde_json::from_slice(req.body)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                apply_json_patch(old, &ops).map_err(|e| ApiError::new(422, "Invalid", e))?
            }
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                let p: Value = serde_json::from_slice(req.body)
                    .map_err(|e| ApiError::bad_request(format!("invalid merge patch: {e}")))?;
                if !p.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                let mut r = old.clone();
                json_patch::merge(&mut r, &p);
                r
            }
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"),
                ))
            }
        };
        check_preconditions(old, &result, &route.rt, name)?;
        let (code, obj) = self.write(
            &key,
            result,
            status_scope,
            Owner::Update(req.manager()),
            dry,
        )?;
        Ok(Reply::Json(code, obj))
    }

    /// Server-side apply. See the crate docs for the simplifications.
    fn apply(
        &mut self,
        route: &Route,
        key: &ObjKey,
        status_scope: bool,
        req: &Req<'_>,
    ) -> Result<Reply, ApiError> {
        let Some(manager) = req.query.get("fieldManager").filter(|m| !m.is_empty()) else {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        };
        let manager = manager.to_string();
        let force = req.query.flag("force");
        let dry = req.query.dry_run();
        let applied = parse_object(req.body)?;
        let has_status = self.has_status(&route.rt);
        let in_scope = |p: &str| !has_status || is_status_path(p) == status_scope;
        let applied_leaves: BTreeMap<String, Value> = leaves(&applied)
            .into_iter()
            .filter(|(p, _)| in_scope(p))
            .collect();
        let paths: BTreeSet<String> = applied_leaves.keys().cloned().collect();
        let Some(stored) = self.objects.get(key) else {
            if status_scope {
                return Err(not_found(&route.rt, &key.name));
            }
            let mut body = applied;
            meta_mut(&mut body).insert("name".into(), json!(key.name));
            let obj = self.insert_new(
                &route.rt,
                route.ns.as_deref(),
                body,
                dry,
                Owner::Apply {
                    manager,
                    paths,
                    status_scope,
                },
            )?;
            return Ok(Reply::Json(201, obj));
        };
        let old = &stored.value;
        check_preconditions(old, &applied, &route.rt, &key.name)?;
        if !force {
            let mut conflicts = Vec::new();
            for (p, v) in &applied_leaves {
                if old.pointer(p) == Some(v) {
                    continue;
                }
                for (m, owned) in &stored.managers {
                    if m != &manager && owned.iter().any(|q| related(p, q)) {
                        conflicts.push(format!("conflict with \"{m}\": {}", dotted(p)));
                    }
                }
            }
            if !conflicts.is_empty() {
                let n = conflicts.len();
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Apply failed with {n} conflict{}: {}",
                        if n == 1 { "" } else { "s" },
                        conflicts.join(", ")
                    ),
                )
                .with_details(details(&route.rt, &key.name)));
            }
        }
        let candidate = if status_scope {
            // The whole `.status` is replaced by the applied one.
            applied
        } else {
            let mut patch = applied;
            if let Some(o) = patch.as_object_mut() {
                o.remove("apiVersion");
                o.remove("kind");
                if has_status {
                    o.remove("status");
                }
                if let Some(Value::Object(m)) = o.get_mut("metadata") {
                    m.retain(|k, _| {
                        matches!(
                            k.as_str(),
                            "labels" | "annotations" | "finalizers" | "ownerReferences"
                        )
                    });
                }
            }
            let mut c = old.clone();
            json_patch::merge(&mut c, &patch);
            // Fields this manager applied before but no longer applies are removed,
            // unless another manager also owns them.
            if let Some(prev) = stored.managers.get(&manager) {
                for q in prev.iter().filter(|q| in_scope(q)) {
                    let still_applied = paths.iter().any(|p| related(p, q));
                    let owned_by_other = stored
                        .managers
                        .iter()
                        .any(|(m, s)| m != &manager && s.iter().any(|o| related(o, q)));
                    if !still_applied && !owned_by_other {
                        remove_path(&mut c, q);
                    }
                }
            }
            c
        };
        let (code, obj) = self.write(
            key,
            candidate,
            status_scope,
            Owner::Apply {
                manager,
                paths,
                status_scope,
            },
            dry,
        )?;
        Ok(Reply::Json(code, obj))
    }

    fn delete(&mut self, key: &ObjKey, opts: &Value, dry: bool) -> Result<(u16, Value), ApiError> {
        let dry = dry
            || opts
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v == "All"));
        let stored = self
            .objects
            .get(key)
            .ok_or_else(|| not_found(&key.rt, &key.name))?;
        let obj = stored.value.clone();
        if let Some(pre) = opts.get("preconditions") {
            for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
                if let Some(want) = pre.get(field).and_then(Value::as_str) {
                    let have = meta_str(&obj, field).unwrap_or_default();
                    if want != have {
                        return Err(ApiError::new(
                            409,
                            "Conflict",
                            format!(
                                "Operation cannot be fulfilled on {} \"{}\": Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}",
                                key.rt.group_resource(),
                                key.name
                            ),
                        )
                        .with_details(details(&key.rt, &key.name)));
                    }
                }
            }
        }
        if !finalizers(&obj).is_empty() {
            if meta(&obj).is_some_and(|m| m.contains_key("deletionTimestamp")) {
                return Ok((200, obj));
            }
            let mut new = obj.clone();
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(now_ts()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if let Some(g) = m
                .get("generation")
                .and_then(Value::as_i64)
                .filter(|g| *g > 0)
            {
                m.insert("generation".into(), json!(g + 1));
            }
            if dry {
                return Ok((200, new));
            }
            self.rv += 1;
            meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
            if let Some(s) = self.objects.get_mut(key) {
                s.value = new.clone();
            }
            self.emit(EvType::Modified, key, &new, Some(obj));
            return Ok((200, new));
        }
        let mut gone = obj;
        if !dry {
            self.rv += 1;
            meta_mut(&mut gone).insert("resourceVersion".into(), json!(self.rv.to_string()));
            self.objects.remove(key);
            self.emit(EvType::Deleted, key, &gone, None);
        }
        if key.rt.delete_returns_object() {
            Ok((200, gone))
        } else {
            let mut d = details(&key.rt, &key.name);
            d["uid"] = json!(meta_str(&gone, "uid").unwrap_or_default());
            Ok((
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d}),
            ))
        }
    }

    fn delete_collection(&mut self, route: &Route, req: &Req<'_>) -> Result<Reply, ApiError> {
        let filter = Self::filter(req, None)?;
        let opts = if req.body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(req.body).unwrap_or_else(|_| json!({}))
        };
        let keys: Vec<ObjKey> = self
            .matching(&route.rt, route.ns.as_deref(), &filter)
            .map(|(k, _)| k.clone())
            .collect();
        let mut items = Vec::new();
        for k in keys {
            let before = self.objects.get(&k).map(|s| s.value.clone());
            if self.delete(&k, &opts, req.query.dry_run()).is_ok() {
                items.extend(self.objects.get(&k).map(|s| s.value.clone()).or(before));
            }
        }
        Ok(Reply::Json(
            200,
            json!({"apiVersion": route.rt.api_version(), "kind": format!("{}List", self.kind_for(&route.rt)),
                   "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
        ))
    }
}

/// Updates field ownership for a write from `old` to `new`.
fn update_ownership(
    managers: &mut Managers,
    old: &Value,
    new: &Value,
    owner: &Owner,
    has_status: bool,
) {
    let changed = changed_paths(old, new);
    let me = match owner {
        Owner::Update(m) => Some(m.as_str()),
        Owner::Apply { manager, .. } => Some(manager.as_str()),
        Owner::Hook => None,
    };
    for (m, set) in managers.iter_mut() {
        if Some(m.as_str()) != me {
            set.retain(|q| !changed.iter().any(|p| related(p, q)));
        }
    }
    match owner {
        Owner::Update(m) => {
            let now = leaves(new);
            let e = managers.entry(m.clone()).or_default();
            e.retain(|q| !changed.iter().any(|p| related(p, q)));
            e.extend(changed.into_iter().filter(|p| now.contains_key(p)));
        }
        Owner::Apply {
            manager,
            paths,
            status_scope,
        } => {
            let e = managers.entry(manager.clone()).or_default();
            e.retain(|q| has_status && is_status_path(q) != *status_scope);
            e.extend(paths.iter().cloned());
        }
        Owner::Hook => {}
    }
    managers.retain(|_, s| !s.is_empty());
}
