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
//! With `--docs` the same table also goes into `docs/benchmarks.md` (or the
//! file named), between its `<!-- bench-report:begin -->` and
//! `<!-- bench-report:end -->` lines, each row dated; the rows of benches this
//! run did not run stay as they were, so a subset run updates only its own.
//!
//! A bench that fails or lacks its peer is a row saying so; under `CI=true`
//! either makes the command fail once the report is written.
//!
//! Run: `cargo run --release -p nodewatch-tests --bin nodewatch-bench-report -- [--quick] [--docs] [BENCH...]`

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

/// `--quick`: recovery's outage, instead of the 5 minutes docs/benchmarks.md quotes.
const QUICK_OUTAGE_SECS: &str = "30";

#[derive(Parser)]
#[command(
    about = "Runs the benchmarks and writes report.md and report.svg (and with --docs, docs/benchmarks.md)"
)]
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
    /// Also write the table into FILE (default: the workspace's
    /// `docs/benchmarks.md`) between its bench-report markers, replacing the
    /// rows of the benches this run measured and keeping the others.
    #[arg(long, value_name = "FILE")]
    #[allow(
        clippy::option_option,
        reason = "absent, `--docs` alone, or `--docs FILE`: clap's optional value"
    )]
    docs: Option<Option<PathBuf>>,
}

/// The lines between which `--docs` writes its table.
const DOCS_BEGIN: &str = "<!-- bench-report:begin -->";
const DOCS_END: &str = "<!-- bench-report:end -->";
/// Where `--docs` writes without a FILE, relative to the workspace.
const DOCS_DEFAULT: &str = "docs/benchmarks.md";

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

/// The report's header row and its alignment row.
const TABLE_HEADER: &str =
    "| bench | measure | nodewatch | peer | ratio (nodewatch / peer) | better | goal | goal met? |";
const TABLE_ALIGN: &str = "|---|---|---:|---|---:|---|---|---|";

/// The report: its one table, a note on how it was run, and the run times.
fn markdown(results: &[BenchResult], runs: &[Run], note: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# nodewatch benchmarks\n");
    if !note.is_empty() {
        let _ = writeln!(md, "{note}\n");
    }
    let _ = writeln!(md, "{TABLE_HEADER}\n{TABLE_ALIGN}");
    for row in rows(results, runs) {
        let _ = writeln!(md, "{row}");
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

/// The table's rows, with a line per bench that failed or lacked something.
fn rows(results: &[BenchResult], runs: &[Run]) -> Vec<String> {
    let mut md = String::new();
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
    md.lines().map(String::from).collect()
}

/// The bench a table row is about: its first cell (`None` for the header,
/// the alignment row and any line not a row).
fn row_bench(row: &str) -> Option<&str> {
    let mut cells = row.strip_prefix('|')?.split('|');
    let bench = cells.next()?.trim();
    let is_row = cells.next().is_some()
        && !bench.is_empty()
        && bench != "bench"
        && !bench.chars().all(|c| c == '-' || c == ':');
    is_row.then_some(bench)
}

/// The table `--docs` writes between the markers: this run's rows, dated
/// `date`, and the rows of `previous` (the text between the markers now)
/// about benches this run did not touch, all in [`BENCHES`] order.
fn docs_table(new_rows: &[String], previous: &str, date: &str, note: &str) -> String {
    let ran: Vec<&str> = new_rows.iter().filter_map(|r| row_bench(r)).collect();
    let mut kept: Vec<String> = previous
        .lines()
        .filter(|l| row_bench(l).is_some_and(|b| !ran.contains(&b)))
        .map(String::from)
        .collect();
    kept.extend(new_rows.iter().map(|r| format!("{r} {date} |")));
    let order = |row: &String| {
        let bench = row_bench(row).unwrap_or_default();
        BENCHES
            .iter()
            .position(|b| *b == bench)
            .unwrap_or(BENCHES.len())
    };
    kept.sort_by_key(order);
    let mut md = String::new();
    let mut benches: Vec<&str> = ran.clone();
    benches.dedup();
    let _ = write!(
        md,
        "Last written on {date} by a run of {}",
        benches.join(", ")
    );
    if !note.is_empty() {
        let _ = write!(md, " ({})", note.trim_end_matches('.'));
    }
    let _ = writeln!(
        md,
        "; each row says when it was measured.\n\n{TABLE_HEADER_DOCS}\n{TABLE_ALIGN}---|"
    );
    for row in kept {
        let _ = writeln!(md, "{row}");
    }
    md
}

/// The docs table's header: the report's, and when each row was measured.
const TABLE_HEADER_DOCS: &str = "| bench | measure | nodewatch | peer | ratio (nodewatch / peer) | better | goal | goal met? | measured |";

/// `doc` with the text between its marker lines replaced by what `fill`
/// makes of the text there now; everything outside them is kept byte for byte.
fn splice(doc: &str, fill: impl FnOnce(&str) -> String) -> Result<String, String> {
    let find = |marker: &str| -> Result<usize, String> {
        let mut at = doc.match_indices(marker).map(|(i, _)| i);
        match (at.next(), at.next()) {
            (Some(i), None) => Ok(i),
            (None, _) => Err(format!("has no {marker} line")),
            (Some(_), Some(_)) => Err(format!("has {marker} more than once")),
        }
    };
    let begin = find(DOCS_BEGIN)? + DOCS_BEGIN.len();
    let end = find(DOCS_END)?;
    if end < begin {
        return Err(format!("has {DOCS_END} before {DOCS_BEGIN}"));
    }
    let inside = doc[begin..end].trim_matches('\n');
    let mut table = fill(inside);
    if !table.ends_with('\n') {
        table.push('\n');
    }
    Ok(format!("{}\n{table}{}", &doc[..begin], &doc[end..]))
}

/// Writes this run's rows into the docs file between its markers.
fn write_docs(path: &Path, rows: &[String], note: &str) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let date = date.get(..10).unwrap_or(&date);
    let out = splice(&doc, |previous| docs_table(rows, previous, date, note))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    std::fs::write(path, out).with_context(|| path.display().to_string())
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

/// The variables `--quick` sets for the benches (those already set win).
fn quick_env(args: &Args) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    if args.quick || env_flag("NODEWATCH_BENCH_QUICK") {
        for (k, v) in [
            ("NODEWATCH_BENCH_OUTAGE_SECS", QUICK_OUTAGE_SECS),
            ("NODEWATCH_BENCH_SCALE", "wire"),
        ] {
            if std::env::var_os(k).is_none() {
                env.push((k.to_string(), v.to_string()));
            }
        }
    }
    env
}

/// Every knob the benches saw, so the report says how it was run.
fn knobs_note(env: &[(String, String)]) -> String {
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
    if knobs.is_empty() {
        String::new()
    } else {
        format!("Run with {}.", knobs.join(", "))
    }
}

/// Builds the release binaries (unless `--no-build`) and compiles the
/// benches before any runs, so a compile error shows at once and no bench's
/// timing shares the machine with the compiler.
fn build(args: &Args, names: &[String]) -> anyhow::Result<()> {
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
    let mut compile = cargo();
    compile.args(["bench", "--no-run", "-p", "nodewatch-tests"]);
    for n in names {
        compile.args(["--bench", n]);
    }
    let status = compile.status().context("cargo bench --no-run")?;
    if !status.success() {
        bail!("compiling the benches: {status}");
    }
    Ok(())
}

/// Runs the selected benches: their results file, how each ended, and the note.
fn run_benches(args: &Args, out: &Path) -> anyhow::Result<(PathBuf, Vec<Run>, String)> {
    let names = selected(args)?;
    let env = quick_env(args);
    let note = knobs_note(&env);
    build(args, &names)?;
    let results_path = out.join("results.jsonl");
    // A fresh file per run: the report is this run's figures only.
    std::fs::write(&results_path, "").with_context(|| results_path.display().to_string())?;
    let runs: Vec<Run> = names
        .iter()
        .map(|n| run_bench(n, &results_path, out, &env))
        .collect();
    Ok((results_path, runs, note))
}

/// Under `CI=true`, a bench that failed or lacked its peer fails the command.
fn exit_code(runs: &[Run], results: &[BenchResult]) -> ExitCode {
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
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace().join("target"), PathBuf::from)
            .join("bench-report")
    });
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let (results_path, runs, note) = match &args.from {
        Some(from) => (from.clone(), Vec::new(), String::new()),
        None => run_benches(&args, &out)?,
    };
    let results = read_results(&results_path)?;
    let md = markdown(&results, &runs, &note);
    let md_path = out.join("report.md");
    std::fs::write(&md_path, &md).with_context(|| md_path.display().to_string())?;
    let svg_path = out.join("report.svg");
    svg(&bars(&results), &svg_path).with_context(|| svg_path.display().to_string())?;
    println!("\n{md}");
    eprintln!("wrote {} and {}", md_path.display(), svg_path.display());
    if let Some(docs) = &args.docs {
        let path = docs
            .clone()
            .unwrap_or_else(|| workspace().join(DOCS_DEFAULT));
        write_docs(&path, &rows(&results, &runs), &note)?;
        eprintln!("wrote the table into {}", path.display());
    }
    Ok(exit_code(&runs, &results))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A results line as a bench writes it.
    fn result(bench: &str, measure: &str, nodewatch: f64, peer: f64) -> BenchResult {
        serde_json::from_value(serde_json::json!({
            "bench": bench, "measure": measure, "unit": "ms", "nodewatch": nodewatch,
            "peer": "prometheus 2.42", "peer_value": peer, "better": "lower", "goal_ratio": 0.5,
        }))
        .unwrap()
    }

    const DOC: &str = "# Benchmarks\n\nintro\n\n<!-- bench-report:begin -->\nplaceholder\n<!-- bench-report:end -->\n\n## Scale\n\ntext\n";

    #[test]
    fn rows_are_one_per_measure_with_ratio_and_goal() {
        let rows = rows(&[result("scale", "ingest p99", 2.0, 8.0)], &[]);
        assert_eq!(
            rows,
            ["| scale | ingest p99 | 2 ms | prometheus 2.42: 8 ms | 0.25× | lower | ≤ 0.50× peer | yes |"]
        );
    }

    #[test]
    fn docs_get_the_table_between_the_markers_and_nothing_else_changes() {
        let rows = rows(&[result("scale", "ingest p99", 2.0, 8.0)], &[]);
        let out = splice(DOC, |prev| docs_table(&rows, prev, "2026-12-07", "")).unwrap();
        let (before, rest) = out.split_once(DOCS_BEGIN).unwrap();
        let (inside, after) = rest.split_once(DOCS_END).unwrap();
        assert_eq!(before, "# Benchmarks\n\nintro\n\n");
        assert_eq!(after, "\n\n## Scale\n\ntext\n");
        assert!(!inside.contains("placeholder"), "{inside}");
        assert!(inside.contains(TABLE_HEADER_DOCS), "{inside}");
        assert!(
            inside.contains("| scale | ingest p99 | 2 ms | prometheus 2.42: 8 ms | 0.25× | lower | ≤ 0.50× peer | yes | 2026-12-07 |"),
            "{inside}"
        );
        // Writing the same rows again gives the same file.
        let again = splice(&out, |prev| docs_table(&rows, prev, "2026-12-07", "")).unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn a_subset_run_replaces_only_its_own_rows() {
        let first = rows(
            &[
                result("scale", "ingest p99", 2.0, 8.0),
                result("zfs_collectors", "kstats", 0.4, 2.0),
            ],
            &[],
        );
        let doc = splice(DOC, |prev| docs_table(&first, prev, "2026-12-01", "")).unwrap();
        let second = rows(&[result("scale", "ingest p99", 3.0, 6.0)], &[]);
        let doc = splice(&doc, |prev| {
            docs_table(
                &second,
                prev,
                "2026-12-07",
                "Run with `NODEWATCH_BENCH_SCALE=wire`.",
            )
        })
        .unwrap();
        let lines: Vec<&str> = doc.lines().filter(|l| row_bench(l).is_some()).collect();
        // In BENCHES order: zfs_collectors before scale.
        assert_eq!(lines.len(), 2, "{doc}");
        assert!(
            lines[0].starts_with("| zfs_collectors | kstats | 0.4 ms")
                && lines[0].ends_with("| 2026-12-01 |"),
            "{doc}"
        );
        assert!(
            lines[1].starts_with("| scale | ingest p99 | 3 ms")
                && lines[1].ends_with("| 2026-12-07 |"),
            "{doc}"
        );
        assert!(
            doc.contains("by a run of scale (Run with `NODEWATCH_BENCH_SCALE=wire`)"),
            "{doc}"
        );
    }

    #[test]
    fn a_failed_bench_replaces_its_rows_with_the_failure() {
        let first = rows(&[result("recovery", "catch-up", 1.8, 1.0)], &[]);
        let doc = splice(DOC, |prev| docs_table(&first, prev, "2026-12-01", "")).unwrap();
        let failed = Run {
            bench: "recovery".into(),
            failure: Some("failed (exit status: 101)".into()),
            took: Duration::from_secs(3),
        };
        let second = rows(&[], &[failed]);
        let doc = splice(&doc, |prev| docs_table(&second, prev, "2026-12-07", "")).unwrap();
        assert!(!doc.contains("catch-up"), "{doc}");
        assert!(
            doc.contains("| recovery | **bench failed (exit status: 101)** |"),
            "{doc}"
        );
    }

    #[test]
    fn missing_or_misplaced_markers_are_refused_by_name() {
        let fill = |_: &str| String::from("table");
        let no_end = DOC.replace(DOCS_END, "");
        assert_eq!(
            splice(&no_end, fill).unwrap_err(),
            format!("has no {DOCS_END} line")
        );
        let no_begin = DOC.replace(DOCS_BEGIN, "");
        assert_eq!(
            splice(&no_begin, fill).unwrap_err(),
            format!("has no {DOCS_BEGIN} line")
        );
        let twice = format!("{DOC}{DOCS_BEGIN}\n");
        assert_eq!(
            splice(&twice, fill).unwrap_err(),
            format!("has {DOCS_BEGIN} more than once")
        );
        let swapped = DOC
            .replace(DOCS_BEGIN, "@@")
            .replace(DOCS_END, DOCS_BEGIN)
            .replace("@@", DOCS_END);
        assert_eq!(
            splice(&swapped, fill).unwrap_err(),
            format!("has {DOCS_END} before {DOCS_BEGIN}")
        );
    }

    /// The file `--docs` writes by default has its markers.
    #[test]
    fn the_default_docs_file_has_its_markers() {
        let path = workspace().join(DOCS_DEFAULT);
        let doc = std::fs::read_to_string(&path).unwrap();
        let out = splice(&doc, |prev| docs_table(&[], prev, "2026-12-07", "")).unwrap();
        assert!(out.contains(TABLE_HEADER_DOCS));
    }
}
