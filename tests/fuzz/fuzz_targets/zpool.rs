//! `zpool status` (text and JSON), `zpool list` and scan lines on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch_agent::collectors::zpool;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 4 {
        0 => drop(zpool::parse_status_text(text)),
        1 => drop(zpool::parse_status_json(text)),
        2 => drop(zpool::parse_list(text)),
        _ => drop(zpool::parse_scan(text)),
    }
});
