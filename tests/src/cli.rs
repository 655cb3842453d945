//! Talking to a running aggregator as an operator does: the real `nodewatch`
//! CLI (events, instant queries) and a gRPC channel with a client
//! certificate.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nodewatch_proto::tls::{self, Reloadable, TlsFiles};

use crate::pki::Pki;
use crate::processes::{bin, Aggregator};

/// Runs a CLI command; the test fails with the command's stderr, under
/// `what`, unless it succeeds. Returns its stdout.
pub fn cli_output(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every event the aggregator keeps, through `nodewatch events -o json`.
#[must_use]
pub fn cli_events(pki: &Pki, agg: &Aggregator) -> Vec<serde_json::Value> {
    let ops = pki.operator("cli");
    let out = cli_output(
        operator_cli(&ops, agg).args(["events", "-o", "json"]),
        "nodewatch events",
    );
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Counts stored for an instant-vector expression, or `None` if empty.
#[must_use]
pub fn query_scalar(pki: &Pki, agg: &Aggregator, expr: &str) -> Option<f64> {
    scalar_of(&cli_query(pki, agg, expr))
}

/// Runs an instant `PromQL` query through the real CLI with an operator certificate; returns the JSON result.
#[must_use]
pub fn cli_query(pki: &Pki, agg: &Aggregator, expr: &str) -> serde_json::Value {
    let ops = pki.operator("cli");
    let out = cli_output(
        operator_cli(&ops, agg).args(["query", "-o", "json", expr]),
        &format!("nodewatch query {expr}"),
    );
    serde_json::from_slice(&out).unwrap()
}

/// The single value of an instant query's vector result, if any.
#[must_use]
pub fn scalar_of(v: &serde_json::Value) -> Option<f64> {
    v["result"].get(0)?["value"][1].as_str()?.parse().ok()
}

/// A gRPC channel to an aggregator presenting `files`.
#[must_use]
pub fn channel(agg: &Aggregator, files: &TlsFiles) -> tonic::transport::Channel {
    let cfg = tls::client_config(files).unwrap();
    tls::channel(
        &agg.target(),
        Reloadable::new(Arc::clone(&cfg)),
        Some("localhost".into()),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// The real `nodewatch` CLI pointed at `agg` with the operator certificate `ops`; add the command's arguments.
#[must_use]
pub fn operator_cli(ops: &TlsFiles, agg: &Aggregator) -> Command {
    let mut c = Command::new(bin("nodewatch"));
    c.args([
        "--aggregator",
        &agg.grpc.to_string(),
        "--server-name",
        "localhost",
    ])
    .arg("--ca")
    .arg(&ops.ca)
    .arg("--cert")
    .arg(&ops.cert)
    .arg("--key")
    .arg(&ops.key);
    c
}
