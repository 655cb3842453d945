//! Go templates of alert labels and annotations on arbitrary text: parsed
//! and, when they parse, expanded with a query function, with an error for
//! anything wrong, never a panic, hang or runaway allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch_aggregator::template::{QuerySample, Template, TemplateData};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = Template::parse(text) else {
        return;
    };
    // Every query answers two samples named after it, so templates that
    // build queries from their results keep asking new ones.
    let query = |q: &str| {
        if q.is_empty() {
            return Err("empty query".to_string());
        }
        Ok(["a:9100", "b.example.com:9100"]
            .iter()
            .enumerate()
            .map(|(i, inst)| QuerySample {
                labels: [
                    ("__name__".to_string(), q.chars().take(32).collect()),
                    ("instance".to_string(), (*inst).to_string()),
                ]
                .into(),
                value: i as f64 * 1234.5,
            })
            .collect())
    };
    let d = TemplateData {
        labels: [("instance".to_string(), "a:9100".to_string())].into(),
        external_labels: [("dc".to_string(), "eu1".to_string())].into(),
        external_url: "http://prom.example:9090/prom".into(),
        value: 0.25,
        time_ms: 1_700_000_000_000,
        query: Some(&query),
    };
    let _ = t.expand(&d);
});
