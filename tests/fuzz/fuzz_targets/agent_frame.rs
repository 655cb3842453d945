//! The frames an aggregator decodes from agents: any bytes decode to a frame
//! or an error, and a decoded frame survives a re-encode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch_proto::v1::{AgentFrame, SpoolRecord};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = AgentFrame::decode(data) {
        // Compared as bytes: a NaN sample value is not equal to itself.
        let bytes = frame.encode_to_vec();
        let again = AgentFrame::decode(bytes.as_slice()).map(|f| f.encode_to_vec());
        assert_eq!(again.ok(), Some(bytes));
    }
    // The spool's record body is the same kind of protobuf, read back after a crash.
    let _ = SpoolRecord::decode(data);
});
