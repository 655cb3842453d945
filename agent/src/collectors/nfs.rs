//! NFS client and server RPC statistics: `/proc/net/rpc/nfs` (`node_nfs_*`,
//! collector `nfs`) and `/proc/net/rpc/nfsd` (`node_nfsd_*`, collector
//! `nfsd`), parsed as the procfs library parses them for `node_exporter`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::collector::{CollectError, Collector, CollectorSpec, Sink, Unavailable};
use crate::collectors::read_optional;

pub const NFS: CollectorSpec =
    CollectorSpec::new("nfs", |p| -> Result<Box<dyn Collector>, Unavailable> {
        Ok(Box::new(NfsCollector {
            path: p.proc("net/rpc/nfs"),
            server: false,
        }))
    });

pub const NFSD: CollectorSpec =
    CollectorSpec::new("nfsd", |p| -> Result<Box<dyn Collector>, Unavailable> {
        Ok(Box::new(NfsCollector {
            path: p.proc("net/rpc/nfsd"),
            server: true,
        }))
    });

/// NFSv2 procedures, in `proc2` order.
const V2: &[&str] = &[
    "Null", "GetAttr", "SetAttr", "Root", "Lookup", "ReadLink", "Read", "WrCache", "Write",
    "Create", "Remove", "Rename", "Link", "SymLink", "MkDir", "RmDir", "ReadDir", "FsStat",
];
/// NFSv3 procedures, in `proc3` order.
const V3: &[&str] = &[
    "Null",
    "GetAttr",
    "SetAttr",
    "Lookup",
    "Access",
    "ReadLink",
    "Read",
    "Write",
    "Create",
    "MkDir",
    "SymLink",
    "MkNod",
    "Remove",
    "RmDir",
    "Rename",
    "Link",
    "ReadDir",
    "ReadDirPlus",
    "FsStat",
    "FsInfo",
    "PathConf",
    "Commit",
];
/// NFSv4 client operations, in the client's `proc4` order (older kernels write fewer: the rest are 0).
const V4_CLIENT: &[&str] = &[
    "Null",
    "Read",
    "Write",
    "Commit",
    "Open",
    "OpenConfirm",
    "OpenNoattr",
    "OpenDowngrade",
    "Close",
    "Setattr",
    "FsInfo",
    "Renew",
    "SetClientID",
    "SetClientIDConfirm",
    "Lock",
    "Lockt",
    "Locku",
    "Access",
    "Getattr",
    "Lookup",
    "LookupRoot",
    "Remove",
    "Rename",
    "Link",
    "Symlink",
    "Create",
    "Pathconf",
    "StatFs",
    "ReadLink",
    "ReadDir",
    "ServerCaps",
    "DelegReturn",
    "GetACL",
    "SetACL",
    "FsLocations",
    "ReleaseLockowner",
    "Secinfo",
    "FsidPresent",
    "ExchangeID",
    "CreateSession",
    "DestroySession",
    "Sequence",
    "GetLeaseTime",
    "ReclaimComplete",
    "GetDeviceInfo",
    "LayoutGet",
    "LayoutCommit",
    "LayoutReturn",
    "SecinfoNoName",
    "TestStateID",
    "FreeStateID",
    "GetDeviceList",
    "BindConnToSession",
    "DestroyClientID",
    "Seek",
    "Allocate",
    "DeAllocate",
    "LayoutStats",
    "Clone",
];
/// NFSv4 server operations exported, with their index in `proc4ops`.
const V4_SERVER: &[(&str, usize)] = &[
    ("Access", 3),
    ("Close", 4),
    ("Commit", 5),
    ("Create", 6),
    ("DelegPurge", 7),
    ("DelegReturn", 8),
    ("GetAttr", 9),
    ("GetFH", 10),
    ("Link", 11),
    ("Lock", 12),
    ("Lockt", 13),
    ("Locku", 14),
    ("Lookup", 15),
    ("LookupRoot", 16),
    ("Nverify", 17),
    ("Open", 18),
    ("OpenAttr", 19),
    ("OpenConfirm", 20),
    ("OpenDgrd", 21),
    ("PutFH", 22),
    ("Read", 25),
    ("ReadDir", 26),
    ("ReadLink", 27),
    ("Remove", 28),
    ("Rename", 29),
    ("Renew", 30),
    ("RestoreFH", 31),
    ("SaveFH", 32),
    ("SecInfo", 33),
    ("SetAttr", 34),
    ("SetClientID", 35),
    ("SetClientIDConfirm", 36),
    ("Verify", 37),
    ("Write", 38),
    ("RelLockOwner", 39),
];

/// Each line's name and numbers (`th` keeps its first two, the rest are
/// floating-point histogram buckets of old kernels).
pub fn parse(path: &Path, text: &str) -> Result<HashMap<String, Vec<u64>>, CollectError> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let mut f = line.split_whitespace();
        let Some(key) = f.next() else {
            continue;
        };
        let take = if key == "th" { 2 } else { usize::MAX };
        let mut v = Vec::new();
        for s in f.take(take) {
            v.push(s.parse::<u64>().map_err(|_| {
                CollectError::parse(path, i + 1, format!("{key}: not a count: {s:?}"))
            })?);
        }
        // procN lines start with their own length.
        if key.starts_with("proc")
            && v.first()
                .is_none_or(|n| usize::try_from(*n).ok() != Some(v.len() - 1))
        {
            return Err(CollectError::parse(
                path,
                i + 1,
                format!("{key}: count does not match the values"),
            ));
        }
        out.insert(key.to_string(), v);
    }
    Ok(out)
}

/// A line's values, at least `n` of them, else an error naming the line.
fn line<'a>(
    path: &Path,
    m: &'a HashMap<String, Vec<u64>>,
    key: &str,
    n: usize,
) -> Result<&'a [u64], CollectError> {
    match m.get(key) {
        Some(v) if v.len() >= n => Ok(v),
        Some(v) => Err(CollectError::parse(
            path,
            0,
            format!("{key}: {} values, expected {n}", v.len()),
        )),
        None => Err(CollectError::parse(path, 0, format!("no {key} line"))),
    }
}

pub struct NfsCollector {
    path: PathBuf,
    server: bool,
}

impl NfsCollector {
    /// One series per procedure; the server's lists leave out `Null`, as `node_exporter`'s do.
    fn requests(sink: &mut Sink, name: &str, help: &str, proto: &str, names: &[&str], v: &[u64]) {
        let server = name.starts_with("node_nfsd_");
        for (i, m) in names.iter().enumerate() {
            if server && *m == "Null" {
                continue;
            }
            let n = v.get(i + 1).copied().unwrap_or(0);
            sink.counter(name, help, &[("proto", proto), ("method", m)], n as f64);
        }
    }

    /// The `proc2` and `proc3` lines' procedures.
    fn requests_v2_v3(
        sink: &mut Sink,
        name: &str,
        help: &str,
        p: &Path,
        m: &HashMap<String, Vec<u64>>,
    ) -> Result<(), CollectError> {
        Self::requests(
            sink,
            name,
            help,
            "2",
            V2,
            line(p, m, "proc2", V2.len() + 1)?,
        );
        Self::requests(
            sink,
            name,
            help,
            "3",
            V3,
            line(p, m, "proc3", V3.len() + 1)?,
        );
        Ok(())
    }

    /// The `net` line: packets by protocol (labelled `label`) and TCP connections.
    fn net(sink: &mut Sink, prefix: &str, label: &str, net: &[u64]) {
        let help = "Total NFSd network packets (sent+received) by protocol type.";
        for (proto, v) in [("udp", net[1]), ("tcp", net[2])] {
            sink.counter(
                &format!("{prefix}_packets_total"),
                help,
                &[(label, proto)],
                v as f64,
            );
        }
        sink.counter(
            &format!("{prefix}_connections_total"),
            "Total number of NFSd TCP connections.",
            &[],
            net[3] as f64,
        );
    }

    fn client(&self, m: &HashMap<String, Vec<u64>>, sink: &mut Sink) -> Result<(), CollectError> {
        let p = &self.path;
        Self::net(sink, "node_nfs", "protocol", line(p, m, "net", 4)?);
        let rpc = line(p, m, "rpc", 3)?;
        sink.counter(
            "node_nfs_rpcs_total",
            "Total number of RPCs performed.",
            &[],
            rpc[0] as f64,
        );
        sink.counter(
            "node_nfs_rpc_retransmissions_total",
            "Number of RPC transmissions performed.",
            &[],
            rpc[1] as f64,
        );
        sink.counter(
            "node_nfs_rpc_authentication_refreshes_total",
            "Number of RPC authentication refreshes performed.",
            &[],
            rpc[2] as f64,
        );
        let help = "Number of NFS procedures invoked.";
        Self::requests_v2_v3(sink, "node_nfs_requests_total", help, p, m)?;
        Self::requests(
            sink,
            "node_nfs_requests_total",
            help,
            "4",
            V4_CLIENT,
            line(p, m, "proc4", 1)?,
        );
        Ok(())
    }

    fn server(&self, m: &HashMap<String, Vec<u64>>, sink: &mut Sink) -> Result<(), CollectError> {
        let p = &self.path;
        let rc = line(p, m, "rc", 3)?;
        sink.counter(
            "node_nfsd_reply_cache_hits_total",
            "Total number of NFSd Reply Cache hits (client lost server response).",
            &[],
            rc[0] as f64,
        );
        sink.counter(
            "node_nfsd_reply_cache_misses_total",
            "Total number of NFSd Reply Cache an operation that requires caching (idempotent).",
            &[],
            rc[1] as f64,
        );
        sink.counter(
            "node_nfsd_reply_cache_nocache_total",
            "Total number of NFSd Reply Cache non-idempotent operations (rename/delete/…).",
            &[],
            rc[2] as f64,
        );
        let fh = line(p, m, "fh", 1)?;
        sink.counter(
            "node_nfsd_file_handles_stale_total",
            "Total number of NFSd stale file handles",
            &[],
            fh[0] as f64,
        );
        let io = line(p, m, "io", 2)?;
        sink.counter(
            "node_nfsd_disk_bytes_read_total",
            "Total NFSd bytes read.",
            &[],
            io[0] as f64,
        );
        sink.counter(
            "node_nfsd_disk_bytes_written_total",
            "Total NFSd bytes written.",
            &[],
            io[1] as f64,
        );
        let th = line(p, m, "th", 1)?;
        sink.gauge(
            "node_nfsd_server_threads",
            "Total number of NFSd kernel threads that are running.",
            &[],
            th[0] as f64,
        );
        let ra = line(p, m, "ra", 12)?;
        sink.gauge(
            "node_nfsd_read_ahead_cache_size_blocks",
            "How large the read ahead cache is in blocks.",
            &[],
            ra[0] as f64,
        );
        sink.counter(
            "node_nfsd_read_ahead_cache_not_found_total",
            "Total number of NFSd read ahead cache not found.",
            &[],
            ra[11] as f64,
        );
        Self::net(sink, "node_nfsd", "proto", line(p, m, "net", 4)?);
        let rpc = line(p, m, "rpc", 5)?;
        sink.counter(
            "node_nfsd_server_rpcs_total",
            "Total number of NFSd RPCs.",
            &[],
            rpc[0] as f64,
        );
        for (error, v) in [("fmt", rpc[2]), ("auth", rpc[3]), ("cInt", rpc[4])] {
            sink.counter(
                "node_nfsd_rpc_errors_total",
                "Total number of NFSd RPC errors by error type.",
                &[("error", error)],
                v as f64,
            );
        }
        let help = "Total number NFSd Requests by method and protocol.";
        Self::requests_v2_v3(sink, "node_nfsd_requests_total", help, p, m)?;
        let ops = line(p, m, "proc4ops", 40)?;
        for (name, at) in V4_SERVER {
            sink.counter(
                "node_nfsd_requests_total",
                help,
                &[("proto", "4"), ("method", name)],
                ops.get(at + 1).copied().unwrap_or(0) as f64,
            );
        }
        if let Some(n) = m.get("wdeleg_getattr").and_then(|v| v.first()) {
            sink.counter(
                "node_nfsd_requests_total",
                help,
                &[("proto", "4"), ("method", "WdelegGetattr")],
                *n as f64,
            );
        }
        Ok(())
    }
}

impl Collector for NfsCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        // No NFS module loaded: no file.
        let Some(text) = read_optional(&self.path)? else {
            return Ok(());
        };
        let m = parse(&self.path, &text)?;
        if self.server {
            self.server(&m, sink)
        } else {
            self.client(&m, sink)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const NFSD_FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/linux/proc/net/rpc/nfsd"
    ));

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("nfsd");
        let m = parse(p, NFSD_FIXTURE).unwrap();
        assert_eq!(m["th"], [8, 0]);
        assert!(parse(p, "proc2 3 1 2\n").is_err(), "count says 3, 2 follow");
        assert!(parse(p, "net 1 x\n").is_err());
        testutil::assert_no_panic(NFSD_FIXTURE, 45, |t| {
            let m = parse(p, t)?;
            let c = NfsCollector {
                path: p.into(),
                server: true,
            };
            c.server(&m, &mut Sink::new())
        });
    }
}
