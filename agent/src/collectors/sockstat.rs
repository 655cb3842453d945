//! `/proc/net/sockstat` and `/proc/net/sockstat6`: socket counts per protocol.
//!
//! As `node_exporter`'s `sockstat` collector: `node_sockstat_sockets_used`,
//! `node_sockstat_<PROTO>_<field>` for `inuse`, `orphan`, `tw`, `alloc`,
//! `mem` (pages) and `memory`, plus `<PROTO>_mem_bytes` (pages × page size).
//! A file missing because IPv4 or IPv6 is disabled is no data.

use std::path::{Path, PathBuf};

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::collectors::{parse_field, read_optional};

pub const SPEC: CollectorSpec = CollectorSpec::new("sockstat", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(SockstatCollector {
        v4: paths.proc("net/sockstat"),
        v6: paths.proc("net/sockstat6"),
        page_size: procfs::page_size(),
    }))
}

/// The per-protocol fields exported, in `node_exporter`'s order; others are ignored.
pub const FIELDS: [&str; 6] = ["inuse", "orphan", "tw", "alloc", "mem", "memory"];

/// One protocol line, e.g. `TCP: inuse 4 orphan 0 tw 4 alloc 17 mem 1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    /// `(field, value)` for the fields in [`FIELDS`] that the line has.
    pub fields: Vec<(&'static str, i64)>,
}

/// A parsed sockstat file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sockstat {
    /// `sockets: used N` (IPv4 file only).
    pub used: Option<i64>,
    pub protocols: Vec<Protocol>,
}

/// Parses `NAME: key value key value …` lines; an odd number of key/value
/// fields or a value that is not an integer is an error, as in procfs.
pub fn parse(path: &Path, text: &str) -> Result<Sockstat, CollectError> {
    let mut out = Sockstat::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        let Some(name) = first.strip_suffix(':') else {
            return Err(CollectError::parse(path, n, "protocol without ':'"));
        };
        let kvs: Vec<&str> = f.collect();
        let chunks = kvs.chunks_exact(2);
        if kvs.is_empty() || !chunks.remainder().is_empty() {
            return Err(CollectError::parse(
                path,
                n,
                format!("{name}: odd number of fields"),
            ));
        }
        let mut pairs = Vec::new();
        for kv in chunks {
            if let [k, v] = kv {
                pairs.push((*k, parse_field::<i64>(path, n, k, v)?));
            }
        }
        if name == "sockets" {
            out.used = pairs.iter().find(|(k, _)| *k == "used").map(|(_, v)| *v);
            continue;
        }
        let fields = FIELDS
            .iter()
            .filter_map(|want| {
                pairs
                    .iter()
                    .find(|(k, _)| k == want)
                    .map(|(_, v)| (*want, *v))
            })
            .collect();
        out.protocols.push(Protocol {
            name: name.to_string(),
            fields,
        });
    }
    Ok(out)
}

pub struct SockstatCollector {
    v4: PathBuf,
    v6: PathBuf,
    page_size: u64,
}

impl Collector for SockstatCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        for (path, ipv6) in [(&self.v4, false), (&self.v6, true)] {
            let Some(text) = read_optional(path)? else {
                continue;
            };
            let s = parse(path, &text)?;
            if let (false, Some(used)) = (ipv6, s.used) {
                sink.gauge(
                    "node_sockstat_sockets_used",
                    "Number of IPv4 sockets in use.",
                    &[],
                    used as f64,
                );
            }
            for p in &s.protocols {
                let mut fields: Vec<(&str, f64)> =
                    p.fields.iter().map(|(k, v)| (*k, *v as f64)).collect();
                if let Some((_, pages)) = p.fields.iter().find(|(k, _)| *k == "mem") {
                    fields.push(("mem_bytes", *pages as f64 * self.page_size as f64));
                }
                for (field, v) in fields {
                    sink.gauge(
                        &format!("node_sockstat_{}_{field}", p.name),
                        &format!("Number of {} sockets in state {field}.", p.name),
                        &[],
                        v,
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const V4: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/net/sockstat"
    ));
    const V6: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/net/sockstat6"
    ));

    #[test]
    fn parses_fixtures() {
        let s = parse(Path::new("sockstat"), V4).unwrap();
        assert_eq!(s.used, Some(229));
        assert_eq!(
            s.protocols[0],
            Protocol {
                name: "TCP".into(),
                fields: vec![
                    ("inuse", 4),
                    ("orphan", 0),
                    ("tw", 4),
                    ("alloc", 17),
                    ("mem", 1)
                ],
            }
        );
        let s6 = parse(Path::new("sockstat6"), V6).unwrap();
        assert_eq!(s6.used, None);
        assert_eq!(s6.protocols.len(), 5);
    }

    #[test]
    fn rejects_garbled_lines() {
        let p = Path::new("x");
        assert!(parse(p, "TCP: inuse\n").is_err());
        assert!(parse(p, "TCP: inuse x\n").is_err());
        assert!(parse(p, "TCP inuse 1\n").is_err());
        assert!(parse(p, "TCP:\n").is_err());
    }

    #[test]
    fn fuzz_no_panic() {
        testutil::assert_no_panic(V4, 19, |t| parse(Path::new("sockstat"), t));
        testutil::assert_no_panic(V6, 20, |t| parse(Path::new("sockstat6"), t));
    }
}
