//! Every metric the Grafana dashboard (`deploy/grafana/nodewatch.json`)
//! queries exists in a real aggregator's exposition: a real agent with its
//! eBPF programs, a stand-in kubelet serving the pod-list fixture (there is no
//! Kubernetes cluster on the test machine), a packet to a closed port (a
//! drop) and a real OOM kill, so the event-born series exist too.
//!
//! What a Linux host without ZFS cannot show (pf, CARP and gateways are
//! FreeBSD's; pool health needs a ZFS pool) is checked against the agent's
//! own source instead: the collector that emits the name must exist. Their
//! values are tested on captured output in the collectors' unit tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodewatch_proto::certs::Leaf;
use nodewatch_tests::{
    http_get, in_ci, missing, start_agent_env, wait_for, Aggregator, FakeServer, MemCgroup, Pki,
};

const TOKEN: &str = "dashboard-sa-token";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Metric names in the dashboard's panel queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/nodewatch.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    assert!(exprs.len() > 10, "dashboard has {} queries", exprs.len());
    let mut names = BTreeSet::new();
    for e in exprs {
        // Grafana's variables, filled in as the dashboard's defaults would.
        let e = e.replace("$__rate_interval", "5m").replace("$node", ".*");
        let ast = promql_parser::parser::parse(&e).unwrap_or_else(|err| panic!("{e}: {err}"));
        collect_names(&ast, &mut names);
    }
    names
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match v {
                    serde_json::Value::String(s) if k == "expr" => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

fn collect_names(e: &promql_parser::parser::Expr, out: &mut BTreeSet<String>) {
    use promql_parser::parser::Expr;
    match e {
        Expr::VectorSelector(vs) => {
            if let Some(n) = &vs.name {
                out.insert(n.clone());
            }
        }
        Expr::MatrixSelector(ms) => collect_names(&Expr::VectorSelector(ms.vs.clone()), out),
        Expr::Aggregate(a) => {
            collect_names(&a.expr, out);
            if let Some(p) = &a.param {
                collect_names(p, out);
            }
        }
        Expr::Unary(u) => collect_names(&u.expr, out),
        Expr::Binary(b) => {
            collect_names(&b.lhs, out);
            collect_names(&b.rhs, out);
        }
        Expr::Paren(p) => collect_names(&p.expr, out),
        Expr::Subquery(s) => collect_names(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| collect_names(a, out)),
        _ => {}
    }
}

/// Family names in a Prometheus text exposition (histogram series under
/// their `_bucket`/`_sum`/`_count` names, as queries name them).
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Whether some agent source file emits `name` (the collectors spell the
/// full name or `prefix_` + suffix; both appear as a string literal).
fn agent_emits(name: &str) -> bool {
    let mut stack = vec![repo().join("agent/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let src = std::fs::read_to_string(&p).unwrap();
                if src.contains(&format!("\"{name}\"")) {
                    return true;
                }
            }
        }
    }
    false
}

/// Series Prometheus makes itself when it scrapes (`up`), not the aggregator.
const FROM_PROMETHEUS: &[&str] = &["up"];

/// Families only a FreeBSD host or one with a ZFS pool has.
const PLATFORM_ONLY: &[(&str, &str)] = &[
    ("nodewatch_pf_", "FreeBSD pf"),
    ("nodewatch_carp_", "FreeBSD CARP"),
    ("nodewatch_gateway_", "OPNsense dpinger gateways"),
    ("nodewatch_zpool_", "a ZFS pool (zpool status)"),
    ("node_zfs_", "ZFS kstats"),
];

#[test]
fn every_dashboard_metric_is_exposed() {
    let _host = nodewatch_tests::host_exclusive();
    if !nix::unistd::Uid::effective().is_root() {
        return missing("root (eBPF programs and a memory cgroup)");
    }
    let wanted = dashboard_metrics();

    let pki = Pki::new();
    let agg = Aggregator::start(&pki, "agg", "");
    // One server stands in for both the kubelet and the API server, with a
    // certificate from the CA the agent is given.
    let server = pki.issue(
        "apiserver",
        &Leaf::Server {
            names: vec!["127.0.0.1".into()],
        },
    );
    let pods = std::fs::read_to_string(repo().join("tests/fixtures/kubernetes/kubelet-pods.json"))
        .unwrap();
    let node = std::fs::read_to_string(repo().join("tests/fixtures/kubernetes/node.json")).unwrap();
    let kubelet = FakeServer::start(
        &std::fs::read_to_string(&server.cert).unwrap(),
        &std::fs::read_to_string(&server.key).unwrap(),
        TOKEN,
        move |path: &str| match path {
            "/pods" => ("200 OK", pods.clone()),
            p if p.starts_with("/api/v1/nodes/") => ("200 OK", node.clone()),
            _ => ("404 Not Found", String::new()),
        },
    );
    let token = pki.path("sa-token");
    std::fs::write(&token, TOKEN).unwrap();
    let extra = format!(
        "collectors: {{ebpf: true}}\nkubernetes:\n  kubelet_url: https://127.0.0.1:{port}\n  api_server: https://127.0.0.1:{port}\n  token_file: {}\n  kubelet_insecure_skip_verify: true\n  ca_file: {}\n  refresh: 1s\n",
        token.display(),
        pki.path("ca.crt").display(),
        port = kubelet.addr.port(),
    );
    let _agent = start_agent_env(
        &pki,
        "dash-node",
        &pki.node("dash-node"),
        &[&agg],
        &extra,
        &[],
    );
    wait_for(Duration::from_secs(30), "the agent's eBPF series", || {
        let (_, text) = http_get(agg.http, "/metrics").ok()?;
        text.contains("nodewatch_tcp_retransmits_total")
            .then_some(())
    });

    // A drop: a datagram to a port nobody listens on.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = closed.local_addr().unwrap();
    drop(closed);
    for _ in 0..10 {
        let _ = sock.send_to(b"x", to);
    }
    // An OOM kill: `tail` of an endless line grows until the limit.
    let Some(cg) = MemCgroup::new("dashboard", 32 << 20) else {
        return missing("a memory cgroup");
    };
    let status = cg.hog().wait().unwrap();
    assert!(!status.success(), "tail was not killed");

    let mut last_missing = Vec::new();
    let found = (0..60).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        let Ok((_, text)) = http_get(agg.http, "/metrics") else {
            return false;
        };
        let have = exposed(&text);
        last_missing = wanted
            .iter()
            .filter(|n| !have.contains(*n))
            .filter(|n| !PLATFORM_ONLY.iter().any(|(p, _)| n.starts_with(p)))
            .filter(|n| !FROM_PROMETHEUS.contains(&n.as_str()))
            .cloned()
            .collect();
        last_missing.is_empty()
    });
    assert!(
        found,
        "dashboard metrics missing from the aggregator's /metrics: {last_missing:?}"
    );
    for name in &wanted {
        if let Some((_, why)) = PLATFORM_ONLY.iter().find(|(p, _)| name.starts_with(p)) {
            assert!(
                agent_emits(name),
                "{name} (needs {why}) is emitted by no agent collector"
            );
        }
    }
    if in_ci() {
        assert!(
            wanted.len() > 20,
            "only {} metric names in the dashboard",
            wanted.len()
        );
    }
}
