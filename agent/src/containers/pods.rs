//! Pod names for OOM kills: a cache of the kubelet's pod list
//! (`GET https://<node>:10250/pods`, a `PodList`), mapping the pod UID and
//! container id a cgroup path gives to namespace, pod name and container name.
//!
//! The cache is fed from outside (the Kubernetes reader, [`crate::kube`],
//! installs a fresh one on each refresh), and the OOM
//! reader only ever reads what is already cached: a kill is never delayed
//! by a kubelet round trip, and without a feed the event keeps what the
//! path gave (pod UID, container id).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

/// One pod as the cache keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
}

/// Names for one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Pod UID → pod, container id → (pod UID, container name).
#[derive(Clone, Debug, Default)]
pub struct PodCache {
    pods: HashMap<String, PodInfo>,
    containers: HashMap<String, (String, String)>,
}

/// Shared handle: the feeder writes, the OOM reader reads.
pub type SharedPods = Arc<RwLock<PodCache>>;

/// Most pods kept: the kubelet's default `maxPods` is 110 and large nodes
/// run up to a few hundred; anything past this is a malformed feed.
pub const MAX_PODS: usize = 2048;

/// The pods of a `PodList`, at most [`MAX_PODS`]; `Err` when it is not one.
pub fn items(list: &Value) -> Result<&[Value], String> {
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .ok_or("pod list: no items array")?;
    Ok(&items[..items.len().min(MAX_PODS)])
}

impl PodCache {
    /// Parses a `PodList` (the kubelet's `/pods` or the API server's pod
    /// list), keeping only the fields used. Container ids are stored without
    /// their `containerd://`, `cri-o://` or `docker://` scheme.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("pod list: {e}"))?;
        Self::from_value(&v)
    }

    /// As [`PodCache::from_json`], from a list already parsed (the
    /// Kubernetes reader parses each list once for this cache and the
    /// node's resource figures).
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let mut cache = Self::default();
        for item in items(v)? {
            let meta = item.get("metadata");
            let field = |k: &str| {
                meta.and_then(|m| m.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let uid = field("uid");
            if uid.is_empty() {
                continue;
            }
            let status = item.get("status");
            for key in [
                "containerStatuses",
                "initContainerStatuses",
                "ephemeralContainerStatuses",
            ] {
                let Some(list) = status.and_then(|s| s.get(key)).and_then(Value::as_array) else {
                    continue;
                };
                for c in list {
                    let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                    let id = c
                        .get("containerID")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let id = id.rsplit("://").next().unwrap_or_default();
                    if !id.is_empty() && !name.is_empty() {
                        cache
                            .containers
                            .insert(id.to_string(), (uid.clone(), name.to_string()));
                    }
                }
            }
            cache.pods.insert(
                uid,
                PodInfo {
                    namespace: field("namespace"),
                    name: field("name"),
                },
            );
        }
        Ok(cache)
    }

    /// Replaces a shared cache's content from a new pod list; on a parse
    /// error the old content stays.
    pub fn replace_from_json(shared: &SharedPods, text: &str) -> Result<(), String> {
        Self::from_json(text)?.install(shared)
    }

    /// Makes this the shared cache's content.
    pub fn install(self, shared: &SharedPods) -> Result<(), String> {
        let mut guard = shared.write().map_err(|_| "pod cache lock poisoned")?;
        *guard = self;
        Ok(())
    }

    /// Names for a pod UID and/or container id; empty strings where unknown.
    #[must_use]
    pub fn resolve(&self, pod_uid: &str, container_id: &str) -> Resolved {
        let mut r = Resolved::default();
        let mut uid = pod_uid;
        if let Some((cuid, cname)) = self.containers.get(container_id) {
            r.container.clone_from(cname);
            if uid.is_empty() {
                uid = cuid;
            }
        }
        if let Some(p) = self.pods.get(uid) {
            r.namespace.clone_from(&p.namespace);
            r.pod.clone_from(&p.name);
        }
        r
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of a kubelet `/pods` answer (fields trimmed to those read).
    const POD_LIST: &str = r#"{
      "kind": "PodList", "apiVersion": "v1",
      "items": [
        {"metadata": {"name": "web-7d4b9c", "namespace": "shop", "uid": "74c13223-5a00-11e9-b385-42010a80018d"},
         "status": {
           "containerStatuses": [
             {"name": "app", "containerID": "containerd://34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376"},
             {"name": "sidecar", "containerID": "cri-o://49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59"}
           ],
           "initContainerStatuses": [
             {"name": "init", "containerID": "docker://d166c6190614efc91956b78e96d74c3fbc96ca8e91948c36de3bc5b0e7b27d48"}
           ]}},
        {"metadata": {"name": "pending", "namespace": "shop", "uid": "0d08203e-255a-11e9-8cd9-0007cb0b2cc8"},
         "status": {"containerStatuses": [{"name": "app"}]}},
        {"metadata": {"name": "no-uid"}}
      ]}"#;

    #[test]
    fn resolves_names() {
        let c = PodCache::from_json(POD_LIST).unwrap();
        assert_eq!(c.len(), 2);
        let r = c.resolve(
            "74c13223-5a00-11e9-b385-42010a80018d",
            "34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376",
        );
        assert_eq!(
            r,
            Resolved {
                namespace: "shop".into(),
                pod: "web-7d4b9c".into(),
                container: "app".into()
            }
        );
        // Container id alone finds the pod too.
        let r = c.resolve(
            "",
            "d166c6190614efc91956b78e96d74c3fbc96ca8e91948c36de3bc5b0e7b27d48",
        );
        assert_eq!(
            (r.pod.as_str(), r.container.as_str()),
            ("web-7d4b9c", "init")
        );
        // Pod known, container not started yet.
        let r = c.resolve("0d08203e-255a-11e9-8cd9-0007cb0b2cc8", "");
        assert_eq!((r.pod.as_str(), r.container.as_str()), ("pending", ""));
        assert_eq!(c.resolve("nope", "nope"), Resolved::default());
    }

    /// The kubelet `/pods` fixture names the containers of the cgroup fixtures.
    #[test]
    fn kubelet_fixture() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/kubernetes/kubelet-pods.json");
        let c = PodCache::from_json(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(c.len(), 6);
        let r = c.resolve(
            "",
            "49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59",
        );
        assert_eq!(
            (r.namespace.as_str(), r.pod.as_str(), r.container.as_str()),
            ("shop", "web-7d4b9c-qx2lp", "proxy")
        );
    }

    #[test]
    fn bad_feed_keeps_old_content() {
        let shared: SharedPods = Arc::default();
        PodCache::replace_from_json(&shared, POD_LIST).unwrap();
        assert!(PodCache::replace_from_json(&shared, "{").is_err());
        assert!(PodCache::replace_from_json(&shared, r#"{"items": 3}"#).is_err());
        assert_eq!(shared.read().unwrap().len(), 2);
    }

    #[test]
    fn fuzz_no_panic() {
        let seed = POD_LIST.as_bytes();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2000 {
            let mut b = seed.to_vec();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % b.len();
                b[at] = b"{}[]\",:a0 "[(state >> 32) as usize % 10];
            }
            if let Ok(c) = PodCache::from_json(&String::from_utf8_lossy(&b)) {
                let _ = c.resolve("x", "y");
            }
        }
    }
}
