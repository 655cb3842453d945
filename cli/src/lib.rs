//! The `nodewatch` command-line tool: nodes, instant and range queries,
//! alerts, events, certificates, and the local demo. It speaks to an
//! aggregator only through the gRPC API in `nodewatch-proto`.
//!
//! # Layout
//! - [`client`]: finding the aggregator and the operator certificate (flags, env, config file).
//! - [`range`]: `nodewatch query --range`, one instant query per step, as a table, JSON or chart.
//! - [`output`]: tables and JSON.
//! - [`certs`]: `nodewatch certs …`, a small CA for homelabs.
//! - [`demo`]: `nodewatch demo`, aggregator + agent on this machine with throwaway certificates.

pub mod certs;
pub mod client;
pub mod demo;
pub mod output;
pub mod range;

use std::io::Write;

use clap::{Parser, Subcommand};
use nodewatch_proto::v1::query_client::QueryClient;
use nodewatch_proto::v1::{
    event, Event, ListAlertsRequest, ListNodesRequest, QueryRequest, WatchEventsRequest,
};
use serde_json::{json, Value};

use self::client::ConnectArgs;
use self::output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "nodewatch",
    version,
    about = "Query a nodewatch aggregator: nodes, metrics, events."
)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the nodes the aggregator knows.
    Nodes {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Evaluate an instant query, e.g. 'node_memory_MemAvailable_bytes{node="x"}'.
    Query {
        expr: String,
        /// Evaluation time (RFC 3339 or Unix seconds; default now); the
        /// end of the range with --range.
        #[arg(long)]
        time: Option<String>,
        /// Evaluate over this much time before --time (e.g. 15m): a table,
        /// -o json, or a line chart per series on a terminal.
        #[arg(long, value_parser = humantime::parse_duration)]
        range: Option<std::time::Duration>,
        /// Step of --range (default: about 60 points, at least 1s).
        #[arg(long, value_parser = humantime::parse_duration, requires = "range")]
        step: Option<std::time::Duration>,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show pending and firing alerts.
    Alerts {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show recent events (OOM kills, pool state changes); --follow for live ones.
    Events {
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only these nodes.
        #[arg(long)]
        node: Vec<String>,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Make a CA and certificates for aggregators, nodes and operators.
    Certs(certs::CertsArgs),
    /// Start an aggregator and an agent on this machine with throwaway certificates.
    Demo(demo::DemoArgs),
}

/// Runs the CLI's command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Certs(a) => certs::run(&a, &mut out),
        Command::Demo(a) => demo::run(a).await,
        Command::Nodes { output } => {
            let mut q = QueryClient::new(client::connect(&cli.connect)?);
            let nodes = q.list_nodes(ListNodesRequest {}).await?.into_inner().nodes;
            print_nodes(&mut out, &nodes, output)
        }
        Command::Query {
            expr,
            time,
            range: Some(range),
            step,
            output,
        } => {
            let end_ms = match time {
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
                Some(t) => parse_time(&t)?,
            };
            let times = range::steps(
                end_ms,
                range.as_millis() as i64,
                step.map(|s| s.as_millis() as i64),
            )?;
            let mut q = QueryClient::new(client::connect(&cli.connect)?);
            let m = range::query(&mut q, &expr, &times).await?;
            let chart = std::io::IsTerminal::is_terminal(&std::io::stdout());
            range::print(&mut out, &m, &times, output, chart)
        }
        Command::Query {
            expr, time, output, ..
        } => {
            let time_ms = match time {
                None => 0,
                Some(t) => parse_time(&t)?,
            };
            let mut q = QueryClient::new(client::connect(&cli.connect)?);
            let r = q.query(QueryRequest { expr, time_ms }).await?.into_inner();
            print_query(&mut out, &r, output)?;
            Ok(())
        }
        Command::Alerts { output } => {
            let mut q = QueryClient::new(client::connect(&cli.connect)?);
            let alerts = q
                .list_alerts(ListAlertsRequest {})
                .await?
                .into_inner()
                .alerts;
            print_alerts(&mut out, &alerts, output)?;
            Ok(())
        }
        Command::Events {
            follow,
            node,
            output,
        } => {
            let mut q = QueryClient::new(client::connect(&cli.connect)?);
            let mut stream = q
                .watch_events(WatchEventsRequest {
                    nodes: node,
                    follow,
                })
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                match output {
                    Format::Json => writeln!(out, "{}", event_json(&e))?,
                    Format::Table => writeln!(out, "{}", event_line(&e))?,
                }
                out.flush()?;
            }
            Ok(())
        }
    }
}

/// `nodewatch nodes`: one row (or JSON object) per node.
fn print_nodes(
    out: &mut impl Write,
    nodes: &[nodewatch_proto::v1::NodeInfo],
    output: Format,
) -> anyhow::Result<()> {
    match output {
        Format::Json => {
            let v: Vec<Value> = nodes
                .iter()
                .map(|n| {
                    json!({
                        "name": n.name, "os": n.os, "osPretty": n.os_pretty, "kernel": n.kernel, "arch": n.arch,
                        "agentVersion": n.agent_version, "connected": n.connected,
                        "connectedSince": output::rfc3339(n.connected_since_ms),
                        "lastBatch": output::rfc3339(n.last_batch_ms), "series": n.series,
                        "lastSeq": n.last_seq, "bootId": n.boot_id, "collectors": n.collectors,
                        "peer": n.peer, "intervalSeconds": n.interval_ms as f64 / 1000.0,
                    })
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        if n.connected {
                            "connected".into()
                        } else {
                            "gone".into()
                        },
                        n.os.clone(),
                        n.kernel.clone(),
                        n.agent_version.clone(),
                        output::rfc3339(n.connected_since_ms),
                        output::ago(n.last_batch_ms),
                        n.series.to_string(),
                    ]
                })
                .collect();
            output::table(
                out,
                &[
                    "NAME",
                    "STATUS",
                    "OS",
                    "KERNEL",
                    "AGENT",
                    "CONNECTED SINCE",
                    "LAST BATCH",
                    "SERIES",
                ],
                &rows,
            )?;
        }
    }
    Ok(())
}

fn parse_time(t: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = t.parse::<f64>() {
        return Ok((secs * 1000.0) as i64);
    }
    let st = humantime::parse_rfc3339_weak(t).map_err(|e| anyhow::anyhow!("--time {t:?}: {e}"))?;
    Ok(st
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

fn labels_text(labels: &[nodewatch_proto::v1::Label]) -> String {
    let name = labels
        .iter()
        .find(|l| l.name == "__name__")
        .map_or("", |l| l.value.as_str());
    let rest: Vec<String> = labels
        .iter()
        .filter(|l| l.name != "__name__")
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

/// Prints a query result as `promtool query instant` does.
fn print_query(
    out: &mut impl Write,
    r: &nodewatch_proto::v1::QueryResponse,
    format: Format,
) -> anyhow::Result<()> {
    let ts = r.time_ms as f64 / 1000.0;
    match (format, r.result_type.as_str()) {
        (Format::Json, "vector") => {
            let result: Vec<Value> = r
                .vector
                .iter()
                .map(|s| {
                    let metric: serde_json::Map<String, Value> =
                        s.labels.iter().map(|l| (l.name.clone(), Value::String(l.value.clone()))).collect();
                    json!({"metric": metric, "value": [s.t_ms as f64 / 1000.0, nodewatch_proto::text::fmt_value(s.value)]})
                })
                .collect();
            writeln!(out, "{}", json!({"resultType": "vector", "result": result}))?;
        }
        (Format::Json, "scalar") => {
            writeln!(
                out,
                "{}",
                json!({"resultType": "scalar", "result": [ts, nodewatch_proto::text::fmt_value(r.scalar)]})
            )?;
        }
        (Format::Json, _) => writeln!(
            out,
            "{}",
            json!({"resultType": "string", "result": [ts, r.string_value]})
        )?,
        (Format::Table, "vector") => {
            for s in &r.vector {
                writeln!(
                    out,
                    "{} => {} @[{}]",
                    labels_text(&s.labels),
                    nodewatch_proto::text::fmt_value(s.value),
                    s.t_ms as f64 / 1000.0
                )?;
            }
        }
        (Format::Table, "scalar") => writeln!(
            out,
            "scalar: {} @[{ts}]",
            nodewatch_proto::text::fmt_value(r.scalar)
        )?,
        (Format::Table, _) => writeln!(out, "string: {} @[{ts}]", r.string_value)?,
    }
    Ok(())
}

fn event_json(e: &Event) -> Value {
    let mut v = json!({"time": output::rfc3339(e.t_ms), "node": e.node});
    match &e.kind {
        Some(event::Kind::OomKill(o)) => {
            v["type"] = json!("oom_kill");
            v["oomKill"] = json!({
                "pid": o.pid, "tgid": o.tgid, "comm": o.comm, "uid": o.uid, "cgroup": o.cgroup,
                "namespace": o.namespace, "pod": o.pod, "container": o.container, "containerId": o.container_id,
                "podUid": o.pod_uid, "rssAnonBytes": o.rss_anon_bytes, "rssFileBytes": o.rss_file_bytes,
                "rssShmemBytes": o.rss_shmem_bytes, "memcgLimitBytes": o.memcg_limit_bytes,
                "memcgUsageBytes": o.memcg_usage_bytes, "source": o.source, "constraint": o.constraint,
            });
        }
        Some(event::Kind::ZpoolStateChange(z)) => {
            v["type"] = json!("zpool_state_change");
            v["zpoolStateChange"] = json!({"zpool": z.zpool, "from": z.from, "to": z.to});
        }
        Some(event::Kind::LinkStateChange(l)) => {
            v["type"] = json!("link_state_change");
            v["linkStateChange"] = json!({"device": l.device, "from": l.from, "to": l.to});
        }
        None => v["type"] = json!("unknown"),
    }
    v
}

fn event_line(e: &Event) -> String {
    let head = format!("{} {}", output::rfc3339(e.t_ms), e.node);
    match &e.kind {
        Some(event::Kind::OomKill(o)) => {
            let who = if o.pod.is_empty() {
                o.cgroup.clone()
            } else {
                format!("{}/{}/{}", o.namespace, o.pod, o.container)
            };
            format!(
                "{head} OOMKill pid={} comm={} {who} rss={}MiB (anon {} file {} shmem {}) source={}",
                o.pid,
                o.comm,
                (o.rss_anon_bytes + o.rss_file_bytes + o.rss_shmem_bytes) >> 20,
                o.rss_anon_bytes >> 20,
                o.rss_file_bytes >> 20,
                o.rss_shmem_bytes >> 20,
                o.source
            )
        }
        Some(event::Kind::ZpoolStateChange(z)) => format!(
            "{head} ZpoolStateChange zpool={} {} -> {}",
            z.zpool, z.from, z.to
        ),
        Some(event::Kind::LinkStateChange(l)) => format!(
            "{head} LinkStateChange device={} {} -> {}",
            l.device, l.from, l.to
        ),
        None => format!("{head} (unknown event type from a newer agent)"),
    }
}

fn print_alerts(
    out: &mut impl Write,
    alerts: &[nodewatch_proto::v1::Alert],
    format: Format,
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            let v: Vec<Value> = alerts
                .iter()
                .map(|a| {
                    let labels: serde_json::Map<String, Value> =
                        a.labels.iter().map(|l| (l.name.clone(), Value::String(l.value.clone()))).collect();
                    let ann: serde_json::Map<String, Value> =
                        a.annotations.iter().map(|l| (l.name.clone(), Value::String(l.value.clone()))).collect();
                    json!({"labels": labels, "annotations": ann, "state": a.state,
                           "activeAt": output::rfc3339(a.active_since_ms), "value": nodewatch_proto::text::fmt_value(a.value),
                           "group": a.rule_group, "rule": a.rule})
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = alerts
                .iter()
                .map(|a| {
                    let name = a
                        .labels
                        .iter()
                        .find(|l| l.name == "alertname")
                        .map(|l| l.value.clone())
                        .unwrap_or_default();
                    let labels: Vec<String> = a
                        .labels
                        .iter()
                        .filter(|l| l.name != "alertname")
                        .map(|l| format!("{}={}", l.name, l.value))
                        .collect();
                    let summary = a
                        .annotations
                        .iter()
                        .find(|l| l.name == "summary")
                        .map(|l| l.value.clone())
                        .unwrap_or_default();
                    vec![
                        name,
                        a.state.clone(),
                        labels.join(","),
                        output::ago(a.active_since_ms),
                        nodewatch_proto::text::fmt_value(a.value),
                        summary,
                    ]
                })
                .collect();
            output::table(
                out,
                &[
                    "ALERT",
                    "STATE",
                    "LABELS",
                    "ACTIVE SINCE",
                    "VALUE",
                    "SUMMARY",
                ],
                &rows,
            )?;
        }
    }
    Ok(())
}
