//! Prometheus remote-write 1.0 sender: every sample the store accepts goes,
//! through a bounded queue per receiver, to Prometheus, Mimir, Thanos Receive
//! or `VictoriaMetrics`, so a cluster bigger than one aggregator pair keeps
//! its history in a horizontally scaled store.
//!
//! Wire format (the remote-write 1.0 spec): a `prometheus.WriteRequest`
//! protobuf, snappy block-compressed, sent by HTTP POST with `Content-Encoding: snappy`,
//! `Content-Type: application/x-protobuf` and
//! `X-Prometheus-Remote-Write-Version: 0.1.0`. As Prometheus' own queue
//! manager: 5xx, 429 and connection errors are retried with exponential
//! backoff while the queue holds on to the batch; other 4xx are refused for
//! good (counted as failed); when the queue is full, new samples are dropped
//! and counted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::store::Labels;

/// `prometheus.WriteRequest` (only the fields remote-write 1.0 needs).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: labels sorted by name, samples in time order.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: value, then timestamp in milliseconds.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("URL {0:?}: expected http://host[:port]/path")]
    Url(String),
    #[error("snappy: {0}")]
    Snappy(#[from] snap::Error),
    #[error("connect {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Protobuf-encodes and snappy-compresses (block format) a request.
pub fn encode(req: &WriteRequest) -> Result<Bytes, RemoteWriteError> {
    let raw = prost::Message::encode_to_vec(req);
    Ok(Bytes::from(snap::raw::Encoder::new().compress_vec(&raw)?))
}

/// Per-request time limit: a receiver that stops answering is treated as down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// POSTs remote-write bodies to one URL over a kept-alive HTTP/1.1 connection,
/// reconnecting after any error.
pub struct HttpSender {
    uri: http::Uri,
    authority: String,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl HttpSender {
    pub fn new(url: &str) -> Result<Self, RemoteWriteError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| RemoteWriteError::Url(url.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(RemoteWriteError::Url(url.to_string()));
        }
        let authority = uri
            .authority()
            .map(|a| {
                if a.port().is_some() {
                    a.to_string()
                } else {
                    format!("{}:80", a.host())
                }
            })
            .ok_or_else(|| RemoteWriteError::Url(url.to_string()))?;
        Ok(Self {
            uri,
            authority,
            conn: None,
        })
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, RemoteWriteError> {
        if let Some(c) = self.conn.take() {
            if !c.is_closed() {
                return Ok(c);
            }
        }
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|source| RemoteWriteError::Connect {
                addr: self.authority.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(%error, "Remote-write connection closed.");
            }
        });
        Ok(send)
    }

    /// Sends one encoded body; returns the response status.
    pub async fn post(&mut self, body: Bytes) -> Result<http::StatusCode, RemoteWriteError> {
        if let Ok(r) = tokio::time::timeout(REQUEST_TIMEOUT, self.post_inner(body)).await {
            r
        } else {
            self.conn = None;
            Err(RemoteWriteError::Timeout(REQUEST_TIMEOUT))
        }
    }

    async fn post_inner(&mut self, body: Bytes) -> Result<http::StatusCode, RemoteWriteError> {
        let mut send = self.connect().await?;
        send.ready().await?;
        let req = http::Request::post(self.uri.clone())
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::CONTENT_ENCODING, "snappy")
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                http::header::USER_AGENT,
                concat!("nodewatch-aggregator/", env!("CARGO_PKG_VERSION")),
            )
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(Full::new(body))?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        // Read the body to the end so the connection can be reused.
        let _ = resp.into_body().collect().await?;
        self.conn = Some(send);
        Ok(status)
    }
}

/// One receiver's queue settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Samples held while the receiver is slow or down; past it new ones are dropped.
    pub capacity: usize,
    /// Most samples in one request.
    pub max_samples_per_send: usize,
    /// Longest a sample waits for a request to fill up.
    pub batch_send_deadline: Duration,
    /// First retry delay, doubled up to `max_backoff` (Prometheus: 30 ms, 5 s).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        // Prometheus' defaults: capacity 10,000, 2,000 per send, 5 s deadline.
        Self {
            capacity: 10_000,
            max_samples_per_send: 2_000,
            batch_send_deadline: Duration::from_secs(5),
            min_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// One receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub queue: QueueConfig,
}

/// One queued sample.
type Queued = (Labels, i64, f64);

/// The bounded queue of one receiver, fed by the store.
#[derive(Debug)]
pub struct Queue {
    url: String,
    capacity: usize,
    max_per_send: usize,
    items: Mutex<VecDeque<Queued>>,
    /// Taken from `items` and not yet delivered (being sent or retried).
    in_flight: std::sync::atomic::AtomicUsize,
    notify: Notify,
    length: metrics::Gauge,
}

impl Queue {
    /// Adds samples; those past the capacity are dropped and counted.
    pub fn push(&self, samples: impl IntoIterator<Item = Queued>) {
        let mut q = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dropped = 0u64;
        for s in samples {
            if q.len() >= self.capacity {
                dropped += 1;
            } else {
                q.push_back(s);
            }
        }
        let len = q.len();
        drop(q);
        self.set_length(len);
        if dropped > 0 {
            metrics::counter!("nodewatch_aggregator_remote_write_dropped_samples_total", "url" => self.url.clone())
                .increment(dropped);
        }
        if len >= self.max_per_send {
            self.notify.notify_one();
        }
    }

    fn len(&self) -> usize {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The gauge counts what is queued and what is still being delivered.
    fn set_length(&self, queued: usize) {
        let in_flight = self.in_flight.load(std::sync::atomic::Ordering::Relaxed);
        self.length.set((queued + in_flight) as f64);
    }

    /// Takes up to `n` samples; they count as queued until [`Queue::done`].
    fn take(&self, n: usize) -> Vec<Queued> {
        let mut q = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        let n = n.min(q.len());
        let batch: Vec<Queued> = q.drain(..n).collect();
        self.in_flight
            .fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
        let len = q.len();
        drop(q);
        self.set_length(len);
        batch
    }

    /// A taken batch was delivered or given up.
    fn done(&self, n: usize) {
        self.in_flight
            .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        self.set_length(self.len());
    }
}

/// Builds a request from queued samples: one `TimeSeries` per label set, its
/// samples in the order they were stored (so in time order).
#[must_use]
pub fn request(batch: &[Queued]) -> WriteRequest {
    let mut index: HashMap<*const (String, String), usize> = HashMap::new();
    let mut out: Vec<TimeSeries> = Vec::new();
    for (labels, t, v) in batch {
        let key = labels.as_ptr();
        let i = *index.entry(key).or_insert_with(|| {
            out.push(TimeSeries {
                labels: labels
                    .iter()
                    .map(|(name, value)| Label {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                samples: Vec::new(),
            });
            out.len() - 1
        });
        out[i].samples.push(Sample {
            value: *v,
            timestamp: *t,
        });
    }
    WriteRequest { timeseries: out }
}

/// A started sender: feed it through [`Queue::push`], run [`Sender::run`].
pub struct Sender {
    queue: Arc<Queue>,
    config: QueueConfig,
    http: HttpSender,
}

impl Sender {
    pub fn new(target: &Target) -> Result<(Arc<Queue>, Self), RemoteWriteError> {
        let http = HttpSender::new(&target.url)?;
        let queue = Arc::new(Queue {
            url: target.url.clone(),
            capacity: target.queue.capacity,
            max_per_send: target.queue.max_samples_per_send,
            items: Mutex::new(VecDeque::new()),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            notify: Notify::new(),
            length: metrics::gauge!("nodewatch_aggregator_remote_write_queue_length", "url" => target.url.clone()),
        });
        Ok((
            Arc::clone(&queue),
            Self {
                queue,
                config: target.queue.clone(),
                http,
            },
        ))
    }

    /// Sends until `stop` resolves, then makes one last attempt at what is queued.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let url = self.queue.url.clone();
        let queue_len =
            metrics::gauge!("nodewatch_aggregator_remote_write_queue_length", "url" => url.clone());
        tokio::pin!(stop);
        loop {
            queue_len.set(self.queue.len() as f64);
            let full = self.queue.len() >= self.config.max_samples_per_send;
            if !full {
                tokio::select! {
                    () = self.queue.notify.notified() => {}
                    () = tokio::time::sleep(self.config.batch_send_deadline) => {}
                    () = &mut stop => {
                        self.flush_once().await;
                        return;
                    }
                }
            }
            let batch = self.queue.take(self.config.max_samples_per_send);
            if batch.is_empty() {
                continue;
            }
            tokio::select! {
                () = self.send_with_retries(&batch) => self.queue.done(batch.len()),
                () = &mut stop => return,
            }
        }
    }

    async fn flush_once(&mut self) {
        loop {
            let batch = self.queue.take(self.config.max_samples_per_send);
            if batch.is_empty() {
                return;
            }
            let delivered = self.send(&batch).await.is_ok();
            self.queue.done(batch.len());
            if !delivered {
                return;
            }
        }
    }

    /// Sends one batch; retries recoverable failures until it is delivered.
    async fn send_with_retries(&mut self, batch: &[Queued]) {
        let mut backoff = self.config.min_backoff;
        while self.send(batch).await.is_err() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// `Err` means: retry.
    async fn send(&mut self, batch: &[Queued]) -> Result<(), ()> {
        let url = self.queue.url.clone();
        let n = batch.len() as u64;
        let body = match encode(&request(batch)) {
            Ok(b) => b,
            Err(error) => {
                warn!(%error, url, "Remote-write request could not be encoded; dropping it.");
                metrics::counter!("nodewatch_aggregator_remote_write_failed_samples_total", "url" => url).increment(n);
                return Ok(());
            }
        };
        match self.http.post(body).await {
            Ok(s) if s.is_success() => {
                metrics::counter!("nodewatch_aggregator_remote_write_samples_total", "url" => url)
                    .increment(n);
                Ok(())
            }
            Ok(s) if s.is_server_error() || s == http::StatusCode::TOO_MANY_REQUESTS => {
                debug!(status = %s, url, "Remote-write receiver busy or failing; retrying.");
                metrics::counter!("nodewatch_aggregator_remote_write_retried_samples_total", "url" => url)
                    .increment(n);
                Err(())
            }
            Ok(s) => {
                // A 4xx will not change on retry (bad labels, out of order, …).
                warn!(status = %s, url, samples = n, "Remote-write receiver refused samples.");
                metrics::counter!("nodewatch_aggregator_remote_write_failed_samples_total", "url" => url)
                    .increment(n);
                Ok(())
            }
            Err(error) => {
                debug!(%error, url, "Remote-write request failed; retrying.");
                metrics::counter!("nodewatch_aggregator_remote_write_retried_samples_total", "url" => url)
                    .increment(n);
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_groups_by_series_and_round_trips() {
        let a: Labels = vec![("__name__".to_string(), "m".to_string())].into();
        let b: Labels = vec![
            ("__name__".to_string(), "m".to_string()),
            ("node".to_string(), "x".to_string()),
        ]
        .into();
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let batch = vec![
            (Arc::clone(&a), 1, 1.0),
            (Arc::clone(&b), 1, 2.0),
            (Arc::clone(&a), 2, stale),
        ];
        let req = request(&batch);
        assert_eq!(req.timeseries.len(), 2);
        assert_eq!(req.timeseries[0].samples.len(), 2);
        assert_eq!(
            req.timeseries[0].samples[1].value.to_bits(),
            stale.to_bits()
        );
        let body = encode(&req).unwrap();
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let back: WriteRequest = prost::Message::decode(raw.as_slice()).unwrap();
        assert_eq!(back.timeseries.len(), 2);
        assert_eq!(back.timeseries[1].labels[1].value, "x");
    }

    #[test]
    fn full_queue_drops() {
        let (q, _s) = Sender::new(&Target {
            url: "http://127.0.0.1:1/api/v1/write".into(),
            queue: QueueConfig {
                capacity: 2,
                ..QueueConfig::default()
            },
        })
        .unwrap();
        let l: Labels = vec![("__name__".to_string(), "m".to_string())].into();
        q.push((0..5).map(|t| (Arc::clone(&l), t, 0.0)));
        assert_eq!(q.len(), 2);
        assert!(HttpSender::new("https://x/").is_err());
    }
}
