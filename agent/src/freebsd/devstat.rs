//! Disk I/O from the binary sysctl `kern.devstat.all`, as node_exporter's
//! `collector/devstat_freebsd.go`:
//! `node_devstat_bytes_total{device,type}` (`read`, `write`),
//! `node_devstat_transfers_total{device,type}` and
//! `node_devstat_duration_seconds_total{device,type}` (`other`, `read`,
//! `write`), `node_devstat_busy_time_seconds_total{device}` and
//! `node_devstat_blocks_transferred_total{device}`. The device is
//! `device_name` followed by `unit_number` (`ada0`, `nda0`, `cd0`).
//!
//! node_exporter reads the same counters through libdevstat
//! (`devstat_getdevs` and `devstat_compute_statistics` with `DSM_TOTAL_*`),
//! which itself reads this sysctl: a C `long` generation followed by one
//! `struct devstat` per device (`sys/sys/devicestat.h`, `DEVSTAT_VERSION`
//! 6). The values here are those totals: `other` is the `DEVSTAT_NO_DATA`
//! slot, durations and busy time are `struct bintime` (`sec` + `frac`/2^64)
//! in seconds, and blocks are the bytes read, written and freed divided by
//! the device's block size (512 when it reports none). node_exporter keeps
//! the busy time in a C `long`, so it shows whole seconds; here it keeps its
//! fraction. The `DEVSTAT_FREE` (TRIM/`BIO_DELETE`) bytes and transfers are
//! parsed but, as in node_exporter, not exported as series of their own.
//!
//! [`parse`] is a pure function of the sysctl's bytes with explicit offsets
//! for the LP64 little-endian layout (amd64, arm64), so it is tested on any
//! OS; on FreeBSD the offsets are checked at compile time against the libc
//! crate's `struct devstat`.

use crate::collector::Sink;

/// The `struct devstat` layout this parser knows (`kern.devstat.version`).
pub const DEVSTAT_VERSION: u64 = 6;

/// `sizeof(struct devstat)` on LP64.
pub const DEVSTAT_SIZE: usize = 288;

/// The C `long` generation count before the array.
pub const GENERATION_SIZE: usize = 8;

/// `DEVSTAT_NAME_LEN`.
pub const NAME_LEN: usize = 16;

/// Byte offsets of the fields read, in `struct devstat` on LP64:
/// `sequence0`, `allocated`, `start_count`, `end_count` (4 × 4), `busy_from`
/// (bintime, 16), `dev_links` (one pointer, 8), `device_number` (4), then:
pub mod offset {
    pub const DEVICE_NAME: usize = 44;
    pub const UNIT_NUMBER: usize = 60;
    /// `u_int64_t bytes[4]`, indexed by `devstat_trans_flags`.
    pub const BYTES: usize = 64;
    /// `u_int64_t operations[4]`.
    pub const OPERATIONS: usize = 96;
    /// `struct bintime duration[4]`, 16 bytes each.
    pub const DURATION: usize = 128;
    pub const BUSY_TIME: usize = 192;
    /// After `creation_time` (bintime at 208).
    pub const BLOCK_SIZE: usize = 224;
}

/// `devstat_trans_flags` indices.
pub const NO_DATA: usize = 0;
pub const READ: usize = 1;
pub const WRITE: usize = 2;
pub const FREE: usize = 3;

/// One device's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DevStat {
    /// `device_name` + `unit_number`, e.g. `ada0`.
    pub device: String,
    /// Bytes per `devstat_trans_flags` slot (no data, read, write, free).
    pub bytes: [u64; 4],
    /// Completed operations per slot.
    pub operations: [u64; 4],
    /// Seconds spent per slot.
    pub duration: [f64; 4],
    /// Seconds with at least one transaction outstanding.
    pub busy_time: f64,
    /// Bytes per block; 0 when the device reports none.
    pub block_size: u32,
}

impl DevStat {
    /// `DSM_TOTAL_BLOCKS`: bytes read, written and freed over the block size
    /// (512 when the device has none), in integer division as libdevstat.
    #[must_use]
    pub fn blocks(&self) -> u64 {
        let total = self.bytes[READ]
            .wrapping_add(self.bytes[WRITE])
            .wrapping_add(self.bytes[FREE]);
        let bs = if self.block_size > 0 {
            u64::from(self.block_size)
        } else {
            512
        };
        total / bs
    }
}

/// Why `kern.devstat.all` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevstatError {
    #[error("kern.devstat.version is {0}, this agent reads only version {DEVSTAT_VERSION}")]
    Version(u64),
    #[error(
        "kern.devstat.all is {0} bytes, shorter than its {GENERATION_SIZE}-byte generation count"
    )]
    Short(usize),
    #[error(
        "kern.devstat.all has {0} bytes after the generation count, not a multiple of \
         sizeof(struct devstat) = {DEVSTAT_SIZE}"
    )]
    Size(usize),
}

/// Checks `kern.devstat.version`.
pub fn check_version(version: u64) -> Result<(), DevstatError> {
    if version == DEVSTAT_VERSION {
        Ok(())
    } else {
        Err(DevstatError::Version(version))
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_le_bytes)
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, i32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_le_bytes)
}

/// `struct bintime` in seconds: `time_t sec` plus `frac` / 2^64.
fn bintime_at(b: &[u8], at: usize) -> f64 {
    let sec = u64_at(b, at) as i64;
    let frac = u64_at(b, at + 8);
    sec as f64 + frac as f64 * (1.0 / 18_446_744_073_709_551_616.0)
}

/// One `struct devstat` of exactly [`DEVSTAT_SIZE`] bytes.
fn parse_one(b: &[u8]) -> DevStat {
    let name = b
        .get(offset::DEVICE_NAME..offset::DEVICE_NAME + NAME_LEN)
        .unwrap_or_default();
    let name = name.split(|c| *c == 0).next().unwrap_or_default();
    let unit = i32_at(b, offset::UNIT_NUMBER);
    let mut d = DevStat {
        device: format!("{}{unit}", String::from_utf8_lossy(name)),
        busy_time: bintime_at(b, offset::BUSY_TIME),
        block_size: u32_at(b, offset::BLOCK_SIZE),
        ..DevStat::default()
    };
    for i in 0..4 {
        d.bytes[i] = u64_at(b, offset::BYTES + 8 * i);
        d.operations[i] = u64_at(b, offset::OPERATIONS + 8 * i);
        d.duration[i] = bintime_at(b, offset::DURATION + 16 * i);
    }
    d
}

/// Parses `kern.devstat.all` (after [`check_version`]): the generation
/// count, then whole `struct devstat`s. A length that is not the count plus
/// a multiple of the structure's size means another layout, and is an error
/// rather than a guess.
pub fn parse(buf: &[u8]) -> Result<Vec<DevStat>, DevstatError> {
    let Some(devices) = buf.get(GENERATION_SIZE..) else {
        return Err(DevstatError::Short(buf.len()));
    };
    if devices.len() % DEVSTAT_SIZE != 0 {
        return Err(DevstatError::Size(devices.len()));
    }
    Ok(devices.chunks_exact(DEVSTAT_SIZE).map(parse_one).collect())
}

/// Writes node_exporter's devstat families for each device.
pub fn write(sink: &mut Sink, devices: &[DevStat]) {
    const BYTES: &str = "node_devstat_bytes_total";
    const TRANSFERS: &str = "node_devstat_transfers_total";
    const DURATION: &str = "node_devstat_duration_seconds_total";
    for d in devices {
        let dev = d.device.as_str();
        for (ty, i) in [("read", READ), ("write", WRITE)] {
            sink.counter(
                BYTES,
                "The total number of bytes in transactions.",
                &[("device", dev), ("type", ty)],
                d.bytes[i] as f64,
            );
        }
        for (ty, i) in [("other", NO_DATA), ("read", READ), ("write", WRITE)] {
            sink.counter(
                TRANSFERS,
                "The total number of transactions.",
                &[("device", dev), ("type", ty)],
                d.operations[i] as f64,
            );
        }
        for (ty, i) in [("other", NO_DATA), ("read", READ), ("write", WRITE)] {
            sink.counter(
                DURATION,
                "The total duration of transactions in seconds.",
                &[("device", dev), ("type", ty)],
                d.duration[i],
            );
        }
        sink.counter(
            "node_devstat_busy_time_seconds_total",
            "Total time the device had one or more transactions outstanding in seconds.",
            &[("device", dev)],
            d.busy_time,
        );
        sink.counter(
            "node_devstat_blocks_transferred_total",
            "The total number of blocks transferred.",
            &[("device", dev)],
            d.blocks() as f64,
        );
    }
}

#[cfg(target_os = "freebsd")]
pub use imp::SPEC;

#[cfg(target_os = "freebsd")]
mod imp {
    use std::mem::{offset_of, size_of};

    use crate::collector::{
        CollectError, Collector, CollectorSpec, Paths, Sink, Stateless, Unavailable,
    };
    use crate::freebsd::sysctl;

    // The hand-written offsets are the kernel's, as the libc crate declares
    // `struct devstat` for this target.
    const _: () = {
        assert!(size_of::<libc::devstat>() == super::DEVSTAT_SIZE);
        assert!(offset_of!(libc::devstat, device_name) == super::offset::DEVICE_NAME);
        assert!(offset_of!(libc::devstat, unit_number) == super::offset::UNIT_NUMBER);
        assert!(offset_of!(libc::devstat, bytes) == super::offset::BYTES);
        assert!(offset_of!(libc::devstat, operations) == super::offset::OPERATIONS);
        assert!(offset_of!(libc::devstat, duration) == super::offset::DURATION);
        assert!(offset_of!(libc::devstat, busy_time) == super::offset::BUSY_TIME);
        assert!(offset_of!(libc::devstat, block_size) == super::offset::BLOCK_SIZE);
        assert!(size_of::<libc::c_long>() == super::GENERATION_SIZE);
    };

    pub const SPEC: CollectorSpec = CollectorSpec::new("devstat", build);

    fn build(_: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
        // The layout does not change while the kernel runs; check it once.
        let version = sysctl::read_u64("kern.devstat.version")
            .map_err(|e| Unavailable(format!("kern.devstat.version: {e}")))?;
        super::check_version(version).map_err(|e| Unavailable(e.to_string()))?;
        Ok(Box::new(Stateless { collect }))
    }

    /// Reads `kern.devstat.all` each collection.
    fn collect(sink: &mut Sink) -> Result<(), CollectError> {
        let raw = sysctl::read_raw("kern.devstat.all")
            .map_err(|e| CollectError::other("kern.devstat.all", e))?;
        let devices = super::parse(&raw).map_err(|e| CollectError::Other(e.to_string()))?;
        super::write(sink, &devices);
        Ok(())
    }
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "the test's seconds are sums of powers of two, exact in f64"
)]
mod tests {
    use super::*;
    use crate::collectors::testutil::value;

    /// 2^64 / 4: a bintime `frac` of a quarter second.
    const QUARTER: u64 = 1 << 62;

    /// One `struct devstat` as the kernel lays it out on amd64, with every
    /// field the parser skips filled with junk so a wrong offset shows.
    fn devstat(name: &str, unit: i32, block_size: u32, seed: u64) -> Vec<u8> {
        let mut b = vec![0xa5u8; DEVSTAT_SIZE];
        let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(&mut b, 0, &7u32.to_le_bytes()); // sequence0
        put(&mut b, 4, &1i32.to_le_bytes()); // allocated
        let mut n = [0u8; NAME_LEN];
        n[..name.len()].copy_from_slice(name.as_bytes());
        put(&mut b, offset::DEVICE_NAME, &n);
        put(&mut b, offset::UNIT_NUMBER, &unit.to_le_bytes());
        for i in 0..4 {
            let i64_ = i as u64;
            put(
                &mut b,
                offset::BYTES + 8 * i,
                &(seed * 1_000_000 + i64_ * 4096).to_le_bytes(),
            );
            put(
                &mut b,
                offset::OPERATIONS + 8 * i,
                &(seed * 100 + i64_).to_le_bytes(),
            );
            // duration[i] = (seed + i) seconds and a quarter.
            put(
                &mut b,
                offset::DURATION + 16 * i,
                &(seed + i64_).to_le_bytes(),
            );
            put(
                &mut b,
                offset::DURATION + 16 * i + 8,
                &QUARTER.to_le_bytes(),
            );
        }
        put(&mut b, offset::BUSY_TIME, &(seed * 10).to_le_bytes());
        put(&mut b, offset::BUSY_TIME + 8, &(QUARTER * 2).to_le_bytes());
        put(&mut b, offset::BLOCK_SIZE, &block_size.to_le_bytes());
        b
    }

    fn sysctl_all(devices: &[Vec<u8>]) -> Vec<u8> {
        let mut b = 42i64.to_le_bytes().to_vec();
        for d in devices {
            b.extend_from_slice(d);
        }
        b
    }

    #[test]
    fn parses_layout() {
        let buf = sysctl_all(&[devstat("ada", 0, 512, 3), devstat("nda", 12, 0, 5)]);
        let d = parse(&buf).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].device, "ada0");
        assert_eq!(d[1].device, "nda12");
        assert_eq!(d[0].bytes, [3_000_000, 3_004_096, 3_008_192, 3_012_288]);
        assert_eq!(d[0].operations, [300, 301, 302, 303]);
        assert_eq!(d[0].duration, [3.25, 4.25, 5.25, 6.25]);
        assert!((d[0].busy_time - 30.5).abs() < 1e-12);
        assert_eq!(d[0].block_size, 512);
        // (read + write + free) / block size, 512 when none is reported.
        assert_eq!(d[0].blocks(), (3_004_096 + 3_008_192 + 3_012_288) / 512);
        assert_eq!(d[1].blocks(), (5_004_096 + 5_008_192 + 5_012_288) / 512);
        assert!(parse(&sysctl_all(&[])).unwrap().is_empty());
    }

    #[test]
    fn node_exporter_series() {
        let d = parse(&sysctl_all(&[devstat("ada", 0, 4096, 3)])).unwrap();
        let mut sink = Sink::new();
        write(&mut sink, &d);
        let dev = |ty| [("device", "ada0"), ("type", ty)];
        assert_eq!(
            value(&sink, "node_devstat_bytes_total", &dev("read")),
            Some(3_004_096.0)
        );
        assert_eq!(
            value(&sink, "node_devstat_bytes_total", &dev("write")),
            Some(3_008_192.0)
        );
        assert_eq!(value(&sink, "node_devstat_bytes_total", &dev("free")), None);
        assert_eq!(
            value(&sink, "node_devstat_transfers_total", &dev("other")),
            Some(300.0)
        );
        assert_eq!(
            value(&sink, "node_devstat_transfers_total", &dev("write")),
            Some(302.0)
        );
        assert_eq!(
            value(&sink, "node_devstat_duration_seconds_total", &dev("read")),
            Some(4.25)
        );
        assert_eq!(
            value(
                &sink,
                "node_devstat_busy_time_seconds_total",
                &[("device", "ada0")]
            ),
            Some(30.5)
        );
        assert_eq!(
            value(
                &sink,
                "node_devstat_blocks_transferred_total",
                &[("device", "ada0")]
            ),
            Some(f64::from((3_004_096 + 3_008_192 + 3_012_288) / 4096))
        );
        // 2 bytes + 3 transfers + 3 durations + busy + blocks.
        assert_eq!(sink.samples.len(), 10);
        for f in sink.families.values() {
            assert_eq!(f.kind, crate::collector::MetricKind::Counter);
        }
    }

    #[test]
    fn odd_names() {
        // A name filling all 16 bytes without a NUL, and one that is not UTF-8.
        let mut a = devstat("", 1, 512, 1);
        a[offset::DEVICE_NAME..offset::DEVICE_NAME + NAME_LEN].copy_from_slice(&[b'x'; 16]);
        let mut b = devstat("da", 2, 512, 1);
        b[offset::DEVICE_NAME] = 0xff;
        let d = parse(&sysctl_all(&[a, b])).unwrap();
        assert_eq!(d[0].device, format!("{}1", "x".repeat(16)));
        assert_eq!(d[1].device, "\u{fffd}a2");
    }

    #[test]
    fn rejects_other_layouts() {
        assert_eq!(check_version(6), Ok(()));
        assert_eq!(check_version(5), Err(DevstatError::Version(5)));
        assert_eq!(parse(&[0; 7]), Err(DevstatError::Short(7)));
        assert_eq!(parse(&[]), Err(DevstatError::Short(0)));
        let mut buf = sysctl_all(&[devstat("ada", 0, 512, 1)]);
        buf.pop();
        assert_eq!(parse(&buf), Err(DevstatError::Size(DEVSTAT_SIZE - 1)));
        // A 32-bit kernel's structure (smaller pointers and longs) is refused, not misread.
        assert_eq!(parse(&[0; 4 + 280]), Err(DevstatError::Size(276)));
        assert!(DevstatError::Size(1)
            .to_string()
            .contains("sizeof(struct devstat)"));
    }

    #[test]
    fn never_panics() {
        let seed = sysctl_all(&[devstat("ada", 0, 512, 1), devstat("cd", 0, 2048, 9)]);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..seed.len() + 2 {
            let mut b = seed.clone();
            b.resize(len, 0xff);
            let _ = parse(&b);
        }
        for _ in 0..2000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut b = seed.clone();
            let i = (rng % b.len() as u64) as usize;
            b[i] = (rng >> 32) as u8;
            if let Ok(d) = parse(&b) {
                write(&mut Sink::new(), &d);
            }
        }
    }
}
