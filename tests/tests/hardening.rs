//! Faults and attacks from outside, with real processes: a spool on a full
//! disk, a half-open handshake flood, a node opening many streams, an
//! anonymous Bootstrap flood, nodes sending names reserved to the aggregator
//! and to Prometheus, key file modes, listen defaults and the CLI's words for
//! a refused certificate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nodewatch_tests::{
    cli_query, free_port, http_get, missing, query_scalar, scalar_of, start_agent_env, wait_for,
    Aggregator, Pki,
};

/// Only the test collector: each collection carries its seq, nothing else moves.
const ONLY_TESTSEQ: &str = "collectors: {ebpf: false, testseq: true, stat: false, meminfo: false, loadavg: false, pressure: false, diskstats: false, filesystem: false, netdev: false, netclass: false, netstat: false, sockstat: false, vmstat: false, conntrack: false, zfs: false, zpool: false}\n";

/// A tmpfs of a fixed size, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "nodewatch-hardening-spool",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// The stored values of `nodewatch_agent_collections_total` of `node`:
/// (count, min, max). Each collection carries its seq - 1, so a complete
/// store without doubles has `count == max - min + 1`.
fn stored_seqs(pki: &Pki, agg: &Aggregator, node: &str) -> (f64, f64, f64) {
    let sel = format!("nodewatch_agent_collections_total{{node=\"{node}\"}}[15m]");
    let q = |f: &str| scalar_of(&cli_query(pki, agg, &format!("{f}({sel})"))).unwrap_or(0.0);
    (q("count_over_time"), q("min_over_time"), q("max_over_time"))
}

fn readyz(port: u16) -> (u16, String) {
    http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/readyz").unwrap_or((0, String::new()))
}

/// Waits until the agent reports (in its newest stored collection) that
/// little is pending and the store holds every collection from at or before
/// `from` on, after `at_least`: (count, min, max).
fn delivered(
    pki: &Pki,
    agg: &Aggregator,
    node: &str,
    from: f64,
    at_least: f64,
) -> Option<(f64, f64, f64)> {
    let pending = query_scalar(
        pki,
        agg,
        &format!("max(nodewatch_agent_pending_batches{{node=\"{node}\"}})"),
    )?;
    let (count, min, max) = stored_seqs(pki, agg, node);
    (pending <= 2.0 && min <= from && max >= at_least && (count - (max - min + 1.0)).abs() < 0.5)
        .then_some((count, min, max))
}

fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, sig).unwrap();
}

/// Issue 16, findings 1 and 2: the spool on a 2 MiB tmpfs with the
/// aggregator down fills the disk; the collections that cannot be written
/// stay in memory, `/readyz` says so, and once the aggregator is back
/// everything arrives. Then a short ENOSPC (another file takes the space)
/// with the aggregator stopped, space returning, and an agent `kill -9`:
/// nothing lost, nothing stored twice, no seq handed out twice.
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn full_disk_loses_nothing_and_reuses_no_seq() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let Some(fs) = Tmpfs::mount(&pki.path("spool-tmpfs"), "2m") else {
        missing("a tmpfs mount (needs root)");
        return;
    };
    let spool = fs.dir.join("spool");
    let mut agg = Aggregator::start(&pki, "agg", "");
    let health = free_port();
    let extra = format!(
        "interval: 200ms\nhealth_listen: 127.0.0.1:{health}\nspool: {{dir: {}}}\n{ONLY_TESTSEQ}",
        spool.display()
    );
    let env = [("NODEWATCH_TESTSEQ_SERIES", "1000")];
    let mut agent = start_agent_env(&pki, "full", &pki.node("full"), &[&agg], &extra, &env);
    wait_for(Duration::from_secs(30), "first collections stored", || {
        (stored_seqs(&pki, &agg, "full").0 >= 3.0).then_some(())
    });

    // 1. The aggregator is down; the 2 MiB disk fills within seconds.
    let before = stored_seqs(&pki, &agg, "full").2;
    agg.kill9();
    let full = wait_for(
        Duration::from_secs(60),
        "/readyz to report the full spool",
        || {
            let (status, body) = readyz(health);
            (status == 503 && body.contains("spool cannot write")).then_some(body)
        },
    );
    println!("readyz while full: {}", full.trim());
    // Keep collecting into memory for a while.
    std::thread::sleep(Duration::from_secs(4));
    agg.restart(&pki, "agg-2");
    let back = Instant::now();
    // Everything made while the disk was full arrives, and the spool writes again.
    // At one collection per 0.2 s, the outage made 30 or more.
    let (count, min, max) = wait_for(Duration::from_secs(60), "the backlog delivered", || {
        (readyz(health).0 == 200)
            .then(|| delivered(&pki, &agg, "full", before, before + 30.0))
            .flatten()
    });
    println!(
        "disk full, aggregator down: {count} collections stored for seqs {min}..={max}, all delivered {:.1} s after the aggregator came back",
        back.elapsed().as_secs_f64()
    );
    // The gauge is part of each collection, so it says 1 from the next one on.
    wait_for(
        Duration::from_secs(5),
        "nodewatch_agent_spool_writable 1 again",
        || {
            (query_scalar(&pki, &agg, "nodewatch_agent_spool_writable{node=\"full\"}") == Some(1.0))
                .then_some(())
        },
    );
    let errors = query_scalar(
        &pki,
        &agg,
        "nodewatch_agent_spool_write_errors_total{node=\"full\"}",
    );
    println!("failed spool writes: {errors:?}");
    assert!(
        errors.is_some_and(|e| e > 0.0),
        "the disk was full: {errors:?}"
    );

    // 2. A short ENOSPC with the aggregator stopped (nothing acked): another
    // file takes every byte the spool frees, then goes.
    let before = stored_seqs(&pki, &agg, "full").2;
    signal(&agg.proc.child, nix::sys::signal::Signal::SIGSTOP);
    let filler_path = fs.dir.join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the spool never hit ENOSPC");
        // Take whatever is free, in small steps.
        while filler.write_all(&chunk).is_ok() {}
        let _ = filler.write_all(&chunk[..512]);
        if readyz(health).0 == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    let freed = Instant::now();
    wait_for(Duration::from_secs(10), "the spool writing again", || {
        (readyz(health).0 == 200).then_some(())
    });
    println!(
        "spool writing again {:.2} s after space returned (interval 0.2 s)",
        freed.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));
    // The agent dies without warning and starts again on the same spool.
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let mut agent = start_agent_env(&pki, "full", &pki.node("full"), &[&agg], &extra, &env);
    signal(&agg.proc.child, nix::sys::signal::Signal::SIGCONT);
    std::thread::sleep(Duration::from_secs(3));
    let (count, min, max) = wait_for(Duration::from_secs(60), "everything delivered", || {
        delivered(&pki, &agg, "full", before, before + 30.0)
    });
    println!(
        "after ENOSPC and an agent restart: {count} collections stored for seqs {min}..={max}"
    );
    let log = std::fs::read_to_string(pki.dir.path().join("agent-full.log")).unwrap();
    // Said once per episode of failing writes (the disk can fill again
    // while a backlog drains), never once per collection.
    let said = log.matches("Spool cannot write").count();
    println!("'Spool cannot write' logged {said} times");
    assert!((2..=8).contains(&said), "{said} lines");
    assert!(
        (count - (max - min + 1.0)).abs() < 0.5,
        "stored {count} collections for seqs {min}..={max}: lost or doubled (a reused seq shows as a double)"
    );
    assert!(
        !log.contains("failed its checksum"),
        "records written after the ENOSPC must read back"
    );
    let lost = query_scalar(
        &pki,
        &agg,
        "sum(nodewatch_agent_spool_dropped_total{node=\"full\",reason=\"write_failed\"})",
    );
    println!("collections lost to failed writes: {lost:?}");
    assert!(lost.is_none_or(|v| v < 0.5), "{lost:?}");
    let _ = agent.terminate(Duration::from_secs(10));
}

/// Holds `count` connections to `target` from the `sources` addresses
/// without ever starting a TLS handshake, reopening each one the server
/// closes (after a short pause), until `until`. Returns the connections made.
async fn half_open_flood(
    target: std::net::SocketAddr,
    sources: Vec<std::net::IpAddr>,
    count: usize,
    until: Instant,
) -> u64 {
    use tokio::io::AsyncReadExt;
    let made = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..count {
        let source = sources[i % sources.len()];
        let made = std::sync::Arc::clone(&made);
        tasks.push(tokio::spawn(async move {
            let until = tokio::time::Instant::from_std(until);
            while tokio::time::Instant::now() < until {
                let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
                    return;
                };
                if sock.bind(std::net::SocketAddr::new(source, 0)).is_err() {
                    return;
                }
                let Ok(Ok(mut conn)) =
                    tokio::time::timeout(Duration::from_secs(1), sock.connect(target)).await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Say nothing; wait for the server to give up on us.
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout_at(until, conn.read(&mut buf)).await;
                drop(conn);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    made.load(std::sync::atomic::Ordering::Relaxed)
}

/// Issue 16, finding 3: 2,000 half-open connections from other addresses
/// (127.0.0.2–5) while an agent restarts: the agent (from 127.0.0.1)
/// reconnects promptly, and an operator's CLI call gets through.
#[test]
fn a_half_open_flood_does_not_keep_agents_or_operators_out() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let mut agent = start_agent_env(&pki, "n1", &pki.node("n1"), &[&agg], "", &[]);
    let connected = |agg: &Aggregator| agg.proc.log_text().matches("Agent connected").count();
    wait_for(Duration::from_secs(20), "the agent connected", || {
        (connected(&agg) >= 1).then_some(())
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sources: Vec<std::net::IpAddr> = (2..=5)
        .map(|i| std::net::IpAddr::from([127, 0, 0, i]))
        .collect();
    let flood_for = Duration::from_secs(25);
    let flood = rt.spawn(half_open_flood(
        agg.grpc,
        sources,
        2000,
        Instant::now() + flood_for,
    ));
    // Let the flood build up, then restart the agent in the middle of it.
    std::thread::sleep(Duration::from_secs(3));
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let restarted = Instant::now();
    let mut agent = start_agent_env(&pki, "n1", &pki.node("n1"), &[&agg], "", &[]);
    wait_for(
        Duration::from_secs(20),
        "the agent reconnected during the flood",
        || (connected(&agg) >= 2).then_some(()),
    );
    let reconnect = restarted.elapsed();
    let cli = Instant::now();
    let nodes = cli_query(
        &pki,
        &agg,
        "count(nodewatch_agent_collections_total{node=\"n1\"})",
    );
    let cli_took = cli.elapsed();
    assert!(
        restarted.elapsed() < flood_for,
        "measured after the flood ended"
    );
    let made = rt.block_on(flood).unwrap();
    println!(
        "flood of 2000 half-open connections ({made} opened in all): agent reconnected in {:.2} s, operator query answered in {:.2} s",
        reconnect.as_secs_f64(),
        cli_took.as_secs_f64()
    );
    assert!(scalar_of(&nodes) == Some(1.0), "{nodes}");
    assert!(made >= 2000, "the flood opened {made} connections");
    assert!(
        reconnect < Duration::from_secs(10),
        "agent reconnected only after {reconnect:?}"
    );
    let m = agg.metrics();
    let limited = m
        .lines()
        .find(|l| l.contains("reason=\"handshake_limit\""))
        .unwrap_or_default()
        .to_string();
    println!("{limited}");
    let log = agg.proc.log_text();
    let lines = log.matches("TLS handshake refused").count();
    println!("refused-handshake log lines: {lines}");
    assert!(lines < 50, "{lines} log lines for one flood");
    let _ = agent.terminate(Duration::from_secs(10));
}

/// Resident set size of process `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One hostile stream of node `node`: Hello, then batches whose sample
/// blocks define shapes of 262,144 refs each (a million series of decoder
/// state for ~1 MB on the wire). Returns how the stream ended.
async fn hostile_stream(
    agg: &Aggregator,
    files: &nodewatch_proto::tls::TlsFiles,
    node: &str,
) -> String {
    use nodewatch_proto::blocks::BlockEncoder;
    use nodewatch_proto::v1::ingest_client::IngestClient;
    use nodewatch_proto::v1::{agent_frame, aggregator_frame, AgentFrame, Batch, Hello, Sample};
    use tokio_stream::StreamExt;
    let mut client = IngestClient::new(nodewatch_tests::channel(agg, files))
        .max_encoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let hello = AgentFrame {
        frame: Some(agent_frame::Frame::Hello(Hello {
            agent_version: "hostile".into(),
            node: node.into(),
            instance_id: format!("hostile-{}", rand::random::<u32>()),
            ..Hello::default()
        })),
    };
    tx.send(hello).await.unwrap();
    let mut rx = match client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return format!("refused: {s}"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut enc = BlockEncoder::new();
    for seq in 1..=4u64 {
        let base = (seq - 1) * 262_144 + 1;
        let samples: Vec<Sample> = (base..base + 262_144)
            .map(|r| Sample {
                r#ref: r,
                t_ms: now,
                value: 0.0,
            })
            .collect();
        let block = enc.encode(&samples).unwrap();
        let batch = Batch {
            seq,
            blocks: vec![block],
            ..Batch::default()
        };
        if tx
            .send(AgentFrame {
                frame: Some(agent_frame::Frame::Batch(batch)),
            })
            .await
            .is_err()
        {
            break;
        }
    }
    // Read until the aggregator closes the stream or goes quiet.
    let mut last = String::from("open");
    // A loaded machine decodes a million refs slowly: quiet means 30 s.
    while let Ok(Some(f)) = tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
        match f {
            Ok(f) => {
                if let Some(aggregator_frame::Frame::Error(e)) = f.frame {
                    last = format!("error frame (fatal {}): {}", e.fatal, e.message);
                    if e.fatal {
                        break;
                    }
                }
            }
            Err(s) => {
                last = format!("status: {s}");
                break;
            }
        }
    }
    drop(tx);
    last
}

/// Issue 16, finding 4: a node opening 16 streams, each defining a million
/// series of sample-block state: the decoder state is held inside the
/// node's series limit, one stream per node is live, and the memory goes
/// back when the streams close.
#[test]
fn a_node_opening_many_streams_cannot_inflate_the_aggregator() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let pid = agg.proc.child.id();
    let files = pki.node("hostile");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // One call first: the address then has proven an identity, so 16
    // handshakes at once from it are not held to the per-address limit
    // for strangers (8).
    assert_eq!(query_scalar(&pki, &agg, "vector(1)"), Some(1.0));
    let before = rss_mib(pid);
    let agg = std::sync::Arc::new(agg);
    let mut peak: f64 = before;
    let ends: Vec<String> = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let agg = std::sync::Arc::clone(&agg);
            let files = files.clone();
            tasks.push(tokio::spawn(async move {
                hostile_stream(&agg, &files, "hostile").await
            }));
        }
        let mut ends = Vec::new();
        for t in tasks {
            peak = peak.max(rss_mib(pid));
            ends.push(t.await.unwrap());
        }
        ends
    });
    let during = rss_mib(pid).max(peak);
    // Streams closed; give the aggregator a moment to drop their state.
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_mib(pid);
    println!(
        "aggregator RSS: {before:.0} MiB before, {during:.0} MiB at most with 16 hostile streams, {after:.0} MiB after they closed"
    );
    for e in &ends {
        println!("  {e}");
    }
    // Each stream ended at the node's series limit or was replaced by a
    // newer one. A replaced stream's connection can close while its client
    // is still writing: that end reads as a broken pipe or a reset, from
    // the aggregator's side of it.
    let limit = |e: &String| {
        e.contains("more than 50000 series") || e.contains("more than 100000 refs in all shapes")
    };
    let closed = |e: &String| {
        let e = e.to_ascii_lowercase();
        e.contains("broken pipe") || e.contains("connection reset") || e.contains("stream closed")
    };
    assert!(
        ends.iter()
            .all(|e| limit(e) || e.contains("replaced by a newer stream") || closed(e)),
        "{ends:#?}"
    );
    assert!(
        ends.iter().any(limit),
        "no stream met the series limit: {ends:#?}"
    );
    let m = agg.metrics();
    assert!(
        m.contains("nodewatch_aggregator_nodes_connected 0"),
        "no hostile stream is left open"
    );
    // The probe saw 1,521 MiB for this; the limit keeps it near one node's worth.
    assert!(
        during - before < 512.0,
        "16 streams grew RSS by {:.0} MiB",
        during - before
    );
}

/// Issue 16, finding 7: a node sending series named `ALERTS`, `up`,
/// `scrape_*`, `nodewatch_aggregator_*` or what a recording rule writes
/// gets each refused by name and counted; its other series are stored.
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn names_reserved_to_prometheus_and_the_aggregator_are_refused_per_series() {
    use nodewatch_proto::v1::ingest_client::IngestClient;
    use nodewatch_proto::v1::{
        agent_frame, aggregator_frame, AgentFrame, Batch, Hello, Label, Sample, SeriesDef,
    };
    use tokio_stream::StreamExt;
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let rules = pki.path("rules.yaml");
    std::fs::write(
        &rules,
        "groups:\n  - name: g\n    rules:\n      - record: node:spoof_probe:sum\n        expr: sum(spoof_probe_ok)\n",
    )
    .unwrap();
    let agg = Aggregator::start(
        &pki,
        "agg",
        &format!("rule_files: ['{}']\n", rules.display()),
    );
    let names = [
        "ALERTS",
        "ALERTS_FOR_STATE",
        "up",
        "scrape_duration_seconds",
        "nodewatch_aggregator_series",
        "node:spoof_probe:sum",
        "spoof_probe_ok",
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let error = rt.block_on(async {
        let mut client = IngestClient::new(nodewatch_tests::channel(&agg, &pki.node("spoof")));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(AgentFrame {
            frame: Some(agent_frame::Frame::Hello(Hello {
                node: "spoof".into(),
                instance_id: "spoof-1".into(),
                ..Hello::default()
            })),
        })
        .await
        .unwrap();
        let mut rx = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let batch = Batch {
            seq: 1,
            series_defs: names
                .iter()
                .enumerate()
                .map(|(i, n)| SeriesDef {
                    r#ref: i as u64 + 1,
                    name: (*n).into(),
                    labels: vec![
                        Label {
                            name: "alertstate".into(),
                            value: "firing".into(),
                        },
                        Label {
                            name: "job".into(),
                            value: "spoofed".into(),
                        },
                    ],
                })
                .collect(),
            samples: (1..=names.len() as u64)
                .map(|r| Sample {
                    r#ref: r,
                    t_ms: now,
                    value: 1.0,
                })
                .collect(),
            ..Batch::default()
        };
        tx.send(AgentFrame {
            frame: Some(agent_frame::Frame::Batch(batch)),
        })
        .await
        .unwrap();
        let mut error = String::new();
        while let Ok(Some(Ok(f))) = tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
            match f.frame {
                Some(aggregator_frame::Frame::Error(e)) => error = e.message,
                Some(aggregator_frame::Frame::Ack(_)) => break,
                _ => {}
            }
        }
        error
    });
    println!("{error}");
    assert!(
        error.contains("name \"ALERTS\" is reserved to Prometheus; refused"),
        "{error}"
    );
    assert!(
        error.contains("\"up\" is reserved to Prometheus"),
        "{error}"
    );
    let metrics = wait_for(
        Duration::from_secs(10),
        "the node's one good series",
        || {
            let m = agg.metrics();
            m.contains("spoof_probe_ok{").then_some(m)
        },
    );
    for n in &names[..names.len() - 1] {
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with(&format!("{n}{{")) && l.contains("spoofed")),
            "{n} from the node reached /metrics"
        );
    }
    let refused = |reason: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("nodewatch_aggregator_reserved_names_refused_total")
                    && l.contains("node=\"spoof\"")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(refused("prometheus"), Some(4.0));
    assert_eq!(refused("aggregator"), Some(1.0));
    assert_eq!(refused("recording_rule"), Some(1.0));
}

/// Watches a folder with inotify (through Python's ctypes: no extra
/// package) and prints one line per event, `<event> <name>`, in order.
const INOTIFY_WATCH: &str = r#"
import ctypes, os, struct, sys, select
libc = ctypes.CDLL("libc.so.6", use_errno=True)
fd = libc.inotify_init()
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_CREATE = 0x2, 0x4, 0x8, 0x100
names = {IN_MODIFY: "modify", IN_ATTRIB: "attrib", IN_CLOSE_WRITE: "close_write", IN_CREATE: "create"}
if libc.inotify_add_watch(fd, sys.argv[1].encode(), IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE) < 0:
    sys.exit("inotify_add_watch failed")
print("ready", flush=True)
while select.select([fd], [], [], 3.0)[0]:
    buf = os.read(fd, 65536)
    i = 0
    while i < len(buf):
        wd, mask, cookie, n = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode()
        i += 16 + n
        for bit, label in names.items():
            if mask & bit:
                mode = ""
                if bit == IN_CREATE:
                    try:
                        mode = oct(os.stat(os.path.join(sys.argv[1], name)).st_mode & 0o777)
                    except OSError:
                        pass
                print(label, name, mode, flush=True)
"#;

/// Issue 16, finding 8a: `nodewatch certs` writes each key with mode 0600
/// from its creation: inotify sees no mode change (`attrib`) of a key after
/// its content was written, and a `stat` at creation already says 0600.
#[test]
fn key_files_are_private_from_their_creation() {
    use std::io::BufRead;
    let _host = nodewatch_tests::host_exclusive();
    let Some(python) = nodewatch_tests::find_program("python3") else {
        missing("python3 (to watch with inotify)");
        return;
    };
    let pki = Pki::new();
    let dir = pki.path("fresh-pki");
    std::fs::create_dir_all(&dir).unwrap();
    let script = pki.path("watch.py");
    std::fs::write(&script, INOTIFY_WATCH).unwrap();
    let mut watcher = Command::new(python)
        .arg(&script)
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let cli = nodewatch_tests::bin("nodewatch");
    let d = dir.to_str().unwrap();
    // The CA key goes to `private/ca.key` unless named: here it is named
    // into the watched folder, so all four keys are seen being created.
    let ca_key = dir.join("ca.key");
    let k = ca_key.to_str().unwrap();
    for args in [
        vec!["certs", "--dir", d, "--ca-key", k, "ca"],
        vec!["certs", "--dir", d, "--ca-key", k, "server", "localhost"],
        vec!["certs", "--dir", d, "--ca-key", k, "node", "n1"],
        vec!["certs", "--dir", d, "--ca-key", k, "operator", "alice"],
    ] {
        let out = Command::new(&cli).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let events: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = watcher.wait();
    let keys: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| Path::new(n).extension().is_some_and(|x| x == "key"))
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for key in &keys {
        let mine: Vec<&str> = events
            .iter()
            .filter(|e| e.split(' ').nth(1) == Some(key.as_str()))
            .map(String::as_str)
            .collect();
        println!("{key}: {mine:?}");
        let created = mine.iter().find(|e| e.starts_with("create")).unwrap();
        assert!(created.ends_with("0o600"), "{key} created as {created}");
        let first_write = mine.iter().position(|e| e.starts_with("modify")).unwrap();
        assert!(
            !mine[first_write..].iter().any(|e| e.starts_with("attrib")),
            "{key}: mode changed after its content was written: {mine:?}"
        );
        let perms = std::fs::metadata(dir.join(key)).unwrap().permissions();
        let mode = std::os::unix::fs::PermissionsExt::mode(&perms) & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
}

/// Issue 16, finding 9a: without a `listen` section the aggregator serves
/// loopback only; the Kubernetes manifest says `0.0.0.0` itself.
#[test]
fn the_aggregator_listens_on_loopback_unless_told_otherwise() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let d = pki.dir.path().display();
    let path = pki.path("no-listen.yaml");
    std::fs::write(
        &path,
        format!("tls:\n  ca: {d}/ca.crt\n  cert: {d}/aggregator.crt\n  key: {d}/aggregator.key\n"),
    )
    .unwrap();
    let cfg = nodewatch_aggregator::config::File::load(Some(&path))
        .unwrap()
        .validate(Some(&path))
        .unwrap();
    assert!(cfg.grpc_listen.ip().is_loopback(), "{}", cfg.grpc_listen);
    assert!(cfg.http_listen.ip().is_loopback(), "{}", cfg.http_listen);
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/aggregator-config.yaml"),
    )
    .unwrap();
    assert!(manifest.contains("grpc: 0.0.0.0:7443") && manifest.contains("http: 0.0.0.0:9464"));
}

/// A stand-in API server that answers every TokenReview "not
/// authenticated" (the shape of authentication.k8s.io/v1) and counts them
/// with the largest request body it was sent.
fn counting_api() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::io::Read;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reviews = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let largest = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (seen, max) = (
        std::sync::Arc::clone(&reviews),
        std::sync::Arc::clone(&largest),
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (seen, max) = (std::sync::Arc::clone(&seen), std::sync::Arc::clone(&max));
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 65536];
                loop {
                    let Ok(n) = conn.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let len = head
                        .lines()
                        .find_map(|line| {
                            line.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if body.len() < len {
                        continue;
                    }
                    if head.contains("/tokenreviews") {
                        seen.fetch_add(1, Ordering::Relaxed);
                        max.fetch_max(len as u64, Ordering::Relaxed);
                    }
                    let reply = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","status":{"authenticated":false,"error":"invalid bearer token"}}"#;
                    let _ = write!(conn, "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len());
                    return;
                }
            });
        }
    });
    (addr, reviews, largest)
}

/// Issue 16, findings 5 and 6: an anonymous Bootstrap flood (1 MiB tokens
/// and small ones, 16 callers for 5 s) makes few TokenReviews, none larger
/// than the token cap, and few log lines.
#[test]
fn an_anonymous_bootstrap_flood_is_not_amplified() {
    use nodewatch_proto::v1::bootstrap_client::BootstrapClient;
    use nodewatch_proto::v1::IssueRequest;
    use std::sync::atomic::Ordering;
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let (api, reviews, largest) = counting_api();
    let token_file = pki.path("aggregator-sa-token");
    std::fs::write(&token_file, "aggregator-sa-token").unwrap();
    let agg = Aggregator::start(
        &pki,
        "agg",
        &format!(
            "bootstrap:\n  ca_cert: {}\n  ca_key: {}\n  service_accounts: ['system:serviceaccount:nodewatch:nodewatch-agent']\n  validity: 1h\n  kubernetes:\n    api: http://{api}\n    token_file: {}\n",
            pki.path("ca.crt").display(),
            pki.path("ca.key").display(),
            token_file.display()
        ),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let flood_for = Duration::from_secs(5);
    let (calls, codes) = rt.block_on(async {
        let anon = nodewatch_proto::tls::anonymous_client_config(&pki.path("ca.crt")).unwrap();
        let channel = nodewatch_proto::tls::channel(
            &agg.target(),
            nodewatch_proto::tls::Reloadable::new(anon),
            Some("localhost".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        let (_key, csr) =
            nodewatch_proto::certs::key_and_csr(&nodewatch_proto::NodeName::new("flood").unwrap())
                .unwrap();
        let until = tokio::time::Instant::now() + flood_for;
        let mut tasks = Vec::new();
        for i in 0..16 {
            let mut client =
                BootstrapClient::new(channel.clone()).max_encoding_message_size(4 * 1024 * 1024);
            let csr = csr.clone();
            tasks.push(tokio::spawn(async move {
                let token = if i % 2 == 0 {
                    "x".repeat(1024 * 1024)
                } else {
                    format!("anonymous-{i}")
                };
                let mut calls = 0u64;
                let mut codes = std::collections::BTreeMap::<String, u64>::new();
                while tokio::time::Instant::now() < until {
                    let r = client
                        .issue(IssueRequest {
                            token: token.clone(),
                            csr_pem: csr.clone(),
                        })
                        .await;
                    calls += 1;
                    let code = match r {
                        Ok(_) => "ok".to_string(),
                        Err(s) => format!("{:?}", s.code()),
                    };
                    *codes.entry(code).or_default() += 1;
                }
                (calls, codes)
            }));
        }
        let mut calls = 0;
        let mut codes = std::collections::BTreeMap::<String, u64>::new();
        for t in tasks {
            let (c, m) = t.await.unwrap();
            calls += c;
            for (k, v) in m {
                *codes.entry(k).or_default() += v;
            }
        }
        (calls, codes)
    });
    let reviews = reviews.load(Ordering::Relaxed);
    let per_second = reviews as f64 / flood_for.as_secs_f64();
    println!(
        "{calls} anonymous Bootstrap calls in {flood_for:?} ({codes:?}): {reviews} TokenReviews ({per_second:.1}/s), largest {} bytes",
        largest.load(Ordering::Relaxed)
    );
    assert!(calls > 100, "the flood made only {calls} calls");
    assert!(
        largest.load(Ordering::Relaxed) < 20 * 1024,
        "a TokenReview carried a token past the cap"
    );
    // One address: its burst (10) and 0.5/s after.
    assert!(reviews <= 10 + 5, "{reviews} TokenReviews");
    assert!(codes.contains_key("ResourceExhausted") && codes.contains_key("InvalidArgument"));
    let lines = agg.proc.log_text().matches("Bootstrap refused").count();
    println!("log lines for the flood: {lines}");
    assert!(lines <= 10, "{lines} log lines");
}

/// Issue 16, finding 9c: the CLI with an operator certificate from another
/// CA says the aggregator refused the certificate, not "The operation was
/// cancelled".
#[test]
fn the_cli_says_when_the_aggregator_refused_its_certificate() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let other = Pki::new();
    let mut foreign = other.operator("mallory");
    // It trusts the right aggregator, but its own certificate is from another CA.
    foreign.ca = pki.path("ca.crt");
    let out = nodewatch_tests::operator_cli(&foreign, &agg)
        .args(["query", "vector(1)"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(!out.status.success());
    assert!(!err.contains("operation was cancelled"), "{err}");
    assert!(
        err.contains("the aggregator refused this client certificate"),
        "{err}"
    );
    assert!(
        err.contains("CA"),
        "the reason (an unknown CA) is named: {err}"
    );
}
