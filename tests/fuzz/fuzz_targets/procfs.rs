//! The procfs parsers on arbitrary text: they must return an error, never
//! panic. The first byte picks the parser, so one target covers them all.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nodewatch_agent::collectors::{diskstats, meminfo, netstat, stat};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let p = Path::new("fuzz");
    match which % 5 {
        0 => drop(meminfo::parse(p, text)),
        1 => drop(stat::parse(p, text)),
        2 => drop(diskstats::parse(p, text)),
        3 => drop(netstat::parse_pairs(p, text)),
        _ => drop(netstat::parse_snmp6(p, text)),
    }
});
