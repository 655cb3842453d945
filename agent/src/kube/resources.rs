//! What the node's pods ask for and what the node offers: pure parsers of a
//! `PodList` (the kubelet's `/pods`, or the API server's list for the node)
//! and of a `Node` object.
//!
//! Requests and limits follow Kubernetes' own accounting (the scheduler's
//! and `kubectl describe node`'s, `k8s.io/component-helpers/resource`
//! `PodRequests`/`PodLimits`):
//! - a pod's figure is the sum over its app containers, plus its sidecars
//!   (init containers with `restartPolicy: Always`, which keep running);
//! - it is at least what the init phase needs: the largest ordinary init
//!   container plus the sidecars started before it;
//! - pod-level `spec.resources` (Kubernetes 1.32+), where set, replace the
//!   container sum for that resource;
//! - the pod's `spec.overhead` (RuntimeClass) is added to requests, and to
//!   limits only where the pod has a limit;
//! - a container without a limit adds 0 to the node's limits sum, as in
//!   `kubectl describe node` (the pod is then unbounded, which a sum cannot say);
//! - pods in phase `Succeeded` or `Failed` hold nothing and are skipped.

use std::collections::BTreeMap;

use serde_json::Value;

use super::image::{self, Reason};
use super::quantity;

/// Most containers read per pod (app, init and ephemeral together).
const MAX_CONTAINERS: usize = 256;

/// CPU (cores) and memory (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Amounts {
    pub cpu: f64,
    pub memory: f64,
}

impl Amounts {
    fn add(&mut self, o: Amounts) {
        self.cpu += o.cpu;
        self.memory += o.memory;
    }

    fn max(&mut self, o: Amounts) {
        self.cpu = self.cpu.max(o.cpu);
        self.memory = self.memory.max(o.memory);
    }
}

/// Which resource figures a `resources` block (`requests` or `limits`) names.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Named {
    cpu: Option<f64>,
    memory: Option<f64>,
}

impl Named {
    fn read(block: Option<&Value>) -> Self {
        let get = |k: &str| block.and_then(|b| b.get(k)).and_then(quantity::from_json);
        Named {
            cpu: get("cpu"),
            memory: get("memory"),
        }
    }

    fn amounts(self) -> Amounts {
        Amounts {
            cpu: self.cpu.unwrap_or(0.0),
            memory: self.memory.unwrap_or(0.0),
        }
    }
}

/// One pod's effective requests and limits, by the rules in the module docs.
fn pod_totals(pod: &Value, which: &str) -> Amounts {
    let spec = pod.get("spec");
    let list = |k: &str| {
        spec.and_then(|s| s.get(k))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let of = |c: &Value| Named::read(c.get("resources").and_then(|r| r.get(which)));
    let mut total = Amounts::default();
    let mut any = Named::default();
    // Which resources any container limits (for the overhead rule below).
    let note = |n: Named, any: &mut Named| {
        any.cpu = any.cpu.or(n.cpu);
        any.memory = any.memory.or(n.memory);
    };
    for c in list("containers").iter().take(MAX_CONTAINERS) {
        let n = of(c);
        note(n, &mut any);
        total.add(n.amounts());
    }
    let mut sidecars = Amounts::default();
    let mut init = Amounts::default();
    for c in list("initContainers").iter().take(MAX_CONTAINERS) {
        let n = of(c);
        note(n, &mut any);
        let mut need = n.amounts();
        if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            total.add(need);
            sidecars.add(need);
            need = sidecars;
        } else {
            need.add(sidecars);
        }
        init.max(need);
    }
    total.max(init);
    // Pod-level resources, where set, are the pod's figure for that resource.
    let pod_level = Named::read(
        spec.and_then(|s| s.get("resources"))
            .and_then(|r| r.get(which)),
    );
    if let Some(cpu) = pod_level.cpu {
        total.cpu = cpu;
        any.cpu = Some(cpu);
    }
    if let Some(mem) = pod_level.memory {
        total.memory = mem;
        any.memory = Some(mem);
    }
    let overhead = Named::read(spec.and_then(|s| s.get("overhead")));
    if which == "requests" {
        total.add(overhead.amounts());
    } else {
        // Overhead raises a limit that exists; it does not invent one.
        if any.cpu.is_some() {
            total.cpu += overhead.cpu.unwrap_or(0.0);
        }
        if any.memory.is_some() {
            total.memory += overhead.memory.unwrap_or(0.0);
        }
    }
    total
}

/// What one pod list says about the node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodSummary {
    pub requests: Amounts,
    pub limits: Amounts,
    /// Pods not in a terminal phase.
    pub pods: usize,
    /// Containers waiting in `ErrImagePull` / `ImagePullBackOff`, by (registry, reason).
    pub pull_failures: BTreeMap<(String, Reason), u64>,
}

/// Waiting reasons that mean "the image could not be pulled".
const PULL_FAILURES: &[&str] = &["ErrImagePull", "ImagePullBackOff"];

impl PodSummary {
    /// Summarises a parsed `PodList`; `Err` only when it is not one.
    pub fn from_value(list: &Value) -> Result<Self, String> {
        let mut s = Self::default();
        for pod in crate::containers::pods::items(list)? {
            let status = pod.get("status");
            let phase = status
                .and_then(|st| st.get("phase"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if matches!(phase, "Succeeded" | "Failed") {
                continue;
            }
            s.pods += 1;
            s.requests.add(pod_totals(pod, "requests"));
            s.limits.add(pod_totals(pod, "limits"));
            s.count_pull_failures(pod);
        }
        Ok(s)
    }

    /// Summarises a `PodList` in JSON text.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("pod list: {e}"))?;
        Self::from_value(&v)
    }

    fn count_pull_failures(&mut self, pod: &Value) {
        let status = pod.get("status");
        let spec = pod.get("spec");
        for (statuses, specs) in [
            ("containerStatuses", "containers"),
            ("initContainerStatuses", "initContainers"),
            ("ephemeralContainerStatuses", "ephemeralContainers"),
        ] {
            let Some(list) = status
                .and_then(|s| s.get(statuses))
                .and_then(Value::as_array)
            else {
                continue;
            };
            for c in list.iter().take(MAX_CONTAINERS) {
                let waiting = c.get("state").and_then(|s| s.get("waiting"));
                let reason = waiting
                    .and_then(|w| w.get("reason"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !PULL_FAILURES.contains(&reason) {
                    continue;
                }
                let message = waiting
                    .and_then(|w| w.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                // The status' image is the spec's while the pull fails; the
                // spec is the fallback for statuses that leave it out.
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                let img = c
                    .get("image")
                    .and_then(Value::as_str)
                    .filter(|i| !i.is_empty())
                    .or_else(|| {
                        spec.and_then(|s| s.get(specs))
                            .and_then(Value::as_array)
                            .and_then(|cs| {
                                cs.iter()
                                    .find(|sc| sc.get("name").and_then(Value::as_str) == Some(name))
                            })
                            .and_then(|sc| sc.get("image"))
                            .and_then(Value::as_str)
                    })
                    .unwrap_or_default();
                *self
                    .pull_failures
                    .entry((image::registry(img), image::classify(message)))
                    .or_default() += 1;
            }
        }
    }
}

/// The Node object's capacity and allocatable CPU and memory; `None` where
/// the status does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeResources {
    pub cpu_capacity: Option<f64>,
    pub cpu_allocatable: Option<f64>,
    pub memory_capacity: Option<f64>,
    pub memory_allocatable: Option<f64>,
}

impl NodeResources {
    /// Reads a parsed `Node` (`GET /api/v1/nodes/<name>`); `Err` only when it is not one.
    pub fn from_value(node: &Value) -> Result<Self, String> {
        let status = node
            .get("status")
            .filter(|s| s.is_object())
            .ok_or("node: no status object")?;
        let get = |block: &str, k: &str| {
            status
                .get(block)
                .and_then(|b| b.get(k))
                .and_then(quantity::from_json)
        };
        Ok(NodeResources {
            cpu_capacity: get("capacity", "cpu"),
            cpu_allocatable: get("allocatable", "cpu"),
            memory_capacity: get("capacity", "memory"),
            memory_allocatable: get("allocatable", "memory"),
        })
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("node: {e}"))?;
        Self::from_value(&v)
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // tests: exact sums of decimal inputs
mod tests {
    use super::*;
    use serde_json::json;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    fn pod(spec: &Value, phase: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "n", "uid": "u"}, "spec": spec, "status": {"phase": phase}})
    }

    fn totals(spec: &Value) -> (Amounts, Amounts) {
        let p = pod(spec, "Running");
        (pod_totals(&p, "requests"), pod_totals(&p, "limits"))
    }

    #[test]
    fn app_containers_sum() {
        let (r, l) = totals(&json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "0.5"}}},
            {"name": "c"}
        ]}));
        assert!(close(r.cpu, 0.75) && close(r.memory, 64.0 * 1024.0 * 1024.0));
        assert!(close(l.cpu, 1.0) && close(l.memory, 128.0 * 1024.0 * 1024.0));
    }

    #[test]
    fn init_containers_max_against_the_sum() {
        // A big init container dominates; a small one does not.
        let (r, _) = totals(&json!({
            "initContainers": [{"name": "i1", "resources": {"requests": {"cpu": "2"}}},
                               {"name": "i2", "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}}]}));
        assert!(close(r.cpu, 2.0), "{r:?}");
        assert!(close(r.memory, 1024.0 * 1024.0 * 1024.0), "{r:?}");
    }

    #[test]
    fn sidecars_add_to_the_sum_and_to_later_init_containers() {
        // Kubernetes' documented example (sidecar containers, "resource sharing"):
        // sidecar 1 + app 1, and the init container after the sidecar needs both.
        let (r, l) = totals(&json!({
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "300m"}, "limits": {"cpu": "500m"}}},
                {"name": "migrate", "resources": {"requests": {"cpu": "900m"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "1"}}}]}));
        // Steady state 0.3 + 0.5 = 0.8; init phase 0.9 + 0.3 = 1.2.
        assert!(close(r.cpu, 1.2), "{r:?}");
        assert!(close(l.cpu, 1.5), "{l:?}");
    }

    #[test]
    fn overhead_and_pod_level_resources() {
        let (r, l) = totals(&json!({
            "overhead": {"cpu": "250m", "memory": "120Mi"},
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2"}}}]}));
        assert!(close(r.cpu, 1.25) && close(r.memory, 120.0 * 1024.0 * 1024.0));
        // Overhead raises the CPU limit that exists, invents no memory limit.
        assert!(close(l.cpu, 2.25) && l.memory == 0.0, "{l:?}");
        let (r, l) = totals(&json!({
            "resources": {"requests": {"cpu": "3"}, "limits": {"memory": "1Gi"}},
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}}}]}));
        assert!(
            close(r.cpu, 3.0) && close(r.memory, 1024.0 * 1024.0),
            "{r:?}"
        );
        assert!(
            l.cpu == 0.0 && close(l.memory, 1024.0 * 1024.0 * 1024.0),
            "{l:?}"
        );
    }

    #[test]
    fn terminal_pods_are_skipped() {
        let spec = json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]});
        let list = json!({"items": [pod(&spec, "Running"), pod(&spec, "Pending"), pod(&spec, "Succeeded"), pod(&spec, "Failed"), pod(&spec, "")]});
        let s = PodSummary::from_value(&list).unwrap();
        assert_eq!(s.pods, 3);
        assert!(close(s.requests.cpu, 3.0));
    }

    #[test]
    fn pull_failures_by_registry_and_reason() {
        let list = json!({"items": [{
            "spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "ghcr.io/x/y:1"}],
                     "initContainers": [{"name": "i", "image": "registry.local:5000/init"}]},
            "status": {"phase": "Pending",
                "initContainerStatuses": [{"name": "i", "image": "", "state": {"waiting": {"reason": "ErrImagePull", "message": "x: not found"}}}],
                "containerStatuses": [
                    {"name": "a", "image": "docker.io/library/nginx:latest", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"nginx\": toomanyrequests"}}},
                    {"name": "b", "image": "ghcr.io/x/y:1", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}]});
        let s = PodSummary::from_value(&list).unwrap();
        let want: BTreeMap<(String, Reason), u64> = [
            (("docker.io".to_string(), Reason::RateLimited), 1),
            (("registry.local:5000".to_string(), Reason::NotFound), 1),
        ]
        .into();
        assert_eq!(s.pull_failures, want);
    }

    fn fixture(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/kubernetes")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    const MI: f64 = 1024.0 * 1024.0;

    /// The fixture's figures, worked out by hand:
    /// - web: requests max(app 250m + sidecar 100m, migrate 1 + sidecar
    ///   100m) plus overhead 50m = 1.15; memory max(128 + 64, 64 + 64) plus
    ///   32 = 224Mi; limits max(1 + 0.5, 2 + 0.5) plus 0.05 = 2.55; memory
    ///   256 + 128 plus 32 = 416Mi;
    /// - api 500m / 256Mi both; worker max(2, 0.2) = 2 / 1Gi, limits 4 / 2Gi;
    /// - agent 20m / 32Mi, memory limit 128Mi; kube-proxy nothing;
    /// - the Succeeded report pod nothing.
    #[test]
    fn kubelet_pods_fixture() {
        let s = PodSummary::from_json(&fixture("kubelet-pods.json")).unwrap();
        assert_eq!(s.pods, 5);
        assert!(close(s.requests.cpu, 3.67), "{s:?}");
        assert!(close(s.limits.cpu, 7.05), "{s:?}");
        assert!(close(s.requests.memory, 1536.0 * MI), "{s:?}");
        assert!(close(s.limits.memory, 2848.0 * MI), "{s:?}");
        let want: BTreeMap<(String, Reason), u64> = [
            (("docker.io".to_string(), Reason::RateLimited), 1),
            (("ghcr.io".to_string(), Reason::Unauthorized), 1),
        ]
        .into();
        assert_eq!(s.pull_failures, want);
    }

    #[test]
    fn node_fixture() {
        let n = NodeResources::from_json(&fixture("node.json")).unwrap();
        assert_eq!(n.cpu_capacity, Some(4.0));
        assert_eq!(n.cpu_allocatable, Some(3.8));
        assert_eq!(n.memory_capacity, Some(16_266_836.0 * 1024.0));
        assert_eq!(n.memory_allocatable, Some(15_640_148.0 * 1024.0));
    }

    /// Odd input never panics: every prefix of the fixtures, and byte flips.
    #[test]
    fn odd_input_never_panics() {
        let text = fixture("kubelet-pods.json");
        let bytes = text.as_bytes();
        for end in (0..bytes.len()).step_by(97) {
            let _ = PodSummary::from_json(&String::from_utf8_lossy(&bytes[..end]));
        }
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..500 {
            let mut b = bytes.to_vec();
            for _ in 0..6 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % b.len();
                let alphabet = b"{}[]\",:0m.-eE ";
                b[at] = alphabet[(state >> 32) as usize % alphabet.len()];
            }
            let _ = PodSummary::from_json(&String::from_utf8_lossy(&b));
        }
        for odd in [
            "null",
            "[]",
            "{}",
            r#"{"items": {}}"#,
            r#"{"items": [null, 1, "x", []]}"#,
            r#"{"items": [{"spec": {"containers": {"a": 1}}, "status": []}]}"#,
            r#"{"items": [{"spec": {"containers": [{"resources": {"requests": {"cpu": "1e30"}}}]}}]}"#,
        ] {
            let _ = PodSummary::from_json(odd);
            let _ = NodeResources::from_json(odd);
        }
    }

    #[test]
    fn node_status() {
        let n = NodeResources::from_value(&json!({"status": {
            "capacity": {"cpu": "4", "memory": "16266836Ki", "pods": "110"},
            "allocatable": {"cpu": "3800m", "memory": "15640148Ki"}}}))
        .unwrap();
        assert_eq!(n.cpu_capacity, Some(4.0));
        assert_eq!(n.cpu_allocatable, Some(3.8));
        assert_eq!(n.memory_allocatable, Some(15_640_148.0 * 1024.0));
        assert!(NodeResources::from_json("[]").is_err());
        assert_eq!(
            NodeResources::from_json(r#"{"status": {}}"#).unwrap(),
            NodeResources::default()
        );
    }
}
