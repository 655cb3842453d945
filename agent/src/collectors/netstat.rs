//! `/proc/net/{netstat,snmp,snmp6}`: protocol counters as `node_netstat_<Proto>_<Field>`.
//!
//! As `node_exporter`'s `netstat` collector: `netstat` and `snmp` hold pairs
//! of lines (`Tcp: ActiveOpens …` then `Tcp: 4 …`), `snmp6` holds one
//! `Ip6InReceives 123` per line; every field is parsed, then the default field
//! filter keeps the ones dashboards and alerts use (listen drops,
//! retransmits, errors, octets). Hand-parsed: `procfs::Snmp` covers only
//! `snmp` and only the fields it names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;

use crate::collector::{
    read_file, CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable,
};
use crate::collectors::{parse_field, read_optional};

pub const SPEC: CollectorSpec = CollectorSpec::new("netstat", build);

/// `node_exporter`'s default `--collector.netstat.fields` (v1.9+: with
/// `TCPOFOQueue` and `TCPRcvQDrop`).
pub const DEFAULT_FIELDS: &str = concat!(
    r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)",
    r"|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts|TCPOFOQueue|TCPRcvQDrop)",
    r"|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)",
    r"|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$"
);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    let fields = Regex::new(DEFAULT_FIELDS)
        .map_err(|e| Unavailable(format!("netstat field pattern: {e}")))?;
    Ok(Box::new(NetstatCollector {
        netstat: paths.proc("net/netstat"),
        snmp: paths.proc("net/snmp"),
        snmp6: paths.proc("net/snmp6"),
        fields,
    }))
}

/// Protocol → field → value.
pub type Stats = BTreeMap<String, BTreeMap<String, f64>>;

/// Parses the header/value line pairs of `/proc/net/netstat` and `/proc/net/snmp`.
/// A protocol seen twice keeps its last pair, as `node_exporter`'s map does.
pub fn parse_pairs(path: &Path, text: &str) -> Result<Stats, CollectError> {
    let mut out = Stats::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, header)) = lines.next() {
        let n = i + 1;
        if header.trim().is_empty() {
            continue;
        }
        let Some((_, values)) = lines.next() else {
            return Err(CollectError::parse(path, n, "header line without values"));
        };
        let names: Vec<&str> = header.split_whitespace().collect();
        let vals: Vec<&str> = values.split_whitespace().collect();
        let (Some((proto, names)), Some((vproto, vals))) =
            (names.split_first(), vals.split_first())
        else {
            return Err(CollectError::parse(path, n + 1, "empty values line"));
        };
        let Some(proto) = proto.strip_suffix(':') else {
            return Err(CollectError::parse(path, n, "protocol without ':'"));
        };
        if *vproto != format!("{proto}:") {
            return Err(CollectError::parse(
                path,
                n + 1,
                format!("values for {vproto}, header for {proto}"),
            ));
        }
        if names.len() != vals.len() {
            return Err(CollectError::parse(
                path,
                n + 1,
                format!("{proto}: field count mismatch"),
            ));
        }
        let mut fields = BTreeMap::new();
        for (name, v) in names.iter().zip(vals) {
            fields.insert((*name).to_string(), parse_field(path, n + 1, name, v)?);
        }
        out.insert(proto.to_string(), fields);
    }
    Ok(out)
}

/// Parses `/proc/net/snmp6`: `<Proto>6<Field> <value>`; the protocol is
/// everything up to the first `6`. Lines without one are skipped, as upstream.
pub fn parse_snmp6(path: &Path, text: &str) -> Result<Stats, CollectError> {
    let mut out = Stats::new();
    for (i, line) in text.lines().enumerate() {
        let mut f = line.split_whitespace();
        let (Some(key), Some(value)) = (f.next(), f.next()) else {
            continue;
        };
        let Some(six) = key.find('6') else { continue };
        let (proto, name) = key.split_at(six + 1);
        out.entry(proto.to_string())
            .or_default()
            .insert(name.to_string(), parse_field(path, i + 1, key, value)?);
    }
    Ok(out)
}

pub struct NetstatCollector {
    netstat: PathBuf,
    snmp: PathBuf,
    snmp6: PathBuf,
    fields: Regex,
}

impl Collector for NetstatCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let mut stats = parse_pairs(&self.netstat, &read_file(&self.netstat)?)?;
        stats.extend(parse_pairs(&self.snmp, &read_file(&self.snmp)?)?);
        // No snmp6 when IPv6 is disabled: that is no data, not an error.
        if let Some(text) = read_optional(&self.snmp6)? {
            stats.extend(parse_snmp6(&self.snmp6, &text)?);
        }
        for (proto, fields) in &stats {
            for (name, value) in fields {
                let key = format!("{proto}_{name}");
                if !self.fields.is_match(&key) {
                    continue;
                }
                sink.untyped(
                    &format!("node_netstat_{key}"),
                    &format!("Statistic {proto}{name}."),
                    &[],
                    *value,
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const NETSTAT: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/net/netstat"
    ));
    const SNMP: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/net/snmp"
    ));
    const SNMP6: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/net/snmp6"
    ));

    #[test]
    fn parses_fixtures() {
        let n = parse_pairs(Path::new("netstat"), NETSTAT).unwrap();
        assert!(n["TcpExt"].contains_key("ListenDrops"));
        assert!(n.contains_key("IpExt"));
        let s = parse_pairs(Path::new("snmp"), SNMP).unwrap();
        assert_eq!(s["Tcp"]["MaxConn"], -1.0);
        assert!(s.contains_key("UdpLite"));
        let s6 = parse_snmp6(Path::new("snmp6"), SNMP6).unwrap();
        assert!(s6["Ip6"].contains_key("InOctets"));
        assert!(s6["Udp6"].contains_key("InDatagrams"));
        assert!(s6["UdpLite6"].contains_key("InErrors"));
    }

    #[test]
    fn rejects_mismatched_pairs() {
        let p = Path::new("x");
        assert!(parse_pairs(p, "Tcp: A B\nTcp: 1\n").is_err());
        assert!(parse_pairs(p, "Tcp: A B\nUdp: 1 2\n").is_err());
        assert!(parse_pairs(p, "Tcp: A B\n").is_err());
        assert!(parse_pairs(p, "Tcp: A\nTcp: x\n").is_err());
        assert!(parse_pairs(p, "Tcp A\nTcp 1\n").is_err());
        assert!(parse_snmp6(p, "Ip6InReceives x\n").is_err());
        assert!(parse_snmp6(p, "NoSixHere 1\nshort\n").unwrap().is_empty());
    }

    #[test]
    fn default_filter_is_node_exporters() {
        let re = Regex::new(DEFAULT_FIELDS).unwrap();
        for k in [
            "TcpExt_ListenDrops",
            "Tcp_RetransSegs",
            "Udp6_NoPorts",
            "Ip_Forwarding",
            "UdpLite_InErrors",
            "TcpExt_TCPRcvQDrop",
        ] {
            assert!(re.is_match(k), "{k}");
        }
        for k in [
            "Tcp_MaxConn",
            "TcpExt_TCPPureAcks",
            "Ip_InReceives",
            "Ip6_InReceives",
        ] {
            assert!(!re.is_match(k), "{k}");
        }
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(NETSTAT, 10, |t| parse_pairs(Path::new("netstat"), t));
        testutil::assert_no_panic(SNMP, 11, |t| parse_pairs(Path::new("snmp"), t));
        testutil::assert_no_panic(SNMP6, 12, |t| parse_snmp6(Path::new("snmp6"), t));
    }
}
