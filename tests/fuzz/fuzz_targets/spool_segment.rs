//! A spool segment with arbitrary bytes, opened as the agent does after a
//! crash: torn or corrupt records must be cut, never read as data, and
//! everything it keeps must load.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nodewatch_agent::spool::Spool;

static DIR: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
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
});
