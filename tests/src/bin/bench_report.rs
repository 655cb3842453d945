//! nodewatch-bench-report: every benchmark of the project, one after the
//! other on this machine, gathered into one report.
//!
//! It builds the release binaries, runs `cargo bench -p nodewatch-tests
//! --bench NAME` for each benchmark with `NODEWATCH_BENCH_RESULTS` pointing at
//! one JSON-lines file (every bench appends a line per measure through
//! `nodewatch_tests::BenchResult`), keeps each bench's own Markdown output,
//! and writes:
//!
//! - `report.md`: one table, nodewatch beside its peer for every measure,
//!   the ratio and whether the goal is met;
//! - `report.svg`: nodewatch / peer (or / goal) for every measure as bars on
//!   a log scale around 1.0.
//!
//! A bench that fails or lacks its peer is a row saying so; under `CI=true`
//! either makes the command fail once the report is written.
//!
//! Run: `cargo run --release -p nodewatch-tests --bin nodewatch-bench-report -- [--quick] [BENCH...]`

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use nodewatch_tests::{in_ci, BenchResult, Better, BENCH_RESULTS_ENV};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Every benchmark in `tests/benches`, cheapest first, so a subset run and
/// the start of a full run give figures early.
const BENCHES: &[&str] = &[
    "zfs_collectors",
    "rules_vs_prometheus",
    "agent_vs_node_exporter",
    "ebpf_cost",
    "alert_latency",
    "recovery",
    "scale",
];

/// `--quick`: recovery's outage, instead of the 5 minutes README quotes.
const QUICK_OUTAGE_SECS: &str = "30";

#[derive(Parser)]
#[command(about = "Runs the benchmarks and writes report.md and report.svg")]
struct Args {
    /// Benchmarks to run (default: all; also `NODEWATCH_BENCH_ONLY=a,b`).
    benches: Vec<String>,
    /// Shorten the long benchmarks: recovery's outage to 30 s, scale to its
    /// wire measurement (also `NODEWATCH_BENCH_QUICK=1`). Variables already
    /// set (`NODEWATCH_BENCH_OUTAGE_SECS`, `NODEWATCH_BENCH_SCALE`) win.
    #[arg(long)]
    quick: bool,
    /// Output directory (default: `$CARGO_TARGET_DIR/bench-report`, else
    /// `target/bench-report` in the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use the release binaries as they are instead of building them first.
    #[arg(long)]
    no_build: bool,
    /// Only render report.md and report.svg again from this results file.
    #[arg(long, value_name = "RESULTS_JSONL")]
    from: Option<PathBuf>,
}

/// How one bench's process ended.
struct Run {
    bench: String,
    /// `None` when it exited 0.
    failure: Option<String>,
    took: Duration,
}

/// The workspace root: `tests/` is one of its members.
fn workspace() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

/// Cargo, without the package variables `cargo run` gave this process: build
/// scripts that watch them (`ring`'s `rerun-if-env-changed=CARGO_PKG_NAME`)
/// would otherwise see them change, rebuild, and rebuild again at the next
/// plain `cargo build`.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || k.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&k.as_ref())
        {
            c.env_remove(k.as_ref());
        }
    }
    c
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn selected(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut names = args.benches.clone();
    if names.is_empty() {
        if let Ok(only) = std::env::var("NODEWATCH_BENCH_ONLY") {
            names = only
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
    }
    if names.is_empty() {
        return Ok(BENCHES.iter().map(|s| (*s).to_string()).collect());
    }
    if let Some(bad) = names.iter().find(|n| !BENCHES.contains(&n.as_str())) {
        bail!("unknown benchmark {bad:?}; known: {}", BENCHES.join(", "));
    }
    Ok(names)
}

/// Runs one bench, its stdout (the bench's own tables) shown and kept in
/// `<out>/<bench>.md`; its stderr (progress) goes straight through.
fn run_bench(name: &str, results: &Path, out: &Path, env: &[(String, String)]) -> Run {
    eprintln!("\n=== {name} ===");
    let start = Instant::now();
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "nodewatch-tests", "--bench", name])
        .env(BENCH_RESULTS_ENV, results)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped());
    let failure = match cmd.spawn() {
        Err(e) => Some(format!("could not start cargo: {e}")),
        Ok(mut child) => {
            let mut kept = std::fs::File::create(out.join(format!("{name}.md"))).ok();
            if let Some(stdout) = child.stdout.take() {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    println!("{line}");
                    if let Some(f) = kept.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                }
            }
            match child.wait() {
                Ok(s) if s.success() => None,
                Ok(s) => Some(format!("failed ({s})")),
                Err(e) => Some(format!("failed: {e}")),
            }
        }
    };
    Run {
        bench: name.to_string(),
        failure,
        took: start.elapsed(),
    }
}

fn read_results(path: &Path) -> anyhow::Result<Vec<BenchResult>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// A figure with as many digits as it needs: thousands grouped, three
/// significant digits below 100.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{a:.0}");
        let mut grouped = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("{}{grouped}", if v < 0.0 { "-" } else { "" })
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a == 0.0 {
        "0".to_string()
    } else {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// A ratio: two decimals from 0.1 up, two significant digits below.
fn fmt_ratio(x: f64) -> String {
    if x >= 0.1 {
        format!("{x:.2}×")
    } else {
        let decimals = (1 - x.log10().floor() as i32).max(0) as usize;
        format!("{x:.decimals$}×")
    }
}

fn with_unit(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "–".to_string(),
        Some(v) if unit.is_empty() => num(v),
        Some(v) => format!("{} {unit}", num(v)),
    }
}

fn cmp_sign(better: Better) -> &'static str {
    match better {
        Better::Lower => "≤",
        Better::Higher => "≥",
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The report's one table, with a line per bench that failed or lacked something.
fn markdown(results: &[BenchResult], runs: &[Run], note: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# nodewatch benchmarks\n");
    if !note.is_empty() {
        let _ = writeln!(md, "{note}\n");
    }
    md.push_str("| bench | measure | nodewatch | peer | ratio (nodewatch / peer) | better | goal | goal met? |\n");
    md.push_str("|---|---|---:|---|---:|---|---|---|\n");
    // Benches in the order they ran, then any others found in the results file.
    let mut order: Vec<String> = runs.iter().map(|r| r.bench.clone()).collect();
    for r in results {
        if !order.contains(&r.bench) {
            order.push(r.bench.clone());
        }
    }
    for bench in &order {
        let rows: Vec<&BenchResult> = results.iter().filter(|r| &r.bench == bench).collect();
        for r in &rows {
            if let Some(what) = &r.missing {
                let _ = writeln!(
                    md,
                    "| {bench} | not run: {} missing | – | – | – | | | |",
                    md_cell(what)
                );
                continue;
            }
            let peer = match (&r.peer, r.peer_value) {
                (None, _) => "–".to_string(),
                (Some(p), v) => format!("{p}: {}", with_unit(v, &r.unit)),
            };
            let ratio = r.ratio().map_or("–".to_string(), fmt_ratio);
            let goal = match (r.goal, r.goal_ratio) {
                (Some(g), _) => format!("{} {}", cmp_sign(r.better), with_unit(Some(g), &r.unit)),
                (None, Some(g)) => format!("{} {} peer", cmp_sign(r.better), fmt_ratio(g)),
                (None, None) => String::new(),
            };
            let met = match r.goal_met() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let better = match r.better {
                Better::Lower => "lower",
                Better::Higher => "higher",
            };
            let _ = writeln!(
                md,
                "| {bench} | {} | {} | {} | {ratio} | {better} | {goal} | {met} |",
                md_cell(&r.measure),
                with_unit(r.nodewatch, &r.unit),
                md_cell(&peer),
            );
        }
        if let Some(run) = runs.iter().find(|r| &r.bench == bench) {
            if let Some(f) = &run.failure {
                let _ = writeln!(
                    md,
                    "| {bench} | **bench {}** | – | – | – | | | |",
                    md_cell(f)
                );
            } else if rows.is_empty() {
                let _ = writeln!(md, "| {bench} | no results recorded | – | – | – | | | |");
            }
        }
    }
    if !runs.is_empty() {
        md.push_str("\nRun times: ");
        let times: Vec<String> = runs
            .iter()
            .map(|r| format!("{} {} s", r.bench, r.took.as_secs()))
            .collect();
        md.push_str(&times.join(", "));
        md.push_str(". Each bench's own tables are beside this file as `<bench>.md`.\n");
    }
    md
}

/// One bar: its label, nodewatch's figure over the peer's (or the goal's),
/// and whether that side of 1.0 is nodewatch's good side.
struct Bar {
    label: String,
    ratio: f64,
    good: bool,
}

fn bars(results: &[BenchResult]) -> Vec<Bar> {
    results
        .iter()
        .filter_map(|r| {
            let (ratio, against) = match (r.ratio(), r.goal, r.nodewatch) {
                (Some(x), _, _) => (x, ""),
                (None, Some(g), Some(nw)) if g > 0.0 => (nw / g, " (vs goal)"),
                _ => return None,
            };
            (ratio.is_finite() && ratio > 0.0).then(|| Bar {
                label: format!("{}: {}{against}", r.bench, r.measure),
                ratio,
                good: r.better.meets(ratio, 1.0),
            })
        })
        .collect()
}

/// Character budget of a bar's label in the left margin.
const LABEL_CHARS: usize = 84;

/// nodewatch / peer as horizontal bars from 1.0 on a log scale: to the left
/// nodewatch's figure is smaller, to the right larger; the colour says
/// whether that is the better side for the measure.
fn svg(bars: &[Bar], path: &Path) -> anyhow::Result<()> {
    const WIDTH: u32 = 1280;
    const LABEL_AREA: u32 = 560;
    const ROW: u32 = 26;
    let n = bars.len().max(1);
    let height = 130 + ROW * n as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let logs = bars.iter().map(|b| b.ratio.log10());
    // Whole decades either side of 1.0, with room for the figures at the bar ends.
    let lo = (logs.clone().fold(0.0_f64, f64::min) - 0.4).floor();
    let hi = (logs.fold(0.0_f64, f64::max) + 0.4).ceil();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "nodewatch / peer, log scale (green: nodewatch better, red: worse)",
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(LABEL_AREA)
        .build_cartesian_2d(lo..hi, 0.0..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_max_light_lines(0)
        .y_labels(0)
        .x_labels((hi - lo) as usize + 1)
        .x_label_formatter(&|x| format!("{}×", num(10f64.powf(*x))))
        .x_desc("nodewatch / peer")
        .draw()?;
    let green = RGBColor(46, 160, 67);
    let red = RGBColor(207, 34, 46);
    for (i, b) in bars.iter().enumerate() {
        // First bar at the top.
        let y = (n - i) as f64 - 0.5;
        let x = b.ratio.log10();
        let colour = if b.good { green } else { red };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y - 0.32), (x, y + 0.32)],
            colour.filled(),
        )))?;
        let (anchor, nudge) = if x >= 0.0 {
            (HPos::Left, 0.04)
        } else {
            (HPos::Right, -0.04)
        };
        chart.draw_series(std::iter::once(Text::new(
            fmt_ratio(b.ratio),
            (x + nudge, y),
            ("sans-serif", 12)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(anchor, VPos::Center)),
        )))?;
        let mut label = b.label.clone();
        if label.chars().count() > LABEL_CHARS {
            label = label.chars().take(LABEL_CHARS - 1).collect::<String>() + "…";
        }
        let (px, py) = chart.backend_coord(&(lo, y));
        root.draw(&Text::new(
            label,
            (px - 8, py),
            ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 0.0), (0.0, n as f64)],
        BLACK.stroke_width(2),
    )))?;
    root.present()?;
    Ok(())
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace().join("target"), PathBuf::from)
            .join("bench-report")
    });
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let (results_path, runs, note) = if let Some(from) = &args.from {
        (from.clone(), Vec::new(), String::new())
    } else {
        let names = selected(&args)?;
        let quick = args.quick || env_flag("NODEWATCH_BENCH_QUICK");
        let mut env: Vec<(String, String)> = Vec::new();
        if quick {
            for (k, v) in [
                ("NODEWATCH_BENCH_OUTAGE_SECS", QUICK_OUTAGE_SECS),
                ("NODEWATCH_BENCH_SCALE", "wire"),
            ] {
                if std::env::var_os(k).is_none() {
                    env.push((k.to_string(), v.to_string()));
                }
            }
        }
        // Every knob the benches saw, so the report says how it was run.
        let mut knobs: Vec<String> = std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("NODEWATCH_BENCH_")
                    && ![
                        "NODEWATCH_BENCH_ONLY",
                        "NODEWATCH_BENCH_QUICK",
                        BENCH_RESULTS_ENV,
                    ]
                    .contains(&k.as_str())
            })
            .chain(env.iter().cloned())
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect();
        knobs.sort();
        let note = if knobs.is_empty() {
            String::new()
        } else {
            format!("Run with {}.", knobs.join(", "))
        };
        if !args.no_build {
            eprintln!("=== cargo build --release --workspace --bins ===");
            let status = cargo()
                .args(["build", "--release", "--workspace", "--bins"])
                .status()
                .context("cargo build")?;
            if !status.success() {
                bail!("cargo build --release --workspace --bins: {status}");
            }
        }
        // The benches compile before any runs, so a compile error shows at once
        // and no bench's timing shares the machine with the compiler.
        let mut compile = cargo();
        compile.args(["bench", "--no-run", "-p", "nodewatch-tests"]);
        for n in &names {
            compile.args(["--bench", n]);
        }
        let status = compile.status().context("cargo bench --no-run")?;
        if !status.success() {
            bail!("compiling the benches: {status}");
        }
        let results_path = out.join("results.jsonl");
        // A fresh file per run: the report is this run's figures only.
        std::fs::write(&results_path, "").with_context(|| results_path.display().to_string())?;
        let runs: Vec<Run> = names
            .iter()
            .map(|n| run_bench(n, &results_path, &out, &env))
            .collect();
        (results_path, runs, note)
    };
    let results = read_results(&results_path)?;
    let md = markdown(&results, &runs, &note);
    let md_path = out.join("report.md");
    std::fs::write(&md_path, &md).with_context(|| md_path.display().to_string())?;
    let svg_path = out.join("report.svg");
    svg(&bars(&results), &svg_path).with_context(|| svg_path.display().to_string())?;
    println!("\n{md}");
    eprintln!("wrote {} and {}", md_path.display(), svg_path.display());

    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| r.failure.is_some())
        .map(|r| r.bench.as_str())
        .collect();
    let missing: Vec<&str> = results
        .iter()
        .filter_map(|r| r.missing.as_deref())
        .collect();
    if in_ci() && (!failed.is_empty() || !missing.is_empty()) {
        eprintln!(
            "CI=true: failed benches [{}], missing components [{}]",
            failed.join(", "),
            missing.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
