//! The procfs and sysfs parsers on arbitrary text: they must return an error,
//! never panic. The first byte picks the parser, so one target covers them all.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nodewatch_agent::collector::Sink;
use nodewatch_agent::collectors::{
    arp, bcache, diskstats, filefd, hwmon, ipvs, mdadm, meminfo, netstat, nfs, os, schedstat, softnet,
    stat, textfile, udp_queues, xfs,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let p = Path::new("fuzz");
    match which % 19 {
        0 => drop(meminfo::parse(p, text)),
        1 => drop(stat::parse(p, text)),
        2 => drop(diskstats::parse(p, text)),
        3 => drop(netstat::parse_pairs(p, text)),
        4 => drop(netstat::parse_snmp6(p, text)),
        5 => drop(mdadm::parse(p, text)),
        6 => drop(xfs::parse(p, text)),
        7 => drop(textfile::parse(p, text)),
        8 => drop(softnet::parse(p, text)),
        9 => drop(arp::parse(p, text)),
        10 => drop(schedstat::parse(p, text)),
        11 => drop(udp_queues::parse(p, text)),
        12 => drop(filefd::parse(p, text)),
        13 => {
            let e = os::parse(text);
            let _ = os::version(e.get("VERSION_ID").map_or("", String::as_str));
        }
        15 => drop(ipvs::parse_services(p, text)),
        16 => drop(ipvs::parse_stats(p, text)),
        17 => drop(nfs::parse(p, text)),
        18 => {
            let _ = bcache::writeback_debug(text);
            let _ = bcache::dehumanize(text);
        }
        _ => {
            // hwmon: one `file value` pair per line, as a chip's directory holds them.
            let mut chip = hwmon::ChipData::new();
            for line in text.lines() {
                let (file, value) = line.split_once(' ').unwrap_or((line, ""));
                hwmon::add_file(&mut chip, file, value);
            }
            hwmon::samples("fuzz", &chip, &mut Sink::new());
        }
    }
});
