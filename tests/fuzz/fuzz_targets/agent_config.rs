//! The agent's configuration file on arbitrary YAML: parsed and validated,
//! with an error for anything wrong, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nodewatch_agent::config::File;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("agent.yaml");
    if let Ok(file) = nodewatch_proto::config::parse_yaml::<File>(text, path) {
        let _ = file.validate(Some(path), &["stat", "meminfo", "testseq"], true);
        let _ = file.validate(Some(path), &["stat"], false);
    }
});
