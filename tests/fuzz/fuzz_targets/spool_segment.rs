//! A spool segment with arbitrary bytes, read as the agent does after a
//! crash: torn or corrupt records must be cut, never read as data, and
//! everything it keeps must load.
//!
//! Every input goes through the segment parser in memory; one in 256 (by a
//! hash of the input, so a crash reproduces) is also written to disk and
//! opened as a whole spool, so the cut and the recovery are exercised too
//! without paying a file write and a spool open for every input.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nodewatch_agent::spool::{parse_segment, Spool};
use nodewatch_proto::v1::SpoolRecord;
use prost::Message;

static DIR: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();

/// FNV-1a: cheap, and the same for the same input.
fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The record that starts at `off`, if a whole valid one does.
fn record_at(data: &[u8], off: usize) -> Option<(u32, SpoolRecord)> {
    let header = data.get(off..off.checked_add(8)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let start = off + 8;
    let payload = data.get(start..start.checked_add(len as usize)?)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    SpoolRecord::decode(payload).ok().map(|r| (len, r))
}

fn in_memory(data: &[u8]) -> (usize, u64) {
    let (records, cut) = parse_segment(data);
    assert!(cut <= data.len() as u64, "cut {cut} past {}", data.len());
    // Records are contiguous from offset 0, in order, and end at the cut.
    let mut at = 0u64;
    for (off, len, rec) in &records {
        assert_eq!(*off, at, "records out of order or with gaps");
        let (want_len, want) =
            record_at(data, *off as usize).expect("a kept record is a whole valid record");
        assert_eq!(*len, want_len);
        // Compared as bytes: a NaN sample value is not equal to itself.
        assert_eq!(rec.encode_to_vec(), want.encode_to_vec());
        at = off + 8 + u64::from(*len);
    }
    assert_eq!(at, cut, "the cut is where the last kept record ends");
    // The parser stopped for a reason: no valid record starts at the cut.
    assert!(
        record_at(data, cut as usize).is_none(),
        "a valid record at {cut} was cut"
    );
    (records.len(), cut)
}

fn on_disk(data: &[u8], kept: usize, cut: u64) {
    let Some(dir) = DIR.get_or_init(|| tempfile::tempdir().ok()) else {
        return;
    };
    let dir = dir.path();
    let seg = dir.join(format!("{:020}.seg", 1));
    if std::fs::write(&seg, data).is_err() {
        return;
    }
    let Ok((spool, recovered)) = Spool::open(Some(dir), 64 << 20, Duration::from_secs(900), 1)
    else {
        return;
    };
    // It recovered what the parser kept and cut the rest off the file.
    assert_eq!(recovered.records, kept);
    assert_eq!(recovered.cut_bytes, data.len() as u64 - cut);
    assert_eq!(std::fs::metadata(&seg).map(|m| m.len()).ok(), Some(cut));
    // What was kept must be readable, in seq order.
    let mut seq = 0;
    let mut n = 0;
    while let Some(c) = spool.next_after(seq) {
        assert!(c.seq > seq);
        seq = c.seq;
        n += 1;
    }
    assert!(n <= recovered.records.max(spool.len()));
    drop(spool);
    let _ = std::fs::remove_file(&seg);
}

fuzz_target!(|data: &[u8]| {
    let (kept, cut) = in_memory(data);
    if hash(data).is_multiple_of(256) {
        on_disk(data, kept, cut);
    }
});
