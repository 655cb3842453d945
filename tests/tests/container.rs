//! The container image as a cluster runs it, and the daemons' logs as
//! `kubectl logs` shows them.
//!
//! - `image_runs_as_the_manifests_describe`: deploy/container/build.sh builds
//!   the image (amd64 and arm64, `--debug` for build time) with the real
//!   podman from the repository's Containerfile. Its layers hold only the
//!   expected files and the binaries are static. The aggregator runs from it
//!   as the image's non-root user; the agent runs from it with exactly what
//!   deploy/kubernetes/agent-daemonset.yaml grants (read from the manifest:
//!   capabilities, read-only root, hostPath mounts at the same paths, host
//!   PID and network, seccomp, environment, command, memory limit) and the
//!   configuration of agent-config.yaml. Its node series reach the
//!   aggregator, its eBPF programs attach as they do outside a container, and
//!   a real OOM kill shows up as `nodewatch_oom_kills_total` within 2 s. Then
//!   each capability is taken away in turn to show what it is needed for.
//!   The arm64 agent from the image runs under qemu-user and collects the same
//!   series. A push to an unreachable registry fails cleanly.
//! - `build_script_names_what_is_missing`: no podman/buildah, a Rust target
//!   rustup cannot add, a bad argument: a clear message, a non-zero exit,
//!   no image left behind.
//! - `logs_*`: both daemons with stderr on a pipe write no colour codes, and
//!   `--log.format json` / `log: {format: json}` write one JSON object per line.
//! - `release_workflow_passes_actionlint`.
//!
//! Podman runs here as root with runc and cgroupfs and a containers.conf
//! without default ulimits (this sandbox refuses setrlimit for containers;
//! crun fails on its hybrid cgroups). Names carry `nwimg` and the test's pid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nodewatch_tests::{bin, find_program, free_port, http_get, missing, wait_for, MemCgroup, Pki};
use serde::Deserialize;
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    let path = repo().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------- podman

/// Podman as this machine runs it, with every container and image this test
/// made removed on drop.
struct Podman {
    conf: tempfile::TempDir,
    tag: String,
    containers: std::sync::Mutex<Vec<String>>,
    images: Vec<String>,
}

impl Podman {
    fn new() -> Self {
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(
            conf.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Self {
            conf,
            tag: format!("nwimg-{}", std::process::id()),
            containers: std::sync::Mutex::new(Vec::new()),
            images: Vec::new(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .env("CONTAINERS_CONF", self.conf.path().join("containers.conf"));
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "podman {args:?}:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run -d` with `args`, remembered for removal.
    fn run(&self, name: &str, args: &[String]) {
        self.containers.lock().unwrap().push(name.to_string());
        let out = self
            .cmd()
            .args(["run", "-d", "--name", name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman run {name} {args:?}:\n{}",
            text(&out)
        );
    }

    fn logs(&self, name: &str) -> String {
        self.cmd()
            .args(["logs", name])
            .output()
            .map(|o| text(&o))
            .unwrap_or_default()
    }

    fn stop(&self, name: &str) {
        let _ = self.cmd().args(["rm", "-f", "-t", "2", name]).output();
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let names = self.containers.lock().unwrap().clone();
        for name in &names {
            if std::thread::panicking() {
                eprintln!("---- container {name} ----\n{}", self.logs(name));
            }
            self.stop(name);
        }
        for image in self.images.iter().rev() {
            let _ = self.cmd().args(["manifest", "rm", image]).output();
            let _ = self.cmd().args(["rmi", "-f", image]).output();
        }
    }
}

// ------------------------------------------------------------- manifests

/// The DaemonSet's agent container turned into `podman run` arguments, with
/// the host side of every volume: hostPaths of type `Directory` (views of
/// the host) are the host's own; a `DirectoryOrCreate` hostPath (the spool,
/// state the agent writes) and every configMap, secret, projected and
/// emptyDir volume are folders of the test's (`volumes`: volume name → host
/// folder or, for a `subPath` mount, file).
struct PodSpec {
    args: Vec<String>,
    command: Vec<String>,
    /// Container path → host path, one per mount.
    mounts: Vec<(String, PathBuf)>,
    capabilities: Vec<String>,
}

#[allow(
    clippy::too_many_lines,
    reason = "the pod spec as the manifests write it, field by field"
)]
fn agent_pod(without: Option<&str>, node: &str, volumes: &BTreeMap<String, PathBuf>) -> PodSpec {
    let ds = yaml_docs("deploy/kubernetes/agent-daemonset.yaml")
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let c = seq(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("agent"))
        .expect("container agent");
    let mut args = Vec::new();
    if pod["hostPID"].as_bool() == Some(true) {
        args.push("--pid=host".into());
    }
    if pod["hostNetwork"].as_bool() == Some(true) {
        args.push("--network=host".into());
    }
    let seccomp = c["securityContext"]["seccompProfile"]["type"]
        .as_str()
        .or(pod["securityContext"]["seccompProfile"]["type"].as_str());
    match seccomp {
        Some("Unconfined") => args.push("--security-opt=seccomp=unconfined".into()),
        Some("RuntimeDefault") | None => {}
        Some(other) => panic!("seccomp profile {other}: teach this test"),
    }
    let sc = &c["securityContext"];
    assert_ne!(
        sc["privileged"].as_bool(),
        Some(true),
        "the agent is not privileged"
    );
    if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        args.push("--security-opt=no-new-privileges".into());
    }
    if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        // As the kubelet does it: no tmpfs over /tmp, /run, /var/tmp.
        args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if let Some(uid) = sc["runAsUser"].as_u64() {
        let gid = sc["runAsGroup"].as_u64().unwrap_or(uid);
        args.push(format!("--user={uid}:{gid}"));
    }
    for cap in seq(&sc["capabilities"]["drop"]) {
        args.push(format!("--cap-drop={}", cap.as_str().unwrap()));
    }
    let capabilities: Vec<String> = seq(&sc["capabilities"]["add"])
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    for cap in &capabilities {
        if Some(cap.as_str()) != without {
            args.push(format!("--cap-add={cap}"));
        }
    }
    if let Some(limit) = c["resources"]["limits"]["memory"].as_str() {
        let bytes = parse_quantity(limit);
        args.push(format!("--memory={bytes}b"));
        args.push(format!("--memory-swap={bytes}b"));
    }
    for e in seq(&c["env"]) {
        let name = e["name"].as_str().unwrap();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("spec.nodeName") => node.to_string(),
                Some("status.hostIP") => "127.0.0.1".to_string(),
                other => panic!("env {name} from {other:?}: teach this test"),
            }
        };
        args.push(format!("--env={name}={value}"));
    }
    let mut mounts = Vec::new();
    for m in seq(&c["volumeMounts"]) {
        let vname = m["name"].as_str().unwrap();
        let path = m["mountPath"].as_str().unwrap();
        let v = seq(&pod["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some(vname))
            .unwrap_or_else(|| panic!("volume {vname}"));
        let host: PathBuf = if let Some(hp) = v["hostPath"]["path"].as_str() {
            match v["hostPath"]["type"].as_str() {
                Some("Directory") => PathBuf::from(hp),
                Some("DirectoryOrCreate") => volumes[vname].clone(),
                other => panic!("hostPath type {other:?} of {vname}: teach this test"),
            }
        } else if ["configMap", "secret", "projected", "emptyDir"]
            .iter()
            .any(|k| v.get(k).is_some())
        {
            volumes
                .get(vname)
                .unwrap_or_else(|| panic!("volume {vname}: the test gives it no content"))
                .clone()
        } else {
            panic!("volume {vname}: a kind this test does not know");
        };
        let mut opts = vec![if m["readOnly"].as_bool() == Some(true) {
            "ro"
        } else {
            "rw"
        }];
        match m["mountPropagation"].as_str() {
            Some("HostToContainer") => opts.push("rslave"),
            Some("Bidirectional") => opts.push("rshared"),
            None | Some("None") => {}
            Some(other) => panic!("mountPropagation {other}"),
        }
        args.push(format!(
            "--volume={}:{path}:{}",
            host.display(),
            opts.join(",")
        ));
        mounts.push((path.to_string(), host));
    }
    let command: Vec<String> = seq(&c["command"])
        .iter()
        .chain(seq(&c["args"]))
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert!(!command.is_empty(), "the DaemonSet names the command");
    PodSpec {
        args,
        command,
        mounts,
        capabilities,
    }
}

impl PodSpec {
    /// Where the file the container sees at `path` lives on the host.
    fn host_path(&self, path: &str) -> PathBuf {
        let (mount, host) = self
            .mounts
            .iter()
            .filter(|(m, _)| path == m || path.starts_with(&format!("{m}/")))
            .max_by_key(|(m, _)| m.len())
            .unwrap_or_else(|| panic!("{path} is on no volume of the DaemonSet"));
        host.join(path[mount.len()..].trim_start_matches('/'))
    }
}

/// `128Mi`, `1Gi`, `500M`: Kubernetes quantities as bytes.
fn parse_quantity(q: &str) -> u64 {
    let (num, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ]
    .iter()
    .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
    .unwrap_or((q, 1));
    num.parse::<u64>().unwrap() * mult
}

/// agent-config.yaml's `agent.yaml`, adapted where this machine differs
/// from a cluster; returns the YAML and the overridden keys with why.
fn agent_config(aggregator: &str, health: &str) -> (String, Vec<(&'static str, &'static str)>) {
    let cm = yaml_docs("deploy/kubernetes/agent-config.yaml")
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .unwrap();
    let mut cfg: Value =
        serde_yaml_ng::from_str(cm["data"]["agent.yaml"].as_str().unwrap()).unwrap();
    let map = cfg.as_mapping_mut().unwrap();
    let why = vec![
        ("aggregators", "the test's aggregator container on loopback, not the StatefulSet's DNS names"),
        ("bootstrap", "removed: no Kubernetes API for the TokenReview; the node certificate is made at test time and put where the bootstrap writes it (the identity emptyDir)"),
        ("kubernetes", "removed: no kubelet or API server here"),
        ("health_listen", "a free loopback port: several agents share the host network in this test (one per node in a cluster)"),
    ];
    map.insert(
        "aggregators".into(),
        Value::Sequence(vec![Value::from(aggregator)]),
    );
    map.remove("bootstrap");
    map.remove("kubernetes");
    map.insert("health_listen".into(), Value::from(health));
    (serde_yaml_ng::to_string(&cfg).unwrap(), why)
}

// --------------------------------------------------------------- metrics

/// The value of label `key` in a series line.
fn label<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find('{')?;
    let labels = &line[start + 1..line.rfind('}')?];
    let mut rest = labels;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"")?;
        let end = after.find('"')?;
        if k.trim_start_matches(',') == key {
            return Some(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    None
}

/// `(line, value)` of every series of `name` for `node`.
fn series<'a>(metrics: &'a str, name: &str, node: &str) -> Vec<(&'a str, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && label(l, "node") == Some(node))
        .filter_map(|l| Some((l, l.rsplit_once(' ')?.1.parse().ok()?)))
        .collect()
}

/// eBPF program → state (`attached`, `failed`, `skipped`) as the aggregator
/// shows it for `node`; empty when the agent runs without eBPF.
fn programs(metrics: &str, node: &str) -> BTreeMap<String, String> {
    series(metrics, "nodewatch_agent_ebpf_programs", node)
        .into_iter()
        .filter(|(_, v)| *v > 0.5)
        .map(|(l, _)| {
            (
                label(l, "program").unwrap().to_string(),
                label(l, "state").unwrap().to_string(),
            )
        })
        .collect()
}

/// Collectors whose last run failed, for `node`.
fn failed_collectors(metrics: &str, node: &str) -> BTreeSet<String> {
    series(metrics, "nodewatch_agent_collector_success", node)
        .into_iter()
        .filter(|(_, v)| *v < 0.5)
        .map(|(l, _)| label(l, "collector").unwrap().to_string())
        .collect()
}

/// Metric names in a Prometheus text exposition.
fn names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

// ------------------------------------------------------------------ image

/// One architecture's image: its layers unpacked, its config, its files.
struct Unpacked {
    root: tempfile::TempDir,
    config: serde_json::Value,
    files: BTreeMap<String, String>,
    bytes: u64,
}

/// `podman save` of `image` as an OCI layout; every layer listed and unpacked.
fn unpack(podman: &Podman, image: &str) -> Unpacked {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    podman.ok(&[
        "save",
        "--format",
        "oci-dir",
        "-o",
        oci.to_str().unwrap(),
        image,
    ]);
    let blob = |digest: &str| {
        oci.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let index = json(&oci.join("index.json"));
    let manifest = json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(&blob(manifest["config"]["digest"].as_str().unwrap()));
    let root = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    let mut bytes = 0;
    for layer in manifest["layers"].as_array().unwrap() {
        bytes += layer["size"].as_u64().unwrap();
        let path = blob(layer["digest"].as_str().unwrap());
        let out = Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "tar -tv: {}", text(&out));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // -rwxr-xr-x 0/0 123 1970-01-01 00:00 usr/local/bin/nodewatch
            let f: Vec<&str> = line.split_whitespace().collect();
            let name = f[5].trim_start_matches("./").trim_end_matches('/');
            if !name.is_empty() {
                files.insert(name.to_string(), format!("{} {}", f[0], f[1]));
            }
        }
        let out = Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(root.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "tar -x: {}", text(&out));
    }
    Unpacked {
        root,
        config,
        files,
        bytes,
    }
}

/// Capabilities the DaemonSet grants (as the design lists them) that this
/// machine shows no use for, and why; deploy/README.md keeps the same table.
const NOT_NEEDED_HERE: [(&str, &str); 2] = [
    (
        "SYS_RESOURCE",
        "Linux 5.11 and later charge BPF maps to the memory cgroup, not to RLIMIT_MEMLOCK, and the agent never raises that limit",
    ),
    (
        "SYSLOG",
        "it serves only the OOM fallback that reads /dev/kmsg when BPF cannot run, and the DaemonSet gives the container no /dev/kmsg",
    ),
];

const BINARIES: [&str; 3] = ["nodewatch-agent", "nodewatch-aggregator", "nodewatch"];

#[allow(
    clippy::too_many_lines,
    reason = "the image's checks, one per property the manifests rely on"
)]
fn check_image(u: &Unpacked, arch: &str) {
    let expected: BTreeMap<&str, &str> = [
        ("etc", "drwxr-xr-x 0/0"),
        ("etc/group", "-rw-r--r-- 0/0"),
        ("etc/passwd", "-rw-r--r-- 0/0"),
        ("etc/ssl", "drwxr-xr-x 0/0"),
        ("etc/ssl/certs", "drwxr-xr-x 0/0"),
        ("etc/ssl/certs/ca-certificates.crt", "-rw-r--r-- 0/0"),
        ("usr", "drwxr-xr-x 0/0"),
        ("usr/local", "drwxr-xr-x 0/0"),
        ("usr/local/bin", "drwxr-xr-x 0/0"),
        ("usr/local/bin/nodewatch", "-rwxr-xr-x 0/0"),
        ("usr/local/bin/nodewatch-agent", "-rwxr-xr-x 0/0"),
        ("usr/local/bin/nodewatch-aggregator", "-rwxr-xr-x 0/0"),
    ]
    .into_iter()
    .collect();
    let got: BTreeMap<&str, &str> = u
        .files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, expected, "{arch}: the image's files (mode, owner)");

    let cfg = &u.config;
    assert_eq!(cfg["architecture"], arch);
    assert_eq!(cfg["os"], "linux");
    let c = &cfg["config"];
    assert_eq!(c["User"], "65532:65532", "{arch}: numeric non-root user");
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://github.com/nodewatch/nodewatch"
    );
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap();
    match head {
        Some(h) => assert!(
            revision.starts_with(&h),
            "{arch}: revision {revision}, HEAD {h}"
        ),
        None => assert_eq!(revision, "unknown"),
    }
    assert!(
        seq_json(&c["Env"]).contains(&"PATH=/usr/local/bin"),
        "{arch}: {:?}",
        c["Env"]
    );
    let passwd = std::fs::read_to_string(u.root.path().join("etc/passwd")).unwrap();
    assert!(passwd.contains("nodewatch:x:65532:65532:"), "{passwd}");
    let bundle =
        std::fs::read_to_string(u.root.path().join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 50,
        "{arch}: a CA bundle"
    );

    for b in BINARIES {
        let path = u.root.path().join("usr/local/bin").join(b);
        let headers = Command::new("readelf")
            .arg("-lW")
            .arg(&path)
            .output()
            .unwrap();
        let dynamic = Command::new("readelf")
            .arg("-dW")
            .arg(&path)
            .output()
            .unwrap();
        let (headers, dynamic) = (text(&headers), text(&dynamic));
        assert!(
            !headers.contains("INTERP"),
            "{arch} {b} names a loader:\n{headers}"
        );
        assert!(
            !dynamic.contains("NEEDED"),
            "{arch} {b} needs libraries:\n{dynamic}"
        );
        let machine = if arch == "amd64" { "X86-64" } else { "AArch64" };
        let h = Command::new("readelf")
            .arg("-h")
            .arg(&path)
            .output()
            .unwrap();
        assert!(text(&h).contains(machine), "{arch} {b}: not for {machine}");
    }
    // The eBPF objects are compiled into the agent, byte for byte.
    let agent = std::fs::read(u.root.path().join("usr/local/bin/nodewatch-agent")).unwrap();
    for entry in std::fs::read_dir(repo().join("ebpf")).unwrap() {
        let p = entry.unwrap().path();
        if p.to_string_lossy().ends_with(".bpf.o") {
            let obj = std::fs::read(&p).unwrap();
            assert!(
                agent.windows(obj.len()).any(|w| w == obj.as_slice()),
                "{arch}: the agent does not embed {}",
                p.display()
            );
        }
    }
}

fn seq_json(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default()
}

fn build_script() -> PathBuf {
    repo().join("deploy/container/build.sh")
}

/// What the container test needs, or why it cannot run here.
fn container_prerequisites() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("root (podman as root, eBPF, memory cgroups)".into());
    }
    for p in ["podman", "runc", "qemu-aarch64-static", "readelf", "tar"] {
        if find_program(p).is_none() {
            return Err(format!("{p} (tests/run.sh installs it)"));
        }
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err("kernel BTF (/sys/kernel/btf/vmlinux)".into());
    }
    if !Path::new("/sys/kernel/tracing/events").exists() {
        return Err("tracefs at /sys/kernel/tracing (tests/run.sh mounts it)".into());
    }
    Ok(())
}

/// Runs an agent container for `node` from `image` per the DaemonSet
/// (without capability `without`), streaming to `aggregator`; returns the
/// container's name, its health address and the folders behind its volumes.
fn start_agent(
    podman: &Podman,
    pki: &Pki,
    image: &str,
    node: &str,
    aggregator: &str,
    without: Option<&str>,
) -> (
    String,
    std::net::SocketAddr,
    Vec<tempfile::TempDir>,
    PodSpec,
) {
    let mut keep = Vec::new();
    let mut volumes = BTreeMap::new();
    for v in ["spool", "trust", "bootstrap-token", "identity"] {
        let d = tempfile::tempdir().unwrap();
        volumes.insert(v.to_string(), d.path().to_path_buf());
        keep.push(d);
    }
    let health: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (yaml, _) = agent_config(aggregator, &health.to_string());
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("agent.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    volumes.insert("config".into(), cfg);
    keep.push(cfg_dir);
    // The projected token is not read (no bootstrap here), but is there.
    std::fs::write(volumes["bootstrap-token"].join("token"), "unused").unwrap();
    let spec = agent_pod(without, node, &volumes);
    // The certificate files where the configuration names them.
    let parsed: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let files = pki.node(node);
    for (key, src) in [
        ("ca", &files.ca),
        ("cert", &files.cert),
        ("key", &files.key),
    ] {
        let dst = spec.host_path(parsed["tls"][key].as_str().unwrap());
        std::fs::copy(src, &dst)
            .unwrap_or_else(|e| panic!("{} → {}: {e}", src.display(), dst.display()));
    }
    let name = format!(
        "{}-{}",
        podman.tag,
        without.map_or("agent".to_string(), |c| format!("no-{}", c.to_lowercase()))
    );
    let mut args = spec.args.clone();
    args.push(image.to_string());
    args.extend(spec.command.iter().cloned());
    podman.run(&name, &args);
    (name, health, keep, spec)
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn image_runs_as_the_manifests_describe() {
    if let Err(what) = container_prerequisites() {
        return missing(&what);
    }
    let mut podman = Podman::new();
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("localhost/nodewatch-test-{}", std::process::id());
    let list = format!("{name}:{version}");
    let amd64 = format!("{list}-amd64");
    let arm64 = format!("{list}-arm64");
    podman.images = vec![amd64.clone(), arm64.clone(), list.clone()];

    // 1. The build, as a user runs it (debug profile: the release profile
    //    takes several times longer to compile on CI's two cores).
    let started = Instant::now();
    let out = Command::new(build_script())
        .args(["--debug", "--image", &name])
        .env(
            "CONTAINERS_CONF",
            podman.conf.path().join("containers.conf"),
        )
        .output()
        .unwrap();
    let build_log = text(&out);
    assert!(out.status.success(), "build.sh failed:\n{build_log}");
    println!(
        "build.sh --debug (amd64 + arm64): {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().last(),
        Some(list.as_str()),
        "build.sh prints the image last"
    );
    let inspect = podman.ok(&["manifest", "inspect", &list]);
    let index: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let platforms: BTreeSet<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        platforms,
        BTreeSet::from(["linux/amd64".to_string(), "linux/arm64".to_string()])
    );

    // 2. What is in it.
    let images = [
        ("amd64", unpack(&podman, &amd64)),
        ("arm64", unpack(&podman, &arm64)),
    ];
    for (arch, u) in &images {
        check_image(u, arch);
        println!(
            "{arch}: {} files, layers {} KiB",
            u.files.len(),
            u.bytes / 1024
        );
    }

    // 3. The aggregator from the image, as its StatefulSet runs it: the
    //    image's own user, read-only root, no capabilities, the config and
    //    certificate Secret mounted as files its group may read.
    let pki = Pki::new();
    let sts = yaml_docs("deploy/kubernetes/aggregator-statefulset.yaml")
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("StatefulSet"))
        .unwrap();
    let pod = &sts["spec"]["template"]["spec"];
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    assert_eq!(
        format!("{uid}:{uid}"),
        images[0].1.config["config"]["User"],
        "the image's user is the StatefulSet's"
    );
    let agg_c = &seq(&pod["containers"])[0];
    let agg_cmd: Vec<String> = seq(&agg_c["command"])
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let tls = tempfile::tempdir().unwrap();
    // The Secret's folder as the kubelet mounts it: anyone may enter.
    std::fs::set_permissions(
        tls.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for (src, dst) in [
        ("ca.crt", "ca.crt"),
        ("aggregator.crt", "tls.crt"),
        ("aggregator.key", "tls.key"),
    ] {
        let p = tls.path().join(dst);
        std::fs::copy(pki.path(src), &p).unwrap();
        // Secret volume with defaultMode 0440 and fsGroup 65532.
        nix::unistd::chown(&p, Some(0.into()), Some(u32::try_from(uid).unwrap().into())).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o440)).unwrap();
    }
    let grpc = free_port();
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agg_yaml = tls.path().join("aggregator.yaml");
    std::fs::write(
        &agg_yaml,
        format!("listen: {{grpc: '127.0.0.1:{grpc}', http: '{http}'}}\ntls: {{ca: /etc/nodewatch/tls/ca.crt, cert: /etc/nodewatch/tls/tls.crt, key: /etc/nodewatch/tls/tls.key}}\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        &agg_yaml,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let sc = &agg_c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(seq(&sc["capabilities"]["drop"])[0].as_str(), Some("ALL"));
    let agg_name = format!("{}-aggregator", podman.tag);
    let mut args: Vec<String> = vec![
        "--network=host".into(),
        "--read-only".into(),
        "--read-only-tmpfs=false".into(),
        "--cap-drop=ALL".into(),
        "--security-opt=no-new-privileges".into(),
        "--tmpfs=/tmp".into(),
        format!(
            "--volume={}:/etc/nodewatch/aggregator.yaml:ro",
            agg_yaml.display()
        ),
        format!("--volume={}:/etc/nodewatch/tls:ro", tls.path().display()),
        amd64.clone(),
    ];
    args.extend(agg_cmd);
    podman.run(&agg_name, &args);
    wait_for(
        Duration::from_secs(30),
        "the aggregator container's /healthz",
        || {
            http_get(http, "/healthz")
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ())
        },
    );
    let pid = podman.ok(&["inspect", "--format", "{{.State.Pid}}", &agg_name]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    for key in ["Uid:", "Gid:"] {
        let ids: Vec<&str> = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .collect();
        assert_eq!(
            ids,
            vec![uid.to_string(); 4],
            "aggregator {key} (real, effective, saved, fs)"
        );
    }
    println!("aggregator container: uid/gid {uid} (non-root)");
    let metrics = || {
        http_get(http, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    let target = format!("127.0.0.1:{grpc}");

    // 4. The reference: this machine's own agent binary, outside a
    //    container, with every eBPF program it can load.
    let native_node = "nwimg-native";
    let native_cfg = pki.path("native.yaml");
    let files = pki.node(native_node);
    std::fs::write(
        &native_cfg,
        format!(
            "aggregators: ['{target}']\ninterval: 10s\nhealth_listen: ''\nspool: {{dir: {}}}\ntls: {{ca: {}, cert: {}, key: {}}}\n",
            pki.path("native-spool").display(),
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        ),
    )
    .unwrap();
    let native = {
        let mut child = Command::new(bin("nodewatch-agent"))
            .args(["--config", native_cfg.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = wait_for(
            Duration::from_secs(60),
            "the native agent's eBPF programs",
            || {
                let p = programs(&metrics(), native_node);
                (!p.is_empty()).then_some(p)
            },
        );
        let _ = child.kill();
        let _ = child.wait();
        p
    };
    let attachable: BTreeSet<&String> = native
        .iter()
        .filter(|(_, s)| s.as_str() == "attached")
        .map(|(p, _)| p)
        .collect();
    println!(
        "outside a container: {} of {} programs attach: {attachable:?}",
        attachable.len(),
        native.len()
    );
    assert!(
        attachable.contains(&"oom_mark_victim".to_string()),
        "{native:?}"
    );

    // 5. The agent as the DaemonSet runs it.
    let node = "nwimg-amd64";
    let (agent_name, health, _dirs, spec) = start_agent(&podman, &pki, &amd64, node, &target, None);
    let (_, overridden) = agent_config(&target, &health.to_string());
    println!(
        "agent container: podman run {} {amd64} {}",
        spec.args.join(" "),
        spec.command.join(" ")
    );
    for (key, why) in &overridden {
        println!("  agent.yaml {key}: {why}");
    }
    wait_for(
        Duration::from_secs(60),
        "the agent container's /readyz",
        || {
            http_get(health, "/readyz")
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ())
        },
    );
    let m = wait_for(
        Duration::from_secs(60),
        "node series from the agent container",
        || {
            let m = metrics();
            (!series(&m, "node_load1", node).is_empty()
                && !series(&m, "node_cpu_seconds_total", node).is_empty()
                && !programs(&m, node).is_empty())
            .then_some(m)
        },
    );
    for family in [
        "node_memory_MemAvailable_bytes",
        "node_network_receive_bytes_total",
        "node_filesystem_avail_bytes",
        "node_disk_read_bytes_total",
    ] {
        assert!(
            !series(&m, family, node).is_empty(),
            "{family} missing for {node}"
        );
    }
    let in_container = programs(&m, node);
    assert_eq!(
        in_container, native,
        "eBPF programs: in the container vs outside"
    );
    let failed_native = failed_collectors(&m, native_node);
    let failed_here = failed_collectors(&m, node);
    assert!(
        failed_here.is_subset(&failed_native),
        "collectors failing only in the container: {:?}",
        failed_here.difference(&failed_native).collect::<Vec<_>>()
    );
    println!("in the container: eBPF {in_container:?}; failed collectors {failed_here:?}");

    // A real OOM kill on the host, under a name no other test uses.
    let cg = MemCgroup::new("nwimg-oom", 32 << 20).expect("a memory cgroup");
    let hog_dir = tempfile::tempdir().unwrap();
    let hog = hog_dir.path().join("nwimg-hog");
    std::os::unix::fs::symlink(find_program("tail").unwrap(), &hog).unwrap();
    let kills = |m: &str| -> f64 {
        series(m, "nodewatch_oom_kills_total", node)
            .into_iter()
            .filter(|(l, _)| label(l, "comm") == Some("nwimg-hog"))
            .map(|(_, v)| v)
            .sum()
    };
    assert!(
        kills(&metrics()) < 0.5,
        "an OOM kill of nwimg-hog before the test made one"
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec {} /dev/zero",
            cg.dir.join("cgroup.procs").display(),
            hog.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let killed = Instant::now();
    assert!(!status.success(), "the hog was not killed");
    wait_for(
        Duration::from_secs(10),
        "nodewatch_oom_kills_total from the agent container",
        || (kills(&metrics()) >= 1.0).then_some(()),
    );
    let latency = killed.elapsed();
    println!(
        "OOM kill → nodewatch_oom_kills_total on the aggregator: {} ms",
        latency.as_millis()
    );
    assert!(latency < Duration::from_secs(2), "took {latency:?}");
    drop(cg);

    // Nothing in either container's log is coloured (kubectl logs reads these).
    for c in [&agent_name, &agg_name] {
        let log = podman.logs(c);
        assert!(
            !log.contains('\u{1b}'),
            "{c}: colour codes in its log:\n{log}"
        );
    }
    podman.stop(&agent_name);

    // 6. Each capability taken away in turn, all at once in parallel.
    let mut runs = Vec::new();
    for cap in &spec.capabilities {
        let n = format!("nwimg-no-{}", cap.to_lowercase().replace('_', "-"));
        let run = start_agent(&podman, &pki, &amd64, &n, &target, Some(cap));
        runs.push((cap.clone(), n, run));
    }
    let mut table = String::from(
        "| without | eBPF programs not attached | collectors failing |\n|---|---|---|\n",
    );
    let mut needed = BTreeMap::new();
    for (cap, n, (cname, _, _dirs, _)) in &runs {
        // The first batch carries every collector's success; with eBPF it
        // also carries every program's state.
        let m = wait_for(
            Duration::from_secs(60),
            &format!("the first batch of {n}"),
            || {
                let m = metrics();
                (!series(&m, "nodewatch_agent_collector_success", n).is_empty()).then_some(m)
            },
        );
        let p = programs(&m, n);
        let not_attached: Vec<String> = attachable
            .iter()
            .filter(|prog| p.get(prog.as_str()).map(String::as_str) != Some("attached"))
            .map(|prog| (*prog).clone())
            .collect();
        let lost_text = if p.is_empty() {
            let log = podman.logs(cname);
            let line = log
                .lines()
                .find(|l| l.contains("eBPF signals off"))
                .unwrap_or("");
            let why = line
                .split_once("reason=")
                .map_or("(no reason logged)", |(_, r)| r)
                .replace(" fallback=", "; OOM kills from the kernel log instead: ");
            format!("all {}: {why}", attachable.len())
        } else if not_attached.is_empty() {
            "none".to_string()
        } else {
            not_attached.join(", ")
        };
        let failed: Vec<String> = failed_collectors(&m, n)
            .difference(&failed_native)
            .cloned()
            .collect();
        let _ = writeln!(
            table,
            "| `{cap}` | {lost_text} | {} |",
            if failed.is_empty() {
                "none".into()
            } else {
                failed.join(", ")
            }
        );
        needed.insert(cap.clone(), !not_attached.is_empty() || !failed.is_empty());
        podman.stop(cname);
    }
    println!("{table}");
    for (cap, is_needed) in &needed {
        match NOT_NEEDED_HERE.iter().find(|(c, _)| c == cap) {
            None => assert!(
                is_needed,
                "{cap} is in the DaemonSet's capabilities but nothing fails without it here:\n{table}"
            ),
            Some((_, why)) => {
                assert!(
                    !is_needed,
                    "{cap} is needed here now: update NOT_NEEDED_HERE and deploy/README.md:\n{table}"
                );
                println!("{cap}: not needed here: {why}");
            }
        }
    }

    // 7. The arm64 agent from the arm64 image under qemu-user, beside the
    //    amd64 one: one collection of this machine each, the same series.
    let once = |cmd: &mut Command| -> String {
        let out = cmd.arg("--once").env("RUST_LOG", "warn").output().unwrap();
        assert!(out.status.success(), "{cmd:?} --once:\n{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let amd64_names = names(&once(&mut Command::new(
        images[0]
            .1
            .root
            .path()
            .join("usr/local/bin/nodewatch-agent"),
    )));
    let started = Instant::now();
    let arm64_names = names(&once(
        Command::new(find_program("qemu-aarch64-static").unwrap()).arg(
            images[1]
                .1
                .root
                .path()
                .join("usr/local/bin/nodewatch-agent"),
        ),
    ));
    println!(
        "arm64 agent --once under qemu-aarch64-static: {} series names in {:.1} s",
        arm64_names.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(amd64_names.len() > 50, "{amd64_names:?}");
    assert_eq!(
        arm64_names, amd64_names,
        "series names: arm64 under qemu vs amd64"
    );

    // 8. A push that cannot succeed: a clear failure, the local image intact.
    let closed = free_port();
    let out = Command::new(build_script())
        .args([
            "--debug",
            "--arch",
            "amd64",
            "--image",
            &name,
            "--push",
            &format!("127.0.0.1:{closed}/nodewatch-test"),
        ])
        .env(
            "CONTAINERS_CONF",
            podman.conf.path().join("containers.conf"),
        )
        .output()
        .unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "pushing to 127.0.0.1:{closed}/nodewatch-test:{version} failed"
        )) && log.contains("podman login"),
        "{log}"
    );
    podman.ok(&["image", "exists", &amd64]);
    assert_no_build_leftovers(&podman);
    // The image list is still readable (podman 4.3 trips on some manifest lists).
    podman.ok(&["images"]);
    podman.images.push(list);
}

/// No temporary image of a build.sh run is left.
fn assert_no_build_leftovers(podman: &Podman) {
    let all = podman.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let left: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("localhost/nodewatch-build-"))
        .collect();
    assert!(left.is_empty(), "build.sh left {left:?}");
}

#[test]
fn build_script_names_what_is_missing() {
    let script = build_script();
    let run = |path: &str, args: &[&str]| {
        let out = Command::new("/bin/bash")
            .arg(&script)
            .args(args)
            .env("PATH", path)
            .output()
            .unwrap();
        (out.status.code(), text(&out))
    };
    // No podman, no buildah.
    let empty = tempfile::tempdir().unwrap();
    let (code, log) = run(empty.path().to_str().unwrap(), &[]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("neither podman nor buildah") && log.contains("apt-get install podman"),
        "{log}"
    );
    // A bad argument.
    let (code, log) = run("/usr/bin:/bin", &["--arch", "riscv64"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("--arch riscv64: not amd64 or arm64"), "{log}");

    if find_program("podman").is_none() {
        return missing("podman (tests/run.sh installs it)");
    }
    // A Rust target rustup cannot add (as offline): named, with the command.
    let fake = tempfile::tempdir().unwrap();
    let rustup = fake.path().join("rustup");
    std::fs::write(
        &rustup,
        "#!/bin/sh\ncase \"$1 $2\" in\n  'target list') echo x86_64-unknown-linux-gnu ;;\n  'target add') echo 'error: could not download file' >&2; exit 1 ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&rustup, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let image = format!("localhost/nodewatch-test-bad-{}", std::process::id());
    let (code, log) = run(
        &format!("{}:/usr/local/bin:/usr/bin:/bin", fake.path().display()),
        &["--arch", "arm64", "--image", &image],
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("the Rust target aarch64-unknown-linux-musl is missing")
            && log.contains("rustup target add aarch64-unknown-linux-musl"),
        "{log}"
    );
    let podman = Podman::new();
    let out = podman
        .cmd()
        .args([
            "image",
            "exists",
            &format!("{image}:{}", env!("CARGO_PKG_VERSION")),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an image was tagged after a failed build"
    );
}

// ------------------------------------------------------------------- logs

/// Runs `bin args`, stderr on a pipe, until `until` shows up in it (or 30 s),
/// then SIGTERM; returns everything it wrote to stderr.
fn stderr_of(bin: &Path, args: &[&str], until: &str) -> String {
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = tx.send(all.clone());
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(seen) if String::from_utf8_lossy(&seen).contains(until) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            _ => {}
        }
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    let all = reader.join().unwrap();
    String::from_utf8(all).expect("logs are UTF-8")
}

/// Asserts plain text lines: no escape byte anywhere.
fn assert_plain(who: &str, log: &str, message: &str) {
    assert!(
        log.contains(message),
        "{who}: {message:?} not logged:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "{who}: colour codes on a pipe:\n{log:?}"
    );
    assert!(
        log.lines().any(|l| l.contains(" INFO ")),
        "{who}: text lines:\n{log}"
    );
}

/// Asserts every line is one JSON object with a timestamp, level and message.
fn assert_json(who: &str, log: &str, message: &str) {
    assert!(!log.contains('\u{1b}'), "{who}: escape codes:\n{log:?}");
    let mut found = false;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{who}: {line}"
        );
        found |= v["message"].as_str() == Some(message);
    }
    assert!(found, "{who}: no line with message {message:?}:\n{log}");
}

fn aggregator_config(pki: &Pki, extra: &str) -> PathBuf {
    let path = pki.path(&format!("agg-{}.yaml", free_port()));
    let d = pki.dir.path().display();
    std::fs::write(
        &path,
        format!(
            "listen: {{grpc: '127.0.0.1:{}', http: '127.0.0.1:{}'}}\ntls: {{ca: {d}/ca.crt, cert: {d}/aggregator.crt, key: {d}/aggregator.key}}\n{extra}",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    path
}

#[test]
fn logs_of_the_aggregator_are_plain_on_a_pipe_and_json_when_asked() {
    let pki = Pki::new();
    let agg = bin("nodewatch-aggregator");
    let msg = "Aggregator listening.";
    let plain = aggregator_config(&pki, "");
    let log = stderr_of(&agg, &["--config", plain.to_str().unwrap()], msg);
    assert_plain("aggregator", &log, msg);
    let log = stderr_of(
        &agg,
        &["--config", plain.to_str().unwrap(), "--log.format", "json"],
        msg,
    );
    assert_json("aggregator --log.format json", &log, msg);
    let json = aggregator_config(&pki, "log: {format: json}\n");
    let log = stderr_of(&agg, &["--config", json.to_str().unwrap()], msg);
    assert_json("aggregator log.format: json", &log, msg);
    // The flag wins over the file.
    let log = stderr_of(
        &agg,
        &["--config", json.to_str().unwrap(), "--log.format", "text"],
        msg,
    );
    assert_plain("aggregator --log.format text over the file", &log, msg);
    // A wrong format is named.
    let out = Command::new(&agg)
        .args(["--log.format", "logfmt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("logfmt"), "{}", text(&out));
    let bad = aggregator_config(&pki, "log: {format: xml}\n");
    let out = Command::new(&agg)
        .args(["--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("log.format") || text(&out).contains("xml"),
        "{}",
        text(&out)
    );
}

#[test]
fn logs_of_the_agent_are_plain_on_a_pipe_and_json_when_asked() {
    let pki = Pki::new();
    let files = pki.node("logs");
    let agent = bin("nodewatch-agent");
    let msg = "Agent starting.";
    let config = |extra: &str| {
        let path = pki.path(&format!("agent-{}.yaml", free_port()));
        std::fs::write(
            &path,
            format!(
                "aggregators: ['127.0.0.1:{}']\ncollectors: {{ebpf: false}}\nhealth_listen: ''\nspool: {{dir: {}}}\ntls: {{ca: {}, cert: {}, key: {}}}\n{extra}",
                free_port(),
                pki.path(&format!("spool-{}", free_port())).display(),
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            ),
        )
        .unwrap();
        path
    };
    let plain = config("");
    let log = stderr_of(&agent, &["--config", plain.to_str().unwrap()], msg);
    assert_plain("agent", &log, msg);
    let log = stderr_of(
        &agent,
        &["--config", plain.to_str().unwrap(), "--log.format", "json"],
        msg,
    );
    assert_json("agent --log.format json", &log, msg);
    let json = config("log: {format: json}\n");
    let log = stderr_of(&agent, &["--config", json.to_str().unwrap()], msg);
    assert_json("agent log.format: json", &log, msg);
    let log = stderr_of(
        &agent,
        &["--config", json.to_str().unwrap(), "--log.format", "text"],
        msg,
    );
    assert_plain("agent --log.format text over the file", &log, msg);
}

// --------------------------------------------------------------- workflow

#[test]
fn release_workflow_passes_actionlint() {
    let workflow = repo().join(".github/workflows/release.yml");
    let text_of = std::fs::read_to_string(&workflow).unwrap();
    // The release builds what users build, with the scripts they run.
    for needle in [
        "deploy/container/build.sh",
        "--push",
        "ghcr.io/",
        "deploy/opnsense/build.sh",
        "SHA256SUMS",
    ] {
        assert!(
            text_of.contains(needle),
            "release.yml does not mention {needle}"
        );
    }
    let Some(actionlint) = find_program("actionlint") else {
        return missing(
            "actionlint (tests/run.sh installs it from PyPI into /opt/nodewatch-deploy-venv)",
        );
    };
    let out = Command::new(actionlint)
        .arg("-color=false")
        .arg(&workflow)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "actionlint:\n{}", text(&out));
    // The build scripts it runs, with the shell linter where there is one.
    if let Some(shellcheck) = find_program("shellcheck") {
        let out = Command::new(shellcheck)
            .args(["-x", "deploy/container/build.sh", "deploy/zig-env.sh"])
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(out.status.success(), "shellcheck:\n{}", text(&out));
    }
}
