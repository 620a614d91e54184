//! End-to-end tests: typed kube `Api`s and kube-runtime helpers against the fake server.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fake_kube_api::FakeApiServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::{controller::Action, watcher, Controller, WatchStreamExt};
use kube::{CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "example.com",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
pub struct WidgetSpec {
    size: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WidgetStatus {
    phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed: Option<i64>,
}

/// Runs a test body with an overall deadline so that nothing can hang CI.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test timed out");
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn widget(name: &str, size: i32) -> Widget {
    Widget::new(name, WidgetSpec { size })
}

fn api_code(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn configmap_crud_and_conflicts() {
    bounded(async {
        let server = FakeApiServer::new();
        let api: Api<ConfigMap> = Api::default_namespaced(server.client());
        let pp = PostParams::default();

        let created = api.create(&pp, &cm("a", &[("k", "v")])).await.unwrap();
        let meta = &created.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
        let rv1: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();
        assert_eq!(meta.generation, None, "core resources have no generation");

        let (code, reason) = api_code(api.create(&pp, &cm("a", &[])).await.unwrap_err());
        assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

        let got = api.get("a").await.unwrap();
        assert_eq!(got.data.unwrap()["k"], "v");
        assert!(api.get_opt("missing").await.unwrap().is_none());
        let (code, reason) = api_code(api.get("missing").await.unwrap_err());
        assert_eq!((code, reason.as_str()), (404, "NotFound"));

        // replace with the current resourceVersion works and bumps it
        let mut cur = api.get("a").await.unwrap();
        cur.data = Some(BTreeMap::from([("k".into(), "v2".into())]));
        let replaced = api.replace("a", &pp, &cur).await.unwrap();
        let rv2: u64 = replaced.resource_version().unwrap().parse().unwrap();
        assert!(rv2 > rv1);
        // replace with the stale resourceVersion → 409 Conflict
        let (code, reason) = api_code(api.replace("a", &pp, &cur).await.unwrap_err());
        assert_eq!((code, reason.as_str()), (409, "Conflict"));
        // replace without resourceVersion is unconditional
        cur.metadata.resource_version = None;
        cur.data = Some(BTreeMap::from([("k".into(), "v3".into())]));
        api.replace("a", &pp, &cur).await.unwrap();

        // a merge patch carrying a stale resourceVersion → 409; the current one → ok
        let stale = json!({"metadata": {"resourceVersion": rv1.to_string()}, "data": {"x": "1"}});
        let (code, _) = api_code(
            api.patch("a", &PatchParams::default(), &Patch::Merge(&stale))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 409);
        let current = api.get("a").await.unwrap().resource_version().unwrap();
        let fresh = json!({"metadata": {"resourceVersion": current}, "data": {"x": "1"}});
        let patched = api
            .patch("a", &PatchParams::default(), &Patch::Merge(&fresh))
            .await
            .unwrap();
        assert_eq!(patched.data.unwrap()["x"], "1");

        // a no-op patch does not bump the resourceVersion
        let before = server.resource_version();
        let same = api
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"x": "1"}})),
            )
            .await
            .unwrap();
        assert_eq!(server.resource_version(), before);
        assert_eq!(
            same.resource_version(),
            api.get("a").await.unwrap().resource_version()
        );

        // list and delete
        api.create(&pp, &cm("b", &[])).await.unwrap();
        let list = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(
            list.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(
            list.metadata.resource_version,
            Some(server.resource_version().to_string())
        );
        api.delete("a", &DeleteParams::default()).await.unwrap();
        assert!(api.get_opt("a").await.unwrap().is_none());
        assert!(server
            .get("v1", "configmaps", Some("default"), "a")
            .is_none());
        let (code, _) = api_code(api.delete("a", &DeleteParams::default()).await.unwrap_err());
        assert_eq!(code, 404);
        // delete precondition
        let b = api.get("b").await.unwrap();
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version: Some("1".into()),
                uid: None,
            }),
            ..Default::default()
        };
        let (code, _) = api_code(api.delete("b", &dp).await.unwrap_err());
        assert_eq!(code, 409);
        assert!(api.get_opt("b").await.unwrap().is_some());
        let _ = b;
    })
    .await;
}

#[tokio::test]
async fn namespaces_selectors_paging_and_generate_name() {
    bounded(async {
        let server = FakeApiServer::new();
        let client = server.client();
        let pp = PostParams::default();
        for (ns, name, app) in [("n1", "a", "web"), ("n1", "b", "db"), ("n2", "c", "web")] {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let mut c = cm(name, &[]);
            c.metadata.labels = Some(BTreeMap::from([("app".into(), app.into())]));
            api.create(&pp, &c).await.unwrap();
        }
        let all: Api<ConfigMap> = Api::all(client.clone());
        let names = |l: kube::core::ObjectList<ConfigMap>| {
            l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
        };
        assert_eq!(
            names(all.list(&ListParams::default()).await.unwrap()),
            ["a", "b", "c"]
        );
        let web = ListParams::default().labels("app=web");
        assert_eq!(names(all.list(&web).await.unwrap()), ["a", "c"]);
        let not_web = ListParams::default().labels("app notin (web)");
        assert_eq!(names(all.list(&not_web).await.unwrap()), ["b"]);
        let by_ns = ListParams::default().fields("metadata.namespace=n2");
        assert_eq!(names(all.list(&by_ns).await.unwrap()), ["c"]);
        let n1: Api<ConfigMap> = Api::namespaced(client.clone(), "n1");
        let by_name = ListParams::default().fields("metadata.name=b");
        assert_eq!(names(n1.list(&by_name).await.unwrap()), ["b"]);

        // paging
        let page1 = all.list(&ListParams::default().limit(2)).await.unwrap();
        assert_eq!(names(page1.clone()), ["a", "b"]);
        let token = page1.metadata.continue_.clone().expect("continue token");
        let page2 = all
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(names(page2.clone()), ["c"]);
        assert!(page2.metadata.continue_.is_none());

        // generateName
        let mut g = ConfigMap::default();
        g.metadata.generate_name = Some("gen-".into());
        let created = n1.create(&pp, &g).await.unwrap();
        let name = created.name_any();
        assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

        // cluster-scoped: namespaces
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let mut ns = k8s_openapi::api::core::v1::Namespace::default();
        ns.metadata.name = Some("team-a".into());
        nss.create(&pp, &ns).await.unwrap();
        assert_eq!(nss.get("team-a").await.unwrap().metadata.namespace, None);
        assert!(server.get("v1", "namespaces", None, "team-a").is_some());
        // discovery
        let version = client.apiserver_version().await.unwrap();
        assert_eq!(version.major, "1");
    })
    .await;
}

#[tokio::test]
async fn status_subresource_generation_and_patches() {
    bounded(async {
        let server = FakeApiServer::new();
        let api: Api<Widget> = Api::default_namespaced(server.client());
        let pp = PostParams::default();
        let mut w = widget("w", 1);
        w.status = Some(WidgetStatus {
            phase: "ignored".into(),
            observed: None,
        });
        let created = api.create(&pp, &w).await.unwrap();
        assert_eq!(created.metadata.generation, Some(1));
        assert_eq!(created.status, None, "status is dropped on create");

        // status write: changes only .status, no generation bump
        let status = json!({"status": {"phase": "Running"}, "spec": {"size": 99}});
        let s = api
            .patch_status("w", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        assert_eq!(s.status.as_ref().unwrap().phase, "Running");
        assert_eq!(s.spec.size, 1, "spec is ignored on /status");
        assert_eq!(s.metadata.generation, Some(1));

        // main write: .status unchanged, spec change bumps generation
        let main = json!({"spec": {"size": 2}, "status": {"phase": "Hacked"}});
        let m = api
            .patch("w", &PatchParams::default(), &Patch::Merge(&main))
            .await
            .unwrap();
        assert_eq!(m.spec.size, 2);
        assert_eq!(m.status.as_ref().unwrap().phase, "Running");
        assert_eq!(m.metadata.generation, Some(2));

        // metadata-only change: no generation bump, but a new resourceVersion
        let rv_before = m.resource_version().unwrap();
        let labels = json!({"metadata": {"labels": {"x": "y"}}});
        let l = api
            .patch("w", &PatchParams::default(), &Patch::Merge(&labels))
            .await
            .unwrap();
        assert_eq!(l.metadata.generation, Some(2));
        assert_ne!(l.resource_version().unwrap(), rv_before);

        // JSON patch on the main resource; failing test op → 422 Invalid
        let jp: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/spec/size", "value": 2},
            {"op": "replace", "path": "/spec/size", "value": 3}
        ]))
        .unwrap();
        let j = api
            .patch("w", &PatchParams::default(), &Patch::<()>::Json(jp.clone()))
            .await
            .unwrap();
        assert_eq!((j.spec.size, j.metadata.generation), (3, Some(3)));
        let (code, reason) = api_code(
            api.patch("w", &PatchParams::default(), &Patch::<()>::Json(jp))
                .await
                .unwrap_err(),
        );
        assert_eq!((code, reason.as_str()), (422, "Invalid"));

        // replace_status with a stale resourceVersion → 409
        let mut stale = created.clone();
        stale.status = Some(WidgetStatus {
            phase: "Stale".into(),
            observed: None,
        });
        let (code, _) = api_code(api.replace_status("w", &pp, &stale).await.unwrap_err());
        assert_eq!(code, 409);

        // server-side apply of status replaces the whole status
        let ssa = PatchParams::apply("op").force();
        let applied = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                             "status": {"phase": "Done", "observed": 3}});
        let a = api
            .patch_status("w", &ssa, &Patch::Apply(&applied))
            .await
            .unwrap();
        assert_eq!(
            a.status,
            Some(WidgetStatus {
                phase: "Done".into(),
                observed: Some(3)
            })
        );
        assert_eq!((a.spec.size, a.metadata.generation), (3, Some(3)));
        let applied =
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"phase": "Again"}});
        let a = api
            .patch_status("w", &ssa, &Patch::Apply(&applied))
            .await
            .unwrap();
        assert_eq!(
            a.status.as_ref().unwrap().observed,
            None,
            "whole status replaced"
        );

        // SSA carrying a stale resourceVersion → 409 (optimistic lock guard)
        let guarded = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                             "metadata": {"resourceVersion": created.resource_version()},
                             "status": {"phase": "Guarded"}});
        let (code, _) = api_code(
            api.patch_status("w", &ssa, &Patch::Apply(&guarded))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 409);
        assert_eq!(
            api.get_status("w").await.unwrap().status.unwrap().phase,
            "Again"
        );

        // SSA on the main resource: merge semantics, status untouched
        // (spec.size was last written by a merge/JSON patch from another field manager, so a
        // non-forced apply of a different value conflicts, like on a real server)
        let spec = json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"size": 7}});
        let (code, _) = api_code(
            api.patch("w", &PatchParams::apply("op"), &Patch::Apply(&spec))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 409);
        let a = api
            .patch("w", &PatchParams::apply("op").force(), &Patch::Apply(&spec))
            .await
            .unwrap();
        assert_eq!((a.spec.size, a.metadata.generation), (7, Some(4)));
        assert_eq!(a.status.as_ref().unwrap().phase, "Again");
        assert_eq!(a.labels().get("x").map(String::as_str), Some("y"));

        // SSA creates missing objects
        let new = json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"size": 1}});
        let created = api
            .patch("fresh", &PatchParams::apply("op"), &Patch::Apply(&new))
            .await
            .unwrap();
        assert_eq!(created.metadata.generation, Some(1));
        // ...but not via /status
        let (code, _) = api_code(
            api.patch_status("nope", &ssa, &Patch::Apply(&applied))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 404);

        // the stored object as seen by the test hook
        let raw = server
            .get("example.com/v1", "widgets", Some("default"), "w")
            .unwrap();
        assert_eq!(raw["status"]["phase"], "Again");
        assert_eq!(raw["kind"], "Widget");
    })
    .await;
}

#[tokio::test]
async fn server_side_apply_conflicts_and_field_manager() {
    bounded(async {
        let server = FakeApiServer::new();
        let client = server.client();
        let api: Api<Lease> = Api::default_namespaced(client.clone());
        let lease = |holder: &str| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10}})
        };
        api.create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some("l".into()),
                    ..Default::default()
                },
                spec: Default::default(),
            },
        )
        .await
        .unwrap();
        api.patch("l", &PatchParams::apply("a"), &Patch::Apply(lease("a")))
            .await
            .unwrap();
        // another manager setting a different value → conflict
        let err = api
            .patch("l", &PatchParams::apply("b"), &Patch::Apply(lease("b")))
            .await
            .unwrap_err();
        let kube::Error::Api(status) = err else {
            panic!("expected API error")
        };
        assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
        assert!(
            status.message.contains(".spec.holderIdentity"),
            "{}",
            status.message
        );
        // same values are shared, not conflicting
        api.patch("l", &PatchParams::apply("c"), &Patch::Apply(lease("a")))
            .await
            .unwrap();
        // force takes over
        let l = api
            .patch(
                "l",
                &PatchParams::apply("b").force(),
                &Patch::Apply(lease("b")),
            )
            .await
            .unwrap();
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("b"));
        // after an update removes the field, nobody owns it any more
        let release = json!({"spec": {"holderIdentity": null}});
        api.patch("l", &PatchParams::default(), &Patch::Strategic(&release))
            .await
            .unwrap();
        api.patch("l", &PatchParams::apply("a"), &Patch::Apply(lease("a")))
            .await
            .unwrap();
        // a manager dropping a field from its apply removes it, unless others co-own it
        let fewer = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "spec": {"holderIdentity": "a"}});
        let l = api
            .patch("l", &PatchParams::apply("a"), &Patch::Apply(&fewer))
            .await
            .unwrap();
        assert_eq!(
            l.spec.unwrap().lease_duration_seconds,
            Some(10),
            "co-owned by b and c"
        );
        api.patch("solo", &PatchParams::apply("a"), &Patch::Apply(lease("a")))
            .await
            .unwrap();
        let l = api
            .patch("solo", &PatchParams::apply("a"), &Patch::Apply(&fewer))
            .await
            .unwrap();
        assert_eq!(l.spec.unwrap().lease_duration_seconds, None);

        // apply without fieldManager → 400 (kube refuses client-side, so send it raw)
        let req = http::Request::patch("/apis/coordination.k8s.io/v1/namespaces/default/leases/l")
            .header("content-type", "application/apply-patch+yaml")
            .body(serde_json::to_vec(&lease("z")).unwrap())
            .unwrap();
        let (code, reason) = api_code(client.request::<Value>(req).await.unwrap_err());
        assert_eq!((code, reason.as_str()), (400, "BadRequest"));
        let rec = server.requests();
        let last = rec.last().unwrap();
        assert_eq!(last.status, 400);
        assert_eq!(
            last.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        assert!(rec
            .iter()
            .any(|r| r.query.contains("fieldManager=b") && r.query.contains("force=true")));
    })
    .await;
}

#[tokio::test]
async fn finalizer_helper_flow() {
    use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};

    type Never = std::convert::Infallible;

    bounded(async {
        let server = FakeApiServer::new();
        let api: Api<Widget> = Api::default_namespaced(server.client());
        api.create(&PostParams::default(), &widget("f", 1))
            .await
            .unwrap();
        let fin = "example.com/cleanup";
        let cleaned = Arc::new(std::sync::atomic::AtomicBool::new(false));

        let run = |obj: Widget| {
            let api = api.clone();
            let cleaned = cleaned.clone();
            async move {
                finalizer(&api, fin, Arc::new(obj), |ev| async move {
                    if let FinalizerEvent::Cleanup(_) = ev {
                        cleaned.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok::<_, Never>(Action::await_change())
                })
                .await
            }
        };
        // 1st reconcile adds the finalizer (JSON patch with `test` for null)
        run(api.get("f").await.unwrap()).await.unwrap();
        assert_eq!(api.get("f").await.unwrap().finalizers(), [fin.to_string()]);
        // a second finalizer from someone else
        let other = json!({"metadata": {"finalizers": [fin, "other/keep"]}});
        api.patch("f", &PatchParams::default(), &Patch::Merge(&other))
            .await
            .unwrap();
        // 2nd reconcile: apply
        run(api.get("f").await.unwrap()).await.unwrap();
        assert!(!cleaned.load(std::sync::atomic::Ordering::SeqCst));

        // delete: marked with deletionTimestamp, stays while finalizers remain
        let gen_before = api.get("f").await.unwrap().metadata.generation.unwrap();
        let deleted = api.delete("f", &DeleteParams::default()).await.unwrap();
        let marked = deleted
            .left()
            .expect("object returned while finalizers pending");
        assert!(marked.metadata.deletion_timestamp.is_some());
        assert_eq!(marked.metadata.generation, Some(gen_before + 1));
        // no new finalizers while deleting
        let add = json!({"metadata": {"finalizers": [fin, "other/keep", "new/one"]}});
        let (code, _) = api_code(
            api.patch("f", &PatchParams::default(), &Patch::Merge(&add))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 422);

        // cleanup reconcile removes our finalizer
        run(api.get("f").await.unwrap()).await.unwrap();
        assert!(cleaned.load(std::sync::atomic::Ordering::SeqCst));
        let still = api.get("f").await.unwrap();
        assert_eq!(still.finalizers(), ["other/keep".to_string()]);
        // removing the last finalizer deletes the object
        let none = json!({"metadata": {"finalizers": null}});
        api.patch("f", &PatchParams::default(), &Patch::Merge(&none))
            .await
            .unwrap();
        assert!(api.get_opt("f").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn raw_watch_events_resume_and_expiry() {
    bounded(async {
        let server = FakeApiServer::new();
        let api: Api<ConfigMap> = Api::default_namespaced(server.client());
        let pp = PostParams::default();
        api.create(&pp, &cm("a", &[])).await.unwrap();
        let start = server.resource_version().to_string();

        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v"}})),
        )
        .await
        .unwrap();
        api.create(&pp, &cm("b", &[])).await.unwrap();
        api.delete("a", &DeleteParams::default()).await.unwrap();

        // resume from `start`: history replay, then stream ends on timeoutSeconds
        let stream = api
            .watch(&WatchParams::default().timeout(1), &start)
            .await
            .unwrap();
        let events: Vec<_> = stream.try_collect().await.unwrap();
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                WatchEvent::Added(c) => format!("ADDED {}", c.name_any()),
                WatchEvent::Modified(c) => format!("MODIFIED {}", c.name_any()),
                WatchEvent::Deleted(c) => format!("DELETED {}", c.name_any()),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["MODIFIED a", "ADDED b", "DELETED a"]);

        // label-filtered watch: an object that stops matching is reported as DELETED
        let lp = WatchParams::default().labels("app=web").timeout(1);
        let from = server.resource_version().to_string();
        let mut c = cm("c", &[]);
        c.metadata.labels = Some(BTreeMap::from([("app".into(), "web".into())]));
        api.create(&pp, &c).await.unwrap();
        api.patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
        )
        .await
        .unwrap();
        let events: Vec<_> = api
            .watch(&lp, &from)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(matches!(
            events.as_slice(),
            [WatchEvent::Added(_), WatchEvent::Deleted(_)]
        ));

        // too old resourceVersion → ERROR 410 Expired
        server.set_history_limit(1);
        let mut stream = api
            .watch(&WatchParams::default(), &start)
            .await
            .unwrap()
            .boxed();
        match stream.next().await {
            Some(Ok(WatchEvent::Error(e))) => {
                assert_eq!((e.code, e.reason.as_str()), (410, "Expired"))
            }
            other => panic!("expected 410, got {other:?}"),
        }
        assert!(stream.next().await.is_none(), "stream ends after 410");
    })
    .await;
}

#[tokio::test]
async fn runtime_watcher_sees_changes() {
    bounded(async {
        let server = FakeApiServer::new();
        let api: Api<Widget> = Api::default_namespaced(server.client());
        api.create(&PostParams::default(), &widget("pre", 1))
            .await
            .unwrap();
        for cfg in [
            watcher::Config::default(),
            watcher::Config::default().streaming_lists(),
        ] {
            let mut stream = watcher(api.clone(), cfg).boxed();
            // initial list
            let mut seen = Vec::new();
            loop {
                match stream.try_next().await.unwrap().unwrap() {
                    watcher::Event::InitApply(w) => seen.push(w.name_any()),
                    watcher::Event::InitDone => break,
                    _ => {}
                }
            }
            assert_eq!(seen, ["pre"]);
            // live changes (the watch connects lazily: write once it is open)
            let name = format!("w{}", server.resource_version());
            let writer = {
                let api = api.clone();
                let server = server.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    while server.active_watches() == 0 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    api.create(&PostParams::default(), &widget(&name, 1))
                        .await
                        .unwrap();
                    api.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"size": 5}})),
                    )
                    .await
                    .unwrap();
                    api.delete(&name, &DeleteParams::default()).await.unwrap();
                })
            };
            let mut got = Vec::new();
            while got.len() < 3 {
                match stream.try_next().await.unwrap().unwrap() {
                    watcher::Event::Apply(w) => {
                        got.push(format!("apply {} {}", w.name_any(), w.spec.size))
                    }
                    watcher::Event::Delete(w) => got.push(format!("delete {}", w.name_any())),
                    _ => {}
                }
            }
            writer.await.unwrap();
            assert_eq!(
                got,
                [
                    format!("apply {name} 1"),
                    format!("apply {name} 5"),
                    format!("delete {name}")
                ]
            );
            drop(stream);
        }
        let partial_watch = watcher(
            Api::<kube::core::PartialObjectMeta<Widget>>::default_namespaced(server.client()),
            watcher::Config::default(),
        )
        .applied_objects()
        .boxed();
        let first = partial_watch.into_future().await.0.unwrap().unwrap();
        assert_eq!(first.name_any(), "pre");
        assert!(server
            .requests()
            .iter()
            .any(|r| r.query.contains("sendInitialEvents=true")));
    })
    .await;
}

#[tokio::test]
async fn controller_reconciles_and_records_events() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};

    #[derive(Debug)]
    struct E(kube::Error);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)
        }
    }
    impl std::error::Error for E {}

    struct Ctx {
        api: Api<Widget>,
        recorder: Recorder,
    }

    async fn reconcile(w: Arc<Widget>, ctx: Arc<Ctx>) -> Result<Action, E> {
        let status = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                            "status": {"phase": "Ready", "observed": w.metadata.generation}});
        ctx.api
            .patch_status(
                &w.name_any(),
                &PatchParams::apply("widget-ctl").force(),
                &Patch::Apply(&status),
            )
            .await
            .map_err(E)?;
        ctx.recorder
            .publish(
                &Event {
                    type_: EventType::Normal,
                    reason: "Reconciled".into(),
                    note: Some("all good".into()),
                    action: "Reconcile".into(),
                    secondary: None,
                },
                &w.object_ref(&()),
            )
            .await
            .map_err(E)?;
        Ok(Action::await_change())
    }

    bounded(async {
        let server = FakeApiServer::new();
        let client = server.client();
        let api: Api<Widget> = Api::default_namespaced(client.clone());
        api.create(&PostParams::default(), &widget("c", 1))
            .await
            .unwrap();
        let ctx = Arc::new(Ctx {
            api: api.clone(),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "widget-ctl".into(),
                    instance: None,
                },
            ),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ctl = tokio::spawn(
            Controller::new(api.clone(), watcher::Config::default())
                .graceful_shutdown_on(async move {
                    let _ = stop_rx.await;
                })
                .run(
                    reconcile,
                    |_, _, _| Action::requeue(Duration::from_secs(1)),
                    ctx,
                )
                .for_each(|_| async {}),
        );
        // wait for the status written by the controller
        loop {
            let w = api.get_status("c").await.unwrap();
            if w.status.as_ref().is_some_and(|s| s.phase == "Ready") {
                assert_eq!(w.status.unwrap().observed, Some(1));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // spec change → new generation reconciled
        api.patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .unwrap();
        loop {
            let w = api.get_status("c").await.unwrap();
            if w.status.as_ref().and_then(|s| s.observed) == Some(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(());
        ctl.await.unwrap();

        let events = server.events("default");
        assert!(!events.is_empty());
        let ev = &events[0];
        assert_eq!(ev["apiVersion"], "events.k8s.io/v1");
        assert_eq!(ev["reason"], "Reconciled");
        assert_eq!(ev["regarding"]["name"], "c");
        assert_eq!(ev["reportingController"], "widget-ctl");
        // the second identical event is a merge patch adding a series
        if events.len() == 1 && ev.get("series").is_some() {
            assert!(ev["series"]["count"].as_i64().unwrap() >= 2);
        }
    })
    .await;
}

#[tokio::test]
async fn fail_next_unavailable_and_shared_server() {
    bounded(async {
        let server = FakeApiServer::new();
        let a: Api<Widget> = Api::default_namespaced(server.client());
        let b: Api<Widget> = Api::default_namespaced(server.client());
        a.create(&PostParams::default(), &widget("s", 1))
            .await
            .unwrap();
        // the other client sees the write
        assert_eq!(b.get("s").await.unwrap().spec.size, 1);
        b.patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 4}})),
        )
        .await
        .unwrap();
        assert_eq!(a.get("s").await.unwrap().spec.size, 4);

        // injected failure on the status write only, once
        server.fail_next(http::Method::PATCH, "/widgets/s/status", 500, 1);
        let status = json!({"status": {"phase": "X"}});
        let (code, reason) = api_code(
            a.patch_status("s", &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap_err(),
        );
        assert_eq!((code, reason.as_str()), (500, "InternalError"));
        assert_eq!(a.get("s").await.unwrap().status, None, "not executed");
        // main resource patches are not affected, and the rule is used up
        a.patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}})),
        )
        .await
        .unwrap();
        a.patch_status("s", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        let recs = server.requests();
        assert!(recs.iter().any(|r| r.method == http::Method::PATCH
            && r.path.ends_with("/status")
            && r.status == 500));
        assert!(recs
            .iter()
            .any(|r| r.content_type.as_deref() == Some("application/merge-patch+json")));

        // outage
        server.set_unavailable(true);
        let (code, _) = api_code(b.get("s").await.unwrap_err());
        assert_eq!(code, 503);
        server.set_unavailable(false);
        assert!(b.get("s").await.is_ok());
        server.clear_requests();
        assert!(server.requests().is_empty());

        // test hooks: put_object emits events and bumps rv; list
        let put = server.put_object(
            "example.com/v1",
            "widgets",
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                   "metadata": {"name": "direct", "namespace": "default"},
                   "spec": {"size": 8}, "status": {"phase": "Injected"}}),
        );
        assert!(put["metadata"]["uid"].is_string());
        let d = b.get("direct").await.unwrap();
        assert_eq!(d.status.unwrap().phase, "Injected");
        assert_eq!(
            server
                .list("example.com/v1", "widgets", Some("default"))
                .len(),
            2
        );
        assert!(server
            .remove_object("example.com/v1", "widgets", Some("default"), "direct")
            .is_some());
        assert!(b.get_opt("direct").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn lease_manager_elects_one_leader() {
    use kube_lease_manager::LeaseManagerBuilder;
    bounded(async {
        let server = FakeApiServer::new();
        let build = |id: &str| {
            LeaseManagerBuilder::new(server.client(), "leader")
                .with_identity(id)
                .with_duration(2)
                .with_grace(1)
                .build()
        };
        let m1 = build("one").await.unwrap();
        let m2 = build("two").await.unwrap();
        // whoever wins first, exactly one holds the lease
        let winner = tokio::select! {
            r = m1.changed() => { assert!(r.unwrap()); "one" }
            r = m2.changed() => { assert!(r.unwrap()); "two" }
        };
        let lease = server
            .get(
                "coordination.k8s.io/v1",
                "leases",
                Some("default"),
                "leader",
            )
            .unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], winner);
        // the winner steps down; the other one takes over
        let (leader, other) = if winner == "one" {
            (&m1, &m2)
        } else {
            (&m2, &m1)
        };
        leader.release().await.unwrap();
        assert!(other.changed().await.unwrap());
        let lease = server
            .get(
                "coordination.k8s.io/v1",
                "leases",
                Some("default"),
                "leader",
            )
            .unwrap();
        assert_ne!(lease["spec"]["holderIdentity"], winner);
    })
    .await;
}

#[tokio::test]
async fn recorder_creates_then_patches_series() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    bounded(async {
        let server = FakeApiServer::new();
        let client = server.client();
        let api: Api<Widget> = Api::namespaced(client.clone(), "team");
        let w = api
            .create(&PostParams::default(), &widget("r", 1))
            .await
            .unwrap();
        let recorder = Recorder::new(client, Reporter::from("ctl"));
        let ev = Event {
            type_: EventType::Warning,
            reason: "Failed".into(),
            note: Some("boom".into()),
            action: "Run".into(),
            secondary: None,
        };
        recorder.publish(&ev, &w.object_ref(&())).await.unwrap();
        recorder.publish(&ev, &w.object_ref(&())).await.unwrap();
        let events = server.events("team");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["type"], "Warning");
        assert_eq!(events[0]["note"], "boom");
        assert_eq!(events[0]["series"]["count"], 2);
        assert!(server.events("default").is_empty());
        let methods: Vec<_> = server
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/events"))
            .map(|r| r.method)
            .collect();
        assert_eq!(methods, [http::Method::POST, http::Method::PATCH]);
    })
    .await;
}

#[tokio::test]
async fn dry_run_put_create_uid_precondition_and_collections() {
    bounded(async {
        let server = FakeApiServer::new();
        let client = server.client();
        let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let d = cms.create(&dry, &cm("dry", &[])).await.unwrap();
        assert!(d.metadata.uid.is_some());
        assert!(cms.get_opt("dry").await.unwrap().is_none());

        // PUT creates Leases (but not ConfigMaps)
        let leases: Api<Lease> = Api::default_namespaced(client.clone());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("put".into()),
                ..Default::default()
            },
            spec: None,
        };
        leases.replace("put", &PostParams::default(), &lease).await.unwrap();
        assert!(leases.get_opt("put").await.unwrap().is_some());
        let (code, _) = api_code(
            cms.replace("nope", &PostParams::default(), &cm("nope", &[]))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 404);

        // uid precondition in a merge patch
        cms.create(&PostParams::default(), &cm("u", &[])).await.unwrap();
        let wrong = json!({"metadata": {"uid": "00000000-0000-4000-8000-000000000000"}, "data": {"a": "b"}});
        let (code, _) = api_code(
            cms.patch("u", &PatchParams::default(), &Patch::Merge(&wrong))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 409);

        // /status on a resource without the subresource → 404; configurable
        let (code, _) = api_code(cms.get_status("u").await.unwrap_err());
        assert_eq!(code, 404);
        server.set_status_subresource("", "configmaps", true);
        assert!(cms.get_status("u").await.is_ok());

        // delete_collection with a label selector
        let mut l = cm("l1", &[]);
        l.metadata.labels = Some(BTreeMap::from([("gone".into(), "yes".into())]));
        cms.create(&PostParams::default(), &l).await.unwrap();
        cms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("gone=yes"))
            .await
            .unwrap();
        let names: Vec<_> = cms
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|c| c.name_any())
            .collect();
        assert_eq!(names, ["u"]);
    })
    .await;
}
