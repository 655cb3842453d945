//! Real aggregator and agent processes over mutual TLS with certificates made
//! at test time: data arrives with the node label; every wrong identity is
//! refused; bad frames get clear errors and hurt nobody else.
#![allow(clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use nodewatch_proto::certs::Leaf;
use nodewatch_proto::tls;
use nodewatch_proto::{Identity, NodeName};

use nodewatch_proto::v1::ingest_client::IngestClient;
use nodewatch_proto::v1::query_client::QueryClient;
use nodewatch_proto::v1::{
    agent_frame, aggregator_frame, AgentFrame, AggregatorFrame, Batch, ErrorCode, Hello, Label,
    ListNodesRequest, QueryRequest, Sample, SeriesDef,
};
use nodewatch_tests::{channel, start_agent, wait_for, Aggregator, Pki};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

const SERIES: &str = "node_memory_MemAvailable_bytes";

fn hello(node: &str) -> AgentFrame {
    AgentFrame {
        frame: Some(agent_frame::Frame::Hello(Hello {
            agent_version: "test".into(),
            node: node.into(),
            os: "linux".into(),
            boot_id: "b".into(),
            instance_id: format!("i-{node}"),
            ..Hello::default()
        })),
    }
}

fn batch(seq: u64, defs: Vec<SeriesDef>, samples: Vec<Sample>) -> AgentFrame {
    AgentFrame {
        frame: Some(agent_frame::Frame::Batch(Batch {
            seq,
            series_defs: defs,
            samples,
            ..Batch::default()
        })),
    }
}

fn def(r: u64, name: &str, labels: &[(&str, &str)]) -> SeriesDef {
    SeriesDef {
        r#ref: r,
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| Label {
                name: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A raw ingest stream speaking for the node in `files`' certificate.
struct RawStream {
    tx: mpsc::Sender<AgentFrame>,
    rx: tonic::Streaming<AggregatorFrame>,
}

impl RawStream {
    async fn open(
        agg: &Aggregator,
        files: &nodewatch_proto::tls::TlsFiles,
        first: AgentFrame,
    ) -> Result<Self, tonic::Status> {
        let mut client =
            IngestClient::new(channel(agg, files)).max_encoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let rx = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx, rx })
    }

    async fn next(&mut self) -> Result<aggregator_frame::Frame, tonic::Status> {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.next()).await {
            Ok(Some(Ok(f))) => Ok(f.frame.expect("frame")),
            Ok(Some(Err(s))) => Err(s),
            Ok(None) => Err(tonic::Status::unknown("stream ended")),
            Err(elapsed) => panic!("no frame within 10 s: {elapsed}"),
        }
    }

    async fn send(&self, f: AgentFrame) {
        self.tx.send(f).await.unwrap();
    }
}

async fn query(agg: &Aggregator, pki: &Pki, expr: &str) -> Vec<nodewatch_proto::v1::SeriesValue> {
    let mut q = QueryClient::new(channel(agg, &pki.operator("ops")));
    q.query(QueryRequest {
        expr: expr.into(),
        time_ms: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .vector
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_series_arrive_with_node_label_and_nodes_lists_it() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let _agent = start_agent(&pki, "n1", &[&agg], "");
    let want = format!("{SERIES}{{node=\"n1\"}}");
    let body = wait_for(Duration::from_secs(30), "agent series on /metrics", || {
        let m = agg.metrics();
        m.contains(&want).then_some(m)
    });
    assert!(
        body.contains(&format!("# TYPE {SERIES} gauge")),
        "no TYPE line"
    );
    assert!(
        body.contains("nodewatch_aggregator_samples_total{node=\"n1\"}"),
        "own metrics missing"
    );
    // The same scrape gzip-compressed when asked, as node_exporter answers
    // Prometheus; it decodes to an exposition holding the same series.
    let raw = {
        let mut s = std::net::TcpStream::connect(agg.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        buf
    };
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&raw[split + 4..])
        .read_to_string(&mut unzipped)
        .unwrap();
    let names = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| l.starts_with(SERIES) || l.starts_with(&format!("# TYPE {SERIES} ")))
            .map(|l| l.rsplit_once(' ').map_or(l, |(k, _)| k).to_owned())
            .collect()
    };
    assert_eq!(names(&unzipped), names(&body));
    let v = query(&agg, &pki, &format!("{SERIES}{{node=\"n1\"}}")).await;
    assert_eq!(v.len(), 1);
    assert!(v[0].value > 0.0);
    let mut q = QueryClient::new(channel(&agg, &pki.operator("ops")));
    let nodes = q
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].name, "n1");
    assert!(
        nodes[0].connected
            && nodes[0].series > 10
            && nodes[0].os == "linux"
            && !nodes[0].kernel.is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_another_ca_is_refused() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let other = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    // An operator whose certificate another CA signed (trusting our server CA so only the client side differs).
    let mut foreign = other.operator("mallory");
    foreign.ca = pki.path("ca.crt");
    let mut q = QueryClient::new(channel(&agg, &foreign));
    let err = q.list_nodes(ListNodesRequest {}).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok, "{err:?}");
    // An agent with such a certificate never shows up.
    let mut node = other.node("intruder");
    node.ca = pki.path("ca.crt");
    assert!(RawStream::open(&agg, &node, hello("intruder"))
        .await
        .is_err());
    assert!(!agg.metrics().contains("intruder"));
    wait_for(
        Duration::from_secs(5),
        "handshake refusal in the log",
        || {
            agg.proc
                .log_text()
                .contains("TLS handshake refused")
                .then_some(())
        },
    );
    assert_refused(&agg, "unknown_ca");
}

/// `err` is PermissionDenied, with a message saying `says`.
fn assert_denied(err: &tonic::Status, says: &str) {
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains(says), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn node_certificate_may_not_query() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let mut q = QueryClient::new(channel(&agg, &pki.node("n1")));
    let err = q.list_nodes(ListNodesRequest {}).await.unwrap_err();
    assert_denied(&err, "may not Query");
    assert_refused(&agg, "role");
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_certificate_may_not_ingest() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let err = match RawStream::open(&agg, &pki.operator("ops"), hello("ops")).await {
        Err(s) => s,
        Ok(mut s) => s.next().await.unwrap_err(),
    };
    assert_denied(&err, "may not Ingest");
    assert_refused(&agg, "role");
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_naming_another_node_is_refused() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    // The refusal arrives as an error frame then a PermissionDenied status, or
    // (when both are ready at once) as the status alone.
    let status = match RawStream::open(&agg, &pki.node("n1"), hello("n2")).await {
        Err(status) => status,
        Ok(mut s) => {
            match s.next().await {
                Ok(aggregator_frame::Frame::Error(e)) => {
                    assert_eq!(e.code, ErrorCode::Identity as i32);
                    assert!(
                        e.fatal && e.message.contains("\"n2\"") && e.message.contains("\"n1\""),
                        "{}",
                        e.message
                    );
                }
                Ok(other) => panic!("expected an error frame, got {other:?}"),
                Err(status) => {
                    check_identity_status(&status);
                    assert_refused(&agg, "hello_identity");
                    return;
                }
            }
            let _ =
                s.tx.send(batch(
                    1,
                    vec![def(1, "x_total", &[])],
                    vec![Sample {
                        r#ref: 1,
                        t_ms: now_ms(),
                        value: 1.0,
                    }],
                ))
                .await;
            s.next().await.unwrap_err()
        }
    };
    check_identity_status(&status);
    assert_refused(&agg, "hello_identity");
    // Nothing was stored under either name.
    assert!(!agg.metrics().contains("x_total"));
    assert!(!agg.metrics().contains("node=\"n2\""));
}

fn check_identity_status(status: &tonic::Status) {
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("\"n2\"") && status.message().contains("\"n1\""),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_client_is_refused() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", agg.grpc))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = ch {
        let err = QueryClient::new(ch)
            .list_nodes(ListNodesRequest {})
            .await
            .unwrap_err();
        assert_ne!(err.code(), tonic::Code::Ok);
    }
    // A raw HTTP request gets no HTTP answer.
    let mut s = std::net::TcpStream::connect(agg.grpc).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "plaintext got an answer"
    );
    assert_refused(&agg, "plaintext");
}

/// The aggregator logged a refusal with `reason` and counts it in
/// `nodewatch_aggregator_auth_failures_total{reason}`.
fn assert_refused(agg: &Aggregator, reason: &str) {
    let series = format!("nodewatch_aggregator_auth_failures_total{{reason=\"{reason}\"}}");
    wait_for(
        Duration::from_secs(10),
        &format!("{series} and the reason in the log"),
        || {
            let counted = agg.metrics().lines().any(|l| {
                l.strip_prefix(series.as_str())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(|v| v >= 1.0)
            });
            let logged = agg
                .proc
                .log_text()
                .lines()
                .any(|l| l.contains("refused") && l.contains(reason));
            (counted && logged).then_some(())
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_not_yet_valid_is_refused() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let now = nodewatch_proto::certs::OffsetDateTime::now_utc();
    let day = nodewatch_proto::certs::TimeDuration::days(1);
    let leaf = Leaf::Client(Identity::Node(NodeName::new("early").unwrap()));
    let files = pki.issue_expired("node-early", &leaf, now + day, now + day * 30);
    let refused = match RawStream::open(&agg, &files, hello("early")).await {
        Err(_) => true,
        Ok(mut s) => s.next().await.is_err(),
    };
    assert!(refused, "a not-yet-valid certificate was let in");
    assert_refused(&agg, "not_yet_valid");
    assert!(!agg.metrics().contains("node=\"early\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls12_only_client_is_refused() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    let ops = pki.operator("old-client");
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::load_certs(&ops.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        tls::load_certs(&ops.cert).unwrap(),
        tls::load_key(&ops.key).unwrap(),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let ch = tls::channel(
        &agg.target(),
        tls::Reloadable::new(Arc::new(cfg)),
        Some("localhost".into()),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = QueryClient::new(ch)
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    assert_refused(&agg, "protocol_version");
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_get_clear_errors_and_hurt_nobody() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "limits:\n  max_frame_bytes: 65536\n");
    // A well-behaved node streams alongside.
    let _good = start_agent(&pki, "good", &[&agg], "");
    wait_for(Duration::from_secs(30), "good node's series", || {
        agg.metrics().contains("node=\"good\"").then_some(())
    });

    let files = pki.node("bad");
    let mut s = RawStream::open(&agg, &files, hello("bad")).await.unwrap();
    assert!(matches!(
        s.next().await.unwrap(),
        aggregator_frame::Frame::Welcome(_)
    ));
    let t = now_ms();
    // 1. A valid batch is stored and acked.
    s.send(batch(
        1,
        vec![def(1, "bad_metric", &[("k", "v")])],
        vec![Sample {
            r#ref: 1,
            t_ms: t,
            value: 42.0,
        }],
    ))
    .await;
    assert!(matches!(s.next().await.unwrap(), aggregator_frame::Frame::Ack(a) if a.seq == 1));
    // 2. An unknown series ref: error naming it, the valid part stored, acked.
    s.send(batch(
        2,
        vec![],
        vec![
            Sample {
                r#ref: 99,
                t_ms: t + 1,
                value: 1.0,
            },
            Sample {
                r#ref: 1,
                t_ms: t + 1,
                value: 43.0,
            },
        ],
    ))
    .await;
    match s.next().await.unwrap() {
        aggregator_frame::Frame::Error(e) => {
            assert!(
                e.message.contains("unknown series ref 99") && e.seq == 2 && !e.fatal,
                "{}",
                e.message
            );
        }
        f => panic!("expected error, got {f:?}"),
    }
    assert!(matches!(s.next().await.unwrap(), aggregator_frame::Frame::Ack(a) if a.seq == 2));
    // 3. Seq going backwards: refused with an error, nothing stored.
    s.send(batch(
        1,
        vec![],
        vec![Sample {
            r#ref: 1,
            t_ms: t + 2,
            value: -1.0,
        }],
    ))
    .await;
    match s.next().await.unwrap() {
        aggregator_frame::Frame::Error(e) => {
            assert!(e.message.contains("seq 1 is not after"), "{}", e.message);
        }
        f => panic!("expected error, got {f:?}"),
    }
    // 4. Bad names and the reserved node label.
    s.send(batch(
        3,
        vec![
            def(2, "1bad", &[]),
            def(3, "ok_metric", &[("node", "other")]),
        ],
        vec![],
    ))
    .await;
    match s.next().await.unwrap() {
        aggregator_frame::Frame::Error(e) => {
            assert!(
                e.message.contains("bad metric name \"1bad\"")
                    && e.message.contains("\"node\" is reserved"),
                "{}",
                e.message
            );
        }
        f => panic!("expected error, got {f:?}"),
    }
    assert!(matches!(s.next().await.unwrap(), aggregator_frame::Frame::Ack(a) if a.seq == 3));
    let v = query(&agg, &pki, "bad_metric").await;
    assert_eq!(v.len(), 1);
    assert!(
        (v[0].value - 43.0).abs() < f64::EPSILON,
        "stored value changed: {}",
        v[0].value
    );
    // 5. An oversized frame ends this stream with a clear status...
    let huge = vec![def(10, "big", &[("blob", &"x".repeat(200_000))])];
    s.send(batch(4, huge, vec![])).await;
    let err = loop {
        match s.next().await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(
        err.message().contains("message length too large")
            || err.code() == tonic::Code::ResourceExhausted
            || err.code() == tonic::Code::OutOfRange,
        "{err:?}"
    );
    // ...and nothing stored is lost, and the good node keeps streaming.
    assert_eq!(query(&agg, &pki, "bad_metric").await.len(), 1);
    let before = query(&agg, &pki, "nodewatch_agent_pending_batches{node=\"good\"}").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = query(&agg, &pki, "nodewatch_agent_pending_batches{node=\"good\"}").await;
    assert!(!before.is_empty() && !after.is_empty());
    let mut q = QueryClient::new(channel(&agg, &pki.operator("ops")));
    let nodes = q
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let good = nodes.iter().find(|n| n.name == "good").unwrap();
    assert!(
        good.connected && now_ms() - good.last_batch_ms < 3000,
        "good node stalled: {good:?}"
    );
}

#[test]
fn unknown_config_keys_are_named() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let cfg = pki.path("bad.yaml");
    std::fs::write(&cfg, "listen:\n  grpc: 127.0.0.1:0\n  htp: 127.0.0.1:0\n").unwrap();
    let out = std::process::Command::new(nodewatch_tests::bin("nodewatch-aggregator"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("htp") && err.contains("line 3"),
        "{err}"
    );
    // Missing files are all reported at once, with their keys.
    std::fs::write(&cfg, "tls:\n  ca: /nonexistent/ca.crt\n").unwrap();
    let out = std::process::Command::new(nodewatch_tests::bin("nodewatch-aggregator"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.ca: file not found: /nonexistent/ca.crt")
            && err.contains("tls.cert: required"),
        "{err}"
    );
    let out = std::process::Command::new(nodewatch_tests::bin("nodewatch-agent"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("aggregators"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_opnsense_sample_config_is_accepted_by_the_agent() {
    let _host = nodewatch_tests::host_shared();
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/opnsense/nodewatch-agent.yaml.sample"
    );
    let out = nodewatch_tests::cli_output(
        std::process::Command::new(nodewatch_tests::bin("nodewatch-agent"))
            .args(["--config", sample, "--once"]),
        "nodewatch-agent",
    );
    assert!(String::from_utf8_lossy(&out).contains("node_load1"));
}
