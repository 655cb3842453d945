//! The kubelet's pod list (and the Node object) on arbitrary bytes: the
//! requests/limits summary, the OOM pod name cache and the Node parser
//! return a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch_agent::containers::pods::PodCache;
use nodewatch_agent::kube::resources::{NodeResources, PodSummary};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = PodSummary::from_json(text);
    if let Ok(c) = PodCache::from_json(text) {
        let _ = c.resolve("74c13223-5a00-11e9-b385-42010a80018d", "");
    }
    let _ = NodeResources::from_json(text);
    for word in text.split_whitespace().take(64) {
        let _ = nodewatch_agent::kube::quantity::parse(word);
        let _ = nodewatch_agent::kube::image::registry(word);
    }
    let _ = nodewatch_agent::kube::image::classify(text);
});
