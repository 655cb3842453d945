//! `nodewatch-aggregator`: the server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nodewatch_aggregator::{config, server};
use nodewatch_proto::log::{self, LogFormat};

/// The name errors on stderr start with.
const PROGRAM: &str = "nodewatch-aggregator";

#[derive(clap::Subcommand, Debug)]
enum Tool {
    /// Check rule files like `promtool check rules` (exit 0: all good, 1: problems).
    CheckRules {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run rule unit tests like `promtool test rules` (same file format and exit codes).
    TestRules {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Parser, Debug)]
#[command(
    name = "nodewatch-aggregator",
    version,
    about = "Receives nodewatch agents' streams, keeps recent history, serves /metrics and queries."
)]
struct Args {
    /// Configuration file (YAML).
    #[arg(long, short = 'c', env = "NODEWATCH_AGGREGATOR_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides listen.grpc).
    #[arg(long)]
    grpc_listen: Option<String>,
    /// HTTP listen address for /metrics (overrides listen.http).
    #[arg(long)]
    http_listen: Option<String>,
    /// CA bundle for client certificates (overrides tls.ca).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Server certificate (overrides tls.cert).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Server key (overrides tls.key).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Log filter (`RUST_LOG` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log line format: `text` or `json` (overrides `log.format`; default text).
    #[arg(long = "log.format")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    tool: Option<Tool>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.tool {
        Some(Tool::CheckRules { files }) => {
            let code = nodewatch_aggregator::rules::unittest::check_rule_files(
                files.as_slice(),
                &mut std::io::stdout(),
            );
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        Some(Tool::TestRules { files }) => {
            let code = nodewatch_aggregator::rules::unittest::run_test_files(
                files.as_slice(),
                &mut std::io::stdout(),
            );
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        None => {}
    }
    let loaded = config::File::load(args.config.as_deref());
    let logged = log::init_with_file(PROGRAM, &args.log, args.log_format, loaded, |f| {
        f.log.format
    });
    let Some(mut file) = logged else {
        return ExitCode::from(2);
    };
    if let Some(v) = args.grpc_listen {
        file.listen.grpc = v;
    }
    if let Some(v) = args.http_listen {
        file.listen.http = v;
    }
    if let Some(v) = args.tls_ca {
        file.tls.ca = Some(v);
    }
    if let Some(v) = args.tls_cert {
        file.tls.cert = Some(v);
    }
    if let Some(v) = args.tls_key {
        file.tls.key = Some(v);
    }
    let cfg = match file.validate(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("nodewatch-aggregator: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(rt) = nodewatch_proto::lifecycle::runtime("nodewatch-aggregator", None) else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let running = match server::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("nodewatch-aggregator: {e}");
                return ExitCode::FAILURE;
            }
        };
        let rules = std::sync::Arc::clone(&running.state.rules);
        let hup = tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading rule files.");
                let _ = rules.reload();
            }
        });
        nodewatch_proto::shutdown_signal().await;
        hup.abort();
        tracing::info!("Shutting down.");
        running.stop().await;
        ExitCode::SUCCESS
    })
}
