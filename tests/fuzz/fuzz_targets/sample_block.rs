//! Sample blocks, both ways. Any bytes, read as a run of length-delimited
//! `SampleBlock`s fed to one decoder, decode or fail and never panic; and
//! any bytes read as collections of (ref, time, value bits) encode to blocks
//! that decode back bit for bit, however series and shapes come and go.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch_proto::blocks::{BlockDecoder, BlockEncoder};
use nodewatch_proto::v1::{Sample, SampleBlock};
use prost::Message;

fn decode_any(mut data: &[u8]) {
    let mut dec = BlockDecoder::new();
    let mut out = Vec::new();
    while let Ok(block) = SampleBlock::decode_length_delimited(&mut data) {
        out.clear();
        if dec.decode(&block, &mut out, 1 << 16).is_err() {
            return;
        }
    }
}

fn round_trip(data: &[u8]) {
    let mut enc = BlockEncoder::new();
    let mut dec = BlockDecoder::new();
    // Chunks of 11 bytes: ref (1), time step (2), value bits (8). A zero ref ends a collection.
    let mut batch: Vec<Sample> = Vec::new();
    let mut t = 0i64;
    let mut flush = |batch: &mut Vec<Sample>| {
        let block = enc.encode(batch).expect("within limits");
        let mut out = Vec::new();
        dec.decode(&block, &mut out, usize::MAX).expect("own block decodes");
        let bits = |s: &[Sample]| -> Vec<(u64, i64, u64)> {
            s.iter().map(|s| (s.r#ref, s.t_ms, s.value.to_bits())).collect()
        };
        assert_eq!(bits(&out), bits(batch));
        batch.clear();
    };
    for c in data.chunks_exact(11) {
        if c[0] == 0 {
            flush(&mut batch);
            continue;
        }
        t += i64::from(i16::from_le_bytes([c[1], c[2]]));
        let mut v = [0u8; 8];
        v.copy_from_slice(&c[3..11]);
        // Half the values small decimals, as most real ones are.
        let bits = u64::from_le_bytes(v);
        let value = if bits & 1 == 0 {
            f64::from_bits(bits)
        } else {
            ((bits >> 8) % 100_000) as f64 / 100.0
        };
        batch.push(Sample {
            r#ref: u64::from(c[0] % 48),
            t_ms: t,
            value,
        });
    }
    flush(&mut batch);
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, rest)) => round_trip(rest),
        Some((_, rest)) => decode_any(rest),
        None => {}
    }
});
