//! IPVS (kube-proxy's `ipvs` mode): `/proc/net/ip_vs_stats` for the totals
//! (`node_ipvs_{connections,incoming_packets,outgoing_packets,incoming_bytes,outgoing_bytes}_total`)
//! and `/proc/net/ip_vs` per backend (`node_ipvs_backend_{connections_active,connections_inactive,weight}`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::collectors::read_optional;

pub const SPEC: CollectorSpec = CollectorSpec::new("ipvs", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(IpvsCollector {
        stats: paths.proc("net/ip_vs_stats"),
        services: paths.proc("net/ip_vs"),
    }))
}

/// The first five hex numbers of `ip_vs_stats`' third line: connections,
/// incoming and outgoing packets, incoming and outgoing bytes.
pub fn parse_stats(path: &Path, text: &str) -> Result<[u64; 5], CollectError> {
    let line = text
        .lines()
        .nth(2)
        .ok_or_else(|| CollectError::parse(path, 3, "missing totals line"))?;
    let mut out = [0u64; 5];
    let mut f = line.split_whitespace();
    for slot in &mut out {
        let v = f
            .next()
            .ok_or_else(|| CollectError::parse(path, 3, "expected 5 totals"))?;
        *slot = u64::from_str_radix(v, 16)
            .map_err(|_| CollectError::parse(path, 3, format!("not hex: {v:?}")))?;
    }
    Ok(out)
}

/// One backend: (proto, local address, local port, firewall mark, remote address, remote port).
pub type Backend = (String, String, String, String, String, String);

/// `C0A80016:0CEA` or `[20010db8…]:0050` → (address, port).
fn addr_port(s: &str) -> Option<(String, String)> {
    let (a, p) = s.rsplit_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?.to_string();
    let addr = if let Some(v6) = a.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        let hex: String = v6.chars().filter(|c| *c != ':').collect();
        Ipv6Addr::from(u128::from_str_radix(&hex, 16).ok()?).to_string()
    } else {
        if a.len() != 8 {
            return None;
        }
        Ipv4Addr::from(u32::from_str_radix(a, 16).ok()?).to_string()
    };
    Some((addr, port))
}

/// Backends of `/proc/net/ip_vs` with (active, inactive, weight), summed
/// over duplicates, as `node_exporter` does.
pub fn parse_services(
    path: &Path,
    text: &str,
) -> Result<BTreeMap<Backend, [u64; 3]>, CollectError> {
    let mut out: BTreeMap<Backend, [u64; 3]> = BTreeMap::new();
    let mut service: Option<(String, String, String, String)> = None;
    for (i, line) in text.lines().enumerate().skip(3) {
        let bad = |m: &str| CollectError::parse(path, i + 1, m.to_string());
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [] => {}
            ["->", remote, _forward, weight, active, inactive, ..] => {
                let Some((proto, laddr, lport, mark)) = &service else {
                    return Err(bad("backend before any service"));
                };
                let (raddr, rport) = addr_port(remote).ok_or_else(|| bad("bad remote address"))?;
                let n = |s: &str| s.parse::<u64>().map_err(|_| bad("bad number"));
                let e = out
                    .entry((
                        proto.clone(),
                        laddr.clone(),
                        lport.clone(),
                        mark.clone(),
                        raddr,
                        rport,
                    ))
                    .or_default();
                e[0] += n(active)?;
                e[1] += n(inactive)?;
                e[2] += n(weight)?;
            }
            ["FWM", mark, ..] => {
                service = Some(("FWM".into(), String::new(), "0".into(), (*mark).to_string()));
            }
            [proto, local, ..] if *proto != "->" => {
                let (a, p) = addr_port(local).ok_or_else(|| bad("bad local address"))?;
                service = Some(((*proto).to_string(), a, p, String::new()));
            }
            _ => return Err(bad("unexpected line")),
        }
    }
    Ok(out)
}

pub struct IpvsCollector {
    stats: PathBuf,
    services: PathBuf,
}

impl Collector for IpvsCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        // No ip_vs module loaded: no file.
        let Some(text) = read_optional(&self.stats)? else {
            return Ok(());
        };
        let t = parse_stats(&self.stats, &text)?;
        for ((name, help), v) in [
            (
                "node_ipvs_connections_total",
                "The total number of connections made.",
            ),
            (
                "node_ipvs_incoming_packets_total",
                "The total number of incoming packets.",
            ),
            (
                "node_ipvs_outgoing_packets_total",
                "The total number of outgoing packets.",
            ),
            (
                "node_ipvs_incoming_bytes_total",
                "The total amount of incoming data.",
            ),
            (
                "node_ipvs_outgoing_bytes_total",
                "The total amount of outgoing data.",
            ),
        ]
        .into_iter()
        .zip(t)
        {
            sink.counter(name, help, &[], v as f64);
        }
        let Some(text) = read_optional(&self.services)? else {
            return Ok(());
        };
        for ((proto, la, lp, mark, ra, rp), [active, inactive, weight]) in
            parse_services(&self.services, &text)?
        {
            let l = [
                ("local_address", la.as_str()),
                ("local_port", lp.as_str()),
                ("local_mark", mark.as_str()),
                ("proto", proto.as_str()),
                ("remote_address", ra.as_str()),
                ("remote_port", rp.as_str()),
            ];
            sink.gauge(
                "node_ipvs_backend_connections_active",
                "The current active connections by local and remote address.",
                &l,
                active as f64,
            );
            sink.gauge(
                "node_ipvs_backend_connections_inactive",
                "The current inactive connections by local and remote address.",
                &l,
                inactive as f64,
            );
            sink.gauge(
                "node_ipvs_backend_weight",
                "The current backend weight by local and remote address.",
                &l,
                weight as f64,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const SERVICES: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/net/ip_vs"
    ));

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("ip_vs");
        let b = parse_services(p, SERVICES).unwrap();
        assert_eq!(b.len(), 10);
        assert_eq!(
            addr_port("[20010db8000000000000000000000001]:0050"),
            Some(("2001:db8::1".into(), "80".into()))
        );
        assert!(parse_services(p, "h\nh\nh\n  -> C0A85216:0CEA Tunnel 100 248 2\n").is_err());
        assert!(parse_stats(p, "a\nb\n 1 2 zz 4 5\n").is_err());
        testutil::assert_no_panic(SERVICES, 44, |t| parse_services(p, t));
    }
}
