//! Compact sample blocks (`SampleBlock`): one collection's samples in about
//! a byte each, against ~19 for plain `Sample`s.
//!
//! A block names a *shape*, the ordered list of series refs of a collection,
//! defined once per stream and then referred to by a small id; it carries one
//! timestamp; and each value is encoded against the previous value of the
//! same series on this stream:
//!
//! - bitwise equal: one bit in the `unchanged` bitmap and nothing else;
//! - otherwise a 2-bit kind and a payload. Kernel counters and most gauges
//!   are integers or short decimals (`node_cpu_seconds_total` has two
//!   digits), so values are kept as decimal mantissas `m / 10^scale`
//!   wherever that reproduces the double bit for bit, and a change costs the
//!   varint of the mantissa's delta, or of its delta-of-delta (counters that
//!   rise at a steady rate);
//! - values that are no short decimal (ratios, NaN, ±Inf, -0.0) are XORed
//!   with the previous double, with zero bytes at both ends trimmed.
//!
//! The encoder and decoder keep the same [`State`] and change it the same way
//! for every sample, through the same functions, so they cannot drift apart
//! as long as the decoder sees every block the encoder made, in order. A
//! decode error leaves the state unusable: the stream must end.

use std::collections::HashMap;

use crate::v1::{Sample, SampleBlock};

/// The encoding this module reads and writes, as `Welcome.sample_blocks` announces it.
pub const VERSION: u32 = 1;
/// Shapes one stream holds at once; defining one more replaces the least recently used.
pub const MAX_SHAPES: usize = 64;
/// Refs in one shape.
pub const MAX_SHAPE_LEN: usize = 1 << 18;
/// Refs in all shapes held at once: bounds the decoder's memory per stream.
pub const MAX_SHAPE_REFS: usize = 1 << 21;
/// Distinct series refs one stream may carry in blocks.
pub const MAX_SERIES: usize = 1 << 20;

const MAX_SCALE: u8 = 9;
const POW10: [f64; MAX_SCALE as usize + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// Mantissas stay where every integer is exact as a double.
const MANTISSA_LIMIT: i64 = 1 << 53;

const KIND_PREDICTED: u8 = 0;
const KIND_DELTA: u8 = 1;
const KIND_XOR: u8 = 2;
const KIND_SCALED: u8 = 3;

/// Why a block could not be decoded (or encoded): the block field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {what}")]
pub struct BlockError {
    pub field: &'static str,
    pub what: String,
}

fn err(field: &'static str, what: impl Into<String>) -> BlockError {
    BlockError {
        field,
        what: what.into(),
    }
}

/// What both sides remember of one series.
#[derive(Clone, Copy, Debug)]
struct Series {
    /// The previous value's bits.
    bits: u64,
    /// The previous value as `m / 10^scale`, when `exact`.
    m: i64,
    /// The mantissa's last change (0 after an unchanged or rescaled value).
    d: i64,
    scale: u8,
    exact: bool,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            bits: 0f64.to_bits(),
            m: 0,
            d: 0,
            scale: 0,
            exact: true,
        }
    }
}

/// One way of writing a changed value.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Mantissa at the series' scale, sent as delta from `m + d`.
    Predicted(i64),
    /// Mantissa at the series' scale, sent as delta from `m`.
    Delta(i64),
    Xor(u64),
    /// Mantissa and a new scale, sent whole.
    Scaled(i64, u8),
}

/// `v` as `m / 10^scale`, if that expression (the decoder's) gives `v` back bit for bit.
fn mantissa(v: f64, scale: u8) -> Option<i64> {
    let p = POW10[usize::from(scale)];
    let x = (v * p).round();
    if !x.is_finite() || x.abs() > MANTISSA_LIMIT as f64 {
        return None;
    }
    let m = x as i64;
    (value_of(m, scale).to_bits() == v.to_bits()).then_some(m)
}

fn value_of(m: i64, scale: u8) -> f64 {
    m as f64 / POW10[usize::from(scale)]
}

impl Series {
    fn unchanged(&mut self) {
        self.d = 0;
    }

    /// Moves to the value `step` gives; both sides call this with the same step.
    fn advance(&mut self, step: Step) -> f64 {
        let v = match step {
            Step::Predicted(m) | Step::Delta(m) => {
                self.d = m - self.m;
                self.m = m;
                value_of(m, self.scale)
            }
            Step::Scaled(m, scale) => {
                self.d = 0;
                self.m = m;
                self.scale = scale;
                self.exact = true;
                value_of(m, scale)
            }
            Step::Xor(x) => {
                let v = f64::from_bits(self.bits ^ x);
                self.d = 0;
                match mantissa(v, self.scale) {
                    Some(m) => {
                        self.m = m;
                        self.exact = true;
                    }
                    None => self.exact = false,
                }
                v
            }
        };
        self.bits = v.to_bits();
        v
    }
}

/// A defined shape: its refs and, per ref, the series slot.
#[derive(Debug)]
struct Shape {
    refs: Vec<u64>,
    slots: Vec<u32>,
    /// When it was last used, for replacing the least recently used one.
    used: u64,
}

/// One side's codec state for one stream.
#[derive(Debug, Default)]
struct State {
    slot_of: HashMap<u64, u32>,
    series: Vec<Series>,
    shapes: Vec<Option<Shape>>,
    shape_refs: usize,
    clock: u64,
    /// A lower series limit than [`MAX_SERIES`] (the receiver's per-node
    /// limit), which also bounds the refs of all shapes to twice as many.
    max_series: Option<usize>,
}

impl State {
    /// Slots for `refs`, creating the missing ones, or an error before changing anything.
    fn slots(&mut self, refs: &[u64]) -> Result<Vec<u32>, BlockError> {
        let new = refs
            .iter()
            .filter(|r| !self.slot_of.contains_key(r))
            .count();
        let max = self.max_series.map_or(MAX_SERIES, |m| m.min(MAX_SERIES));
        if self.series.len() + new > max {
            return Err(err(
                "shape",
                format!("more than {max} series on one stream"),
            ));
        }
        Ok(refs
            .iter()
            .map(|r| {
                *self.slot_of.entry(*r).or_insert_with(|| {
                    self.series.push(Series::default());
                    (self.series.len() - 1) as u32
                })
            })
            .collect())
    }

    fn define(&mut self, id: usize, refs: Vec<u64>) -> Result<(), BlockError> {
        let old = self
            .shapes
            .get(id)
            .and_then(Option::as_ref)
            .map_or(0, |s| s.refs.len());
        let max = self
            .max_series
            .map_or(MAX_SHAPE_REFS, |m| m.saturating_mul(2).min(MAX_SHAPE_REFS));
        if self.shape_refs - old + refs.len() > max {
            return Err(err("shape", format!("more than {max} refs in all shapes")));
        }
        let slots = self.slots(&refs)?;
        if self.shapes.len() <= id {
            self.shapes.resize_with(id + 1, || None);
        }
        self.shape_refs = self.shape_refs - old + refs.len();
        self.clock += 1;
        self.shapes[id] = Some(Shape {
            refs,
            slots,
            used: self.clock,
        });
        Ok(())
    }
}

// ------------------------------------------------------------------ bytes

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    (u >> 1) as i64 ^ -((u & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads `bytes` from the front, naming `field` in errors.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    field: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], field: &'static str) -> Self {
        Self {
            bytes,
            pos: 0,
            field,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn byte(&mut self) -> Result<u8, BlockError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| err(self.field, format!("truncated at byte {}", self.pos)))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, BlockError> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err(
            self.field,
            format!("varint at byte {start} is longer than 64 bits"),
        ))
    }

    fn end(&self) -> Result<(), BlockError> {
        if self.done() {
            Ok(())
        } else {
            Err(err(
                self.field,
                format!(
                    "{} bytes left over after byte {}",
                    self.bytes.len() - self.pos,
                    self.pos
                ),
            ))
        }
    }
}

fn bit(bytes: &[u8], i: usize) -> bool {
    bytes.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1)
}

/// Bits past `n` in a packed field must be zero: anything else is a corrupt block.
fn check_padding(
    bytes: &[u8],
    bits_per: usize,
    n: usize,
    field: &'static str,
) -> Result<(), BlockError> {
    let used = n * bits_per;
    if bytes.len() > used.div_ceil(8) {
        return Err(err(
            field,
            format!("{} bytes for {n} entries of {bits_per} bits", bytes.len()),
        ));
    }
    if used & 7 != 0 && bytes.len() == used.div_ceil(8) {
        let last = bytes[bytes.len() - 1];
        if last >> (used % 8) != 0 {
            return Err(err(field, "bits set past the last entry"));
        }
    }
    Ok(())
}

fn encode_shape(refs: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut expected = 0u64;
    let mut i = 0;
    while i < refs.len() {
        let start = refs[i];
        let mut len = 1usize;
        while i + len < refs.len() && refs[i + len] == refs[i + len - 1].wrapping_add(1) {
            len += 1;
        }
        put_varint(&mut out, zigzag(start.wrapping_sub(expected) as i64));
        put_varint(&mut out, len as u64 - 1);
        expected = refs[i + len - 1].wrapping_add(1);
        i += len;
    }
    out
}

fn decode_shape(bytes: &[u8]) -> Result<Vec<u64>, BlockError> {
    let mut r = Reader::new(bytes, "shape");
    let mut refs = Vec::new();
    let mut expected = 0u64;
    while !r.done() {
        let start = expected.wrapping_add(unzigzag(r.varint()?) as u64);
        let extra = r.varint()?;
        let room = (MAX_SHAPE_LEN - refs.len()) as u64;
        if extra >= room {
            return Err(err("shape", format!("more than {MAX_SHAPE_LEN} refs")));
        }
        let last = start
            .checked_add(extra)
            .ok_or_else(|| err("shape", format!("run from ref {start} passes 2^64")))?;
        refs.extend(start..=last);
        expected = last.wrapping_add(1);
    }
    Ok(refs)
}

// ------------------------------------------------------------------ encoder

fn xor_len(x: u64) -> usize {
    let lead = (x.leading_zeros() / 8).min(7) as usize;
    let trail = (x.trailing_zeros() / 8).min(7) as usize;
    1 + 8 - lead - trail
}

fn put_xor(out: &mut Vec<u8>, x: u64) {
    let lead = (x.leading_zeros() / 8).min(7);
    let trail = (x.trailing_zeros() / 8).min(7);
    out.push(((lead << 3) | trail) as u8);
    let n = 8 - lead - trail;
    let mid = x >> (8 * trail);
    for i in (0..n).rev() {
        out.push((mid >> (8 * i)) as u8);
    }
}

fn scaled_code(m: i64, scale: u8) -> u64 {
    zigzag(m) * 10 + u64::from(scale)
}

/// The cheapest step from `s` to `v` (which differs from `s`'s value), and its payload size.
fn choose(s: &Series, v: f64) -> Step {
    fn consider(best: &mut (usize, Step), cost: usize, step: Step) {
        if cost < best.0 {
            *best = (cost, step);
        }
    }
    let x = s.bits ^ v.to_bits();
    let mut best = (xor_len(x), Step::Xor(x));
    let at_scale = if s.exact { mantissa(v, s.scale) } else { None };
    if let Some(m) = at_scale {
        if let Some(r) = m.checked_sub(s.m) {
            consider(&mut best, varint_len(zigzag(r)), Step::Delta(m));
        }
        if let Some(r) = s.m.checked_add(s.d).and_then(|p| m.checked_sub(p)) {
            consider(&mut best, varint_len(zigzag(r)), Step::Predicted(m));
        }
    }
    // A whole mantissa beats a delta after a jump (a gauge back to 0) or a new scale.
    if best.0 > 1 {
        if let Some((scale, m)) = (0..=MAX_SCALE).find_map(|e| mantissa(v, e).map(|m| (e, m))) {
            consider(
                &mut best,
                varint_len(scaled_code(m, scale)),
                Step::Scaled(m, scale),
            );
        }
    }
    best.1
}

fn put_step(out: &mut Vec<u8>, s: &Series, step: Step) -> u8 {
    match step {
        Step::Predicted(m) => {
            put_varint(out, zigzag(m - (s.m + s.d)));
            KIND_PREDICTED
        }
        Step::Delta(m) => {
            put_varint(out, zigzag(m - s.m));
            KIND_DELTA
        }
        Step::Xor(x) => {
            put_xor(out, x);
            KIND_XOR
        }
        Step::Scaled(m, scale) => {
            put_varint(out, scaled_code(m, scale));
            KIND_SCALED
        }
    }
}

/// The agent's side of one stream: turns collections into blocks.
#[derive(Debug, Default)]
pub struct BlockEncoder {
    state: State,
    /// Shape fingerprint → ids of defined shapes with it.
    by_print: HashMap<u64, Vec<usize>>,
}

fn fingerprint(refs: &[u64]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    refs.hash(&mut h);
    h.finish()
}

impl BlockEncoder {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `samples` (in any order, refs may repeat) as one block. On an
    /// error (a limit) nothing has changed: send these samples plainly.
    pub fn encode(&mut self, samples: &[Sample]) -> Result<SampleBlock, BlockError> {
        if samples.len() > MAX_SHAPE_LEN {
            return Err(err("shape", format!("more than {MAX_SHAPE_LEN} refs")));
        }
        let refs: Vec<u64> = samples.iter().map(|s| s.r#ref).collect();
        let print = fingerprint(&refs);
        let st = &mut self.state;
        let known = self.by_print.get(&print).and_then(|ids| {
            ids.iter().copied().find(|&id| {
                st.shapes
                    .get(id)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.refs == refs)
            })
        });
        let (id, shape) = if let Some(id) = known {
            (id, None)
        } else {
            let id = if st.shapes.len() < MAX_SHAPES {
                st.shapes.len()
            } else {
                st.shapes
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.as_ref().map_or(0, |s| s.used))
                    .map_or(0, |(i, _)| i)
            };
            let bytes = encode_shape(&refs);
            let old = st
                .shapes
                .get(id)
                .and_then(Option::as_ref)
                .map(|s| fingerprint(&s.refs));
            st.define(id, refs)?;
            if let Some(old) = old {
                if let Some(ids) = self.by_print.get_mut(&old) {
                    ids.retain(|&i| i != id);
                }
            }
            self.by_print.entry(print).or_default().push(id);
            (id, Some(bytes))
        };
        let st = &mut self.state;
        st.clock += 1;
        let clock = st.clock;
        let Some(Some(sh)) = st.shapes.get_mut(id) else {
            return Err(err("shape_id", "shape vanished"));
        };
        sh.used = clock;
        let t_ms = samples.first().map_or(0, |s| s.t_ms);
        let mut t_offsets = Vec::new();
        if samples.iter().any(|s| s.t_ms != t_ms) {
            for s in samples {
                put_varint(&mut t_offsets, zigzag(s.t_ms.wrapping_sub(t_ms)));
            }
        }
        let mut unchanged = vec![0u8; samples.len().div_ceil(8)];
        let mut kinds = Vec::with_capacity(samples.len() / 4 + 1);
        let mut values = Vec::with_capacity(samples.len() * 2);
        let mut changed = 0usize;
        for (i, (smp, &slot)) in samples.iter().zip(&sh.slots).enumerate() {
            let s = &mut st.series[slot as usize];
            if s.bits == smp.value.to_bits() {
                unchanged[i / 8] |= 1 << (i % 8);
                s.unchanged();
                continue;
            }
            let step = choose(s, smp.value);
            let kind = put_step(&mut values, s, step);
            if kinds.len() == changed / 4 {
                kinds.push(0);
            }
            if let Some(k) = kinds.last_mut() {
                *k |= kind << (2 * (changed % 4));
            }
            changed += 1;
            s.advance(step);
        }
        while unchanged.last() == Some(&0) {
            unchanged.pop();
        }
        Ok(SampleBlock {
            shape_id: id as u32,
            shape,
            t_ms,
            t_offsets,
            unchanged,
            kinds,
            values,
        })
    }
}

// ------------------------------------------------------------------ decoder

fn read_step(r: &mut Reader<'_>, s: &Series, kind: u8, i: usize) -> Result<Step, BlockError> {
    let at = |what: &str| err("values", format!("sample {i}: {what}"));
    let bounded = |m: Option<i64>| {
        m.filter(|m| m.abs() <= MANTISSA_LIMIT)
            .ok_or_else(|| at("mantissa out of range"))
    };
    match kind {
        KIND_PREDICTED | KIND_DELTA => {
            if !s.exact {
                return Err(at("delta for a series whose value is no decimal"));
            }
            let r = unzigzag(r.varint()?);
            let base = if kind == KIND_PREDICTED {
                s.m.checked_add(s.d)
            } else {
                Some(s.m)
            };
            let m = bounded(base.and_then(|b| b.checked_add(r)))?;
            Ok(if kind == KIND_PREDICTED {
                Step::Predicted(m)
            } else {
                Step::Delta(m)
            })
        }
        KIND_XOR => {
            let h = r.byte()?;
            let (lead, trail) = (u32::from(h >> 3), u32::from(h & 7));
            if lead + trail > 7 {
                return Err(at("XOR header with no bytes to read"));
            }
            let mut mid = 0u64;
            for _ in 0..8 - lead - trail {
                mid = mid << 8 | u64::from(r.byte()?);
            }
            Ok(Step::Xor(mid << (8 * trail)))
        }
        _ => {
            let code = r.varint()?;
            let scale = (code % 10) as u8;
            let m = bounded(Some(unzigzag(code / 10)))?;
            Ok(Step::Scaled(m, scale))
        }
    }
}

/// The aggregator's side of one stream.
#[derive(Debug, Default)]
pub struct BlockDecoder {
    state: State,
}

impl BlockDecoder {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder holding state for at most `max_series` series (and twice
    /// as many refs in all shapes): the receiver's per-node series limit,
    /// so a stream's decoder state stays inside what the node may store.
    #[must_use]
    pub fn with_max_series(max_series: usize) -> Self {
        let mut d = Self::default();
        d.state.max_series = Some(max_series);
        d
    }

    /// Appends the block's samples to `out`. A block of more than `limit`
    /// samples is refused before any is decoded. After an error the state
    /// no longer matches the encoder's: end the stream.
    pub fn decode(
        &mut self,
        block: &SampleBlock,
        out: &mut Vec<Sample>,
        limit: usize,
    ) -> Result<(), BlockError> {
        let id = block.shape_id as usize;
        if id >= MAX_SHAPES {
            return Err(err("shape_id", format!("{id} is not below {MAX_SHAPES}")));
        }
        if let Some(bytes) = &block.shape {
            self.state.define(id, decode_shape(bytes)?)?;
        }
        let st = &mut self.state;
        st.clock += 1;
        let clock = st.clock;
        let Some(Some(shape)) = st.shapes.get_mut(id) else {
            return Err(err(
                "shape_id",
                format!("shape {id} is not defined on this stream"),
            ));
        };
        shape.used = clock;
        let n = shape.refs.len();
        if n > limit {
            return Err(err(
                "shape_id",
                format!("shape {id} has {n} samples, more than the {limit} allowed"),
            ));
        }
        let mut offsets = Reader::new(&block.t_offsets, "t_offsets");
        let timed = !block.t_offsets.is_empty();
        check_padding(&block.unchanged, 1, n, "unchanged")?;
        let changed = n - block
            .unchanged
            .iter()
            .map(|b| b.count_ones() as usize)
            .sum::<usize>();
        if block.kinds.len() != changed.div_ceil(4) {
            return Err(err(
                "kinds",
                format!("{} bytes for {changed} changed samples", block.kinds.len()),
            ));
        }
        check_padding(&block.kinds, 2, changed, "kinds")?;
        let mut values = Reader::new(&block.values, "values");
        out.reserve(n);
        let mut c = 0usize;
        for (i, (&r, &slot)) in shape.refs.iter().zip(&shape.slots).enumerate() {
            let t_ms = if timed {
                // Wrapping, as the encoder subtracts: any offset names exactly one time.
                block.t_ms.wrapping_add(unzigzag(offsets.varint()?))
            } else {
                block.t_ms
            };
            let s = &mut st.series[slot as usize];
            let value = if bit(&block.unchanged, i) {
                s.unchanged();
                f64::from_bits(s.bits)
            } else {
                let kind = block.kinds[c / 4] >> (2 * (c % 4)) & 3;
                c += 1;
                let step = read_step(&mut values, s, kind, i)?;
                s.advance(step)
            };
            out.push(Sample {
                r#ref: r,
                t_ms,
                value,
            });
        }
        offsets.end()?;
        values.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

    fn samples(t: i64, vals: &[(u64, f64)]) -> Vec<Sample> {
        vals.iter()
            .map(|&(r, v)| Sample {
                r#ref: r,
                t_ms: t,
                value: v,
            })
            .collect()
    }

    fn bits(s: &[Sample]) -> Vec<(u64, i64, u64)> {
        s.iter()
            .map(|s| (s.r#ref, s.t_ms, s.value.to_bits()))
            .collect()
    }

    /// Encodes and decodes every batch in turn, checking each bit for bit.
    fn round_trip(batches: &[Vec<Sample>]) -> usize {
        let mut enc = BlockEncoder::new();
        let mut dec = BlockDecoder::new();
        let mut bytes = 0;
        for b in batches {
            let block = enc.encode(b).unwrap();
            bytes += prost::Message::encoded_len(&block);
            let mut out = Vec::new();
            dec.decode(&block, &mut out, usize::MAX).unwrap();
            assert_eq!(bits(&out), bits(b));
        }
        bytes
    }

    #[test]
    fn special_values_round_trip() {
        let specials = [
            f64::from_bits(STALE_NAN),
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            5e-324,
            1234.56,
            0.1 + 0.2,
            9_007_199_254_740_993.0,
            -1.5,
        ];
        let mut batches = Vec::new();
        for (k, _) in specials.iter().enumerate() {
            let vals: Vec<(u64, f64)> = specials
                .iter()
                .cycle()
                .skip(k)
                .take(specials.len())
                .enumerate()
                .map(|(i, v)| (i as u64 + 1, *v))
                .collect();
            batches.push(samples(1000 + k as i64, &vals));
        }
        round_trip(&batches);
    }

    #[test]
    fn counters_cost_about_a_byte() {
        // cpu seconds in hundredths, byte counters, a reset, idle series.
        let mut batches = Vec::new();
        let mut cpu = 81234.56f64;
        let mut bytes_rx = 9_876_543_210f64;
        for k in 0..100i64 {
            cpu = ((cpu * 100.0).round() + 990.0 + (k % 7) as f64) / 100.0;
            bytes_rx += 1500.0 * (k % 3) as f64;
            let reset = if k == 50 { 0.0 } else { bytes_rx };
            let vals: Vec<(u64, f64)> = (1..=200u64)
                .map(|r| match r % 4 {
                    0 => (r, cpu),
                    1 => (r, reset),
                    2 => (r, 42.0),
                    _ => (r, r as f64),
                })
                .collect();
            batches.push(samples(k * 10_000, &vals));
        }
        let bytes = round_trip(&batches[1..]);
        let per_sample = bytes as f64 / (99.0 * 200.0);
        assert!(per_sample < 1.0, "{per_sample} bytes per sample");
    }

    #[test]
    fn per_sample_times_and_repeated_refs() {
        let b = vec![
            Sample {
                r#ref: 3,
                t_ms: 100,
                value: 1.0,
            },
            Sample {
                r#ref: 3,
                t_ms: 90,
                value: 2.0,
            },
            Sample {
                r#ref: u64::MAX,
                t_ms: i64::MIN,
                value: 2.0,
            },
        ];
        round_trip(&[b.clone(), b]);
    }

    #[test]
    fn shapes_are_defined_once_and_replaced_when_many() {
        let mut enc = BlockEncoder::new();
        let a = samples(1, &[(1, 1.0), (2, 2.0)]);
        let b = samples(2, &[(1, 1.0)]);
        assert!(enc.encode(&a).unwrap().shape.is_some());
        assert!(enc.encode(&b).unwrap().shape.is_some());
        assert!(enc.encode(&a).unwrap().shape.is_none());
        assert!(enc.encode(&b).unwrap().shape.is_none());
        let mut batches = Vec::new();
        for k in 0..(3 * MAX_SHAPES as u64) {
            batches.push(samples(k as i64, &[(k % 100, 1.0), (7, k as f64)]));
        }
        round_trip(&batches);
    }

    #[test]
    fn corrupt_blocks_are_errors_naming_the_field() {
        let mut enc = BlockEncoder::new();
        let vals: Vec<(u64, f64)> = (0..50u64).map(|r| (r, r as f64 * 1.25)).collect();
        let block = enc.encode(&samples(5, &vals)).unwrap();
        let decode = |b: &SampleBlock| BlockDecoder::new().decode(b, &mut Vec::new(), 1000);
        let mut b = block.clone();
        b.values.pop();
        assert_eq!(decode(&b).unwrap_err().field, "values");
        let mut b = block.clone();
        b.values.push(0);
        assert_eq!(decode(&b).unwrap_err().field, "values");
        let mut b = block.clone();
        b.kinds.pop();
        assert_eq!(decode(&b).unwrap_err().field, "kinds");
        let mut b = block.clone();
        b.shape = None;
        assert_eq!(decode(&b).unwrap_err().field, "shape_id");
        let mut b = block.clone();
        b.shape_id = 64;
        assert_eq!(decode(&b).unwrap_err().field, "shape_id");
        let mut b = block.clone();
        b.shape = Some(vec![0xff; 11]);
        assert_eq!(decode(&b).unwrap_err().field, "shape");
        let mut b = block.clone();
        b.t_offsets = vec![1];
        assert_eq!(decode(&b).unwrap_err().field, "t_offsets");
        let mut b = block.clone();
        b.unchanged = vec![0; 8];
        assert_eq!(decode(&b).unwrap_err().field, "unchanged");
        assert_eq!(
            BlockDecoder::new()
                .decode(&block, &mut Vec::new(), 49)
                .unwrap_err()
                .field,
            "shape_id"
        );
        // A shape of many refs in a few bytes is refused by its size.
        let mut b = block;
        b.shape = Some(vec![0, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(decode(&b).unwrap_err().field, "shape");
    }

    /// Every truncation and every single-byte change of a block's fields
    /// decodes or fails, and never panics.
    #[test]
    fn mangled_blocks_never_panic() {
        let mut enc = BlockEncoder::new();
        let mut blocks = Vec::new();
        for k in 0..3 {
            let vals: Vec<(u64, f64)> = (0..40u64)
                .map(|r| {
                    (
                        r,
                        if r % 5 == 0 {
                            f64::NAN
                        } else {
                            (r * k) as f64 / 3.0
                        },
                    )
                })
                .collect();
            blocks.push(enc.encode(&samples(k as i64, &vals)).unwrap());
        }
        let fields: [fn(&mut SampleBlock) -> &mut Vec<u8>; 5] = [
            |b| b.shape.get_or_insert_with(Vec::new),
            |b| &mut b.t_offsets,
            |b| &mut b.unchanged,
            |b| &mut b.kinds,
            |b| &mut b.values,
        ];
        for f in fields {
            for last in 0..blocks.len() {
                let len = f(&mut blocks[last].clone()).len();
                for cut in 0..=len {
                    for change in [None, Some(0x00u8), Some(0x80), Some(0xff), Some(0x13)] {
                        let mut dec = BlockDecoder::new();
                        let mut out = Vec::new();
                        let mut ok = true;
                        for b in &blocks[..last] {
                            ok &= dec.decode(b, &mut out, 1000).is_ok();
                        }
                        assert!(ok);
                        let mut b = blocks[last].clone();
                        let field = f(&mut b);
                        match change {
                            None => field.truncate(cut),
                            Some(x) if cut < field.len() => field[cut] ^= x,
                            Some(x) => field.push(x),
                        }
                        let _ = dec.decode(&b, &mut out, 1000);
                    }
                }
            }
        }
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::from_bits(STALE_NAN)),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(0.0),
            any::<f64>(),
            any::<u64>().prop_map(f64::from_bits),
            (-1_000_000i64..1_000_000).prop_map(|v| v as f64),
            (-1_000_000i64..1_000_000, 0u32..10).prop_map(|(m, e)| m as f64 / 10f64.powi(e as i32)),
            (0u64..1 << 60).prop_map(|v| v as f64),
        ]
    }

    /// A sequence of collections: series come and go, values move like
    /// counters, gauges or noise, now and then repeat, reset or turn special.
    fn sequence() -> impl Strategy<Value = Vec<Vec<Sample>>> {
        let step = (
            proptest::collection::vec((0u64..40, value(), 0u8..4, -3i64..3), 0..60),
            0i64..20_000,
        );
        proptest::collection::vec(step, 1..25).prop_map(|steps| {
            let mut last: HashMap<u64, f64> = HashMap::new();
            let mut t = 1_700_000_000_000i64;
            steps
                .into_iter()
                .map(|(entries, dt)| {
                    t += dt;
                    entries
                        .into_iter()
                        .map(|(r, v, how, jitter)| {
                            let prev = last.get(&r).copied().unwrap_or(0.0);
                            let value = match how {
                                0 => prev,
                                1 => ((prev + v.abs().min(1e6)) * 100.0).round() / 100.0,
                                _ => v,
                            };
                            last.insert(r, value);
                            Sample {
                                r#ref: r,
                                t_ms: t + jitter,
                                value,
                            }
                        })
                        .collect()
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_sequence_round_trips(batches in sequence()) {
            round_trip(&batches);
        }

        #[test]
        fn any_block_decodes_or_fails(
            shape in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            id in 0u32..70,
            t_offsets in proptest::collection::vec(any::<u8>(), 0..8),
            unchanged in proptest::collection::vec(any::<u8>(), 0..8),
            kinds in proptest::collection::vec(any::<u8>(), 0..8),
            values in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let block = SampleBlock { shape_id: id, shape, t_ms: 0, t_offsets, unchanged, kinds, values };
            let _ = BlockDecoder::new().decode(&block, &mut Vec::new(), 1 << 16);
        }
    }
}
