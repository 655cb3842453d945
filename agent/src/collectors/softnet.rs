//! `/proc/net/softnet_stat`: `node_softnet_*{cpu}`, per-CPU packet processing
//! of the network stack (drops, quota squeezes, RPS, flow limit, backlog).

use std::path::Path;

use crate::collector::{path_spec, CollectError, CollectorSpec, FileCollector, Sink};

pub const SPEC: CollectorSpec = path_spec!(
    "softnet",
    FileCollector::required,
    proc,
    "net/softnet_stat",
    write
);

/// One CPU's line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// The CPU number: the 13th column on kernels ≥ 5.10, else the line's position.
    pub index: u64,
    pub processed: u64,
    pub dropped: u64,
    pub time_squeezed: u64,
    pub cpu_collision: u64,
    pub received_rps: u64,
    pub flow_limit_count: u64,
    pub backlog_len: u64,
}

/// Hex columns, as the procfs library reads them: at least 9 per line
/// (kernels before 2.6.x wrote fewer and are refused).
pub fn parse(path: &Path, text: &str) -> Result<Vec<CpuStat>, CollectError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = Vec::with_capacity(13);
        for c in line.split_whitespace() {
            cols.push(u64::from_str_radix(c, 16).map_err(|_| {
                CollectError::parse(path, i + 1, format!("not a hex number: {c:?}"))
            })?);
        }
        if cols.len() < 9 {
            return Err(CollectError::parse(
                path,
                i + 1,
                format!("{} columns, expected at least 9", cols.len()),
            ));
        }
        let at = |n: usize| cols.get(n).copied().unwrap_or(0);
        out.push(CpuStat {
            index: if cols.len() >= 13 {
                cols[12]
            } else {
                out.len() as u64
            },
            processed: cols[0],
            dropped: cols[1],
            time_squeezed: cols[2],
            cpu_collision: cols[8],
            received_rps: at(9),
            flow_limit_count: at(10),
            backlog_len: at(11),
        });
    }
    Ok(out)
}

/// Writes what one read of the file holds.
fn write(path: &Path, text: &str, sink: &mut Sink) -> Result<(), CollectError> {
    let stats = parse(path, text)?;
    for s in &stats {
        let cpu = s.index.to_string();
        let l = [("cpu", cpu.as_str())];
        sink.counter(
            "node_softnet_processed_total",
            "Number of processed packets",
            &l,
            s.processed as f64,
        );
        sink.counter(
            "node_softnet_dropped_total",
            "Number of dropped packets",
            &l,
            s.dropped as f64,
        );
        sink.counter(
            "node_softnet_times_squeezed_total",
            "Number of times processing packets ran out of quota",
            &l,
            s.time_squeezed as f64,
        );
        sink.counter(
            "node_softnet_cpu_collision_total",
            "Number of collision occur while obtaining device lock while transmitting",
            &l,
            s.cpu_collision as f64,
        );
        sink.counter(
            "node_softnet_received_rps_total",
            "Number of times cpu woken up received_rps",
            &l,
            s.received_rps as f64,
        );
        sink.counter(
            "node_softnet_flow_limit_count_total",
            "Number of times flow limit has been reached",
            &l,
            s.flow_limit_count as f64,
        );
        sink.gauge(
            "node_softnet_backlog_len",
            "Softnet backlog status",
            &l,
            s.backlog_len as f64,
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const MODERN: &str = "0000a1b2 00000003 00000001 00000000 00000000 00000000 00000000 00000000 00000002 00000005 00000000 00000007 00000004\n";

    #[test]
    fn parses_old_and_new_layouts() {
        let p = Path::new("softnet_stat");
        let s = parse(p, MODERN).unwrap();
        assert_eq!(
            s[0],
            CpuStat {
                index: 4,
                processed: 0xa1b2,
                dropped: 3,
                time_squeezed: 1,
                cpu_collision: 2,
                received_rps: 5,
                flow_limit_count: 0,
                backlog_len: 7
            }
        );
        let old = "00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n".repeat(2);
        assert_eq!(parse(p, &old).unwrap()[1].index, 1);
        assert!(parse(p, "0001 0002\n").is_err());
        assert!(parse(p, "zz 0 0 0 0 0 0 0 0\n").is_err());
        testutil::assert_no_panic(MODERN, 32, |t| parse(p, t));
    }
}
