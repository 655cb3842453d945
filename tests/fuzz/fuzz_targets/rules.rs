//! Prometheus rule files on arbitrary text: parsed with their expressions,
//! templates and durations, with an error for anything wrong, never a panic;
//! the load check for series the aggregator never holds runs on what parsed.
//! The same text also feeds the aggregator's known-nodes file parser, and the
//! HTTP query API's parameter parsers (forms, times, steps).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nodewatch_aggregator::liveness::parse_known;
use nodewatch_aggregator::rules::rulefmt::held::unheld_selectors;
use nodewatch_aggregator::rules::rulefmt::parse_rules;
use nodewatch_proto::gocompat::parse_duration;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(groups) = parse_rules(Path::new("rules.yaml"), text) {
        let _ = unheld_selectors(&groups);
    }
    if text.len() < 64 {
        let _ = parse_duration(text);
        nodewatch_aggregator::api::parse_request_text(text);
    }
    let _ = parse_known(Path::new("known-nodes"), text);
});
