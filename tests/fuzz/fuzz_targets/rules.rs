//! Prometheus rule files on arbitrary text: parsed with their expressions,
//! templates and durations, with an error for anything wrong, never a panic.
//! The HTTP query API's parameter parsers (forms, times, steps) too.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nodewatch_aggregator::rules::file::{parse_duration, parse_rules};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_rules(Path::new("rules.yaml"), text);
    if text.len() < 64 {
        let _ = parse_duration(text);
        nodewatch_aggregator::api::parse_request_text(text);
    }
});
