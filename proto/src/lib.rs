//! The nodewatch wire protocol and the security pieces every binary shares.
//!
//! # Layout
//! - [`v1`]: generated protobuf messages and tonic clients/servers (`nodewatch.v1`).
//! - [`identity`]: who a peer is, read from its certificate's URI SAN.
//! - [`tls`]: rustls configurations (TLS 1.3 only, mutual authentication), the
//!   server's accept loop that attaches the peer identity to each connection,
//!   and the client connector.
//! - [`certs`]: a small CA for homelabs and tests (rcgen).
//! - [`blocks`]: the compact `SampleBlock` encoding of a stream's samples.
//! - [`config`]: configuration loading: unknown keys refused, every problem reported with its path.
//! - [`text`]: Prometheus text exposition pieces shared by the agent's `--once` and `/metrics`.
//! - [`log`]: log output (text or JSON lines; colour only on a terminal).
//! - [`gocompat`]: Go's durations, float and time formats, quoting and query
//!   escaping, as Prometheus writes and reads them.
//! - [`lifecycle`]: the shutdown signal and the tasks that end with it.

pub mod blocks;
pub mod certs;
pub mod config;
pub mod gocompat;
pub mod identity;
pub mod lifecycle;
pub mod log;
pub mod text;
pub mod tls;

/// Generated code for the `nodewatch.v1` protobuf package.
#[allow(clippy::pedantic, clippy::all, missing_docs, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("nodewatch.v1");
}

pub use identity::{Identity, NodeName};

/// Version of this build, sent in `Hello` and `Welcome`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Resolves on SIGTERM or SIGINT: every binary's orderly-shutdown trigger.
/// Where the handlers cannot be installed it never resolves (the process can
/// then only be killed), rather than stopping at once.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
