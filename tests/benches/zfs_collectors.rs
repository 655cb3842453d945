//! Cost of one collection of the ZFS and FreeBSD collectors on the fixture
//! captures, next to node_exporter's zfs collector reading the same Linux
//! kstat tree, in one run on the same machine.
//!
//! nodewatch side: the agent's collectors in this process, CPU time of this
//! thread (`CLOCK_THREAD_CPUTIME_ID`) over many runs. node_exporter side:
//! the real `prometheus-node-exporter --collector.disable-defaults
//! --collector.zfs --path.procfs=<fixtures>`, its process CPU (utime+stime)
//! over as many scrapes (which includes serving HTTP, as a scrape does).
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p nodewatch-tests --bench zfs_collectors`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nodewatch_agent::collector::{Paths, Sink};
use nodewatch_tests::{
    find_program, free_port, http_get, missing, peer_name, process_cpu_ticks, spawn, wait_for,
    BenchResult, Better,
};

const RUNS: u32 = 2000;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

fn per_run(mut f: impl FnMut()) -> Duration {
    for _ in 0..50 {
        f();
    }
    let t0 = thread_cpu();
    for _ in 0..RUNS {
        f();
    }
    thread_cpu().saturating_sub(t0) / RUNS
}

fn main() {
    let proc_root = fixtures().join("linux/proc");
    let paths = Paths {
        procfs: proc_root.clone(),
        sysfs: fixtures().join("linux/sys"),
        rootfs: "/nonexistent".into(),
    };
    let mut zfs = (nodewatch_agent::collectors::zfs::SPEC.build)(&paths).unwrap();
    let mut series = 0;
    let ours_zfs = per_run(|| {
        let mut sink = Sink::new();
        zfs.collect(&mut sink).unwrap();
        series = sink.samples.len();
    });

    // FreeBSD parsers on their captures (the system calls cannot run here).
    let read = |rel: &str| std::fs::read_to_string(fixtures().join(rel)).unwrap();
    let arc = read("freebsd/sysctl-kstat.zfs.misc.arcstats-freebsd14.txt");
    let pf = read("freebsd/pfctl-si-interface-stats.txt");
    let zlist = read("freebsd/zpool-list-Hp-freebsd14.txt");
    let zstatus = read("zfs/zpool-status-zse-01-corrupted.txt");
    let mut fb_series = 0;
    let ours_freebsd = per_run(|| {
        let mut sink = Sink::new();
        let values: std::collections::HashMap<String, u64> =
            nodewatch_agent::freebsd::sysctl::parse_sysctl_lines(&arc)
                .into_iter()
                .collect();
        nodewatch_agent::freebsd::arc::write_arc(&mut sink, |k| values.get(k).copied());
        let info = nodewatch_agent::freebsd::pf::parse_info(&pf);
        std::hint::black_box(info);
        let pools = nodewatch_agent::collectors::zpool::parse_list(&zlist);
        let status = nodewatch_agent::collectors::zpool::parse_status_text(&zstatus);
        std::hint::black_box((pools, status));
        fb_series = sink.samples.len();
    });

    // Recorded before looking for node_exporter: it has no peer to wait for.
    BenchResult::new(
        "FreeBSD parsers (ARC sysctls, pfctl -si, zpool list/status), CPU per collection",
        "ms",
        ours_freebsd.as_secs_f64() * 1000.0,
        Better::Lower,
    )
    .record();

    let Some(ne) =
        find_program("prometheus-node-exporter").or_else(|| find_program("node_exporter"))
    else {
        return missing("prometheus-node-exporter");
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ne_proc = spawn(
        &ne,
        &[
            "--collector.disable-defaults",
            "--collector.zfs",
            &format!("--path.procfs={}", proc_root.display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        dir.path(),
        "node_exporter",
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(10), "node_exporter", || {
        http_get(addr, "/metrics").ok().filter(|(s, _)| *s == 200)
    });
    let scrapes = 300u32;
    let (_, body) = http_get(addr, "/metrics").unwrap();
    let ne_series = body.lines().filter(|l| l.starts_with("node_zfs_")).count();
    let t0 = process_cpu_ticks(ne_proc.child.id());
    for _ in 0..scrapes {
        http_get(addr, "/metrics").unwrap();
    }
    let ne_ms = (process_cpu_ticks(ne_proc.child.id()) - t0) as f64 * 10.0 / f64::from(scrapes);
    let z = ours_zfs.as_secs_f64() * 1000.0;
    println!("## ZFS and FreeBSD collectors on the fixture captures\n");
    println!("| collection | nodewatch | node_exporter | ratio |");
    println!("|---|---|---|---|");
    println!("| Linux ZFS kstats (node_exporter's fixture tree) | {z:.3} ms, {series} series | {ne_ms:.3} ms, {ne_series} node_zfs_ series | {:.2}× |", z / ne_ms);
    println!(
        "| FreeBSD parsers: ARC sysctls, pfctl -si, zpool list, zpool status | {:.3} ms, {fb_series} series | (no FreeBSD pool/pf collector) | |",
        ours_freebsd.as_secs_f64() * 1000.0
    );
    BenchResult::new(
        "Linux ZFS kstats on node_exporter's fixtures, CPU per collection",
        "ms",
        z,
        Better::Lower,
    )
    .peer(&peer_name("node_exporter", &ne), ne_ms)
    .record();
    println!("\nnodewatch: CPU time of the collecting thread, mean of {RUNS} runs; node_exporter: process CPU per scrape over {scrapes} scrapes (10 ms tick resolution).");
}
