//! Streaming to one aggregator: a connection loop that (re)connects with
//! jittered exponential backoff, resends from the spool everything after the
//! aggregator's last ack, and moves this stream's cursor in the spool as acks
//! come. A session is connect → start streaming → send what is pending →
//! wait for the next collection, an ack or shutdown.

use std::sync::Arc;
use std::time::Duration;

use nodewatch_proto::lifecycle::Shutdown;
use nodewatch_proto::tls::{self, Reloadable, Target};
use nodewatch_proto::v1::ingest_client::IngestClient;
use nodewatch_proto::v1::{
    agent_frame, aggregator_frame, AgentFrame, AggregatorFrame, ErrorCode, Hello, Welcome,
};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use crate::batch::Encoder;
use crate::collector::now_ms;
use crate::spool::Shared;

/// First reconnect delay; doubled per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest reconnect delay: an aggregator restarted by a rollout is back within seconds,
/// and 30 s keeps a dead one from being hammered by every node.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long connecting (TCP + TLS + Hello/Welcome) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames buffered towards the gRPC stream; gives backpressure from HTTP/2 flow control.
const OUTBOUND_FRAMES: usize = 8;

/// Everything one streamer needs.
pub struct Streamer {
    pub target: Target,
    pub server_name: Option<String>,
    pub tls: Arc<Reloadable<rustls::ClientConfig>>,
    pub hello: Hello,
    /// The spool shared by all streams, and this stream's cursor in it.
    pub spool: Arc<Shared>,
    pub index: usize,
    /// Set when a session got a Welcome (read and cleared by the retry loop).
    pub welcomed: std::sync::atomic::AtomicBool,
}

/// A status with its whole error chain: tonic's own message for a failed
/// handshake is "transport error"; the reason (an expired or unknown
/// certificate, a TLS alert) is in the sources.
fn describe(status: &tonic::Status) -> String {
    let mut msg = format!("{}: {}", status.code(), status.message());
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut seen = std::collections::HashSet::new();
    while let Some(e) = src {
        let text = e.to_string();
        if seen.insert(text.clone()) && !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = e.source();
    }
    msg
}

/// An open stream: the frames towards the aggregator and its answers.
struct Open {
    tx: mpsc::Sender<AgentFrame>,
    inbound: tonic::Streaming<AggregatorFrame>,
}

enum End {
    /// Reconnect after a backoff.
    Retry(String),
    /// The aggregator could not decode a sample block: reconnect after a
    /// backoff and send plain samples to it from then on.
    BlocksRefused(String),
    /// Shutdown requested and the queue is flushed (or the grace ran out).
    Shutdown,
}

impl Streamer {
    /// Runs until `shutdown` is requested, then tries to flush for `grace`.
    pub async fn run(self, shutdown: Shutdown, grace: Duration) {
        let mut backoff = BACKOFF_MIN;
        let mut plain = false;
        loop {
            let why = match self.session(&shutdown, grace, plain).await {
                End::Shutdown => return,
                End::Retry(why) => why,
                End::BlocksRefused(why) => {
                    plain = true;
                    why
                }
            };
            let jitter = rand::rng().random_range(0.5..1.0);
            let delay = backoff.mul_f64(jitter);
            warn!(aggregator = %self.target, error = %why, retry_in = ?delay, "Stream to aggregator lost.");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.requested() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if shutdown.is_requested() {
                return;
            }
            // A session that got as far as Welcome resets the backoff; one
            // that did not (the aggregator down or refusing) keeps doubling
            // it, so a dead aggregator is not hammered (nor the log filled).
            if self
                .welcomed
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                backoff = BACKOFF_MIN.max(backoff / 4);
            }
        }
    }

    /// One stream; `plain` keeps it to plain samples even where the
    /// aggregator reads blocks (it failed to decode one of ours before).
    async fn session(&self, shutdown: &Shutdown, grace: Duration, plain: bool) -> End {
        let (mut open, welcome) = match self.connect().await {
            Ok(r) => r,
            Err(end) => return end,
        };
        let mut encoder = self.start_streaming(&welcome, plain);
        let mut sent = welcome.acked_seq;
        let mut stopping: Option<tokio::time::Instant> = None;
        loop {
            if let Err(end) = self.send_pending(&mut open, &mut encoder, &mut sent).await {
                return end;
            }
            if let Some(deadline) = stopping {
                let empty = self.spool.lock().pending(self.index) == 0;
                if empty || tokio::time::Instant::now() >= deadline {
                    return End::Shutdown;
                }
            }
            let deadline =
                stopping.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_hours(1));
            tokio::select! {
                () = self.spool.notify[self.index].notified() => {}
                f = open.inbound.next() => {
                    if let Some(end) = self.handle(f) {
                        return end;
                    }
                }
                () = shutdown.requested(), if stopping.is_none() => {
                    stopping = Some(tokio::time::Instant::now() + grace);
                }
                () = tokio::time::sleep_until(deadline), if stopping.is_some() => return End::Shutdown,
            }
        }
    }

    /// Connects, says Hello (resuming after this stream's last ack) and
    /// waits for the Welcome, all within [`CONNECT_TIMEOUT`].
    async fn connect(&self) -> Result<(Open, Welcome), End> {
        let channel = tls::channel(
            &self.target,
            Arc::clone(&self.tls),
            self.server_name.clone(),
            CONNECT_TIMEOUT,
        )
        .map_err(|e| End::Retry(format!("bad endpoint: {e}")))?;
        let mut client = IngestClient::new(channel);
        let (tx, rx) = mpsc::channel::<AgentFrame>(OUTBOUND_FRAMES);
        let mut hello = self.hello.clone();
        hello.resume_from = self.spool.lock().acked(self.index) + 1;
        if tx
            .send(AgentFrame {
                frame: Some(agent_frame::Frame::Hello(hello)),
            })
            .await
            .is_err()
        {
            return Err(End::Retry("stream closed before Hello".into()));
        }
        let response =
            match tokio::time::timeout(CONNECT_TIMEOUT, client.stream(ReceiverStream::new(rx)))
                .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(status)) => return Err(End::Retry(describe(&status))),
                Err(_) => return Err(End::Retry("connect timed out".into())),
            };
        let mut inbound = response.into_inner();
        let welcome = match tokio::time::timeout(CONNECT_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(f))) => match f.frame {
                Some(aggregator_frame::Frame::Welcome(w)) => w,
                Some(aggregator_frame::Frame::Error(e)) => {
                    return Err(End::Retry(format!("refused: {}", e.message)))
                }
                _ => return Err(End::Retry("expected Welcome".into())),
            },
            Ok(Some(Err(status))) => return Err(End::Retry(describe(&status))),
            Ok(None) => return Err(End::Retry("stream closed before Welcome".into())),
            Err(_) => return Err(End::Retry("no Welcome in time".into())),
        };
        Ok((Open { tx, inbound }, welcome))
    }

    /// Takes the Welcome's cursor into the spool and picks the encoding.
    fn start_streaming(&self, welcome: &Welcome, plain: bool) -> Encoder {
        // An aggregator that restarted knows nothing (acked 0): it gets the
        // spool's whole retained past again, its backfill. One that knows
        // more than the spool remembers (its seq file lost) moves the
        // numbering past its cursor, so no new collection reuses a stored seq.
        self.welcomed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        {
            let mut spool = self.spool.lock();
            spool.never_below(welcome.acked_seq);
            spool.ack(self.index, welcome.acked_seq, now_ms());
        }
        info!(aggregator = %self.target, node = %welcome.node, acked = welcome.acked_seq, "Streaming to aggregator.");
        // Blocks only to an aggregator that says it reads them: an older one
        // would skip the unknown field and ack samples it never stored.
        if welcome.sample_blocks >= nodewatch_proto::blocks::VERSION && !plain {
            Encoder::compact()
        } else {
            Encoder::new()
        }
    }

    /// Sends everything queued that this stream has not carried yet,
    /// handling the aggregator's frames meanwhile; `sent` is the last seq
    /// handed to the stream.
    async fn send_pending(
        &self,
        open: &mut Open,
        encoder: &mut Encoder,
        sent: &mut u64,
    ) -> Result<(), End> {
        // A slot in the outbound queue is reserved before the next
        // collection is taken and encoded: if an ack wins the race
        // instead, nothing was taken, so nothing is skipped (a cancelled
        // `send` would drop its batch after `sent` had moved past it,
        // and the encoder would believe its series defined).
        loop {
            let permit = tokio::select! {
                p = open.tx.reserve() => match p {
                    Ok(p) => p,
                    Err(_) => return Err(End::Retry("stream closed while sending".into())),
                },
                f = open.inbound.next() => {
                    if let Some(end) = self.handle(f) {
                        return Err(end);
                    }
                    continue;
                }
            };
            let next = self.spool.lock().next_after(*sent);
            let Some(c) = next else { return Ok(()) };
            let batch = encoder.encode(&c);
            *sent = c.seq;
            permit.send(AgentFrame {
                frame: Some(agent_frame::Frame::Batch(batch)),
            });
        }
    }

    /// Handles one frame from the aggregator; `Some` ends the session.
    fn handle(&self, f: Option<Result<AggregatorFrame, tonic::Status>>) -> Option<End> {
        match f {
            Some(Ok(frame)) => match frame.frame {
                Some(aggregator_frame::Frame::Ack(a)) => {
                    debug!(aggregator = %self.target, seq = a.seq, "ack");
                    self.spool.lock().ack(self.index, a.seq, now_ms());
                    None
                }
                Some(aggregator_frame::Frame::Error(e)) => {
                    let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                    warn!(aggregator = %self.target, seq = e.seq, code = ?code, error = %e.message, "Aggregator reported a problem.");
                    if e.fatal && code == ErrorCode::BlockDecode {
                        Some(End::BlocksRefused(format!(
                            "aggregator could not decode a sample block (plain samples from now on): {}",
                            e.message
                        )))
                    } else if e.fatal {
                        Some(End::Retry(format!(
                            "aggregator closed the stream: {}",
                            e.message
                        )))
                    } else {
                        None
                    }
                }
                Some(aggregator_frame::Frame::Welcome(_)) | None => None,
            },
            Some(Err(status)) => Some(End::Retry(describe(&status))),
            None => Some(End::Retry("aggregator closed the stream".into())),
        }
    }
}
