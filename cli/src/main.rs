//! `nodewatch`: the query tool.

use std::process::ExitCode;

use clap::Parser;
use nodewatch_cli::{self as cli, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    nodewatch_proto::log::init(
        &std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        nodewatch_proto::log::LogFormat::Text,
    );
    let Some(rt) = nodewatch_proto::lifecycle::runtime("nodewatch", Some(2)) else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`nodewatch events -f | head`) is a normal end.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            if let Some(status) = e.downcast_ref::<tonic::Status>() {
                eprintln!("nodewatch: {}", cli::client::explain(status));
            } else {
                eprintln!("nodewatch: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
