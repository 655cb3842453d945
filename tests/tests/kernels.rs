//! The agent on the kernels its users run, each booted in qemu (TCG).
//!
//! Talos 1.10 nodes run a 6.12 kernel with cgroup v2 only, and with Secure
//! Boot (UKI) `lockdown=confidentiality` on its command line in every
//! release before 1.14. The matrix: Debian's 6.12 cloud kernel with and
//! without that lockdown mode, Debian 12's 6.1, and this machine's own
//! kernel (no VM: cgroup v1 memory, lockdown `integrity`). The guest is a
//! busybox initramfs holding the real agent with its libraries
//! (`tests/vm/init.sh` is its `/init`); the aggregator runs on the host and
//! the agent reaches it over qemu's user network (10.0.2.2 is the host's
//! loopback). On each guest kernel:
//!
//! 1. which BPF programs attach, against the table in `ebpf/README.md`
//!    (a kernel doing worse than its column fails the test);
//! 2. an OOM kill in a kubelet-shaped cgroup v2 tree of each cgroup driver
//!    is stored as an `OomKill` event with pod UID, container id, memcg limit
//!    and usage, and counted in `nodewatch_oom_kills_total`, by eBPF (the
//!    event's `source` says which path);
//! 3. block I/O latency histograms for the virtio disk, packet drops named
//!    from that kernel's own BTF (`NO_SOCKET`), TCP resets in total and per
//!    peer;
//! 4. `node_*` procfs series under node_exporter's names.
//!
//! Kernels are Debian packages pinned below, fetched once into
//! `<target>/vm-kernels` by `tests/vm/fetch-kernel.sh`.
//! `NODEWATCH_KERNELS=6.12-confidentiality,host` runs only those. Under
//! `CI=true` a kernel that cannot be fetched or booted fails; locally the
//! test says why and skips. A guest that does not finish its work within
//! [`GUEST_DEADLINE`] fails the test with the console's last lines; qemu is
//! killed when its handle drops, whatever happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodewatch_tests::{
    bin, cli_events, find_program, missing, start_agent, wait_for, Aggregator, Pki,
};

/// A kernel of the matrix booted in qemu.
struct GuestKernel {
    /// Its column in `ebpf/README.md` and its name in `NODEWATCH_KERNELS`.
    name: &'static str,
    /// Debian package and exact version.
    package: &'static str,
    version: &'static str,
    /// Added to the kernel command line.
    cmdline: &'static str,
    /// `tcp_send_reset` fires for a segment with no socket (to a closed
    /// port): v6.10+ (before, only resets of a socket are traced).
    socketless_reset_traced: bool,
}

/// Debian 13's 6.12 (the Talos 1.10 series), cloud flavour (virtio as modules).
const DEBIAN_6_12: (&str, &str) = (
    "linux-image-6.12.117+deb13-cloud-amd64-unsigned",
    "6.12.117-1",
);
/// Debian 12's 6.1.
const DEBIAN_6_1: (&str, &str) = ("linux-image-6.1.0-50-cloud-amd64-unsigned", "6.1.176-1");

const KERNELS: [GuestKernel; 3] = [
    GuestKernel {
        name: "6.12-confidentiality",
        package: DEBIAN_6_12.0,
        version: DEBIAN_6_12.1,
        cmdline: "lockdown=confidentiality",
        socketless_reset_traced: true,
    },
    GuestKernel {
        name: "6.12",
        package: DEBIAN_6_12.0,
        version: DEBIAN_6_12.1,
        cmdline: "",
        socketless_reset_traced: true,
    },
    GuestKernel {
        name: "6.1",
        package: DEBIAN_6_1.0,
        version: DEBIAN_6_1.1,
        cmdline: "",
        socketless_reset_traced: false,
    },
];

/// From qemu's start to the guest's `NWVM workload done` (boot, agent start
/// with its BTF parsing under TCG, two OOM kills, disk and network load).
const GUEST_DEADLINE: Duration = Duration::from_secs(240);
/// The memory limit of each container cgroup in the guest.
const OOM_LIMIT: u64 = 32 << 20;
const POD_UID: &str = "6f1c2a7e-3b9d-4e5f-8a1b-2c3d4e5f6a7b";

/// Whether `NODEWATCH_KERNELS` (comma-separated names; all when unset) selects `name`.
fn selected(name: &str) -> bool {
    match std::env::var("NODEWATCH_KERNELS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|k| k.trim() == name),
        _ => true,
    }
}

/// The cargo target directory (`<target>/<profile>/deps/<this test>`).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Fetches (once) the kernel package; returns its folder with `vmlinuz` and `modules/`.
fn fetch_kernel(k: &GuestKernel) -> Result<PathBuf, String> {
    // Two tests of one package must not unpack it at the same time.
    static FETCH: Mutex<()> = Mutex::new(());
    let _one = FETCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dest = target_dir()
        .join("vm-kernels")
        .join(format!("{}_{}", k.package, k.version));
    if dest.join(".complete").exists() {
        return Ok(dest);
    }
    let out = Command::new("timeout")
        .args(["300", "bash"])
        .arg(repo_root().join("tests/vm/fetch-kernel.sh"))
        .args([k.package, k.version])
        .arg(&dest)
        .output()
        .map_err(|e| format!("tests/vm/fetch-kernel.sh: {e}"))?;
    if !out.status.success() || !dest.join(".complete").exists() {
        return Err(format!(
            "fetching {}={} failed ({}; a mirror keeps only the current version of a package: \
             when it moved on, pin the new one here and check its column in ebpf/README.md): {}{}",
            k.package,
            k.version,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dest)
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("{} → {}: {e}", from.display(), to.display()));
}

/// The guest's initramfs: busybox, the agent (debug info stripped) and the
/// libraries `ldd` names, the kernel's virtio modules, `/init`, and this
/// run's agent configuration and certificates under `/etc/nodewatch`.
fn build_initramfs(
    dir: &Path,
    kernel: &Path,
    busybox: &Path,
    pki: &Pki,
    node: &str,
    agg: &Aggregator,
    container_ids: &[String; 2],
) -> Result<PathBuf, String> {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    copy(busybox, &root.join("bin/busybox"));
    let agent = bin("nodewatch-agent");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(root.join("bin/nodewatch-agent"))
        .arg(&agent))?;
    // `ldd` lines: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and
    // `/lib64/ld-linux-x86-64.so.2 (0x…)`.
    for line in run(Command::new("ldd").arg(&agent))?.lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let inside = root.join(p.strip_prefix("/").unwrap());
            copy(&std::fs::canonicalize(&p).unwrap(), &inside);
        }
    }
    for entry in std::fs::read_dir(kernel.join("modules")).unwrap() {
        let p = entry.unwrap().path();
        copy(&p, &root.join("modules").join(p.file_name().unwrap()));
    }
    copy(&repo_root().join("tests/vm/init.sh"), &root.join("init"));
    let etc = root.join("etc/nodewatch");
    std::fs::create_dir_all(&etc).unwrap();
    let files = pki.node(node);
    for (f, name) in [
        (&files.ca, "ca.crt"),
        (&files.cert, "node.crt"),
        (&files.key, "node.key"),
    ] {
        copy(f, &etc.join(name));
    }
    std::fs::write(
        etc.join("agent.yaml"),
        format!(
            "aggregators: [\"10.0.2.2:{}\"]\nserver_name: localhost\ninterval: 1s\nhealth_listen: \"\"\n\
             spool: {{dir: /tmp/spool}}\ncollectors: {{ebpf: true}}\n\
             tls: {{ca: /etc/nodewatch/ca.crt, cert: /etc/nodewatch/node.crt, key: /etc/nodewatch/node.key}}\n",
            agg.grpc.port()
        ),
    )
    .unwrap();
    std::fs::write(
        etc.join("vm.env"),
        format!(
            "POD_UID={POD_UID}\nCONTAINER_ID={}\nCONTAINER_ID2={}\nOOM_LIMIT={OOM_LIMIT}\n",
            container_ids[0], container_ids[1]
        ),
    )
    .unwrap();
    let initrd = dir.join("initrd.cpio");
    let mut cpio = Command::new("sh");
    cpio.arg("-c").arg(format!(
        "cd '{}' && find . | '{}' cpio -o -H newc > '{}'",
        root.display(),
        busybox.display(),
        initrd.display()
    ));
    run(&mut cpio)?;
    Ok(initrd)
}

/// A running qemu: its console lines as they come, killed on drop.
struct Vm {
    child: Child,
    console: Arc<Mutex<Vec<String>>>,
    started: Instant,
    name: String,
    /// From qemu's start: a guest still short of what is awaited then fails.
    deadline: Duration,
}

impl Vm {
    fn boot(
        name: &str,
        kernel: &Path,
        initrd: &Path,
        disk: &Path,
        cmdline: &str,
    ) -> Result<Self, String> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine",
            "accel=tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "768",
        ])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel.join("vmlinuz"))
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 loglevel=4 {cmdline}"))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
        let console = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = console.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(out);
                let mut buf = Vec::new();
                while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    lines.lock().unwrap().push(line);
                    buf.clear();
                }
            });
        }
        Ok(Self {
            child,
            console,
            started: Instant::now(),
            name: name.to_string(),
            deadline: GUEST_DEADLINE,
        })
    }

    fn lines(&self) -> Vec<String> {
        self.console.lock().unwrap().clone()
    }

    /// The console's last lines, for failure messages.
    fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(n);
        lines[from..].join("\n")
    }

    /// Waits for a console line starting with `NWVM <what>`; fails (naming
    /// the kernel, with the console's end) on a guest error, a panic, qemu
    /// exiting, or the deadline.
    fn wait_line(&mut self, what: &str) -> Result<String, String> {
        let needle = format!("NWVM {what}");
        loop {
            let lines = self.lines();
            if let Some(l) = lines.iter().find(|l| l.starts_with(&needle)) {
                return Ok(l.clone());
            }
            let trouble = lines.iter().find(|l| {
                l.starts_with("NWVM error")
                    || l.contains("Kernel panic")
                    || l.contains("end Kernel panic")
            });
            let why = if let Some(t) = trouble {
                Some(format!("guest: {t}"))
            } else if let Ok(Some(st)) = self.child.try_wait() {
                Some(format!("qemu exited ({st})"))
            } else if self.started.elapsed() > self.deadline {
                Some(format!("no `{needle}` within {:?}", self.deadline))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(format!(
                    "kernel {}: {why}\n---- last console lines ----\n{}",
                    self.name,
                    self.tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The program table of `ebpf/README.md` ("Kernel matrix"): program →
/// column name → expected state.
fn readme_table() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(repo_root().join("ebpf/README.md")).unwrap();
    let start = text
        .find("<!-- kernel-matrix -->")
        .expect("ebpf/README.md has no <!-- kernel-matrix --> table");
    let mut rows = text[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    let cells = |l: &str| -> Vec<String> {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_string())
            .collect()
    };
    let header = cells(rows.next().unwrap());
    let mut table = BTreeMap::new();
    for row in rows.skip(1) {
        let c = cells(row);
        let mut cols = BTreeMap::new();
        for (h, v) in header.iter().zip(&c).skip(1) {
            // A cell's first word is the state; the rest is a note.
            cols.insert(
                h.clone(),
                v.split_whitespace().next().unwrap_or("").to_string(),
            );
        }
        table.insert(c[0].clone(), cols);
    }
    table
}

/// A series name, labels it must have, and the least value it must reach.
type Wanted = (&'static str, &'static [(&'static str, &'static str)], f64);

/// Lines of the aggregator's `/metrics` for `node`.
fn node_metrics(agg: &Aggregator, node: &str) -> Vec<String> {
    let label = format!("node=\"{node}\"");
    agg.metrics()
        .lines()
        .filter(|l| l.contains(&label))
        .map(str::to_string)
        .collect()
}

/// The value of the first series named `name` with all `labels`.
fn value(lines: &[String], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    lines.iter().find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?.strip_prefix('{')?;
        labels
            .iter()
            .all(|(k, val)| rest.contains(&format!("{k}=\"{val}\"")))
            .then(|| v.parse().ok())
            .flatten()
    })
}

/// Each program's state as the agent exports it.
fn program_states(lines: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for l in lines {
        let Some(rest) = l.strip_prefix("nodewatch_agent_ebpf_programs{") else {
            continue;
        };
        if !l.ends_with(" 1") {
            continue;
        }
        let label = |k: &str| {
            rest.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|s| s.split('"').next())
                .map(str::to_string)
        };
        if let (Some(p), Some(s)) = (label("program"), label("state")) {
            out.insert(p, s);
        }
    }
    out
}

/// Compares the agent's program states with the table's `column`: a
/// program the table says attaches must attach. Prints the observed column.
fn check_programs(column: &str, states: &BTreeMap<String, String>) {
    let table = readme_table();
    println!("{column}: programs {states:?}");
    let mut worse = Vec::new();
    for (program, cols) in &table {
        let expected = cols
            .get(column)
            .unwrap_or_else(|| panic!("ebpf/README.md's kernel matrix has no column {column}"));
        let got = states.get(program).map_or("absent", String::as_str);
        if expected == "attached" && got != "attached" {
            worse.push(format!("{program}: table says attached, agent says {got}"));
        } else if expected != got {
            println!("{column}: {program} is {got}, the table says {expected}");
        }
    }
    for program in states.keys() {
        assert!(
            table.contains_key(program),
            "program {program} has no row in ebpf/README.md's kernel matrix"
        );
    }
    assert!(
        worse.is_empty(),
        "kernel {column} does worse than ebpf/README.md:\n{}",
        worse.join("\n")
    );
}

/// node_exporter's names for the procfs collectors, present for `node`.
fn check_node_exporter_names(lines: &[String], column: &str) {
    for name in [
        "node_cpu_seconds_total{",
        "node_memory_MemTotal_bytes{",
        "node_memory_MemAvailable_bytes{",
        "node_disk_reads_completed_total{",
        "node_disk_written_bytes_total{",
        "node_network_receive_bytes_total{",
        "node_network_transmit_packets_total{",
        "node_pressure_cpu_waiting_seconds_total{",
        "node_pressure_memory_stalled_seconds_total{",
        "node_vmstat_pgfault{",
        "node_vmstat_oom_kill{",
        "node_load1{",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(name)),
            "kernel {column}: no {name}…}} series"
        );
    }
}

/// A container id as containerd makes them: 64 hex digits.
fn container_id(seed: u64) -> String {
    let mut x = seed ^ u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut id = String::new();
    for _ in 0..4 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let _ = write!(id, "{x:016x}");
    }
    id
}

/// Parses `key=value` words of a console line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[allow(
    clippy::too_many_lines,
    reason = "one guest kernel's checks in the order the guest reports them"
)]
fn guest_kernel(k: &GuestKernel) {
    if !selected(k.name) {
        eprintln!("SKIP: kernel {} not in NODEWATCH_KERNELS", k.name);
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        return missing(&format!(
            "kernel {}: root (the test boots qemu and fetches with apt-get)",
            k.name
        ));
    }
    let busybox = match find_program("busybox") {
        // `ldd` fails on (or says "not a dynamic executable" of) a static one.
        Some(b)
            if run(Command::new("ldd").arg(&b)).map_or(true, |o| o.contains("not a dynamic")) =>
        {
            b
        }
        _ => {
            return missing(&format!(
                "kernel {}: a static busybox (apt-get install busybox-static)",
                k.name
            ))
        }
    };
    for tool in ["qemu-system-x86_64", "strip", "ldd", "apt-get", "dpkg-deb"] {
        if find_program(tool).is_none() {
            return missing(&format!(
                "kernel {}: {tool} (apt-get install qemu-system-x86 binutils)",
                k.name
            ));
        }
    }
    let t0 = Instant::now();
    let kernel = match fetch_kernel(k) {
        Ok(d) => d,
        Err(why) => return missing(&format!("kernel {}: {why}", k.name)),
    };
    let fetched = t0.elapsed();

    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let node = format!("vm-{}", k.name.replace('.', "-"));
    let ids = [container_id(1), container_id(2)];
    let work = tempfile::Builder::new()
        .prefix("nodewatch-kernels-")
        .tempdir()
        .unwrap();
    let initrd = build_initramfs(work.path(), &kernel, &busybox, &pki, &node, &agg, &ids)
        .unwrap_or_else(|e| panic!("kernel {}: initramfs: {e}", k.name));
    let disk = work.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();

    let mut vm = match Vm::boot(k.name, &kernel, &initrd, &disk, k.cmdline) {
        Ok(vm) => vm,
        Err(why) => return missing(&format!("kernel {}: {why}", k.name)),
    };
    let fail = |vm: &Vm, what: String| -> ! {
        panic!(
            "kernel {}: {what}\n---- last console lines ----\n{}",
            k.name,
            vm.tail(40)
        )
    };
    let booted = vm.wait_line("kernel").unwrap_or_else(|e| panic!("{e}"));
    println!("{}: {booted} after {:?}", k.name, vm.started.elapsed());
    if k.cmdline.contains("lockdown=confidentiality") && !booted.contains("[confidentiality]") {
        fail(&vm, format!("not in lockdown=confidentiality: {booted}"));
    }
    vm.wait_line("agent started")
        .unwrap_or_else(|e| panic!("{e}"));
    let agent_at = vm.started.elapsed();
    let mut ooms = Vec::new();
    for driver in ["cgroupfs", "systemd"] {
        let line = vm
            .wait_line(&format!("oom {driver}"))
            .unwrap_or_else(|e| panic!("{e}"));
        if field(&line, "status") != Some("137") || field(&line, "first_alive") != Some("yes") {
            fail(
                &vm,
                format!("the {driver} hog was not OOM-killed alone: {line}"),
            );
        }
        let pid: u64 = field(&line, "pid").and_then(|p| p.parse().ok()).unwrap();
        let cgroup = field(&line, "cgroup").unwrap().to_string();
        ooms.push((driver, pid, cgroup));
    }
    let block = vm.wait_line("block done").unwrap_or_else(|e| panic!("{e}"));
    vm.wait_line("workload done")
        .unwrap_or_else(|e| panic!("{e}"));
    let workload_at = vm.started.elapsed();

    // 1. Programs against the table.
    let lines = wait_for(
        Duration::from_secs(30),
        "the guest agent's program states",
        || {
            let l = node_metrics(&agg, &node);
            l.iter()
                .any(|s| s.starts_with("nodewatch_agent_ebpf_programs{"))
                .then_some(l)
        },
    );
    check_programs(k.name, &program_states(&lines));

    // 2. Both OOM kills: event with pod UID, container id, limit and usage; counter.
    let events = wait_for(
        Duration::from_secs(30),
        "both OOM events at the aggregator",
        || {
            let evs: Vec<_> = cli_events(&pki, &agg)
                .into_iter()
                .filter(|e| e["node"] == node.as_str() && !e["oomKill"].is_null())
                .collect();
            ooms.iter()
                .all(|(_, pid, _)| evs.iter().any(|e| e["oomKill"]["pid"] == *pid))
                .then_some(evs)
        },
    );
    for ((driver, pid, cgroup), id) in ooms.iter().zip(&ids) {
        let ev = events.iter().find(|e| e["oomKill"]["pid"] == *pid).unwrap();
        let o = &ev["oomKill"];
        println!("{}: {driver} OOM kill → {ev}", k.name);
        assert_eq!(o["cgroup"], cgroup.as_str(), "kernel {}: {ev}", k.name);
        assert_eq!(o["podUid"], POD_UID, "kernel {}: {ev}", k.name);
        assert_eq!(o["containerId"], id.as_str(), "kernel {}: {ev}", k.name);
        assert_eq!(o["memcgLimitBytes"], OOM_LIMIT, "kernel {}: {ev}", k.name);
        assert!(
            o["memcgUsageBytes"]
                .as_u64()
                .is_some_and(|u| u > 0 && u <= OOM_LIMIT),
            "kernel {}: {ev}",
            k.name
        );
        assert_eq!(o["comm"], "dd", "kernel {}: {ev}", k.name);
        // dd's 64 MiB buffer, faulted in up to the 32 MiB limit.
        assert!(
            o["rssAnonBytes"].as_u64().is_some_and(|r| r > 8 << 20),
            "kernel {}: {ev}",
            k.name
        );
        // Attributed by BPF on every kernel of the matrix, lockdown or not.
        let source = o["source"].as_str().unwrap_or("");
        assert!(
            source.starts_with("ebpf"),
            "kernel {}: attributed by {source}, not eBPF: {ev}",
            k.name
        );
        wait_for(
            Duration::from_secs(10),
            "nodewatch_oom_kills_total of the pod's container",
            || {
                value(
                    &node_metrics(&agg, &node),
                    "nodewatch_oom_kills_total",
                    &[("pod", POD_UID), ("container", id)],
                )
                .filter(|v| *v >= 1.0)
            },
        );
    }

    // 3. Block I/O latency of the virtio disk, drops named from the kernel's BTF.
    println!("{}: {block}", k.name);
    // Connects to a closed loopback port: a reset sent and one received,
    // the received one per peer (the client's socket knows it).
    let wanted: [Wanted; 5] = [
        (
            "nodewatch_block_io_latency_seconds_count",
            &[("device", "vda"), ("op", "read")],
            256.0,
        ),
        (
            "nodewatch_block_io_latency_seconds_count",
            &[("device", "vda"), ("op", "write")],
            1.0,
        ),
        ("nodewatch_skb_drops_total", &[("reason", "NO_SOCKET")], 1.0),
        (
            "nodewatch_tcp_resets_total",
            &[("direction", "sent")],
            if k.socketless_reset_traced { 1.0 } else { 0.0 },
        ),
        (
            "nodewatch_tcp_peer_resets_total",
            &[("peer", "127.0.0.1"), ("direction", "received")],
            1.0,
        ),
    ];
    let until = Instant::now() + Duration::from_secs(15);
    let lines = loop {
        let l = node_metrics(&agg, &node);
        let short: Vec<String> = wanted
            .iter()
            .filter(|(name, labels, min)| value(&l, name, labels).is_none_or(|v| v < *min))
            .map(|(name, labels, min)| {
                format!("{name}{labels:?} ≥ {min}: {:?}", value(&l, name, labels))
            })
            .collect();
        if short.is_empty() {
            break l;
        }
        if Instant::now() > until {
            fail(&vm, format!("short of:\n{}", short.join("\n")));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for l in lines
        .iter()
        .filter(|l| l.contains("device=\"vda\"") && l.contains("_count{"))
    {
        println!("{}: {l}", k.name);
    }

    // 4. node_exporter's names from this kernel's procfs.
    check_node_exporter_names(&lines, k.name);
    println!(
        "{}: fetch {fetched:?}, agent running {agent_at:?} and load done {workload_at:?} after qemu start, checked {:?} after",
        k.name,
        vm.started.elapsed()
    );
    drop(vm);
}

#[test]
fn linux_6_12_lockdown_confidentiality() {
    guest_kernel(&KERNELS[0]);
}

#[test]
fn linux_6_12() {
    guest_kernel(&KERNELS[1]);
}

#[test]
fn linux_6_1() {
    guest_kernel(&KERNELS[2]);
}

/// This machine's kernel (what every other test runs on): programs against
/// the table's `host` column and node_exporter's names. The OOM, block and
/// drop checks on it are `oom_attribution.rs` and the agent's `ebpf_*` tests.
#[test]
fn host_kernel() {
    if !selected("host") {
        eprintln!("SKIP: kernel host not in NODEWATCH_KERNELS");
        return;
    }
    if !nix::unistd::geteuid().is_root() || !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return missing("kernel host: root and kernel BTF");
    }
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let _agent = start_agent(&pki, "host", &[&agg], "collectors: {ebpf: true}\n");
    let lines = wait_for(
        Duration::from_secs(60),
        "the host agent's program states and procfs series",
        || {
            let l = node_metrics(&agg, "host");
            (l.iter()
                .any(|s| s.starts_with("nodewatch_agent_ebpf_programs{"))
                && l.iter().any(|s| s.starts_with("node_vmstat_pgfault{")))
            .then_some(l)
        },
    );
    check_programs("host", &program_states(&lines));
    check_node_exporter_names(&lines, "host");
}

/// A guest that never gets where the test waits (a kernel that cannot
/// start its init, an init that hangs as a stuck agent would) ends the wait
/// within the deadline, with the kernel's name and the console's last
/// lines, and dropping the handle leaves no qemu running.
#[test]
fn a_guest_that_fails_or_hangs_ends_within_its_deadline() {
    if !selected("6.12") && !selected("6.12-confidentiality") {
        eprintln!("SKIP: no 6.12 kernel in NODEWATCH_KERNELS");
        return;
    }
    if !nix::unistd::geteuid().is_root() || find_program("qemu-system-x86_64").is_none() {
        return missing("kernel 6.12 failure cases: root and qemu-system-x86_64");
    }
    let Some(busybox) = find_program("busybox") else {
        return missing("kernel 6.12 failure cases: busybox (apt-get install busybox-static)");
    };
    let kernel = match fetch_kernel(&KERNELS[1]) {
        Ok(d) => d,
        Err(why) => return missing(&format!("kernel 6.12: {why}")),
    };
    let work = tempfile::Builder::new()
        .prefix("nodewatch-kernels-fail-")
        .tempdir()
        .unwrap();
    let disk = work.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();

    let gone = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists();
    // Not an initramfs: no init to run, the kernel panics, qemu stops.
    let garbage = work.path().join("garbage.cpio");
    std::fs::write(&garbage, b"this is not a cpio archive\n".repeat(64)).unwrap();
    let mut vm = Vm::boot("6.12 (broken initramfs)", &kernel, &garbage, &disk, "").unwrap();
    vm.deadline = Duration::from_secs(90);
    let err = vm.wait_line("workload done").unwrap_err();
    println!("{err}");
    assert!(err.starts_with("kernel 6.12 (broken initramfs): "), "{err}");
    assert!(
        err.contains("panic") || err.contains("qemu exited"),
        "{err}"
    );
    assert!(
        err.contains("---- last console lines ----\n") && err.len() > 200,
        "{err}"
    );
    assert!(vm.started.elapsed() < Duration::from_secs(95), "{err}");
    let pid = vm.child.id();
    drop(vm);
    assert!(gone(pid), "qemu {pid} still running");

    // An init that hangs: the wait ends at the deadline.
    let root = work.path().join("root");
    copy(&busybox, &root.join("bin/busybox"));
    std::fs::write(
        root.join("init"),
        "#!/bin/busybox sh\n/bin/busybox echo NWVM kernel up, now hanging\n/bin/busybox sleep 3600\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(root.join("init")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(root.join("init"), perms).unwrap();
    let initrd = work.path().join("hang.cpio");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | '{}' cpio -o -H newc > '{}'",
        root.display(),
        busybox.display(),
        initrd.display()
    )))
    .unwrap();
    let mut vm = Vm::boot("6.12 (hanging init)", &kernel, &initrd, &disk, "").unwrap();
    vm.deadline = Duration::from_secs(40);
    vm.wait_line("kernel up").unwrap();
    let err = vm.wait_line("workload done").unwrap_err();
    println!("{err}");
    assert!(
        err.starts_with("kernel 6.12 (hanging init): no `NWVM workload done` within 40s"),
        "{err}"
    );
    assert!(err.contains("NWVM kernel up, now hanging"), "{err}");
    assert!(vm.started.elapsed() < Duration::from_secs(45));
    let pid = vm.child.id();
    drop(vm);
    assert!(gone(pid), "qemu {pid} still running");
}
