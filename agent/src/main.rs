//! `nodewatch-agent`: collects host signals and streams them to aggregators.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nodewatch_agent::{collectors, config, runtime};
use nodewatch_proto::log::{self, LogFormat};

/// The name errors on stderr start with.
const PROGRAM: &str = "nodewatch-agent";

#[derive(Parser, Debug)]
#[command(
    name = "nodewatch-agent",
    version,
    about = "Collects this host's signals and streams them to nodewatch aggregators over mutual TLS."
)]
struct Args {
    /// Configuration file (YAML).
    #[arg(long, short = 'c', env = "NODEWATCH_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Collect once, print the samples in Prometheus text format, and exit.
    #[arg(long)]
    once: bool,
    /// Aggregator address host:port (repeatable; overrides `aggregators`).
    #[arg(long = "aggregator")]
    aggregators: Vec<String>,
    /// Collection interval, e.g. 10s (overrides `interval`).
    #[arg(long)]
    interval: Option<String>,
    /// procfs mount point.
    #[arg(long = "path.procfs")]
    procfs: Option<PathBuf>,
    /// sysfs mount point.
    #[arg(long = "path.sysfs")]
    sysfs: Option<PathBuf>,
    /// The host's root file system.
    #[arg(long = "path.rootfs")]
    rootfs: Option<PathBuf>,
    /// Log filter (`RUST_LOG` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log line format: `text` or `json` (overrides `log.format`; default text).
    #[arg(long = "log.format")]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let loaded = config::File::load(args.config.as_deref());
    let logged = log::init_with_file(PROGRAM, &args.log, args.log_format, loaded, |f| {
        f.log.format
    });
    let Some(mut file) = logged else {
        return ExitCode::from(2);
    };
    if !args.aggregators.is_empty() {
        file.aggregators = args.aggregators;
    }
    if args.interval.is_some() {
        file.interval = args.interval;
    }
    file.paths.procfs = args.procfs.or(file.paths.procfs);
    file.paths.sysfs = args.sysfs.or(file.paths.sysfs);
    file.paths.rootfs = args.rootfs.or(file.paths.rootfs);
    let specs = collectors::registry();
    let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
    let cfg = match file.validate(args.config.as_deref(), &names, !args.once) {
        Ok(c) => c,
        Err(e) => {
            eprint!("nodewatch-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if args.once {
        let mut cs =
            runtime::build_collectors(&specs, &cfg.collectors, &cfg.paths, &cfg.collector_options);
        let sink = runtime::collect_once(&mut cs);
        print!("{}", sink.render_text());
        return ExitCode::SUCCESS;
    }
    let Some(rt) = nodewatch_proto::lifecycle::runtime("nodewatch-agent", Some(2)) else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let shutdown = nodewatch_proto::lifecycle::Shutdown::on_signal("Shutdown requested.");
        match runtime::run(cfg, specs, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nodewatch-agent: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
