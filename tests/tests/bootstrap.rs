//! Per-node identity on Kubernetes without listing nodes: the agent trades a
//! pod-bound ServiceAccount token for a certificate naming the node the API
//! server says the pod runs on. No Kubernetes API server can run here, so a
//! small stand-in answers `TokenReview` and `GET pod` exactly as the real
//! one does (shapes from authentication.k8s.io/v1 and core/v1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use nodewatch_proto::tls::{self, Reloadable};
use nodewatch_proto::v1::bootstrap_client::BootstrapClient;
use nodewatch_proto::v1::query_client::QueryClient;
use nodewatch_proto::v1::{IssueRequest, ListNodesRequest};
use nodewatch_proto::{Identity, NodeName};
use nodewatch_tests::{bin, spawn, wait_for, Aggregator, Pki};
use serde_json::json;

const AGGREGATOR_SA_TOKEN: &str = "aggregator-sa-token";
const AGENT_SA: &str = "system:serviceaccount:nodewatch:nodewatch-agent";

/// token → (authenticated, username, audience, node claimed, pod, pod uid)
fn review_for(token: &str) -> serde_json::Value {
    let ok = |user: &str, node: &str, pod: &str, uid: &str, aud: &str| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": {
            "authenticated": true, "audiences": [aud],
            "user": {"username": user, "extra": {
                "authentication.kubernetes.io/node-name": [node],
                "authentication.kubernetes.io/pod-name": [pod],
                "authentication.kubernetes.io/pod-uid": [uid]}}}})
    };
    match token {
        "tok-a" => ok(AGENT_SA, "node-a", "agent-a", "uid-a", "nodewatch"),
        // The token claims node-a, but its pod is scheduled on node-b.
        "tok-lies" => ok(AGENT_SA, "node-a", "agent-b", "uid-b", "nodewatch"),
        "tok-other-sa" => ok(
            "system:serviceaccount:default:web",
            "node-a",
            "web-1",
            "uid-w",
            "nodewatch",
        ),
        "tok-other-aud" => ok(AGENT_SA, "node-a", "agent-a", "uid-a", "vault"),
        _ => json!({"status": {"authenticated": false, "error": "invalid bearer token"}}),
    }
}

fn pod(name: &str) -> Option<serde_json::Value> {
    let (node, uid) = match name {
        "agent-a" => ("node-a", "uid-a"),
        "agent-b" => ("node-b", "uid-b"),
        "web-1" => ("node-a", "uid-w"),
        _ => return None,
    };
    Some(
        json!({"kind": "Pod", "metadata": {"name": name, "namespace": "nodewatch", "uid": uid}, "spec": {"nodeName": node}}),
    )
}

/// The stand-in API server (plain HTTP on loopback).
fn fake_api() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let Ok(n) = c.read(&mut chunk) else {
                    break (String::new(), String::new());
                };
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let len = h
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if b.len() >= len {
                        break (h.to_string(), b[..len].to_string());
                    }
                }
            };
            let authorized = head.lines().any(|l| {
                l.eq_ignore_ascii_case(&format!("authorization: Bearer {AGGREGATOR_SA_TOKEN}"))
            });
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, reply) = if !authorized {
                ("401 Unauthorized", json!({"kind": "Status", "code": 401}))
            } else if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
                let req: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let token = req["spec"]["token"].as_str().unwrap_or("");
                ("201 Created", review_for(token))
            } else if let Some(name) = path.strip_prefix("/api/v1/namespaces/nodewatch/pods/") {
                match pod(name) {
                    Some(p) => ("200 OK", p),
                    None => ("404 Not Found", json!({"kind": "Status", "code": 404})),
                }
            } else {
                ("404 Not Found", json!({"kind": "Status", "code": 404}))
            };
            let text = reply.to_string();
            let _ = write!(c, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len());
        }
    });
    addr
}

fn bootstrap_aggregator(pki: &Pki) -> Aggregator {
    let api = fake_api();
    let token_file = pki.path("aggregator-sa-token");
    std::fs::write(&token_file, AGGREGATOR_SA_TOKEN).unwrap();
    Aggregator::start(
        pki,
        "agg",
        &format!(
            "bootstrap:\n  ca_cert: {}\n  ca_key: {}\n  service_accounts: ['{AGENT_SA}']\n  validity: 1h\n  kubernetes:\n    api: http://{api}\n    token_file: {}\n",
            pki.path("ca.crt").display(),
            pki.path("ca.key").display(),
            token_file.display()
        ),
    )
}

#[test]
fn an_agent_gets_the_certificate_of_the_node_its_pod_runs_on() {
    let pki = Pki::new();
    let agg = bootstrap_aggregator(&pki);
    let token = pki.path("projected-token");
    std::fs::write(&token, "tok-a\n").unwrap();
    let issued = pki.path("identity");
    let cfg = pki.path("agent-boot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "aggregators: ['{}']\nserver_name: localhost\ninterval: 1s\nhealth_listen: ''\ncollectors: {{ebpf: false}}\nspool: {{dir: {}}}\nbootstrap:\n  token: {}\ntls:\n  ca: {}\n  cert: {}/tls.crt\n  key: {}/tls.key\n",
            agg.grpc,
            pki.path("spool-boot").display(),
            token.display(),
            pki.path("ca.crt").display(),
            issued.display(),
            issued.display()
        ),
    )
    .unwrap();
    let _agent = spawn(
        &bin("nodewatch-agent"),
        &["--config", cfg.to_str().unwrap()],
        pki.dir.path(),
        "agent-boot",
    );
    wait_for(Duration::from_secs(30), "series of node-a", || {
        agg.metrics()
            .contains("node_load1{node=\"node-a\"}")
            .then_some(())
    });
    let cert = tls::load_certs(&issued.join("tls.crt")).unwrap();
    assert_eq!(
        Identity::from_cert_der(&cert[0]).unwrap(),
        Identity::Node(NodeName::new("node-a").unwrap())
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(issued.join("tls.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the key is private");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_gets_another_nodes_identity() {
    let pki = Pki::new();
    let agg = bootstrap_aggregator(&pki);
    let anon = tls::anonymous_client_config(&pki.path("ca.crt")).unwrap();
    let channel = tls::channel(
        &agg.target(),
        Reloadable::new(anon),
        Some("localhost".into()),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut client = BootstrapClient::new(channel.clone());
    let (_key, csr) =
        nodewatch_proto::certs::key_and_csr(&NodeName::new("node-b").unwrap()).unwrap();
    let ask = |token: &str| IssueRequest {
        token: token.into(),
        csr_pem: csr.clone(),
    };
    // A request naming node-b with node-a's token still gets node-a: the name comes from the API server.
    let ok = client.issue(ask("tok-a")).await.unwrap().into_inner();
    assert_eq!(ok.node, "node-a");
    for (token, want) in [
        ("tok-lies", "runs on \"node-b\""),
        ("tok-other-sa", "may not bootstrap"),
        ("tok-other-aud", "audience"),
        ("garbage", "invalid bearer token"),
    ] {
        let err = client.issue(ask(token)).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "{token}: {err:?}"
        );
        assert!(err.message().contains(want), "{token}: {}", err.message());
    }
    // Connecting without a certificate is for Bootstrap only.
    let err = QueryClient::new(channel)
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let log = agg.proc.log_text();
    assert!(
        log.contains("Bootstrap refused") && log.contains("node-b"),
        "{log}"
    );
}
