//! Real packet loss and real disk I/O, seen by the TCP, skb drop and block
//! latency programs.
//!
//! - TCP: two network namespaces joined by a veth pair; the receiver drops
//!   30 % of incoming packets with `iptables -m statistic`; a TCP transfer
//!   across must be retransmitted, the drops must be counted under the
//!   kernel's own reason name, and a connection to a closed port must show
//!   resets sent and received.
//! - Block: a loop device with ext4, a file written and fsynced; the
//!   latency histogram of that loop device must count the writes.

// Linux only: cgroups, network namespaces, loop devices and BPF.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ebpf_support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nodewatch_agent::ebpf::{Ebpf, ProgramState};
use support::{run, run_quiet, value};

fn start_measuring() -> Ebpf {
    support::start().0
}

/// Two namespaces and a veth pair, removed on drop.
struct NetPair {
    a: String,
    b: String,
}

impl NetPair {
    fn new() -> Self {
        let id = std::process::id();
        let (a, b) = (format!("nwa{id}"), format!("nwb{id}"));
        let pair = Self {
            a: a.clone(),
            b: b.clone(),
        };
        run("ip", &["netns", "add", &a]);
        run("ip", &["netns", "add", &b]);
        // Interface names are limited to 15 bytes (IFNAMSIZ).
        let (va, vb) = (format!("va{id}"), format!("vb{id}"));
        run(
            "ip",
            &["link", "add", &va, "type", "veth", "peer", "name", &vb],
        );
        run("ip", &["link", "set", &va, "netns", &a]);
        run("ip", &["link", "set", &vb, "netns", &b]);
        for (ns, dev, addr) in [(&a, &va, "10.201.0.1/24"), (&b, &vb, "10.201.0.2/24")] {
            run("ip", &["-n", ns, "addr", "add", addr, "dev", dev]);
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        run(
            "ip",
            &[
                "netns",
                "exec",
                &b,
                "iptables",
                "-A",
                "INPUT",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.3",
                "-j",
                "DROP",
            ],
        );
        pair
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        run_quiet("ip", &["netns", "del", &self.a]);
        run_quiet("ip", &["netns", "del", &self.b]);
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // setns(2) on a thread moves only that thread (network namespaces are per task).
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn tcp_retransmits_resets_and_drop_reasons_are_counted() {
    if !support::require("ebpf_net", &["ip", "iptables"]) {
        return;
    }
    let mut ebpf = start_measuring();
    let before = support::collect(&mut ebpf);
    let net = NetPair::new();

    let server_addr: SocketAddr = "10.201.0.2:5001".parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(&net.b, move || {
        let l = TcpListener::bind(server_addr).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let client = in_netns(&net.a, move || {
        let mut s = TcpStream::connect_timeout(&server_addr, Duration::from_secs(10)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = 0usize;
        while sent < (2 << 20) && Instant::now() < deadline {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        // A connection to a closed port: the receiver answers with a reset.
        let closed: SocketAddr = "10.201.0.2:5002".parse().unwrap();
        let refused = TcpStream::connect_timeout(&closed, Duration::from_secs(15));
        (sent, refused.err().map(|e| e.kind()))
    });
    let (sent, refused) = client.join().unwrap();
    let received = server.join().unwrap();
    eprintln!("sent {sent} bytes, received {received}, closed port: {refused:?}");
    assert!(sent > 0);

    let after = support::collect(&mut ebpf);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let retrans = delta("nodewatch_tcp_retransmits_total", &[]);
    let drops = delta("nodewatch_skb_drops_total", &[("reason", "NETFILTER_DROP")]);
    let rst_sent = delta("nodewatch_tcp_resets_total", &[("direction", "sent")]);
    let rst_received = delta("nodewatch_tcp_resets_total", &[("direction", "received")]);
    eprintln!(
        "retransmits +{retrans}, NETFILTER_DROP drops +{drops}, resets sent +{rst_sent} received +{rst_received}"
    );
    support::print_costs(&ebpf);
    assert!(
        retrans > 0.0,
        "no retransmits counted\n{}",
        after.render_text()
    );
    assert!(
        drops > 0.0,
        "no NETFILTER_DROP drops counted\n{}",
        after.render_text()
    );
    assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused));
    assert!(
        rst_sent > 0.0 && rst_received > 0.0,
        "{}",
        after.render_text()
    );
    // The per-peer view names the receiver as the peer the client retransmitted to.
    let peer_retrans = value(
        &after,
        "nodewatch_tcp_peer_retransmits_total",
        &[("peer", "10.201.0.2")],
    );
    assert!(peer_retrans > 0.0, "{}", after.render_text());
    // The receiver sent its reset to the client; the client received one from the receiver.
    let peer_rst_sent = value(
        &after,
        "nodewatch_tcp_peer_resets_total",
        &[("peer", "10.201.0.1"), ("direction", "sent")],
    );
    let peer_rst_received = value(
        &after,
        "nodewatch_tcp_peer_resets_total",
        &[("peer", "10.201.0.2"), ("direction", "received")],
    );
    assert!(
        peer_rst_sent > 0.0 && peer_rst_received > 0.0,
        "{}",
        after.render_text()
    );
    // Every counted reason has a name from the kernel's enum.
    for s in after
        .samples
        .iter()
        .filter(|s| s.name == "nodewatch_skb_drops_total")
    {
        let reason = &s.labels.iter().find(|(k, _)| k == "reason").unwrap().1;
        assert!(
            !reason.starts_with("unknown_"),
            "unnamed drop reason {reason}"
        );
    }
}

/// A loop device with a mounted ext4 file system, removed on drop.
struct LoopFs {
    image: PathBuf,
    dev: String,
    mnt: PathBuf,
    mounted: bool,
}

impl LoopFs {
    fn new() -> Self {
        // Tests run in parallel threads of one process: each file system
        // gets its own image and mount point.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let image = std::env::temp_dir().join(format!("nodewatch-blk-{id}.img"));
        let mnt = std::env::temp_dir().join(format!("nodewatch-blk-{id}"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let dev = run("losetup", &["--find", "--show", image.to_str().unwrap()])
            .trim()
            .to_string();
        let mut fs = Self {
            image,
            dev,
            mnt,
            mounted: false,
        };
        run("mkfs.ext4", &["-q", "-F", &fs.dev]);
        std::fs::create_dir_all(&fs.mnt).unwrap();
        run("mount", &[&fs.dev, fs.mnt.to_str().unwrap()]);
        fs.mounted = true;
        fs
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            run_quiet("umount", &[self.mnt.to_str().unwrap_or_default()]);
        }
        run_quiet("losetup", &["-d", &self.dev]);
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Which block program a test expects to time the writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockMode {
    /// `tp_btf/block_rq_complete` alone (the default where it loads).
    Btf,
    /// The classic `block_rq_issue`/`block_rq_complete` pair (the fallback).
    Classic,
}

fn block_io_latency(mode: BlockMode) {
    if !support::require("ebpf_block", &["losetup", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    // The classic pair: as on a kernel where the BTF program does not attach.
    let mut ebpf = support::start_as(None, mode == BlockMode::Btf).0;
    let state = |program: &str| {
        ebpf.programs()
            .iter()
            .find(|(s, _)| s.program == program)
            .map(|(_, st)| st.clone())
    };
    let (on, off): (&[&str], &[&str]) = match mode {
        BlockMode::Btf => (
            &["block_rq_complete_btf"],
            &["block_rq_issue", "block_rq_complete"],
        ),
        BlockMode::Classic => (
            &["block_rq_issue", "block_rq_complete"],
            &["block_rq_complete_btf"],
        ),
    };
    for p in on {
        assert_eq!(state(p), Some(ProgramState::Attached), "{p}");
    }
    for p in off {
        assert!(
            matches!(state(p), Some(ProgramState::Skipped(_))),
            "{p}: {:?}",
            state(p)
        );
    }

    let fs = LoopFs::new();
    let device = fs.dev.trim_start_matches("/dev/").to_string();
    let before = support::collect(&mut ebpf);
    let count = |sink: &nodewatch_agent::collector::Sink, op: &str| {
        value(
            sink,
            "nodewatch_block_io_latency_seconds_count",
            &[("device", &device), ("op", op)],
        )
    };

    let mut f = std::fs::File::create(fs.mnt.join("data")).unwrap();
    let block = vec![0x5au8; 1 << 20];
    for _ in 0..8 {
        f.write_all(&block).unwrap();
        f.sync_all().unwrap();
    }
    drop(f);

    let after = support::collect(&mut ebpf);
    let writes = count(&after, "write") - count(&before, "write");
    eprintln!(
        "{mode:?}, {device}: +{writes} writes timed\n{}",
        after
            .render_text()
            .lines()
            .filter(|l| l.contains(&format!("device=\"{device}\"")) && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    support::print_costs(&ebpf);
    assert!(
        writes > 0.0,
        "no writes timed on {device}\n{}",
        after.render_text()
    );
    let sum = value(
        &after,
        "nodewatch_block_io_latency_seconds_sum",
        &[("device", &device), ("op", "write")],
    );
    assert!(sum > 0.0);
    // The classic pair only ever measures from issue.
    if mode == BlockMode::Classic {
        let alloc = value(
            &after,
            "nodewatch_block_io_latency_seconds_count",
            &[("device", &device), ("from", "alloc")],
        );
        assert!(alloc < 0.5, "{alloc} requests timed from allocation");
    }
}

#[test]
fn block_io_latency_is_measured_per_device() {
    block_io_latency(BlockMode::Btf);
}

/// The fallback where `tp_btf` cannot load (no `request_queue.disk` before
/// v5.15, no `tp_btf`): run with the BTF programs turned off.
#[test]
fn block_io_latency_falls_back_to_the_tracepoint_pair() {
    block_io_latency(BlockMode::Classic);
}

/// Per-event cost under sustained load, for `ebpf/README.md`:
/// `cargo test -p nodewatch-agent --test ebpf_net_block -- --ignored --nocapture`.
#[test]
#[ignore = "load generator for the cost figures, not a check"]
fn measure_costs_under_load() {
    if !support::require(
        "ebpf_cost",
        &["ip", "iptables", "losetup", "mkfs.ext4", "mount"],
    ) {
        return;
    }
    let ebpf = start_measuring();
    let net = NetPair::new();
    let server_addr: SocketAddr = "10.201.0.2:5001".parse().unwrap();
    let server = in_netns(&net.b, move || {
        let l = TcpListener::bind(server_addr).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    std::thread::sleep(Duration::from_millis(200));
    let client = in_netns(&net.a, move || {
        let mut s = TcpStream::connect_timeout(&server_addr, Duration::from_secs(10)).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if s.write(&chunk).is_err() {
                break;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Resets over the namespace's loopback, which drops nothing.
        let closed: SocketAddr = "127.0.0.1:5002".parse().unwrap();
        for _ in 0..2000 {
            let _ = TcpStream::connect_timeout(&closed, Duration::from_secs(5));
        }
    });
    client.join().unwrap();
    server.join().unwrap();
    let fs = LoopFs::new();
    let mut f = std::fs::File::create(fs.mnt.join("data")).unwrap();
    let block = vec![0x5au8; 16 << 10];
    for _ in 0..2000 {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
    }
    drop(f);
    support::print_costs(&ebpf);
}
