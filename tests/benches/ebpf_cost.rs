//! What the eBPF programs cost: nanoseconds per event for each program under
//! a load of more than 100k events/s, and the agent's whole-process CPU with
//! every program attached at ~10k events/s, next to `node_exporter`'s (which
//! has no eBPF) scraped at the agent's collection rate, in the same run.
//!
//! Load, generated here:
//! - block I/O: 4 KiB `O_DIRECT` reads from a loop device (each one a request:
//!   `block_rq_complete_btf`, or `block_rq_issue` and `block_rq_complete`
//!   where the agent falls back to the tracepoint pair);
//! - packets: UDP datagrams to a closed loopback port (each dropped with
//!   `SKB_DROP_REASON_NO_SOCKET`: `skb_kfree_skb`) and TCP connects to a
//!   closed port (`tcp_send_reset`, `tcp_receive_reset`).
//!
//! Per-program cost is the kernel's own accounting (`kernel.bpf_stats_enabled=1`,
//! also what the agent's `ebpf_measure_cost: true` turns on), read as the
//! agent exports it on the aggregator: `nodewatch_agent_ebpf_run_seconds_total`
//! over `nodewatch_agent_ebpf_run_count_total`. It includes the two clock
//! reads the accounting adds. A program's run time is charged to the task
//! whose action fired the tracepoint (here the load generator), not to the
//! agent: the agent's CPU is reading the maps and exporting them.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p nodewatch-tests --bench ebpf_cost`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodewatch_agent::collectors::NODE_EXPORTER_1_5_DEFAULTS as NODE_EXPORTER_COLLECTORS;
use nodewatch_tests::{
    find_program, free_port, http_get, missing, peer_name, process_cpu_ticks, spawn, start_agent,
    wait_for, Aggregator, BenchResult, Better, Pki,
};

/// The high-load window for ns per event.
const COST_WINDOW: Duration = Duration::from_secs(10);
/// The moderate-load window for whole-process CPU.
const CPU_WINDOW: Duration = Duration::from_secs(30);
/// Both agents collect, and `node_exporter` is scraped, this often.
const RATE: Duration = Duration::from_secs(1);
/// Events per second of the moderate load: 2,500 reads (two block events
/// each) and 5,000 dropped datagrams.
const MODERATE_READS: f64 = 2_500.0;
const MODERATE_DATAGRAMS: f64 = 5_000.0;
/// Goal for counter and histogram programs (ebpf/README.md, "Cost per event").
const GOAL_NS: f64 = 100.0;
/// Goal for the agent at 10k events/s: 1 % of a core.
const GOAL_CPU_PERCENT: f64 = 1.0;
/// `USER_HZ` on Linux: the unit of utime and stime in /proc/<pid>/stat.
const TICKS_PER_SEC: f64 = 100.0;

/// `kernel.bpf_stats_enabled` set to 1, restored on drop.
struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Option<Self> {
        let before = std::fs::read_to_string(BPF_STATS).ok()?;
        std::fs::write(BPF_STATS, "1").ok()?;
        Some(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.before.trim());
    }
}

/// A loop device over a sparse file, detached on drop.
struct LoopDev {
    image: PathBuf,
    dev: String,
}

impl LoopDev {
    fn new() -> Option<Self> {
        let image =
            std::env::temp_dir().join(format!("nodewatch-bench-{}.img", std::process::id()));
        std::fs::File::create(&image).ok()?.set_len(64 << 20).ok()?;
        let out = Command::new("losetup")
            .args(["--find", "--show", image.to_str()?])
            .output()
            .ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || dev.is_empty() {
            let _ = std::fs::remove_file(&image);
            return None;
        }
        Some(Self { image, dev })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Load generator threads, stopped and joined on drop.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    ops: Arc<AtomicU64>,
}

impl Load {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            ops: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Runs `op` in a thread, `per_sec` times a second (in 10 ms slices) or
    /// as fast as it goes.
    fn add(&mut self, per_sec: Option<f64>, mut op: impl FnMut() + Send + 'static) {
        let stop = Arc::clone(&self.stop);
        let ops = Arc::clone(&self.ops);
        self.threads.push(std::thread::spawn(move || {
            let slice = Duration::from_millis(10);
            let start = Instant::now();
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match per_sec {
                    None => {
                        for _ in 0..64 {
                            op();
                        }
                        ops.fetch_add(64, Ordering::Relaxed);
                    }
                    Some(rate) => {
                        let due = (start.elapsed().as_secs_f64() * rate) as u64;
                        while done < due {
                            op();
                            done += 1;
                        }
                        ops.store(done, Ordering::Relaxed);
                        std::thread::sleep(slice);
                    }
                }
            }
        }));
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// 4 KiB `O_DIRECT` reads across the device.
fn direct_reads(dev: &str) -> impl FnMut() + Send + 'static {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(dev)
        .unwrap();
    // O_DIRECT needs a buffer aligned to the logical block size: take the
    // aligned 4 KiB inside an 8 KiB allocation.
    let mut buf = vec![0u8; 8192];
    let mut block = 0u64;
    move || {
        let off = buf.as_ptr().align_offset(4096);
        let _ = file.read_at(&mut buf[off..off + 4096], (block % 16_384) * 4096);
        block = block.wrapping_add(7);
    }
}

/// UDP datagrams to a loopback port nobody listens on.
fn udp_drops(port: u16) -> impl FnMut() + Send + 'static {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    move || {
        let _ = sock.send_to(b"nodewatch", to);
    }
}

/// TCP connects to a closed loopback port: a reset sent and received each.
fn tcp_resets(port: u16) -> impl FnMut() + Send + 'static {
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    move || {
        let _ = TcpStream::connect_timeout(&to, Duration::from_millis(100));
    }
}

/// A port with no listener (bound once, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Per program: (run seconds, run count), as the aggregator shows them for `node`.
type Costs = BTreeMap<String, (f64, f64)>;

fn costs(agg: &Aggregator, node: &str) -> Costs {
    let mut out = Costs::new();
    for line in agg.metrics().lines() {
        let seconds = if line.starts_with("nodewatch_agent_ebpf_run_seconds_total{") {
            true
        } else if line.starts_with("nodewatch_agent_ebpf_run_count_total{") {
            false
        } else {
            continue;
        };
        if !line.contains(&format!("node=\"{node}\"")) {
            continue;
        }
        let Some(program) = line
            .split("program=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let e = out.entry(program.to_string()).or_insert((0.0, 0.0));
        if seconds {
            e.0 = value;
        } else {
            e.1 = value;
        }
    }
    out
}

/// The next collection's costs, with when it arrived (polled every 20 ms,
/// so the time is the collection's to within that).
fn next_costs(agg: &Aggregator, node: &str) -> (Instant, Costs) {
    let before = costs(agg, node);
    wait_for(Duration::from_secs(10), "a new collection", || {
        let now = costs(agg, node);
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        (now != before).then_some((t, now))
    })
}

/// Per program: (events per second, ns per event) between two snapshots.
fn rates(a: &(Instant, Costs), b: &(Instant, Costs)) -> BTreeMap<String, (f64, f64)> {
    let dt = b.0.duration_since(a.0).as_secs_f64();
    b.1.iter()
        .map(|(p, (s1, c1))| {
            let (s0, c0) = a.1.get(p).copied().unwrap_or((0.0, 0.0));
            let runs = c1 - c0;
            let ns = if runs > 0.0 {
                (s1 - s0) * 1e9 / runs
            } else {
                f64::NAN
            };
            (p.clone(), (runs / dt, ns))
        })
        .collect()
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark run: peers, load, measure, record"
)]
fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        return missing("root (BPF, loop devices)");
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return missing("kernel BTF (/sys/kernel/btf/vmlinux)");
    }
    let Some(ne) =
        find_program("prometheus-node-exporter").or_else(|| find_program("node_exporter"))
    else {
        return missing("prometheus-node-exporter");
    };
    if find_program("losetup").is_none() {
        return missing("losetup (Debian package `mount`)");
    }
    let Some(_stats) = BpfStats::enable() else {
        return missing("kernel.bpf_stats_enabled (Linux 5.1+)");
    };
    let Some(loopdev) = LoopDev::new() else {
        return missing("a loop device (losetup --find)");
    };

    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let agent = start_agent(
        &pki,
        "bench",
        &[&agg],
        "interval: 1s\ncollectors: {ebpf: true}\nebpf_measure_cost: true\n",
    );
    // The same agent without eBPF, side by side, for the difference.
    let plain = start_agent(&pki, "plain", &[&agg], "interval: 1s\n");
    wait_for(
        Duration::from_secs(60),
        "the eBPF agent's cost series",
        || (costs(&agg, "bench").len() >= 3).then_some(()),
    );
    let attached: Vec<String> = agg
        .metrics()
        .lines()
        .filter(|l| {
            l.starts_with("nodewatch_agent_ebpf_programs{")
                && l.contains("node=\"bench\"")
                && l.contains("state=\"attached\"")
                && l.ends_with(" 1")
        })
        .filter_map(|l| {
            l.split("program=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_string)
        })
        .collect();

    // 1. ns per event at full speed.
    let (udp_port, tcp_port) = (closed_port(), closed_port());
    let full = {
        let mut load = Load::new();
        // Two threads each for block I/O and datagrams: one alone does not
        // keep the loop device's worker or the UDP path busy.
        for _ in 0..2 {
            load.add(None, direct_reads(&loopdev.dev));
            load.add(None, udp_drops(udp_port));
        }
        load.add(None, tcp_resets(tcp_port));
        std::thread::sleep(Duration::from_secs(2));
        let a = next_costs(&agg, "bench");
        std::thread::sleep(COST_WINDOW);
        let b = next_costs(&agg, "bench");
        rates(&a, &b)
    };
    let full_total: f64 = full.values().map(|(r, _)| r).sum();

    // 2. whole-process CPU at ~10k events/s.
    let port = free_port();
    let mut args = vec![
        "--collector.disable-defaults".to_string(),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    args.extend(
        NODE_EXPORTER_COLLECTORS
            .iter()
            .map(|c| format!("--collector.{c}")),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node_exporter = spawn(&ne, &args, pki.dir.path(), "node_exporter");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(10), "node_exporter", || {
        http_get(addr, "/metrics").ok().filter(|(s, _)| *s == 200)
    });
    let mut load = Load::new();
    load.add(Some(MODERATE_READS), direct_reads(&loopdev.dev));
    load.add(Some(MODERATE_DATAGRAMS), udp_drops(udp_port));
    std::thread::sleep(Duration::from_secs(3));
    let pids = [agent.child.id(), plain.child.id(), node_exporter.child.id()];
    let t0: Vec<u64> = pids.iter().map(|p| process_cpu_ticks(*p)).collect();
    let a = next_costs(&agg, "bench");
    let start = Instant::now();
    let mut scrapes = 0u32;
    while start.elapsed() < CPU_WINDOW {
        let t = Instant::now();
        let _ = http_get(addr, "/metrics");
        scrapes += 1;
        std::thread::sleep(RATE.saturating_sub(t.elapsed()));
    }
    let wall = start.elapsed().as_secs_f64();
    let t1: Vec<u64> = pids.iter().map(|p| process_cpu_ticks(*p)).collect();
    let b = next_costs(&agg, "bench");
    drop(load);
    let moderate = rates(&a, &b);
    let moderate_total: f64 = moderate.values().map(|(r, _)| r).sum();
    let bpf_percent: f64 = moderate
        .values()
        .filter(|(r, ns)| *r > 0.0 && ns.is_finite())
        .map(|(r, ns)| r * ns / 1e9 * 100.0)
        .sum();
    let cpu: Vec<f64> = t0
        .iter()
        .zip(&t1)
        .map(|(a, b)| (b - a) as f64 / TICKS_PER_SEC / wall * 100.0)
        .collect();

    println!(
        "## eBPF cost per event ({} s at full speed, {full_total:.0} events/s over all programs)\n",
        COST_WINDOW.as_secs()
    );
    println!("| program | load | events/s | ns per event | goal |");
    println!("|---|---|---:|---:|---|");
    for p in &attached {
        let (rate, ns) = full.get(p).copied().unwrap_or((0.0, f64::NAN));
        let (load, goal) = match p.as_str() {
            "block_rq_issue" | "block_rq_complete" | "block_rq_complete_btf" => {
                ("4 KiB O_DIRECT reads, loop device", "≤ 100 ns")
            }
            "skb_kfree_skb" => ("UDP to a closed loopback port", "≤ 100 ns"),
            "tcp_send_reset" | "tcp_receive_reset" => {
                ("TCP connects to a closed loopback port", "≤ 100 ns")
            }
            "tcp_retransmit_skb" => ("the host's own retransmits", "≤ 100 ns"),
            _ => ("none (OOM kills are rare)", "event program"),
        };
        let ns = if ns.is_finite() {
            let mark = if goal.starts_with('≤') && ns > GOAL_NS {
                " (over)"
            } else {
                ""
            };
            format!("{ns:.0}{mark}")
        } else {
            "–".to_string()
        };
        println!("| `{p}` | {load} | {rate:.0} | {ns} | {goal} |");
    }
    // Programs that saw events under the load; none of them has a peer.
    for p in &attached {
        if let Some(&(_, ns)) = full.get(p).filter(|(r, ns)| *r > 0.0 && ns.is_finite()) {
            BenchResult::new(&format!("`{p}` per event"), "ns", ns, Better::Lower)
                .goal(GOAL_NS)
                .record();
        }
    }
    println!(
        "\n## Whole-process CPU at ~10k events/s ({} s, collection and scrape every {} s, {moderate_total:.0} events/s measured)\n",
        CPU_WINDOW.as_secs(),
        RATE.as_secs()
    );
    println!("| process | CPU (% of one core) | goal |");
    println!("|---|---:|---|");
    println!(
        "| nodewatch-agent, all eBPF programs attached | {:.2} % | ≤ {GOAL_CPU_PERCENT} % |",
        cpu[0]
    );
    println!("| nodewatch-agent, eBPF off | {:.2} % | |", cpu[1]);
    println!(
        "| node_exporter ({} collectors, {scrapes} scrapes) | {:.2} % | |",
        NODE_EXPORTER_COLLECTORS.len(),
        cpu[2]
    );
    println!(
        "| BPF programs, in the tasks that fire them (Σ events/s × ns/event) | {bpf_percent:.2} % | |"
    );
    let peer = format!(
        "{} ({} collectors)",
        peer_name("node_exporter", &ne),
        NODE_EXPORTER_COLLECTORS.len()
    );
    BenchResult::new(
        "agent CPU at ~10k events/s, all eBPF programs attached",
        "% of a core",
        cpu[0],
        Better::Lower,
    )
    .peer(&peer, cpu[2])
    .goal(GOAL_CPU_PERCENT)
    .record();
    BenchResult::new("agent CPU, eBPF off", "% of a core", cpu[1], Better::Lower)
        .peer(&peer, cpu[2])
        .record();
    drop(node_exporter);
    drop(plain);
    drop(agent);
}
