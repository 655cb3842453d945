//! An OOM kill is attributed to its pod and container all the way to the
//! aggregator: a kubelet-style cgroup (`kubepods/burstable/pod<uid>/<64-hex
//! container id>`, cgroupfs driver) holds a first process that stays alive
//! and a second one that allocates past the limit. Kubernetes itself only
//! reports a kill of a container's main process; the agent must name the
//! second one with its pid, comm, cgroup, pod UID and container id, at the
//! aggregator within a second, and move `nodewatch_oom_kills_total` there.
//!
//! With a kubelet (a local HTTPS stand-in serving `/pods`, as in
//! `kubelet.rs`: no cluster exists where these tests run), the same kill
//! carries the namespace, pod and container names of the pod list, for both
//! kubelet cgroup drivers' path shapes, and a kubelet that stops answering
//! neither delays the next event nor takes the names away.

use std::io::BufRead;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodewatch_proto::tls::TlsFiles;
use nodewatch_tests::{
    cli_output, missing, operator_cli, start_agent, wait_for, Aggregator, FakeServer, Pki, Proc,
};

/// The memory limit of the container cgroup: small enough that `tail
/// /dev/zero` reaches it in milliseconds.
const LIMIT_BYTES: u64 = 32 << 20;

/// A kubelet-style cgroup path laid in the memory hierarchy; every folder
/// this test created is removed on drop, deepest first.
struct PodCgroup {
    /// Folders created, outermost first.
    created: Vec<PathBuf>,
    /// The container's cgroup.
    leaf: PathBuf,
    /// The path below the hierarchy root, as the kernel names it.
    path: String,
}

/// The cgroupfs driver's container cgroup: `kubepods/burstable/pod<uid>/<id>`.
fn cgroupfs_segments(pod_uid: &str, container_id: &str) -> Vec<String> {
    vec![
        "kubepods".to_string(),
        "burstable".to_string(),
        format!("pod{pod_uid}"),
        container_id.to_string(),
    ]
}

/// The systemd driver's container cgroup under containerd: slices named after the QoS class
/// and the pod UID (dashes turned to underscores), the container a
/// `cri-containerd-<id>.scope`.
fn systemd_segments(pod_uid: &str, container_id: &str) -> Vec<String> {
    vec![
        "kubepods.slice".to_string(),
        "kubepods-burstable.slice".to_string(),
        format!("kubepods-burstable-pod{}.slice", pod_uid.replace('-', "_")),
        format!("cri-containerd-{container_id}.scope"),
    ]
}

impl PodCgroup {
    fn new(segments: &[String]) -> Result<Self, String> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let unified = Path::new("/sys/fs/cgroup");
        let (root, v2) = if v1.join("memory.limit_in_bytes").exists() {
            (v1, false)
        } else if std::fs::read_to_string(unified.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
        {
            (unified, true)
        } else {
            return Err("a memory cgroup controller (v1 memory or v2 with memory)".into());
        };
        let mut cg = Self {
            created: Vec::new(),
            leaf: root.to_path_buf(),
            path: String::new(),
        };
        for seg in segments {
            // v2: a child only gets a memory controller when its parent
            // delegates it (no-internal-process rule: the processes live in
            // the leaf only).
            if v2 {
                let _ = std::fs::write(cg.leaf.join("cgroup.subtree_control"), "+memory");
            }
            cg.leaf = cg.leaf.join(seg);
            cg.path = format!("{}/{seg}", cg.path);
            match std::fs::create_dir(&cg.leaf) {
                Ok(()) => cg.created.push(cg.leaf.clone()),
                // Left by an earlier run or made by the node's own kubelet.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("creating {}: {e}", cg.leaf.display())),
            }
        }
        let limit_file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cg.leaf.join(limit_file), LIMIT_BYTES.to_string())
            .map_err(|e| format!("{limit_file}: {e}"))?;
        // No swap to escape into: the hog must hit the limit, not swap out.
        let _ = std::fs::write(cg.leaf.join("memory.swappiness"), "0");
        let _ = std::fs::write(cg.leaf.join("memory.swap.max"), "0");
        let _ = std::fs::write(
            cg.leaf.join("memory.memsw.limit_in_bytes"),
            LIMIT_BYTES.to_string(),
        );
        Ok(cg)
    }

    /// Starts `script` under `sh`, moved into this cgroup before it execs.
    fn spawn(&self, script: &str) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec {script}",
                self.leaf.join("cgroup.procs").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            // A killed task leaves its cgroup a moment after it is reaped.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A child killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh pod UID (UUID layout) and 64-hex container id, random per run.
fn ids() -> (String, String) {
    use std::hash::{BuildHasher, Hasher};
    let random = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    let hex = format!("{:016x}{:016x}", random(), random());
    let uid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    let cid = format!("{hex}{:016x}{:016x}", random(), random());
    (uid, cid)
}

/// The tests of this file share the `kubepods` folders of the memory
/// hierarchy: one creating `kubepods/burstable` while the other removes
/// `kubepods` on its way out would fail. They take turns.
static CGROUPS: Mutex<()> = Mutex::new(());

/// Holds the cgroup turn for the test that calls it.
fn cgroup_turn() -> std::sync::MutexGuard<'static, ()> {
    CGROUPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Root and kernel BTF, or `missing(..)` said why not.
fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        missing("root (memory cgroups and eBPF)");
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing("kernel BTF (/sys/kernel/btf/vmlinux)");
        return false;
    }
    true
}

/// Starts the agent with `extra` config and waits until its OOM program is
/// attached. A 10 s interval: the event must not wait for the next collection.
fn start_oom_agent(pki: &Pki, agg: &Aggregator, extra: &str) -> Proc {
    let agent = start_agent(
        pki,
        "n1",
        &[agg],
        &format!("interval: 10s\ncollectors: {{ebpf: true}}\n{extra}"),
    );
    wait_for(
        Duration::from_secs(60),
        "the agent's OOM program attached",
        || {
            agg.metrics()
                .contains("nodewatch_agent_ebpf_programs{node=\"n1\",program=\"oom_mark_victim\",state=\"attached\"} 1")
                .then_some(())
        },
    );
    agent
}

/// `nodewatch events --follow -o json`, each line stamped when it arrived.
struct Follow {
    _child: Reaped,
    lines: Receiver<(Instant, String)>,
}

impl Follow {
    fn start(ops: &TlsFiles, agg: &Aggregator) -> Self {
        let mut child = Reaped(
            operator_cli(ops, agg)
                .args(["events", "--follow", "-o", "json"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let out = child.0.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<(Instant, String)>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), line));
            }
        });
        // Subscribed before anything is killed.
        std::thread::sleep(Duration::from_millis(300));
        Self {
            _child: child,
            lines,
        }
    }

    /// Waits for the OOM event of `pid` and asserts it arrived within a
    /// second of `killed_at`.
    fn expect_within_a_second(&self, pid: u32, killed_at: Instant) {
        let (arrived, line) = wait_for(
            Duration::from_secs(10),
            "the OOM event at the aggregator",
            || {
                self.lines
                    .try_iter()
                    .find(|(_, l)| l.contains(&format!("\"pid\":{pid}")))
            },
        );
        let latency = arrived.saturating_duration_since(killed_at);
        println!(
            "OOM kill of pid {pid} → `nodewatch events --follow`: {} ms",
            latency.as_millis()
        );
        assert!(
            latency < Duration::from_secs(1),
            "event took {latency:?}: {line}"
        );
    }
}

/// Starts a first process in `cg` that stays alive, then a second that
/// allocates until the OOM killer takes it; returns the first (still
/// running), the second's pid and when its death was seen.
fn kill_a_second_process(cg: &PodCgroup) -> (Reaped, u32, Instant) {
    let mut first = Reaped(cg.spawn("sleep 120"));
    wait_for(
        Duration::from_secs(5),
        "the first process in the cgroup",
        || {
            std::fs::read_to_string(cg.leaf.join("cgroup.procs"))
                .ok()
                .filter(|p| p.contains(&first.0.id().to_string()))
        },
    );
    // The second: `tail` of an endless file without newlines keeps
    // everything it reads, so it grows until the OOM killer picks it.
    let mut hog = cg.spawn("tail /dev/zero");
    let pid = hog.id();
    let status = hog.wait().unwrap();
    let killed_at = Instant::now();
    assert!(!status.success(), "the hog was not killed");
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first process died too: the kill was not of the second one alone"
    );
    (first, pid, killed_at)
}

/// The stored event of `pid`, as `nodewatch events -o json` prints it.
fn stored_event(ops: &TlsFiles, agg: &Aggregator, pid: u32) -> serde_json::Value {
    let out = cli_output(
        operator_cli(ops, agg).args(["events", "-o", "json"]),
        "nodewatch events",
    );
    let text = String::from_utf8(out).unwrap();
    let ev = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["oomKill"]["pid"] == pid)
        .unwrap_or_else(|| panic!("no event for pid {pid} in:\n{text}"));
    println!("event: {ev}");
    ev
}

/// The value of node n1's series `name` with all of `labels`.
fn metric(agg: &Aggregator, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    agg.metrics().lines().find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?.strip_prefix('{')?;
        let ours = rest.contains("node=\"n1\"")
            && labels
                .iter()
                .all(|(k, val)| rest.contains(&format!("{k}=\"{val}\"")));
        ours.then(|| v.parse().ok()).flatten()
    })
}

/// Waits until `nodewatch_oom_kills_total` of node n1 with all of `labels`
/// reaches `at_least`.
fn wait_kill_count(agg: &Aggregator, labels: &[(&str, &str)], at_least: f64) {
    let what = format!("nodewatch_oom_kills_total{labels:?} >= {at_least}");
    wait_for(Duration::from_secs(5), &what, || {
        metric(agg, "nodewatch_oom_kills_total", labels)
            .filter(|v| *v >= at_least)
            .map(|_| ())
    });
}

#[test]
fn oom_kill_of_a_second_process_names_pod_and_container() {
    let _host = nodewatch_tests::host_exclusive();
    if !can_run() {
        return;
    }
    let _turn = cgroup_turn();
    let (pod_uid, container_id) = ids();
    let cg = match PodCgroup::new(&cgroupfs_segments(&pod_uid, &container_id)) {
        Ok(cg) => cg,
        Err(what) => return missing(&what),
    };

    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    // With cost measurement on, the OOM program's runs are counted too.
    let _agent = start_oom_agent(&pki, &agg, "ebpf_measure_cost: true\n");
    let ops = pki.operator("ops");
    let follow = Follow::start(&ops, &agg);

    let (first, pid, killed_at) = kill_a_second_process(&cg);
    follow.expect_within_a_second(pid, killed_at);

    let ev = stored_event(&ops, &agg, pid);
    let k = &ev["oomKill"];
    assert_eq!(ev["node"], "n1");
    assert_eq!(k["comm"], "tail", "{ev}");
    assert_eq!(k["cgroup"], cg.path.as_str(), "{ev}");
    assert_eq!(k["podUid"], pod_uid.as_str(), "{ev}");
    assert_eq!(k["containerId"], container_id.as_str(), "{ev}");
    assert_eq!(k["memcgLimitBytes"], LIMIT_BYTES, "{ev}");

    // The counter moved on the aggregator's /metrics, labelled with the pod
    // UID and container id (no kubelet names configured).
    wait_kill_count(
        &agg,
        &[
            ("pod", &pod_uid),
            ("container", &container_id),
            ("comm", "tail"),
        ],
        1.0,
    );

    // `ebpf_measure_cost: true`: the kernel counted the OOM program's runs.
    let m = agg.metrics();
    let runs = m
        .lines()
        .find(|l| {
            l.starts_with("nodewatch_agent_ebpf_run_count_total{")
                && l.contains("program=\"oom_mark_victim\"")
                && l.contains("node=\"n1\"")
        })
        .unwrap_or_else(|| panic!("no run count for oom_mark_victim in:\n{m}"));
    assert!(
        runs.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0),
        "{runs}"
    );
    assert!(
        m.contains("nodewatch_agent_ebpf_run_seconds_total{"),
        "no run time series"
    );

    drop(follow);
    drop(first);
    drop(cg);
}

const TOKEN: &str = "oom-test-sa-token";

/// One pod of the stand-in kubelet's list and the cgroup its container runs in.
struct Pod {
    namespace: &'static str,
    name: &'static str,
    container: &'static str,
    uid: String,
    container_id: String,
    cg: PodCgroup,
}

impl Pod {
    /// A kubelet `/pods` item: the fields the agent reads, in the shape
    /// the kubelet serves them (containerd's `containerd://` id scheme).
    fn item(&self) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
            "spec": {"containers": [{
                "name": self.container,
                "image": "docker.io/library/busybox:1.36",
                "resources": {"limits": {"memory": LIMIT_BYTES.to_string()}}
            }]},
            "status": {
                "phase": "Running",
                "containerStatuses": [{
                    "name": self.container,
                    "containerID": format!("containerd://{}", self.container_id),
                    "ready": true,
                    "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}
                }]
            }
        })
    }

    /// The `nodewatch_oom_kills_total` labels of a kill of `tail` here.
    fn labels(&self) -> [(&str, &str); 4] {
        [
            ("namespace", self.namespace),
            ("pod", self.name),
            ("container", self.container),
            ("comm", "tail"),
        ]
    }

    /// Asserts a stored event names this pod and container.
    fn assert_named(&self, ev: &serde_json::Value) {
        let k = &ev["oomKill"];
        assert_eq!(ev["node"], "n1");
        assert_eq!(k["comm"], "tail", "{ev}");
        assert_eq!(k["cgroup"], self.cg.path.as_str(), "{ev}");
        assert_eq!(k["podUid"], self.uid.as_str(), "{ev}");
        assert_eq!(k["containerId"], self.container_id.as_str(), "{ev}");
        assert_eq!(k["namespace"], self.namespace, "{ev}");
        assert_eq!(k["pod"], self.name, "{ev}");
        assert_eq!(k["container"], self.container, "{ev}");
    }
}

/// Accepts connections on `addr` and never answers: a kubelet that hangs
/// (the slowest way to be unreachable, each read waits for the agent's
/// timeout). Counts the connections it holds.
struct HungKubelet {
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl HungKubelet {
    fn at(addr: SocketAddr) -> Self {
        // std sets SO_REUSEADDR: the port the stand-in just closed binds again.
        let listener = TcpListener::bind(addr).unwrap();
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let keep = Arc::clone(&held);
        std::thread::spawn(move || {
            for tcp in listener.incoming().map_while(Result::ok) {
                keep.lock().unwrap().push(tcp);
            }
        });
        Self { held }
    }

    fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

#[test]
fn oom_kill_carries_namespace_pod_and_container_names_from_the_kubelet() {
    let _host = nodewatch_tests::host_exclusive();
    if !can_run() {
        return;
    }
    let _turn = cgroup_turn();
    // One pod per kubelet cgroup driver's path shape.
    let mut pods = Vec::new();
    for (namespace, name, container, segments) in [
        (
            "shop",
            "cart-5d8f7b-x2k9q",
            "cart",
            cgroupfs_segments as fn(&str, &str) -> Vec<String>,
        ),
        ("batch", "report-28711440-bq7lm", "render", systemd_segments),
    ] {
        let (uid, container_id) = ids();
        let cg = match PodCgroup::new(&segments(&uid, &container_id)) {
            Ok(cg) => cg,
            Err(what) => return missing(&what),
        };
        pods.push(Pod {
            namespace,
            name,
            container,
            uid,
            container_id,
            cg,
        });
    }
    // A pod of another container runtime's id scheme, not killed: the list
    // is read whole, not only the entries the test looks up.
    let mut items: Vec<serde_json::Value> = pods.iter().map(Pod::item).collect();
    items.push(serde_json::json!({
        "metadata": {"name": "dns-6f6b679f8f-7lq2x", "namespace": "kube-system", "uid": "0d08203e-255a-11e9-8cd9-0007cb0b2cc8"},
        "spec": {"containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.3"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "coredns",
            "containerID": "cri-o://49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59"}]}
    }));
    let list =
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "items": items}).to_string();

    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    // The kubelet's default serving certificate: self-signed.
    let cert = rcgen::generate_simple_self_signed(vec!["n1".to_string()]).unwrap();
    let mut kubelet = FakeServer::start(
        &cert.cert.pem(),
        &cert.signing_key.serialize_pem(),
        TOKEN,
        move |path| match path {
            "/pods" => ("200 OK", list.clone()),
            _ => ("404 Not Found", r#"{"kind":"Status","code":404}"#.into()),
        },
    );
    let token = pki.path("sa-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let _agent = start_oom_agent(
        &pki,
        &agg,
        &format!(
            "kubernetes:\n  kubelet_url: https://127.0.0.1:{}\n  token_file: {}\n  kubelet_insecure_skip_verify: true\n  refresh: 1s\n",
            kubelet.addr.port(),
            token.display(),
        ),
    );
    // The agent has read the list (it fills the OOM name cache before it
    // reports the pod count).
    wait_for(Duration::from_secs(30), "nodewatch_node_pods 3", || {
        (metric(&agg, "nodewatch_node_pods", &[]) == Some(3.0)).then_some(())
    });
    assert!(kubelet
        .requests()
        .iter()
        .all(|(p, a)| p == "/pods" && a == &format!("Bearer {TOKEN}")));

    let ops = pki.operator("ops");
    let follow = Follow::start(&ops, &agg);
    let mut alive = Vec::new();
    for pod in &pods {
        let (first, pid, killed_at) = kill_a_second_process(&pod.cg);
        alive.push(first);
        follow.expect_within_a_second(pid, killed_at);
        pod.assert_named(&stored_event(&ops, &agg, pid));
        wait_kill_count(&agg, &pod.labels(), 1.0);
    }

    // The kubelet hangs: the agent's reads wait for their timeout. The next
    // kill is still at the aggregator within a second, named from the last
    // list read.
    let addr = kubelet.addr;
    kubelet.shut_down();
    let hung = HungKubelet::at(addr);
    wait_for(
        Duration::from_secs(10),
        "the agent waiting on the hung kubelet",
        || (hung.connections() > 0).then_some(()),
    );
    let pod = &pods[0];
    let (first, pid, killed_at) = kill_a_second_process(&pod.cg);
    alive.push(first);
    follow.expect_within_a_second(pid, killed_at);
    pod.assert_named(&stored_event(&ops, &agg, pid));
    wait_kill_count(&agg, &pod.labels(), 2.0);

    drop(follow);
    drop(alive);
    drop(pods);
}
