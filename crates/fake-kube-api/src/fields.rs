//! JSON helpers: leaf-path flattening (a small model of server-side-apply field ownership),
//! JSON patch with the apiserver's `test`-on-missing-path rule, and metadata normalisation.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Field ownership: manager name -> set of owned leaf paths (JSON pointers).
pub(crate) type Managers = BTreeMap<String, BTreeSet<String>>;

/// Metadata fields that users own (everything else in metadata is system-managed).
const USER_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

fn escape(seg: &str) -> String {
    seg.replace('~', "~0").replace('/', "~1")
}

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

/// Flattens an object into leaf paths. Arrays, scalars and empty objects are leaves (lists are
/// treated as atomic, unlike the real SSA which merges `listType=map/set` lists).
/// `apiVersion`, `kind` and system metadata are skipped.
pub(crate) fn leaves(obj: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Some(map) = obj.as_object() {
        for (k, v) in map {
            match k.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => {
                    if let Some(meta) = v.as_object() {
                        for f in USER_METADATA {
                            if let Some(fv) = meta.get(*f) {
                                collect(fv, format!("/metadata/{f}"), &mut out);
                            }
                        }
                    }
                }
                _ => collect(v, format!("/{}", escape(k)), &mut out),
            }
        }
    }
    out
}

fn collect(v: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                collect(child, format!("{path}/{}", escape(k)), out);
            }
        }
        Value::Null => {}
        _ => {
            out.insert(path, v.clone());
        }
    }
}

/// Whether one path is equal to, an ancestor of, or a descendant of the other.
pub(crate) fn related(a: &str, b: &str) -> bool {
    a == b
        || b.strip_prefix(a).is_some_and(|r| r.starts_with('/'))
        || a.strip_prefix(b).is_some_and(|r| r.starts_with('/'))
}

/// `/spec/holderIdentity` -> `.spec.holderIdentity` (the apiserver's conflict message format).
pub(crate) fn dotted(path: &str) -> String {
    path.split('/')
        .skip(1)
        .map(|s| format!(".{}", unescape(s)))
        .collect()
}

/// Leaf paths whose value differs between `old` and `new` (added, changed or removed).
pub(crate) fn changed_paths(old: &Value, new: &Value) -> BTreeSet<String> {
    let a = leaves(old);
    let b = leaves(new);
    let mut out = BTreeSet::new();
    for (k, v) in &a {
        if b.get(k) != Some(v) {
            out.insert(k.clone());
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.insert(k.clone());
        }
    }
    out
}

/// Removes the value at a JSON pointer, if present.
pub(crate) fn remove_path(v: &mut Value, path: &str) {
    let Some((parent, last)) = path.rsplit_once('/') else {
        return;
    };
    if let Some(Value::Object(map)) = v.pointer_mut(parent) {
        map.remove(&unescape(last));
    }
}

/// Removes null values and empty user-metadata collections, like the apiserver's `omitempty`.
pub(crate) fn normalize(obj: &mut Value) {
    if let Some(map) = obj.as_object_mut() {
        map.retain(|_, v| !v.is_null());
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.retain(|k, v| {
                !(v.is_null()
                    || k == "managedFields"
                    || (USER_METADATA.contains(&k.as_str())
                        && (v.as_array().is_some_and(Vec::is_empty)
                            || v.as_object().is_some_and(Map::is_empty))))
            });
        }
    }
}

/// Applies an RFC 6902 patch atomically. Like the apiserver (evanphx/json-patch), a `test`
/// operation expecting `null` succeeds when the path does not exist, which is what
/// `kube::runtime::finalizer` relies on when adding the first finalizer.
pub(crate) fn apply_json_patch(doc: &Value, patch: &json_patch::Patch) -> Result<Value, String> {
    let mut out = doc.clone();
    for op in &patch.0 {
        if let json_patch::PatchOperation::Test(t) = op {
            if t.value.is_null() && out.pointer(t.path.as_str()).is_none() {
                continue;
            }
        }
        json_patch::patch(&mut out, std::slice::from_ref(op)).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leaves_and_changes() {
        let a = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n", "resourceVersion": "1", "labels": {"a": "b"}}, "spec": {"x": 1, "y": [1, 2], "z": {}}});
        let l = leaves(&a);
        assert_eq!(
            l.keys().cloned().collect::<Vec<_>>(),
            vec!["/metadata/labels/a", "/spec/x", "/spec/y", "/spec/z"]
        );
        let b = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"x": 2, "y": [1, 2], "w": 1}});
        let c = changed_paths(&a, &b);
        assert_eq!(
            c.into_iter().collect::<Vec<_>>(),
            vec!["/spec/w", "/spec/x", "/spec/z"]
        );
        assert!(related("/spec", "/spec/x"));
        assert!(!related("/spec/x", "/spec/xy"));
        assert_eq!(dotted("/spec/a~1b"), ".spec.a/b");
    }

    #[test]
    fn json_patch_test_null_on_missing() {
        let doc = json!({"metadata": {"name": "n"}});
        let p: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}
        ]))
        .unwrap();
        let out = apply_json_patch(&doc, &p).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["f"]));
        assert!(apply_json_patch(&out, &p).is_err());
    }
}
