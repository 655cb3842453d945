//! Per-node identity on Kubernetes without listing nodes: the agent trades a
//! pod-bound ServiceAccount token for a certificate naming the node the API
//! server says the pod runs on. The firewall, off the cluster, trades a
//! long-lived token of its own ServiceAccount, whose annotation names the
//! node, and renews before expiry. The aggregator holds only a node-issuing
//! CA, which cannot make operators. No Kubernetes API server can run here,
//! so a small stand-in answers `TokenReview`, `GET pod` and `GET
//! serviceaccount` exactly as the real one does (shapes from
//! authentication.k8s.io/v1 and core/v1).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use nodewatch_proto::certs::{Ca, Leaf, Pem};
use nodewatch_proto::tls::{self, Reloadable, TlsFiles};
use nodewatch_proto::v1::bootstrap_client::BootstrapClient;
use nodewatch_proto::v1::ingest_client::IngestClient;
use nodewatch_proto::v1::query_client::QueryClient;
use nodewatch_proto::v1::{IssueRequest, ListNodesRequest};
use nodewatch_proto::{Identity, NodeName};
use nodewatch_tests::{bin, spawn, wait_for, Aggregator, Pki};
use serde_json::json;

const AGGREGATOR_SA_TOKEN: &str = "aggregator-sa-token";
const AGENT_SA: &str = "system:serviceaccount:nodewatch:nodewatch-agent";
const FIREWALL_SA: &str = "system:serviceaccount:nodewatch:nodewatch-firewall";
/// Listed as a node ServiceAccount, but nobody annotated it.
const BARE_SA: &str = "system:serviceaccount:nodewatch:nodewatch-bare";

/// A token made with `kubectl create token <sa> --audience nodewatch`: bound
/// to the ServiceAccount (its uid), to no pod.
fn sa_review(user: &str, uid: &str) -> serde_json::Value {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": {
        "authenticated": true, "audiences": ["nodewatch"],
        "user": {"username": user, "uid": uid,
            "groups": ["system:serviceaccounts", "system:serviceaccounts:nodewatch", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": ["JTI=6c1f0a8e"]}}}})
}

fn service_account(name: &str) -> Option<serde_json::Value> {
    let meta = match name {
        "nodewatch-firewall" => json!({"name": name, "namespace": "nodewatch", "uid": "uid-fw",
            "annotations": {"nodewatch.io/node-name": "opnsense"}}),
        "nodewatch-bare" => json!({"name": name, "namespace": "nodewatch", "uid": "uid-bare"}),
        _ => return None,
    };
    Some(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}))
}

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
        "tok-fw" => sa_review(FIREWALL_SA, "uid-fw"),
        "tok-bare" => sa_review(BARE_SA, "uid-bare"),
        // Issued to an earlier ServiceAccount of the same name, since deleted.
        "tok-fw-old" => sa_review(FIREWALL_SA, "uid-fw-deleted"),
        // The agents' ServiceAccount is not a node ServiceAccount: a token of
        // it bound to no pod names no node.
        "tok-agent-unbound" => sa_review(AGENT_SA, "uid-agent-sa"),
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
            let (head, body) = nodewatch_tests::read_request(&mut c).unwrap_or_default();
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
            } else if let Some(name) =
                path.strip_prefix("/api/v1/namespaces/nodewatch/serviceaccounts/")
            {
                match service_account(name) {
                    Some(sa) => ("200 OK", sa),
                    None => ("404 Not Found", json!({"kind": "Status", "code": 404})),
                }
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
    let _host = nodewatch_tests::host_shared();
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

/// A Bootstrap client without a certificate (all a pod has before its
/// first certificate), the channel it uses, and the request for a
/// certificate naming `node` with a fresh key, given a token.
fn anonymous_bootstrap(
    pki: &Pki,
    agg: &Aggregator,
    node: &str,
) -> (
    BootstrapClient<tonic::transport::Channel>,
    tonic::transport::Channel,
    impl Fn(&str) -> IssueRequest,
) {
    let anon = tls::anonymous_client_config(&pki.path("ca.crt")).unwrap();
    let channel = tls::channel(
        &agg.target(),
        Reloadable::new(anon),
        Some("localhost".into()),
        Duration::from_secs(5),
    )
    .unwrap();
    let (_key, csr) = nodewatch_proto::certs::key_and_csr(&NodeName::new(node).unwrap()).unwrap();
    let ask = move |token: &str| IssueRequest {
        token: token.into(),
        csr_pem: csr.clone(),
    };
    (BootstrapClient::new(channel.clone()), channel, ask)
}

/// Each `(token, why)`: the request is refused as PermissionDenied with a
/// message saying `why`.
async fn assert_refused(
    client: &mut BootstrapClient<tonic::transport::Channel>,
    ask: &impl Fn(&str) -> IssueRequest,
    cases: &[(&str, &str)],
) {
    for (token, want) in cases {
        let err = client.issue(ask(token)).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "{token}: {err:?}"
        );
        assert!(err.message().contains(want), "{token}: {}", err.message());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_gets_another_nodes_identity() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let agg = bootstrap_aggregator(&pki);
    let (mut client, channel, ask) = anonymous_bootstrap(&pki, &agg, "node-b");
    // A request naming node-b with node-a's token still gets node-a: the name comes from the API server.
    let ok = client.issue(ask("tok-a")).await.unwrap().into_inner();
    assert_eq!(ok.node, "node-a");
    assert_refused(
        &mut client,
        &ask,
        &[
            ("tok-lies", "runs on \"node-b\""),
            ("tok-other-sa", "may not bootstrap"),
            ("tok-other-aud", "audience"),
            ("garbage", "invalid bearer token"),
        ],
    )
    .await;
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

/// The split PKI of the Kubernetes deploy: a root (`ca.crt`, which signs the
/// aggregator's server certificate and operators) and below it a node-issuing
/// CA (`node-ca.crt/.key`), the only key the aggregator holds.
fn node_ca(pki: &Pki) -> Ca {
    let root = Ca::load(pki.dir.path()).unwrap();
    let node_ca = root
        .issue_node_ca("nodewatch node CA", Duration::from_secs(3600))
        .unwrap();
    node_ca.pem().write(pki.dir.path(), "node-ca").unwrap();
    node_ca
}

/// An aggregator whose Bootstrap signs with the node-issuing CA and accepts
/// firewall tokens of `nodewatch-firewall` (and, unannotated, `nodewatch-bare`).
fn split_aggregator(pki: &Pki, validity: &str) -> Aggregator {
    let api = fake_api();
    let token_file = pki.path("aggregator-sa-token");
    std::fs::write(&token_file, AGGREGATOR_SA_TOKEN).unwrap();
    Aggregator::start(
        pki,
        "agg-split",
        &format!(
            "bootstrap:\n  ca_cert: {}\n  ca_key: {}\n  service_accounts: ['{AGENT_SA}']\n  node_service_accounts: ['{FIREWALL_SA}', '{BARE_SA}']\n  validity: {validity}\n  kubernetes:\n    api: http://{api}\n    token_file: {}\n",
            pki.path("node-ca.crt").display(),
            pki.path("node-ca.key").display(),
            token_file.display()
        ),
    )
}

fn cert_der(path: &Path) -> Vec<u8> {
    tls::load_certs(path).unwrap()[0].to_vec()
}

/// A counter's value on `/metrics`, 0 when absent.
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The OPNsense path end to end with the FreeBSD-independent parts of the
/// agent: the sample config's bootstrap, a token of the firewall's
/// ServiceAccount, the node name from its annotation, a node certificate
/// from the node-issuing CA, and a renewal before expiry that keeps the
/// firewall connected after its first certificate has expired.
#[test]
fn the_firewall_gets_its_identity_from_its_service_account_and_renews() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let node_ca = node_ca(&pki);
    let mut agg = split_aggregator(&pki, "30s");
    // The OPNsense sample configuration as shipped, with its folders moved
    // under the test's and the aggregator's address in place of the
    // LoadBalancer addresses (an IP address the server certificate names,
    // as in the deploy).
    let etc = pki.path("usr-local-etc-nodewatch");
    let var = pki.path("var-db-nodewatch");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(pki.path("ca.crt"), etc.join("ca.crt")).unwrap();
    std::fs::write(etc.join("token"), "tok-fw\n").unwrap();
    let sample = std::fs::read_to_string(opnsense("nodewatch-agent.yaml.sample")).unwrap();
    let lb = "  - 192.168.10.40:7443\n  - 192.168.10.41:7443\n";
    assert!(sample.contains(lb), "the sample's aggregators changed");
    let text = sample
        .replace(lb, &format!("  - {}\n", agg.grpc))
        .replace("/usr/local/etc/nodewatch/", &format!("{}/", etc.display()))
        .replace("/var/db/nodewatch/", &format!("{}/", var.display()))
        .replace("interval: 10s", "interval: 1s")
        .replace("health_listen: 127.0.0.1:9465", "health_listen: ''")
        + "collectors: {ebpf: false}\n";
    let identity = var.join("identity");
    let cfg = pki.path("agent-fw.yaml");
    std::fs::write(&cfg, text).unwrap();
    let _agent = spawn(
        &bin("nodewatch-agent"),
        &["--config", cfg.to_str().unwrap()],
        pki.dir.path(),
        "agent-fw",
    );
    wait_for(Duration::from_secs(30), "series of opnsense", || {
        agg.metrics()
            .contains("node_load1{node=\"opnsense\"}")
            .then_some(())
    });
    let cert_path = identity.join("tls.crt");
    let first = cert_der(&cert_path);
    assert_eq!(
        Identity::from_cert_der(&first).unwrap(),
        Identity::Node(NodeName::new("opnsense").unwrap())
    );
    let (_, first_not_after) = nodewatch_proto::identity::validity(&first).unwrap();
    drop(node_ca);

    // 30 s certificates, renewed at two thirds: a new one within ~25 s.
    let renewed = wait_for(Duration::from_secs(45), "a renewed certificate", || {
        let now = cert_der(&cert_path);
        (now != first).then_some(now)
    });
    assert_eq!(
        Identity::from_cert_der(&renewed).unwrap(),
        Identity::Node(NodeName::new("opnsense").unwrap())
    );
    let (_, renewed_not_after) = nodewatch_proto::identity::validity(&renewed).unwrap();
    assert!(renewed_not_after > first_not_after);
    let issued = counter(
        &agg.metrics(),
        "nodewatch_aggregator_bootstrap_total{result=\"issued\"}",
    );
    assert!(issued >= 2, "issued {issued}");

    // Once the first certificate has expired, a fresh aggregator process
    // (new connections, new handshakes) still takes the firewall's stream.
    let wait = u64::try_from(first_not_after + 1 - now_secs()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(wait));
    agg.restart(&pki, "agg-split");
    wait_for(
        Duration::from_secs(30),
        "opnsense again after the first certificate expired",
        || {
            agg.metrics()
                .contains("node_load1{node=\"opnsense\"}")
                .then_some(())
        },
    );
}

fn opnsense(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/opnsense")
        .join(file)
}

/// The install notes, the sample configuration and the rc.d script name
/// the same files.
#[test]
fn the_opnsense_readme_sample_and_rc_script_name_the_same_files() {
    let _host = nodewatch_tests::host_shared();
    let sample = std::fs::read_to_string(opnsense("nodewatch-agent.yaml.sample")).unwrap();
    let readme = std::fs::read_to_string(opnsense("README.md")).unwrap();
    let rc = std::fs::read_to_string(opnsense("rc.d/nodewatch_agent")).unwrap();
    let cfg: serde_json::Value = serde_yaml_ng::from_str(&sample).unwrap();
    let mut files = vec![];
    for path in [
        &cfg["tls"]["ca"],
        &cfg["tls"]["cert"],
        &cfg["tls"]["key"],
        &cfg["bootstrap"]["token"],
        &cfg["spool"]["dir"],
    ] {
        files.push(path.as_str().expect("a path in the sample").to_string());
    }
    files.push("/usr/local/etc/nodewatch/agent.yaml".into());
    for f in &files {
        assert!(readme.contains(f.as_str()), "README.md does not name {f}");
        assert!(
            rc.contains(f.as_str()),
            "rc.d/nodewatch_agent does not name {f}"
        );
    }
    // And nothing else: the names older notes and samples used are gone
    // (`nodewatch certs` still writes node-<name>.crt, which the notes
    // install under the names above).
    for old in ["ca.pem", "agent.pem", "agent-key.pem"] {
        assert!(!readme.contains(old), "README.md still names {old}");
        assert!(!sample.contains(old), "the sample still names {old}");
    }
    assert!(!sample.contains("node-opnsense.crt"));
}

fn now_secs() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_account_without_the_node_annotation_is_refused_and_counted() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let _ = node_ca(&pki);
    let agg = split_aggregator(&pki, "1h");
    let (mut client, _, ask) = anonymous_bootstrap(&pki, &agg, "talos-1");
    // The request's name (talos-1) is ignored: the annotation says opnsense.
    let ok = client.issue(ask("tok-fw")).await.unwrap().into_inner();
    assert_eq!(ok.node, "opnsense");
    assert_refused(
        &mut client,
        &ask,
        &[
            ("tok-bare", "no nodewatch.io/node-name annotation"),
            ("tok-fw-old", "the token was issued to uid-fw-deleted"),
            ("tok-agent-unbound", "names no node"),
        ],
    )
    .await;
    let metrics = agg.metrics();
    assert_eq!(
        counter(
            &metrics,
            "nodewatch_aggregator_bootstrap_total{result=\"no_node_annotation\"}"
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        counter(
            &metrics,
            "nodewatch_aggregator_bootstrap_total{result=\"issued\"}"
        ),
        1
    );
}

/// Whoever takes over an aggregator holds the node-issuing key and nothing
/// more: operator certificates it signs are refused, with or without the
/// node CA sent along as an intermediate; the root's operators and the node
/// CA's nodes are accepted.
#[tokio::test(flavor = "multi_thread")]
async fn the_node_issuing_key_cannot_make_an_operator() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let node_ca = node_ca(&pki);
    let agg = split_aggregator(&pki, "1h");
    let forged = node_ca
        .issue(
            &Leaf::Client(Identity::Operator("mallory".into())),
            Duration::from_secs(3600),
        )
        .unwrap();
    forged.write(pki.dir.path(), "operator-forged").unwrap();
    // The same, with the node CA appended as the chain a client may send.
    let chained = Pem {
        cert: format!("{}{}", forged.cert, node_ca.pem().cert),
        key: forged.key.clone(),
    };
    chained
        .write(pki.dir.path(), "operator-forged-chain")
        .unwrap();
    let files = |stem: &str| TlsFiles {
        ca: pki.path("ca.crt"),
        cert: pki.path(&format!("{stem}.crt")),
        key: pki.path(&format!("{stem}.key")),
    };
    for stem in ["operator-forged", "operator-forged-chain"] {
        let err = QueryClient::new(nodewatch_tests::channel(&agg, &files(stem)))
            .list_nodes(ListNodesRequest {})
            .await
            .unwrap_err();
        assert_ne!(err.code(), tonic::Code::Ok, "{stem}");
    }
    let refused = counter(
        &agg.metrics(),
        "nodewatch_aggregator_auth_failures_total{reason=\"unknown_ca\"}",
    );
    assert!(refused >= 2, "unknown_ca refusals: {refused}");
    // The root's own operator is served.
    let admin = pki.operator("admin");
    QueryClient::new(nodewatch_tests::channel(&agg, &admin))
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap();
    // A node certificate from the node CA streams; one the root signed
    // directly is not a node identity this aggregator issues.
    node_ca
        .issue(
            &Leaf::Client(Identity::Node(NodeName::new("node-c").unwrap())),
            Duration::from_secs(3600),
        )
        .unwrap()
        .write(pki.dir.path(), "node-c")
        .unwrap();
    let _agent = nodewatch_tests::start_agent_with(&pki, "node-c", &files("node-c"), &[&agg], "");
    wait_for(Duration::from_secs(30), "series of node-c", || {
        agg.metrics()
            .contains("node_load1{node=\"node-c\"}")
            .then_some(())
    });
    let root_node = pki.node("node-d");
    let unknown_ca = || {
        counter(
            &agg.metrics(),
            "nodewatch_aggregator_auth_failures_total{reason=\"unknown_ca\"}",
        )
    };
    let before = unknown_ca();
    let refused = IngestClient::new(nodewatch_tests::channel(&agg, &root_node))
        .stream(tokio_stream::empty())
        .await;
    assert!(
        refused.is_err(),
        "a node certificate the root signed directly was accepted"
    );
    // Refused at the handshake, for its issuer (not for the empty stream).
    wait_for(Duration::from_secs(5), "the refusal counted", || {
        (unknown_ca() > before).then_some(())
    });
}
