//! Kubelet-derived signals end to end: a real agent reads the node's pods
//! from a kubelet and its Node object from an API server, and a real
//! aggregator (over mutual TLS) exposes what it found.
//!
//! No Kubernetes cluster exists where these tests run, so a local HTTPS
//! server stands in for each: the "kubelet" serves its default kind of
//! certificate (self-signed, made here with rcgen; the agent runs with
//! `kubelet_insecure_skip_verify`), the "API server" one from the test CA
//! (checked through `ca_file`). They answer `GET /pods` and
//! `GET /api/v1/nodes/<node>` with the fixtures in
//! `tests/fixtures/kubernetes/` and refuse the fallback pod list with 403,
//! as an API server does for a ServiceAccount without `list pods`.

use std::path::Path;
use std::time::Duration;

use nodewatch_proto::certs::Leaf;
use nodewatch_tests::{start_agent_env, wait_for, Aggregator, FakeServer, Pki};

const TOKEN: &str = "test-sa-token-0123";
const NODE: &str = "talos-w1";

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kubernetes")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A series name, labels besides `node`, and its value.
type Expected = (&'static str, &'static [(&'static str, &'static str)], f64);

fn kubelet_routes(path: &str) -> (&'static str, String) {
    match path {
        "/pods" => ("200 OK", fixture("kubelet-pods.json")),
        _ => ("404 Not Found", r#"{"kind":"Status","code":404}"#.into()),
    }
}

fn api_routes(path: &str) -> (&'static str, String) {
    if path == format!("/api/v1/nodes/{NODE}") {
        ("200 OK", fixture("node.json"))
    } else if path.starts_with("/api/v1/pods?") {
        (
            "403 Forbidden",
            r#"{"kind":"Status","code":403,"reason":"Forbidden","message":"pods is forbidden"}"#
                .into(),
        )
    } else {
        ("404 Not Found", r#"{"kind":"Status","code":404}"#.into())
    }
}

/// The value of the one series named `name` with all of `labels` (the
/// aggregator adds `node`).
fn value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name
            && rest.contains(&format!("node=\"{NODE}\""))
            && labels
                .iter()
                .all(|(k, val)| rest.contains(&format!("{k}=\"{val}\""))))
        .then(|| v.parse().ok())
        .flatten()
    })
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9 * b.abs().max(1.0))
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
#[test]
fn kubelet_and_node_figures_reach_the_aggregator_and_outlive_the_kubelet() {
    let _host = nodewatch_tests::host_shared();
    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");

    // The kubelet's default serving certificate: self-signed, for its host name.
    let kubelet_cert = rcgen::generate_simple_self_signed(vec![NODE.to_string()]).unwrap();
    let mut kubelet = FakeServer::start(
        &kubelet_cert.cert.pem(),
        &kubelet_cert.signing_key.serialize_pem(),
        TOKEN,
        kubelet_routes,
    );
    // The API server's certificate, from the CA the agent is given.
    let api_files = pki.issue(
        "apiserver",
        &Leaf::Server {
            names: vec!["127.0.0.1".into()],
        },
    );
    let api = FakeServer::start(
        &std::fs::read_to_string(&api_files.cert).unwrap(),
        &std::fs::read_to_string(&api_files.key).unwrap(),
        TOKEN,
        api_routes,
    );
    let token = pki.path("sa-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();

    let extra = format!(
        "kubernetes:\n  kubelet_url: https://${{NODE_IP}}:{}\n  api_server: https://127.0.0.1:{}\n  token_file: {}\n  ca_file: {}\n  kubelet_insecure_skip_verify: true\n  refresh: 1s\n",
        kubelet.addr.port(),
        api.addr.port(),
        token.display(),
        pki.path("ca.crt").display(),
    );
    let agent = start_agent_env(
        &pki,
        NODE,
        &pki.node(NODE),
        &[&agg],
        &extra,
        &[("NODE_IP", "127.0.0.1")],
    );

    // The fixture's figures (worked out in agent/src/kube/resources.rs).
    let mi = 1024.0 * 1024.0;
    let want: &[Expected] = &[
        ("nodewatch_node_cpu_requests_cores", &[], 3.67),
        ("nodewatch_node_cpu_limits_cores", &[], 7.05),
        ("nodewatch_node_memory_requests_bytes", &[], 1536.0 * mi),
        ("nodewatch_node_memory_limits_bytes", &[], 2848.0 * mi),
        ("nodewatch_node_cpu_allocatable_cores", &[], 3.8),
        ("nodewatch_node_cpu_capacity_cores", &[], 4.0),
        (
            "nodewatch_node_memory_allocatable_bytes",
            &[],
            15_640_148.0 * 1024.0,
        ),
        (
            "nodewatch_node_memory_capacity_bytes",
            &[],
            16_266_836.0 * 1024.0,
        ),
        ("nodewatch_node_pods", &[], 5.0),
        (
            "nodewatch_image_pull_failures",
            &[("registry", "docker.io"), ("reason", "rate_limited")],
            1.0,
        ),
        (
            "nodewatch_image_pull_failures",
            &[("registry", "ghcr.io"), ("reason", "unauthorized")],
            1.0,
        ),
    ];
    let all_there = |m: &str| {
        want.iter()
            .all(|(name, labels, v)| close(value(m, name, labels), *v))
    };
    wait_for(Duration::from_secs(30), "the Kubernetes figures", || {
        let m = agg.metrics();
        all_there(&m).then_some(())
    });

    // Both servers saw the ServiceAccount token on every request, and only
    // read-only GETs of the kubelet's pods and this node.
    let kubelet_seen = kubelet.requests();
    let api_seen = api.requests();
    assert!(!kubelet_seen.is_empty() && !api_seen.is_empty());
    for (path, auth) in kubelet_seen.iter().chain(api_seen.iter()) {
        assert_eq!(auth, &format!("Bearer {TOKEN}"), "request to {path}");
    }
    assert!(kubelet_seen.iter().all(|(p, _)| p == "/pods"));
    assert!(api_seen
        .iter()
        .all(|(p, _)| p == &format!("/api/v1/nodes/{NODE}")));

    // The kubelet goes away: the last figures stay, failures are counted
    // (the API server's fallback pod list is refused too), and the agent
    // says so once, not on every refresh.
    kubelet.shut_down();
    let errors = |m: &str, endpoint: &str| {
        value(
            m,
            "nodewatch_agent_kubernetes_errors_total",
            &[("endpoint", endpoint)],
        )
    };
    let m = wait_for(Duration::from_secs(30), "kubelet errors counted", || {
        let m = agg.metrics();
        (errors(&m, "kubelet_pods").unwrap_or(0.0) >= 3.0
            && errors(&m, "apiserver_pods").unwrap_or(0.0) >= 3.0)
            .then_some(m)
    });
    assert!(all_there(&m), "last figures kept:\n{m}");
    assert!(close(
        value(
            &m,
            "nodewatch_agent_kubernetes_up",
            &[("endpoint", "kubelet_pods")]
        ),
        0.0
    ));
    assert!(close(
        value(
            &m,
            "nodewatch_agent_kubernetes_up",
            &[("endpoint", "apiserver_node")]
        ),
        1.0
    ));
    let log = agent.log_text();
    assert_eq!(
        log.matches("cannot read the kubelet's pod list").count(),
        1,
        "one warning per state change:\n{log}"
    );
    assert!(api
        .requests()
        .iter()
        .any(|(p, _)| p == &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}")));
}
