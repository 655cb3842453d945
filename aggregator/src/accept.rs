//! The gRPC port's accept loop: TLS handshakes with a deadline and with
//! limits per source address, so a flood of half-open connections from some
//! addresses cannot keep known agents and operators out.
//!
//! Connections are accepted as fast as they come (a full kernel backlog
//! would stall everyone alike) and judged by their source address:
//! - each address may have [`MAX_PENDING_PER_SOURCE`] handshakes in flight;
//!   one that completed a handshake with a nodewatch identity (a node or an
//!   operator certificate) within [`KNOWN_FOR`] may have
//!   [`MAX_PENDING_PER_KNOWN_SOURCE`];
//! - all unknown addresses together may have [`MAX_PENDING`]; known ones
//!   are not held to that total, so they get through a flood spread over
//!   many addresses too;
//! - a handshake must finish within [`HANDSHAKE_DEADLINE`].
//!
//! A connection over a limit is closed at once and counted as
//! `nodewatch_aggregator_auth_failures_total{reason="handshake_limit"}`;
//! warnings about refused handshakes are rate-limited ([`crate::throttle`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodewatch_proto::tls::{
    count_auth_failure, handshake_failure_reason, AuthFailure, PeerInfo, Reloadable, TlsConn,
};
use nodewatch_proto::Identity;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// How long a TLS handshake may take. An agent on the LAN finishes in a few
/// milliseconds; 3 s leaves room for a slow link and a busy aggregator while
/// a half-open connection holds its slot only briefly (the probe in issue 16
/// held slots for the old 10 s).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(3);
/// Handshakes in flight per source address: a node makes one connection per
/// aggregator, a restart or a CLI call a few more.
pub const MAX_PENDING_PER_SOURCE: usize = 8;
/// Handshakes in flight per address that recently proved a nodewatch
/// identity (several nodes behind one NAT, a CLI user running a script).
pub const MAX_PENDING_PER_KNOWN_SOURCE: usize = 64;
/// Handshakes in flight from all unknown addresses together: a cluster's
/// worth of agents reconnecting at once after an aggregator restart.
pub const MAX_PENDING: usize = 1024;
/// How long an address stays known after its last good handshake.
pub const KNOWN_FOR: Duration = Duration::from_hours(1);
/// Known addresses remembered at most (a homelab has tens of nodes).
const MAX_KNOWN: usize = 4096;
/// Accepted connections queued towards the gRPC server.
const QUEUE: usize = 64;

/// Handshakes in flight per address, and the addresses known to be ours.
#[derive(Default)]
struct Slots {
    pending: HashMap<IpAddr, usize>,
    unknown_total: usize,
    known: HashMap<IpAddr, Instant>,
}

impl Slots {
    fn is_known(&self, ip: IpAddr, now: Instant) -> bool {
        self.known
            .get(&ip)
            .is_some_and(|t| now.duration_since(*t) < KNOWN_FOR)
    }

    /// Takes a slot for `ip`, or says which limit refused it.
    fn take(&mut self, ip: IpAddr, now: Instant) -> Result<bool, &'static str> {
        let known = self.is_known(ip, now);
        let mine = self.pending.get(&ip).copied().unwrap_or(0);
        let limit = if known {
            MAX_PENDING_PER_KNOWN_SOURCE
        } else {
            MAX_PENDING_PER_SOURCE
        };
        if mine >= limit {
            return Err("per_source");
        }
        if !known && self.unknown_total >= MAX_PENDING {
            return Err("total");
        }
        *self.pending.entry(ip).or_default() += 1;
        if !known {
            self.unknown_total += 1;
        }
        Ok(known)
    }

    fn give(&mut self, ip: IpAddr, known: bool) {
        if let Some(n) = self.pending.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&ip);
            }
        }
        if !known {
            self.unknown_total = self.unknown_total.saturating_sub(1);
        }
    }

    fn remember(&mut self, ip: IpAddr, now: Instant) {
        if self.known.len() >= MAX_KNOWN && !self.known.contains_key(&ip) {
            self.known.retain(|_, t| now.duration_since(*t) < KNOWN_FOR);
            if self.known.len() >= MAX_KNOWN {
                return;
            }
        }
        self.known.insert(ip, now);
    }
}

/// Gives the slot back when the handshake ends, however it ends.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
    known: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.slots).give(self.ip, self.known);
    }
}

fn lock(m: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Logs a refused handshake, at most once per reason per interval.
fn refused(peer: SocketAddr, reason: &'static str, error: &dyn std::fmt::Display) {
    if let Some(suppressed) = crate::throttle::warnings().check(reason) {
        warn!(%peer, reason, %error, suppressed, "TLS handshake refused.");
    }
}

/// Accepts TCP connections, completes TLS handshakes under the limits
/// above, and yields the connections that succeeded.
pub fn incoming(
    listener: TcpListener,
    config: Arc<Reloadable<ServerConfig>>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    metrics::counter!("nodewatch_aggregator_auth_failures_total", "reason" => "handshake_limit")
        .increment(0);
    tokio::spawn(async move {
        let slots = Arc::new(Mutex::new(Slots::default()));
        loop {
            let (tcp, remote_addr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(error) => {
                        // EMFILE and friends: back off rather than spin.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let ip = remote_addr.ip();
            let taken = lock(&slots).take(ip, Instant::now());
            let known = match taken {
                Ok(known) => known,
                Err(limit) => {
                    count_auth_failure("handshake_limit");
                    refused(
                        remote_addr,
                        "handshake_limit",
                        &format!("too many handshakes in flight ({limit} limit)"),
                    );
                    // Closed at once: the slot is what a flood is after.
                    drop(tcp);
                    continue;
                }
            };
            let slot = Slot {
                slots: Arc::clone(&slots),
                ip,
                known,
            };
            let acceptor = TlsAcceptor::from(config.get());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let handshake = async {
                    // Peeked, not read: the first byte tells a TLS client
                    // (handshake record, 0x16) from a plaintext one, which
                    // rustls alone reports only as a malformed message.
                    let mut first = [0u8; 1];
                    let first = match tcp.peek(&mut first).await {
                        Ok(1) => Some(first[0]),
                        _ => None,
                    };
                    (first, acceptor.accept(tcp).await)
                };
                let result = tokio::time::timeout(HANDSHAKE_DEADLINE, handshake).await;
                let slots = Arc::clone(&slot.slots);
                drop(slot);
                match result {
                    Ok((_, Ok(io))) => {
                        let identity = io
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .ok_or_else(|| "no client certificate".to_string())
                            .and_then(|der| {
                                Identity::from_cert_der(der).map_err(|e| e.to_string())
                            });
                        if identity.is_ok() {
                            lock(&slots).remember(ip, Instant::now());
                        }
                        debug!(peer = %remote_addr, identity = ?identity, "TLS handshake done");
                        let _ = tx
                            .send(Ok(TlsConn::new(
                                io,
                                PeerInfo {
                                    remote_addr,
                                    identity,
                                },
                            )))
                            .await;
                    }
                    Ok((first, Err(error))) => {
                        let reason = handshake_failure_reason(first, &error);
                        count_auth_failure(reason);
                        refused(remote_addr, reason, &error);
                    }
                    Err(_) => {
                        let reason = AuthFailure::Timeout.as_str();
                        count_auth_failure(reason);
                        refused(remote_addr, reason, &"no handshake within the deadline");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_one_address_leaves_room_for_others() {
        let mut s = Slots::default();
        let now = Instant::now();
        let flood: IpAddr = "127.0.0.2".parse().unwrap();
        let agent: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..MAX_PENDING_PER_SOURCE {
            assert_eq!(s.take(flood, now), Ok(false));
        }
        assert_eq!(s.take(flood, now), Err("per_source"));
        assert_eq!(s.take(agent, now), Ok(false));
        s.give(agent, false);
        s.give(flood, false);
        assert_eq!(s.take(flood, now), Ok(false));
    }

    #[test]
    fn known_addresses_pass_a_full_house() {
        let mut s = Slots::default();
        let now = Instant::now();
        for i in 0..MAX_PENDING {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            assert!(s.take(ip, now).is_ok());
        }
        let agent: IpAddr = "192.168.1.5".parse().unwrap();
        assert_eq!(s.take(agent, now), Err("total"));
        s.remember(agent, now);
        assert_eq!(s.take(agent, now), Ok(true));
        s.give(agent, true);
        assert_eq!(s.unknown_total, MAX_PENDING);
        // Forgotten after a while.
        assert_eq!(s.take(agent, now + KNOWN_FOR), Err("total"));
    }
}
