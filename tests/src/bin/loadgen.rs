//! `nodewatch-loadgen`: simulates N agents, each over its own mutual-TLS
//! `Ingest.Stream` with its own node certificate, sending the series set of a
//! real agent at a fixed interval; reports samples/s sent, acks received,
//! ack latency, and bytes written to the sockets per sample (TLS included).
//!
//! With `--remote-write URL` the same load goes instead to a Prometheus
//! remote-write 1.0 receiver (one request per node per interval), so the two
//! can be compared on the same machine.
//!
//! The series set comes from `nodewatch-agent --once` (the agent binary next
//! to this one, or `--template FILE` holding its output): every series with
//! labels is repeated with per-node label values (`cpu="0"` → `cpu="0_3"`)
//! until each node has `--series` of them. Given several `--template` files,
//! successive collections of a real agent taken one `--interval` apart,
//! values replay them: counters (`_total`, histogram `_bucket/_count/_sum`)
//! rise by the real changes between collections, gauges take the real
//! values, each copy and node scaled a little (and rounded to the decimals
//! the agent printed) so copies do not repeat each other. With one template
//! values move by a model instead (counters rise by random whole steps, most
//! gauges hold still).
//!
//! Streams send `SampleBlock`s, as the agent does, to an aggregator that
//! reads them (`--plain`: samples, as older agents do).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use nodewatch_proto::blocks;
use nodewatch_proto::certs::{Ca, Leaf, DEFAULT_LEAF_VALIDITY};
use nodewatch_proto::tls::{self, Reloadable, Target, TlsFiles};
use nodewatch_proto::v1::ingest_client::IngestClient;
use nodewatch_proto::v1::{
    agent_frame, aggregator_frame, AgentFrame, AggregatorFrame, Batch, Hello, Label,
    MetricMetadata, MetricType, Sample, SeriesDef,
};
use nodewatch_proto::{Identity, NodeName};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

#[derive(Parser, Debug)]
#[command(name = "nodewatch-loadgen", version, about)]
struct Args {
    /// Aggregator gRPC address (host:port).
    #[arg(long, default_value = "127.0.0.1:7443")]
    aggregator: String,
    /// Name in the aggregator's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Folder with `ca.crt` and `ca.key`: node certificates are issued from it.
    #[arg(long, conflicts_with = "cert_dir")]
    ca: Option<PathBuf>,
    /// Folder with `ca.crt` and ready `node-<name>.crt/.key` for every simulated node.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Simulated nodes.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Series per node.
    #[arg(long, default_value_t = 1500)]
    series: usize,
    /// Collection interval of every node (e.g. `10s`, `1s`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long to send after the warm-up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Sent but not measured: connections, series definitions, first acks.
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Node names are `<prefix>-<i>`.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// `nodewatch-agent --once` output to take series from (default: run the
    /// agent). Repeated: successive collections whose changes are replayed.
    #[arg(long)]
    template: Vec<PathBuf>,
    /// Send plain `Sample`s even to an aggregator that reads sample blocks.
    #[arg(long)]
    plain: bool,
    /// Send to this Prometheus remote-write URL instead of an aggregator.
    #[arg(long)]
    remote_write: Option<String>,
    /// Also print the report as one JSON line (prefixed `JSON `).
    #[arg(long)]
    json: bool,
}

/// One series of the template.
#[derive(Clone, Debug)]
struct TemplateSeries {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
    /// Its value in each template, the first being `value`.
    values: Vec<f64>,
    /// Decimals the agent printed (at most 9; `None`: not a short decimal).
    scale: Option<u8>,
}

/// A series' identity: name and sorted labels.
type SeriesKey<'a> = (&'a str, &'a [(String, String)]);

impl TemplateSeries {
    fn key(&self) -> SeriesKey<'_> {
        (&self.name, &self.labels)
    }

    fn cumulative(&self) -> bool {
        ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .any(|s| self.name.ends_with(s))
    }

    /// `v` at the decimals this series has.
    fn round(&self, v: f64) -> f64 {
        match self.scale {
            Some(e) => {
                let p = 10f64.powi(i32::from(e));
                (v * p).round() / p
            }
            None => v,
        }
    }
}

#[derive(Clone, Debug)]
struct Family {
    name: String,
    kind: MetricType,
    help: String,
}

/// What every node task adds to.
#[derive(Default)]
struct Stats {
    samples: AtomicU64,
    batches: AtomicU64,
    acks: AtomicU64,
    errors: AtomicU64,
    /// Ack latencies in microseconds, measured batches only.
    latencies: Mutex<Vec<u64>>,
    /// Ack latencies of each node's first batch (its series definitions),
    /// in microseconds: how long a node waits while every node connects
    /// at once, as after an aggregator restart.
    first_latencies: Mutex<Vec<u64>>,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
    }

    fn latency(&self, d: Duration) {
        push_micros(&self.latencies, d);
    }

    fn first_latency(&self, d: Duration) {
        push_micros(&self.first_latencies, d);
    }
}

fn push_micros(into: &Mutex<Vec<u64>>, d: Duration) {
    into.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(d.as_micros() as u64);
}

/// A copy of `from`, sorted.
fn sorted(from: &Mutex<Vec<u64>>) -> Vec<u64> {
    let mut v = from.lock().unwrap_or_else(PoisonError::into_inner).clone();
    v.sort_unstable();
    v
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

#[allow(
    clippy::too_many_lines,
    reason = "the fleet set up from the flags, run and summed up in one place"
)]
async fn run(args: Args) -> Result<()> {
    let texts = if args.template.is_empty() {
        vec![agent_once()?]
    } else {
        args.template
            .iter()
            .map(|p| std::fs::read_to_string(p).with_context(|| format!("{}", p.display())))
            .collect::<Result<Vec<_>>>()?
    };
    let (mut template, families) = parse_text(&texts[0]);
    if template.is_empty() {
        bail!("no series in the template");
    }
    for text in &texts[1..] {
        let (later, _) = parse_text(text);
        let by_key: std::collections::HashMap<SeriesKey<'_>, &TemplateSeries> =
            later.iter().map(|s| (s.key(), s)).collect();
        for s in &mut template {
            // A series missing later keeps its last value.
            let next = by_key.get(&s.key());
            let v = next.map_or(s.values[s.values.len() - 1], |n| n.value);
            s.scale = s
                .scale
                .zip(next.map_or(s.scale, |n| n.scale))
                .map(|(a, b)| a.max(b));
            s.values.push(v);
        }
    }
    let node_names: Vec<String> = (0..args.nodes)
        .map(|i| format!("{}-{i}", args.prefix))
        .collect();
    let warmup = args
        .warmup
        .unwrap_or_else(|| (args.interval * 2).max(Duration::from_secs(3)));
    let stats = Arc::new(Stats::default());
    let certs = if args.remote_write.is_none() {
        Some(node_certs(&args, &node_names)?)
    } else {
        None
    };
    let target = parse_target(&args.aggregator)?;
    // Every node's certificate and series are made before the clock starts:
    // at 1,000 nodes that takes seconds, and a schedule begun before it
    // would send the first nodes' batches (and their TLS handshakes and
    // series definitions) in one burst instead of spread over an interval.
    let sims: Vec<NodeSim> = node_names
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut sim = NodeSim::new(
                node.clone(),
                node_series(&template, args.series, i),
                i as u64,
            );
            sim.plain = args.plain;
            sim
        })
        .collect();
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + args.duration;

    let mut tasks = Vec::with_capacity(args.nodes);
    for (i, sim) in sims.into_iter().enumerate() {
        // Agents start at different moments: spread the first batches over one interval.
        let offset = args.interval.mul_f64(i as f64 / args.nodes.max(1) as f64);
        let stats = Arc::clone(&stats);
        let families = families.clone();
        let interval = args.interval;
        let timing = Timing {
            first: start + offset,
            interval,
            measure_from,
            end,
        };
        if let Some(url) = &args.remote_write {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = remote_write_node(sim, &url, timing, &stats).await {
                    stats.error(format!("{e:#}"));
                }
            }));
        } else if let Some((_, files)) = &certs {
            let files = files[i].clone();
            let target = target.clone();
            let server_name = args.server_name.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = stream_node(
                    sim,
                    &families,
                    &target,
                    &server_name,
                    &files,
                    timing,
                    &stats,
                )
                .await
                {
                    stats.error(format!("{e:#}"));
                }
            }));
        }
    }

    // Socket bytes: this process writes nothing else while measuring.
    tokio::time::sleep_until(measure_from.into()).await;
    let wchar0 = own_wchar();
    let samples0 = stats.samples.load(Ordering::Relaxed);
    tokio::time::sleep_until(end.into()).await;
    let wchar1 = own_wchar();
    let samples1 = stats.samples.load(Ordering::Relaxed);
    // Late acks of the last batches still count; a second is plenty when healthy.
    tokio::time::sleep(Duration::from_secs(2).max(args.interval.min(Duration::from_secs(5)))).await;
    for t in &tasks {
        t.abort();
    }
    report(
        &args,
        template.len(),
        &stats,
        samples1 - samples0,
        wchar1.zip(wchar0).map(|(a, b)| a.saturating_sub(b)),
    );
    Ok(())
}

fn report(args: &Args, template_len: usize, stats: &Stats, samples: u64, bytes: Option<u64>) {
    let secs = args.duration.as_secs_f64();
    let latencies = sorted(&stats.latencies);
    let first = sorted(&stats.first_latencies);
    let pct_of = |v: &[u64], p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let idx = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx] as f64 / 1000.0
    };
    let pct = |p: f64| pct_of(&latencies, p);
    let batches = stats.batches.load(Ordering::Relaxed);
    let acks = stats.acks.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let bytes_per_sample = bytes.map(|b| b as f64 / samples.max(1) as f64);
    let sent_rate = samples as f64 / secs;
    let acked_rate = latencies.len() as f64 / batches.max(1) as f64 * sent_rate;
    println!(
        "nodes {} × series {} (template {template_len}) every {:?}, measured {:?}",
        args.nodes, args.series, args.interval, args.duration
    );
    println!("samples sent      {samples} ({sent_rate:.0}/s)");
    println!(
        "batches sent      {batches}, acked {} ({acks} acks in all)",
        latencies.len()
    );
    println!(
        "ack latency       p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "first batches     {} acked (series definitions, every node connecting): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        first.len(),
        pct_of(&first, 0.5),
        pct_of(&first, 0.99),
        pct_of(&first, 1.0)
    );
    if let Some(b) = bytes_per_sample {
        println!("socket bytes/sample {b:.3} (TLS included)");
    }
    if errors > 0 {
        let last_error = stats
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        println!("errors            {errors} (last: {last_error})");
    }
    if args.json {
        let v = serde_json::json!({
            "nodes": args.nodes,
            "series": args.series,
            "interval_s": args.interval.as_secs_f64(),
            "duration_s": secs,
            "samples": samples,
            "samples_per_s": sent_rate,
            "acked_samples_per_s": acked_rate,
            "batches": batches,
            "acked_batches": latencies.len(),
            "acks": acks,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "first_batches_acked": first.len(),
            "first_p50_ms": pct_of(&first, 0.5),
            "first_p99_ms": pct_of(&first, 0.99),
            "first_max_ms": pct_of(&first, 1.0),
            "max_ms": pct(1.0),
            "bytes_per_sample": bytes_per_sample,
            "errors": errors,
        });
        println!("JSON {v}");
    }
}

#[derive(Clone, Copy)]
struct Timing {
    first: Instant,
    interval: Duration,
    measure_from: Instant,
    end: Instant,
}

/// One simulated node's series and their moving values.
struct NodeSim {
    node: String,
    series: Vec<(TemplateSeries, bool)>,
    values: Vec<f64>,
    rng: rand::rngs::StdRng,
    /// Collections since the first.
    steps: usize,
    plain: bool,
}

impl NodeSim {
    fn new(node: String, series: Vec<TemplateSeries>, seed: u64) -> Self {
        let values = series.iter().map(|s| s.value).collect();
        let series = series
            .into_iter()
            .map(|s| {
                let counter = s.cumulative();
                (s, counter)
            })
            .collect();
        Self {
            node,
            series,
            values,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            steps: 0,
            plain: false,
        }
    }

    /// Moves every value one collection on.
    fn step(&mut self) {
        self.steps += 1;
        let recorded = self.series.first().map_or(0, |(s, _)| s.values.len());
        if recorded > 1 {
            // Replays the recorded collections' changes, round and round.
            let j = (self.steps - 1) % (recorded - 1) + 1;
            for ((s, counter), v) in self.series.iter().zip(self.values.iter_mut()) {
                *v = if *counter {
                    s.round(*v + (s.values[j] - s.values[j - 1]))
                } else {
                    s.values[j]
                };
            }
            return;
        }
        for ((_, counter), v) in self.series.iter().zip(self.values.iter_mut()) {
            if *counter {
                // Busy counters rise every time, idle ones rarely.
                if *v > 0.0 || self.rng.random_bool(0.05) {
                    *v += f64::from(self.rng.random_range(0u32..2000));
                }
            } else if self.rng.random_bool(0.2) {
                *v = (*v * self.rng.random_range(0.9..1.1)).round();
            }
        }
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "one simulated agent's stream in protocol order: hello, batches, acks, reconnects"
)]
async fn stream_node(
    mut sim: NodeSim,
    families: &[Family],
    target: &Target,
    server_name: &str,
    files: &TlsFiles,
    timing: Timing,
    stats: &Stats,
) -> Result<()> {
    tokio::time::sleep_until(timing.first.into()).await;
    let cfg = tls::client_config(files)?;
    let channel = tls::channel(
        target,
        Reloadable::new(cfg),
        Some(server_name.to_string()),
        Duration::from_secs(10),
    )?;
    let mut client = IngestClient::new(channel).max_encoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<AgentFrame>(64);
    tx.send(AgentFrame {
        frame: Some(agent_frame::Frame::Hello(Hello {
            agent_version: "loadgen".into(),
            node: sim.node.clone(),
            os: "linux".into(),
            boot_id: format!("boot-{}", sim.node),
            instance_id: format!("loadgen-{}-{}", sim.node, std::process::id()),
            interval_ms: timing.interval.as_millis() as u64,
            ..Hello::default()
        })),
    })
    .await?;
    let mut rx = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    // As the agent: blocks only to an aggregator that says it reads them.
    let welcome = match rx.next().await {
        Some(Ok(AggregatorFrame {
            frame: Some(aggregator_frame::Frame::Welcome(w)),
        })) => w,
        Some(Ok(other)) => bail!("expected Welcome, got {other:?}"),
        Some(Err(e)) => bail!("stream refused: {e}"),
        None => bail!("stream closed before Welcome"),
    };
    let mut blocks =
        (welcome.sample_blocks >= blocks::VERSION && !sim.plain).then(blocks::BlockEncoder::new);
    // Sent batches not yet acked: (seq, scheduled time, measured).
    let pending: Arc<Mutex<VecDeque<(u64, Instant, bool)>>> = Arc::default();
    let acks = {
        let pending = Arc::clone(&pending);
        async move {
            while let Some(frame) = rx.next().await {
                let frame = frame?;
                match frame.frame {
                    Some(aggregator_frame::Frame::Ack(a)) => {
                        stats.acks.fetch_add(1, Ordering::Relaxed);
                        let now = Instant::now();
                        let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
                        while p.front().is_some_and(|(seq, _, _)| *seq <= a.seq) {
                            if let Some((seq, at, measured)) = p.pop_front() {
                                if measured {
                                    stats.latency(now.saturating_duration_since(at));
                                }
                                if seq == 1 {
                                    stats.first_latency(now.saturating_duration_since(at));
                                }
                            }
                        }
                    }
                    Some(aggregator_frame::Frame::Error(e)) if e.fatal => {
                        bail!("stream error: {}", e.message)
                    }
                    Some(aggregator_frame::Frame::Error(e)) => stats.error(e.message),
                    _ => {}
                }
            }
            Ok::<(), anyhow::Error>(())
        }
    };
    let send = async {
        let mut tick = tokio::time::interval_at(timing.first.into(), timing.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut seq = 0u64;
        loop {
            let at: Instant = tick.tick().await.into();
            if at >= timing.end {
                return Ok::<(), anyhow::Error>(());
            }
            seq += 1;
            let first = seq == 1;
            let t_ms = nodewatch_aggregator::store::now_ms();
            if !first {
                sim.step();
            }
            let samples: Vec<Sample> = sim
                .values
                .iter()
                .enumerate()
                .map(|(r, v)| Sample {
                    r#ref: r as u64,
                    t_ms,
                    value: *v,
                })
                .collect();
            let n = samples.len() as u64;
            let (samples, blocks) = match blocks.as_mut().map(|b| b.encode(&samples)) {
                Some(Ok(block)) => (Vec::new(), vec![block]),
                Some(Err(e)) => bail!("sample block: {e}"),
                None => (samples, Vec::new()),
            };
            let batch = Batch {
                seq,
                series_defs: if first { series_defs(&sim) } else { Vec::new() },
                metadata: if first {
                    metadata(families)
                } else {
                    Vec::new()
                },
                samples,
                events: Vec::new(),
                blocks,
            };
            let measured = at >= timing.measure_from;
            pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back((seq, at, measured));
            tx.send(AgentFrame {
                frame: Some(agent_frame::Frame::Batch(batch)),
            })
            .await?;
            if measured {
                stats.samples.fetch_add(n, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    tokio::select! {
        r = acks => r,
        r = send => {
            // Keep reading acks of what was sent; the caller aborts us when done.
            r?;
            std::future::pending::<Result<()>>().await
        }
    }
}

async fn remote_write_node(
    mut sim: NodeSim,
    url: &str,
    timing: Timing,
    stats: &Stats,
) -> Result<()> {
    use nodewatch_aggregator::remote_write::{self as rw, HttpSender};
    let mut sender = HttpSender::new(url)?;
    let labels: Vec<Vec<rw::Label>> = sim
        .series
        .iter()
        .map(|(s, _)| {
            let mut l: Vec<(String, String)> = s.labels.clone();
            l.push(("__name__".into(), s.name.clone()));
            l.push(("node".into(), sim.node.clone()));
            l.sort();
            l.into_iter()
                .map(|(name, value)| rw::Label { name, value })
                .collect()
        })
        .collect();
    tokio::time::sleep_until(timing.first.into()).await;
    let mut tick = tokio::time::interval_at(timing.first.into(), timing.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut first = true;
    loop {
        let at: Instant = tick.tick().await.into();
        if at >= timing.end {
            return Ok(());
        }
        let was_first = first;
        if !first {
            sim.step();
        }
        first = false;
        let t_ms = nodewatch_aggregator::store::now_ms();
        let req = rw::WriteRequest {
            timeseries: labels
                .iter()
                .zip(&sim.values)
                .map(|(l, v)| rw::TimeSeries {
                    labels: l.clone(),
                    samples: vec![rw::Sample {
                        value: *v,
                        timestamp: t_ms,
                    }],
                })
                .collect(),
        };
        let n = req.timeseries.len() as u64;
        let body = rw::encode(&req)?;
        let measured = at >= timing.measure_from;
        if measured {
            stats.samples.fetch_add(n, Ordering::Relaxed);
            stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        match sender.post(body).await {
            Ok(code) if code.is_success() => {
                stats.acks.fetch_add(1, Ordering::Relaxed);
                if measured {
                    stats.latency(at.elapsed());
                }
                if was_first {
                    stats.first_latency(at.elapsed());
                }
            }
            Ok(code) => stats.error(format!("remote write: HTTP {code}")),
            Err(e) => stats.error(format!("remote write: {e:#}")),
        }
    }
}

fn series_defs(sim: &NodeSim) -> Vec<SeriesDef> {
    sim.series
        .iter()
        .enumerate()
        .map(|(r, (s, _))| SeriesDef {
            r#ref: r as u64,
            name: s.name.clone(),
            labels: s
                .labels
                .iter()
                .map(|(name, value)| Label {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        })
        .collect()
}

fn metadata(families: &[Family]) -> Vec<MetricMetadata> {
    families
        .iter()
        .map(|f| MetricMetadata {
            name: f.name.clone(),
            r#type: f.kind as i32,
            help: f.help.clone(),
        })
        .collect()
}

/// `count` series for node `node`: the template, then copies of its labelled
/// series with per-copy label values, cut at `count`.
fn node_series(template: &[TemplateSeries], count: usize, node: usize) -> Vec<TemplateSeries> {
    // Nodes and copies differ: values scaled a little per node and copy, so
    // series do not compress as copies of each other.
    let scaled = |s: &TemplateSeries, copy: usize| {
        let f = 1.0 + ((node * 31 + copy * 7) % 97) as f64 / 100.0;
        let mut s = s.clone();
        s.values = s.values.iter().map(|v| s.round(v * f)).collect();
        s.value = s.values[0];
        s
    };
    let mut out: Vec<TemplateSeries> = template.iter().take(count).map(|s| scaled(s, 0)).collect();
    let labelled: Vec<&TemplateSeries> = template.iter().filter(|s| !s.labels.is_empty()).collect();
    let mut copy = 1;
    while out.len() < count && !labelled.is_empty() {
        for s in &labelled {
            if out.len() >= count {
                break;
            }
            let mut s = scaled(s, copy);
            if let Some(l) = s.labels.first_mut() {
                l.1 = format!("{}_{copy}", l.1);
            }
            out.push(s);
        }
        copy += 1;
    }
    out
}

/// Parses Prometheus text exposition (the agent's `--once` output).
fn parse_text(text: &str) -> (Vec<TemplateSeries>, Vec<Family>) {
    let mut series = Vec::new();
    let mut families: Vec<Family> = Vec::new();
    let mut help = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, h)) = rest.split_once(' ') {
                help.insert(name.to_string(), h.to_string());
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, t)) = rest.split_once(' ') {
                let kind = match t.trim() {
                    "counter" => MetricType::Counter,
                    "gauge" => MetricType::Gauge,
                    "histogram" => MetricType::Histogram,
                    "summary" => MetricType::Summary,
                    _ => MetricType::Untyped,
                };
                families.push(Family {
                    name: name.to_string(),
                    kind,
                    help: help.get(name).cloned().unwrap_or_default(),
                });
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(s) = parse_series(line) {
            series.push(s);
        }
    }
    (series, families)
}

fn parse_series(line: &str) -> Option<TemplateSeries> {
    let Some(brace) = line.find('{') else {
        let (n, v) = line.split_once(' ')?;
        let value = parse_value(v)?;
        return Some(TemplateSeries {
            name: n.to_string(),
            labels: Vec::new(),
            value,
            values: vec![value],
            scale: decimals(v),
        });
    };
    let (name, rest) = (&line[..brace], &line[brace + 1..]);
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    let mut end = None;
    loop {
        // name="value" pairs separated by commas, closed by `}`.
        while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
            chars.next();
        }
        let (start, c) = *chars.peek()?;
        if c == '}' {
            end = Some(start + 1);
            break;
        }
        let eq = rest[start..].find('=')? + start;
        let lname = rest[start..eq].to_string();
        while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
            chars.next();
        }
        let mut value = String::new();
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.push((lname, value));
        if end.is_some() {
            break;
        }
    }
    let text = rest.get(end?..)?;
    let value = parse_value(text)?;
    labels.sort();
    Some(TemplateSeries {
        name: name.to_string(),
        labels,
        value,
        values: vec![value],
        scale: decimals(text),
    })
}

/// Digits after the point of a printed value, if it is a plain decimal.
fn decimals(s: &str) -> Option<u8> {
    let v = s.split_whitespace().next()?;
    if v.bytes()
        .any(|b| !(b.is_ascii_digit() || b == b'.' || b == b'-'))
    {
        return None;
    }
    let d = v.split_once('.').map_or(0, |(_, f)| f.len());
    u8::try_from(d).ok().filter(|d| *d <= 9)
}

fn parse_value(s: &str) -> Option<f64> {
    let v = s.split_whitespace().next()?;
    match v {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

/// Runs the agent binary next to this one once.
fn agent_once() -> Result<String> {
    let exe = std::env::current_exe()?;
    let agent = exe
        .parent()
        .map(|d| d.join("nodewatch-agent"))
        .filter(|p| p.exists())
        .context("nodewatch-agent not found next to nodewatch-loadgen; pass --template")?;
    let out = std::process::Command::new(&agent)
        .arg("--once")
        .output()
        .with_context(|| format!("{} --once", agent.display()))?;
    if !out.status.success() {
        bail!(
            "{} --once: {}",
            agent.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Certificates for every node: issued from `--ca` into a temporary folder,
/// or found as `node-<name>.crt/.key` in `--cert-dir`.
fn node_certs(args: &Args, names: &[String]) -> Result<(Option<tempfile::TempDir>, Vec<TlsFiles>)> {
    if let Some(dir) = &args.cert_dir {
        let files = names
            .iter()
            .map(|n| TlsFiles {
                ca: dir.join("ca.crt"),
                cert: dir.join(format!("node-{n}.crt")),
                key: dir.join(format!("node-{n}.key")),
            })
            .collect();
        return Ok((None, files));
    }
    let Some(ca_dir) = &args.ca else {
        bail!("give --ca (a folder with ca.crt and ca.key) or --cert-dir");
    };
    let ca = Ca::load(ca_dir).with_context(|| format!("CA in {}", ca_dir.display()))?;
    let tmp = tempfile::tempdir()?;
    let ca_crt = tmp.path().join("ca.crt");
    std::fs::copy(ca_dir.join("ca.crt"), &ca_crt)?;
    let mut files = Vec::with_capacity(names.len());
    for n in names {
        let leaf = Leaf::Client(Identity::Node(NodeName::new(n)?));
        let (cert, key) = ca
            .issue(&leaf, DEFAULT_LEAF_VALIDITY)?
            .write(tmp.path(), &format!("node-{n}"))?;
        files.push(TlsFiles {
            ca: ca_crt.clone(),
            cert,
            key,
        });
    }
    Ok((Some(tmp), files))
}

fn parse_target(s: &str) -> Result<Target> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("--aggregator {s}: want host:port"))?;
    Ok(Target {
        host: host.trim_matches(['[', ']']).to_string(),
        port: port.parse().with_context(|| format!("port in {s}"))?,
    })
}

/// Bytes this process has written with write syscalls (`/proc/self/io`).
fn own_wchar() -> Option<u64> {
    read_io_field(Path::new("/proc/self/io"), "wchar")
}

fn read_io_field(path: &Path, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}
