//! Nothing lost, nobody let in: aggregator restarts and `kill -9`, agent
//! restarts, two aggregators, certificate rotation and expiry, per-node
//! limits, SIGTERM, health endpoints, and version skew on the wire.

use std::time::{Duration, Instant};

use nodewatch_agent::collectors::testseq;
use nodewatch_proto::certs::{Leaf, OffsetDateTime};
use nodewatch_proto::{Identity, NodeName};
use nodewatch_tests::{
    cli_events, cli_query, free_port, http_get, query_scalar, scalar_of, start_agent,
    start_agent_env, start_agent_with, wait_for, Aggregator, Pki, Proc, Rng,
};

/// Every collection of agent `node` since it started is stored exactly once:
/// `nodewatch_agent_collections_total` carries the collection's seq, so the
/// count of stored samples must equal the span of their values. The three
/// are read in one query, at one evaluation time; a collection landing
/// between two reads is allowed to settle (a real gap never does).
fn assert_complete(pki: &Pki, agg: &Aggregator, node: &str) -> (f64, f64) {
    let series = format!("nodewatch_agent_collections_total{{node=\"{node}\"}}");
    let read = || span(pki, agg, &series);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (count, min, max) = read().unwrap_or((0.0, 0.0, f64::NAN));
        if (count - (max - min + 1.0)).abs() < 0.5 {
            return (count, max);
        }
        assert!(
            Instant::now() < deadline,
            "stored {count} collections for seqs {min}..={max}: something was lost"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn collections(pki: &Pki, agg: &Aggregator, node: &str) -> f64 {
    scalar_of(&cli_query(
        pki,
        agg,
        &format!("max_over_time(nodewatch_agent_collections_total{{node=\"{node}\"}}[15m])"),
    ))
    .unwrap_or(0.0)
}

#[test]
fn aggregator_kill9_and_agent_kill9_lose_nothing_and_store_nothing_twice() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let mut agg = Aggregator::start(&pki, "agg", "");
    let mut agent = start_agent(&pki, "n1", &[&agg], "");
    wait_for(Duration::from_secs(30), "a few collections", || {
        (collections(&pki, &agg, "n1") >= 3.0).then_some(())
    });

    // The aggregator dies without warning; the agent keeps collecting into its spool.
    agg.kill9();
    std::thread::sleep(Duration::from_secs(4));
    agg.restart(&pki, "agg-2");
    // Back: the agent backfills the restarted (empty) aggregator from its spool.
    wait_for(Duration::from_secs(30), "backfill after restart", || {
        let n = collections(&pki, &agg, "n1");
        (n >= 8.0).then_some(())
    });
    let (count, _) = assert_complete(&pki, &agg, "n1");
    assert!(
        count >= 8.0,
        "history before the restart came back: {count}"
    );

    // The agent dies without warning; its restart resends what was not acked and continues the seq.
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let before = collections(&pki, &agg, "n1");
    let _agent2 = start_agent(&pki, "n1", &[&agg], "");
    wait_for(
        Duration::from_secs(30),
        "collections after the agent restart",
        || (collections(&pki, &agg, "n1") >= before + 3.0).then_some(()),
    );
    assert_complete(&pki, &agg, "n1");
    let dups = agg
        .metrics()
        .lines()
        .find(|l| l.starts_with("nodewatch_aggregator_duplicate_batches_total{node=\"n1\"}"))
        .map(str::to_string);
    println!("duplicates dropped by the aggregator: {dups:?}");
}

#[test]
fn two_aggregators_one_down_does_not_slow_the_other() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let a = Aggregator::start(&pki, "agg-a", "");
    let mut b = Aggregator::start(&pki, "agg-b", "");
    let _agent = start_agent(&pki, "n1", &[&a, &b], "");
    wait_for(Duration::from_secs(30), "both aggregators fed", || {
        (collections(&pki, &a, "n1") >= 2.0 && collections(&pki, &b, "n1") >= 2.0).then_some(())
    });
    b.kill9();
    let start = collections(&pki, &a, "n1");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let gained = collections(&pki, &a, "n1") - start;
    // 1 s interval: about one collection a second keeps arriving at A.
    assert!(
        gained >= 4.0,
        "A got {gained} collections in {:?} while B was down",
        t0.elapsed()
    );
    b.restart(&pki, "agg-b-2");
    wait_for(Duration::from_secs(30), "B caught up", || {
        (collections(&pki, &b, "n1") >= collections(&pki, &a, "n1") - 1.0).then_some(())
    });
    assert_complete(&pki, &a, "n1");
    assert_complete(&pki, &b, "n1");
}

#[test]
fn rotated_certificates_are_picked_up_without_dropping_streams() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let _agent = start_agent(&pki, "n1", &[&agg], "");
    wait_for(Duration::from_secs(30), "streaming", || {
        (collections(&pki, &agg, "n1") >= 2.0).then_some(())
    });
    // cert-manager renews the server certificate (here with a new name, so we can tell).
    let _ = pki.issue(
        "aggregator",
        &Leaf::Server {
            names: vec!["rotated.nodewatch.test".into(), "localhost".into()],
        },
    );
    let ops = pki.operator("ops");
    let cli_with = |server_name: &str| {
        std::process::Command::new(nodewatch_tests::bin("nodewatch"))
            .args([
                "--aggregator",
                &agg.grpc.to_string(),
                "--server-name",
                server_name,
            ])
            .args([
                "--ca",
                ops.ca.to_str().unwrap(),
                "--cert",
                ops.cert.to_str().unwrap(),
                "--key",
                ops.key.to_str().unwrap(),
            ])
            .arg("nodes")
            .output()
            .unwrap()
    };
    wait_for(
        Duration::from_secs(20),
        "new handshakes use the renewed certificate",
        || {
            cli_with("rotated.nodewatch.test")
                .status
                .success()
                .then_some(())
        },
    );
    assert!(agg.proc.log_text().contains("TLS certificates reloaded"));
    // The agent's stream was never dropped.
    let log = agg.proc.log_text();
    assert_eq!(
        log.matches("Agent connected").count(),
        1,
        "the stream reconnected:\n{log}"
    );
    assert!(!log.contains("Agent disconnected"));
    let before = collections(&pki, &agg, "n1");
    std::thread::sleep(Duration::from_secs(3));
    assert!(collections(&pki, &agg, "n1") > before);
}

#[test]
fn an_expired_certificate_is_refused_with_a_clear_log_line_on_both_sides() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let now = OffsetDateTime::now_utc();
    let leaf = Leaf::Client(Identity::Node(NodeName::new("old").unwrap()));
    let expired = pki.issue_expired("node-old", &leaf, now - time_days(30), now - time_days(1));
    let agent = start_agent_with(&pki, "old", &expired, &[&agg], "");
    wait_for(Duration::from_secs(20), "the refusal in both logs", || {
        let a = agg.proc.log_text();
        let g = agent.log_text();
        (a.contains("TLS handshake refused")
            && a.to_lowercase().contains("expired")
            && g.to_lowercase().contains("expired"))
        .then_some(())
    });
    assert!(!agg.metrics().contains("node=\"old\""));
}

fn time_days(d: i64) -> nodewatch_proto::certs::TimeDuration {
    nodewatch_proto::certs::TimeDuration::days(d)
}

#[test]
fn a_node_over_its_limits_gets_an_error_and_a_metric_and_others_are_fine() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "limits:\n  max_series_per_node: 50\n");
    let greedy = start_agent(&pki, "greedy", &[&agg], "");
    wait_for(Duration::from_secs(30), "the series limit hit", || {
        agg.metrics()
            .lines()
            .any(|l| {
                l.starts_with("nodewatch_aggregator_node_limit_hits_total{")
                    && l.contains("node=\"greedy\"")
                    && l.contains("limit=\"series\"")
                    && l.rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v > 0.0)
            })
            .then_some(())
    });
    wait_for(Duration::from_secs(10), "the agent told why", || {
        greedy
            .log_text()
            .contains("limit of 50 series")
            .then_some(())
    });
    let series = agg
        .metrics()
        .lines()
        .filter(|l| l.contains("node=\"greedy\"") && !l.starts_with("nodewatch_aggregator"))
        .count();
    assert!(
        series <= 50,
        "{series} series stored for a node limited to 50"
    );
}

#[test]
fn sigterm_stops_the_agent_quickly_even_with_the_aggregator_gone_and_health_never_depends_on_it() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let mut agg = Aggregator::start(&pki, "agg", "");
    let port = free_port();
    let mut agent = start_agent(
        &pki,
        "n1",
        &[&agg],
        &format!("health_listen: 127.0.0.1:{port}\n"),
    );
    let health: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(20), "ready", || {
        http_get(health, "/readyz").ok().filter(|(s, _)| *s == 200)
    });
    agg.kill9();
    std::thread::sleep(Duration::from_secs(2));
    // The aggregator is gone: the agent is still healthy and ready (it collects into its spool).
    assert_eq!(http_get(health, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(health, "/readyz").unwrap().0, 200);
    let t = Instant::now();
    let code = agent.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "agent did not exit cleanly within 10 s");
    println!(
        "agent stopped {} ms after SIGTERM with no aggregator",
        t.elapsed().as_millis()
    );
}

/// Messages as an agent one version ahead would send them: unknown fields
/// in Hello and Batch, and a frame kind this aggregator has never heard of.
mod future {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Hello {
        #[prost(string, tag = "1")]
        pub agent_version: String,
        #[prost(string, tag = "2")]
        pub node: String,
        #[prost(string, tag = "8")]
        pub instance_id: String,
        #[prost(string, tag = "99")]
        pub new_field: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SeriesDef {
        #[prost(uint64, tag = "1")]
        pub r#ref: u64,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "3")]
        pub labels: Vec<Label>,
        #[prost(string, tag = "42")]
        pub unit: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, tag = "1")]
        pub r#ref: u64,
        #[prost(int64, tag = "2")]
        pub t_ms: i64,
        #[prost(double, tag = "3")]
        pub value: f64,
        #[prost(uint32, tag = "9")]
        pub flags: u32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Batch {
        #[prost(uint64, tag = "1")]
        pub seq: u64,
        #[prost(message, repeated, tag = "2")]
        pub series_defs: Vec<SeriesDef>,
        #[prost(message, repeated, tag = "4")]
        pub samples: Vec<Sample>,
        #[prost(bytes = "vec", tag = "77")]
        pub compressed_block: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AgentFrame {
        #[prost(oneof = "Kind", tags = "1, 2, 9")]
        pub frame: Option<Kind>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Hello(Hello),
        #[prost(message, tag = "2")]
        Batch(Batch),
        #[prost(message, tag = "9")]
        Heartbeat(Hello),
    }
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_from_another_version_still_streams() {
    use nodewatch_proto::v1::{aggregator_frame, AggregatorFrame};
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let files = pki.node("skew");
    let channel = nodewatch_tests::channel(&agg, &files);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let hello = future::AgentFrame {
        frame: Some(future::Kind::Hello(future::Hello {
            agent_version: "9.9.9".into(),
            node: "skew".into(),
            instance_id: "future".into(),
            new_field: "from the future".into(),
        })),
    };
    tx.send(hello).await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/nodewatch.v1.Ingest/Stream");
    let codec: tonic_prost::ProstCodec<future::AgentFrame, AggregatorFrame> =
        tonic_prost::ProstCodec::default();
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            path,
            codec,
        )
        .await
        .unwrap()
        .into_inner();
    let first = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        first.frame,
        Some(aggregator_frame::Frame::Welcome(_))
    ));
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // A frame kind this aggregator does not know: ignored with an error frame, the stream goes on.
    tx.send(future::AgentFrame {
        frame: Some(future::Kind::Heartbeat(future::Hello::default())),
    })
    .await
    .unwrap();
    let batch = future::Batch {
        seq: 1,
        series_defs: vec![future::SeriesDef {
            r#ref: 1,
            name: "skew_metric".into(),
            labels: vec![future::Label {
                name: "k".into(),
                value: "v".into(),
            }],
            unit: "bytes".into(),
        }],
        samples: vec![future::Sample {
            r#ref: 1,
            t_ms: t,
            value: 5.0,
            flags: 3,
        }],
        compressed_block: vec![1, 2, 3],
    };
    tx.send(future::AgentFrame {
        frame: Some(future::Kind::Batch(batch)),
    })
    .await
    .unwrap();
    let mut acked = false;
    while let Some(f) = inbound.message().await.unwrap() {
        if let Some(aggregator_frame::Frame::Ack(a)) = f.frame {
            assert_eq!(a.seq, 1);
            acked = true;
            break;
        }
    }
    assert!(acked);
    let v = scalar_of(&cli_query(&pki, &agg, "skew_metric{node=\"skew\",k=\"v\"}"));
    assert_eq!(v, Some(5.0));
    // An older agent: a Hello with only a version (no boot id, instance id, collectors).
    let (tx2, rx2) = tokio::sync::mpsc::channel(8);
    let old = future::AgentFrame {
        frame: Some(future::Kind::Hello(future::Hello {
            agent_version: "0.0.1".into(),
            ..Default::default()
        })),
    };
    tx2.send(old).await.unwrap();
    let codec: tonic_prost::ProstCodec<future::AgentFrame, AggregatorFrame> =
        tonic_prost::ProstCodec::default();
    let mut grpc2 = tonic::client::Grpc::new(nodewatch_tests::channel(&agg, &files));
    grpc2.ready().await.unwrap();
    let mut inbound2 = grpc2
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx2)),
            http::uri::PathAndQuery::from_static("/nodewatch.v1.Ingest/Stream"),
            codec,
        )
        .await
        .unwrap()
        .into_inner();
    let first = inbound2.message().await.unwrap().unwrap();
    assert!(
        matches!(first.frame, Some(aggregator_frame::Frame::Welcome(_))),
        "{first:?}"
    );
}

/// `count`, `min` and `max` of `series` over the last 15 minutes, read in
/// one query (one evaluation time), so a sample landing between reads
/// cannot make them disagree.
fn span(pki: &Pki, agg: &Aggregator, series: &str) -> Option<(f64, f64, f64)> {
    let sel = format!("{series}[15m]");
    let expr = format!(
        "label_replace(count_over_time({sel}), \"v\", \"count\", \"\", \"\") \
         or label_replace(max_over_time({sel}), \"v\", \"max\", \"\", \"\") \
         or label_replace(min_over_time({sel}), \"v\", \"min\", \"\", \"\")"
    );
    let r = cli_query(pki, agg, &expr);
    let get = |which: &str| {
        r["result"]
            .as_array()?
            .iter()
            .find(|s| s["metric"]["v"] == which)?["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()
    };
    Some((get("count")?, get("min")?, get("max")?))
}

/// Waits until agent `node` has nothing pending and `series` has no gap
/// (or `timeout` passes); returns the last `(count, min, max, pending)` seen.
fn settle(
    pki: &Pki,
    agg: &Aggregator,
    node: &str,
    series: &str,
    timeout: Duration,
) -> (f64, f64, f64, f64) {
    let start = Instant::now();
    let mut last = (0.0, 0.0, 0.0, f64::NAN);
    while start.elapsed() < timeout {
        if let Some((count, min, max)) = span(pki, agg, series) {
            let pending = query_scalar(
                pki,
                agg,
                &format!("nodewatch_agent_pending_batches{{node=\"{node}\"}}"),
            )
            .unwrap_or(f64::NAN);
            last = (count, min, max, pending);
            if pending <= 1.0 && (count - (max - min + 1.0)).abs() < 0.5 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    last
}

/// Checks that the testseq events of `node` hold every number of `1..=max/EVENT_EVERY`
/// exactly once (later ones may have arrived since `max` was read).
fn assert_events_complete(pki: &Pki, agg: &Aggregator, node: &str, max: f64) -> usize {
    let events = testseq_events(pki, agg, node);
    assert!(
        events.windows(2).all(|w| w[0] < w[1]),
        "an event was stored twice: {events:?}"
    );
    let k = max as u64 / testseq::EVENT_EVERY;
    let upto: Vec<u64> = events.iter().copied().filter(|e| *e <= k).collect();
    let want: Vec<u64> = (1..=k).collect();
    assert_eq!(upto, want, "every test event of values 1..={max}");
    upto.len()
}

/// The testseq events of `node` the aggregator holds: their numbers, sorted.
fn testseq_events(pki: &Pki, agg: &Aggregator, node: &str) -> Vec<u64> {
    let mut v: Vec<u64> = cli_events(pki, agg)
        .iter()
        .filter(|e| e["node"] == node && e["linkStateChange"]["device"] == "testseq")
        .filter_map(|e| e["linkStateChange"]["to"].as_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// Only the test collector (and the agent's own delivery metrics): every
/// collection then has the same series, so samples per collection is a constant.
const ONLY_TESTSEQ: &str = "collectors: {ebpf: false, testseq: true, stat: false, meminfo: false, loadavg: false, pressure: false, diskstats: false, filesystem: false, netdev: false, netclass: false, netstat: false, sockstat: false, vmstat: false, conntrack: false, zfs: false, zpool: false, time: false, timex: false, filefd: false, uname: false, os: false, entropy: false, arp: false, softnet: false, thermal_zone: false, schedstat: false, udp_queues: false, selinux: false, mdadm: false, hwmon: false, xfs: false, textfile: false, bonding: false, cpu_sysfs: false, cpufreq: false, watchdog: false, rapl: false, edac: false, dmi: false, nvme: false, powersupplyclass: false, ipvs: false, btrfs: false, nfs: false, nfsd: false, bcache: false, infiniband: false, fibrechannel: false, tapestats: false}\n";

#[test]
fn twenty_aggregator_kill9s_at_random_moments_lose_no_sample_and_no_event() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let mut agg = Aggregator::start(&pki, "agg", "");
    let _agent = start_agent(
        &pki,
        "seq",
        &[&agg],
        &format!("interval: 200ms\n{ONLY_TESTSEQ}"),
    );
    let series = "nodewatch_testseq_total{node=\"seq\"}";
    wait_for(Duration::from_secs(30), "first testseq samples", || {
        query_scalar(&pki, &agg, &format!("max_over_time({series}[15m])")).filter(|v| *v >= 2.0)
    });
    let mut rng = Rng::from_env(0x6e6f_6465_7761_7463);
    let kills = 20;
    let start = Instant::now();
    for i in 0..kills {
        // Up to 1.5 s of streaming, then a kill at whatever moment that is:
        // mid-batch, mid-ack, mid-backfill.
        std::thread::sleep(rng.millis(100, 1500));
        agg.kill9();
        std::thread::sleep(rng.millis(0, 500));
        agg.restart(&pki, &format!("agg-{i}"));
    }
    println!("{kills} kill -9s in {:?}", start.elapsed());
    // Let the agent backfill the last (empty) aggregator and produce a few more.
    std::thread::sleep(Duration::from_secs(2));
    let (count, min, max, pending) = settle(&pki, &agg, "seq", series, Duration::from_secs(30));
    println!("testseq: {count} samples stored, values {min}..={max}, {pending} pending");
    for l in agg.metrics().lines() {
        if l.starts_with("nodewatch_aggregator_") && !l.contains("_bucket") {
            println!("  {l}");
        }
    }
    assert!(
        (min - 1.0).abs() < 0.5,
        "the first value (1) is missing: min {min}"
    );
    assert!(
        (count - max).abs() < 0.5,
        "stored {count} samples for values 1..={max}: lost or doubled"
    );
    // The agent made about 5 collections a second the whole time.
    let expected = start.elapsed().as_secs_f64() * 5.0;
    assert!(
        max >= expected * 0.5,
        "only {max} collections in {expected} expected"
    );
    let events = assert_events_complete(&pki, &agg, "seq", max);
    println!("events: {events} stored, all exactly once");
    let dups = agg
        .metrics()
        .lines()
        .find(|l| l.starts_with("nodewatch_aggregator_duplicate_batches_total{node=\"seq\"}"))
        .map(str::to_string);
    println!("duplicates dropped by the last aggregator: {dups:?}");
}

/// Appends a torn record (header for 1000 bytes, 10 bytes of it) to the newest spool segment.
fn tear_newest_segment(dir: &std::path::Path) {
    use std::io::Write;
    let Some(newest) = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
    else {
        return;
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(newest)
        .unwrap();
    let mut torn = 1000u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    torn.extend_from_slice(&[7; 10]);
    f.write_all(&torn).unwrap();
}

#[test]
fn agent_kill9s_while_writing_its_spool_store_nothing_twice() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let extra = "interval: 100ms\n";
    let mut agent = start_agent(&pki, "w", &[&agg], extra);
    let mut rng = Rng::from_env(0x7370_6f6f_6c21);
    let kills = 15;
    let mut tears = 0;
    // Each incarnation is killed only once it has opened (and so recovered)
    // its spool: on a loaded machine a kill before that would leave two
    // tears for one restart to cut.
    let streaming = |agent: &Proc, starts: usize| {
        wait_for(Duration::from_secs(60), "the agent streaming", || {
            (agent.log_text().matches("Streaming to aggregator").count() >= starts).then_some(())
        });
    };
    for i in 0..kills {
        streaming(&agent, i + 1);
        std::thread::sleep(rng.millis(200, 1200));
        let _ = agent.child.kill();
        let _ = agent.child.wait();
        // A kill -9 rarely lands inside one write(2); every other time, leave
        // what a power cut mid-write would: a record header promising more
        // bytes than follow. The restart must cut it, not read it.
        if i % 2 == 1 {
            tear_newest_segment(&pki.path("spool-w"));
            tears += 1;
        }
        agent = start_agent(&pki, "w", &[&agg], extra);
    }
    let series = "nodewatch_agent_collections_total{node=\"w\"}";
    std::thread::sleep(Duration::from_secs(1));
    let (count, min, max, pending) = settle(&pki, &agg, "w", series, Duration::from_secs(30));
    println!("{pending} pending");
    let cuts = agent.log_text().matches("torn or corrupt tail").count();
    assert!(cuts >= tears, "{tears} torn tails left, {cuts} cut");
    println!(
        "{kills} agent kill -9s: {count} collections stored for seqs {min}..={max}; torn tails cut on restart: {cuts}"
    );
    // collections_total carries its collection's seq - 1. Nothing is stored
    // twice, and nothing durable is lost: the seq is made durable before the
    // collection's record, so a kill between the two costs at most the one
    // collection it interrupted (a gap of one seq, never more per kill).
    assert!(min < 0.5, "the first collection is missing: min {min}");
    let (_, body) = http_get(
        agg.http,
        "/api/v1/query?query=nodewatch_agent_collections_total%7Bnode%3D%22w%22%7D%5B15m%5D",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let stored: Vec<u64> = v["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(stored.first(), Some(&0), "the first collection is missing");
    let mut lost = 0;
    for w in stored.windows(2) {
        assert!(
            w[1] > w[0],
            "stored twice or out of order: {w:?} in {stored:?}"
        );
        assert!(
            w[1] - w[0] <= 2,
            "more than the one interrupted collection lost at {w:?}: {stored:?}"
        );
        lost += w[1] - w[0] - 1;
    }
    println!("collections interrupted by a kill -9 (their seq skipped): {lost}");
    assert!(
        lost <= u64::try_from(kills).unwrap(),
        "{lost} collections lost to {kills} kills: {stored:?}"
    );
    let dups = agg
        .metrics()
        .lines()
        .find(|l| l.starts_with("nodewatch_aggregator_duplicate_batches_total{node=\"w\"}"))
        .map(str::to_string);
    println!("duplicates dropped by the aggregator: {dups:?}");
}

#[test]
fn a_full_spool_keeps_events_drops_oldest_samples_and_counts_them() {
    let _host = nodewatch_tests::host_exclusive();
    let pki = Pki::new();
    let mut agg = Aggregator::start(
        &pki,
        "agg",
        "limits: {max_series_per_node: 100000, max_samples_per_second_per_node: 100000000}\n",
    );
    agg.kill9();
    let spool = pki.path("spool-full");
    let extra = format!(
        "interval: 100ms\nspool: {{dir: {}, max_size: 8MiB}}\n{ONLY_TESTSEQ}",
        spool.display()
    );
    let agent = start_agent_env(
        &pki,
        "full",
        &pki.node("full"),
        &[&agg],
        &extra,
        &[("NODEWATCH_TESTSEQ_SERIES", "3000")],
    );
    wait_for(Duration::from_secs(60), "the spool to fill", || {
        agent.log_text().contains("Spool full").then_some(())
    });
    // Keep dropping for a while, so whole segments of samples go.
    std::thread::sleep(Duration::from_secs(3));
    agg.restart(&pki, "agg-2");
    let series = "nodewatch_testseq_total{node=\"full\"}";
    let (count, min, max, pending) = settle(&pki, &agg, "full", series, Duration::from_secs(60));
    println!("{pending} pending");
    let dropped = query_scalar(
        &pki,
        &agg,
        "max_over_time(nodewatch_agent_spool_dropped_total{node=\"full\",kind=\"samples\"}[15m])",
    )
    .unwrap();
    let dropped_events = query_scalar(
        &pki,
        &agg,
        "max_over_time(nodewatch_agent_spool_dropped_total{node=\"full\",kind=\"events\"}[15m])",
    )
    .unwrap();
    // The agent's series only, not the liveness the aggregator writes per node.
    let per_collection = query_scalar(
        &pki,
        &agg,
        "count({node=\"full\",__name__!~\"up|nodewatch_aggregator_batches_total\"})",
    )
    .unwrap();
    println!(
        "stored values {min}..={max} ({count}); dropped {dropped} samples, {dropped_events} events; {per_collection} series per collection"
    );
    assert!(min > 1.0, "the oldest samples should be gone: min {min}");
    // The spool keeps dropping the oldest unsent collections while the
    // backlog drains, so gaps may follow the first one: every value of
    // 1..=max not stored must be accounted for by the drop counter.
    let missing = max - count;
    // Every missing collection is counted. The counter can be higher:
    // while the backlog drains, the spool also pushes out collections that
    // were already delivered and kept only for backfill, and counts those
    // too (spool.rs counts every sample of a dropped segment).
    assert!(
        dropped + 0.5 >= missing * per_collection,
        "{dropped} dropped samples, but {missing} collections of {per_collection} series are missing"
    );
    println!(
        "missing {missing} collections = {} samples; counter says {dropped} ({} collections)",
        missing * per_collection,
        dropped / per_collection
    );
    assert!(dropped_events < 0.5);
    // Every event survived the full spool.
    let events = assert_events_complete(&pki, &agg, "full", max);
    println!("events: {events} stored, all exactly once");
}
