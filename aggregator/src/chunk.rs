//! Gorilla-compressed sample chunks, the encoding of Prometheus' head
//! (`XORChunk`): timestamps as delta-of-delta, values as the XOR with the
//! previous value. A regular series (fixed interval, slowly changing value)
//! costs one to a few bytes per sample instead of 16.
//!
//! Values are compared and stored as raw bits, so every NaN payload (the
//! staleness marker in particular), `-0.0` and ±Inf come back bit-exactly.
//!
//! Layout of one chunk, most significant bit first:
//! - sample 0: timestamp (64 bits), value (64 bits);
//! - sample n > 0: delta-of-delta of the timestamp (the previous delta of
//!   sample 1 is 0) as `0` | `10`+7 bits | `110`+14 | `1110`+20 | `1111`+64,
//!   then the value: `0` when equal to the previous one, otherwise `1` and
//!   either `0` + the meaningful bits within the previous window or `1` +
//!   5 bits of leading zeros + 6 bits of length (0 meaning 64) + the bits.

/// Samples per chunk before it is sealed, as Prometheus' head (120): long
/// enough to amortise the 16-byte first sample, short enough that a read
/// decodes little it does not need and retention frees memory in small steps.
pub const SAMPLES_PER_CHUNK: u16 = 120;

/// Delta-of-delta classes: (prefix, prefix length, payload bits). Unlike
/// Prometheus' 14/17/20 bits, the smallest class holds ±64 ms: agents stamp
/// samples when they collect, so a 1 s interval wanders by a few ms each
/// time and a 7-bit class saves 7 bits on nearly every sample.
const DOD_CLASSES: [(u64, u32, u32); 3] = [(0b10, 2, 7), (0b110, 3, 14), (0b1110, 4, 20)];

/// One chunk of up to [`SAMPLES_PER_CHUNK`] samples in time order.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    data: Vec<u8>,
    bits: usize,
    count: u16,
    first_t: i64,
    last_t: i64,
    last_delta: i64,
    last_v: u64,
    leading: u8,
    trailing: u8,
}

impl Chunk {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of samples held.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    #[must_use]
    pub fn is_full(&self) -> bool {
        self.count >= SAMPLES_PER_CHUNK
    }

    /// Timestamp of the first sample (meaningless when empty).
    #[must_use]
    pub fn first_t(&self) -> i64 {
        self.first_t
    }

    /// The last sample, if any.
    #[must_use]
    pub fn last(&self) -> Option<(i64, f64)> {
        (self.count > 0).then(|| (self.last_t, f64::from_bits(self.last_v)))
    }

    /// Heap bytes held by the encoded samples.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.data.capacity()
    }

    /// Releases spare capacity once the chunk is full and will not grow.
    pub fn seal(&mut self) {
        self.data.shrink_to_fit();
    }

    /// Appends a sample. The caller keeps time order (`t` after the last
    /// sample) and respects [`Chunk::is_full`].
    pub fn push(&mut self, t: i64, v: f64) {
        let v = v.to_bits();
        if self.count == 0 {
            // A chunk of regular samples ends up near 1.2 bits per sample:
            // reserve for that so most chunks never reallocate.
            self.data.reserve(32);
            self.write(t as u64, 64);
            self.write(v, 64);
            self.first_t = t;
            self.last_t = t;
            self.last_delta = 0;
            self.last_v = v;
            // No window yet: the first differing value writes its own.
            self.leading = u8::MAX;
            self.trailing = 0;
            self.count = 1;
            return;
        }
        let delta = t.wrapping_sub(self.last_t);
        let dod = delta.wrapping_sub(self.last_delta);
        if dod == 0 {
            self.write(0, 1);
        } else if let Some(&(prefix, plen, bits)) = DOD_CLASSES
            .iter()
            .find(|(_, _, bits)| fits_signed(dod, *bits))
        {
            self.write(prefix, plen);
            self.write(dod as u64 & mask(bits), bits);
        } else {
            self.write(0b1111, 4);
            self.write(dod as u64, 64);
        }
        let x = v ^ self.last_v;
        if x == 0 {
            self.write(0, 1);
        } else {
            // At most 31 leading zeros fit in the 5-bit field.
            let leading = (x.leading_zeros() as u8).min(31);
            let trailing = x.trailing_zeros() as u8;
            if self.leading != u8::MAX && leading >= self.leading && trailing >= self.trailing {
                let sig = 64 - u32::from(self.leading) - u32::from(self.trailing);
                self.write(0b10, 2);
                self.write(x >> self.trailing, sig);
            } else {
                let sig = 64 - u32::from(leading) - u32::from(trailing);
                self.write(0b11, 2);
                self.write(u64::from(leading), 5);
                // 64 significant bits are written as 0: the field has 6 bits.
                self.write(u64::from(sig) & 0x3f, 6);
                self.write(x >> trailing, sig);
                self.leading = leading;
                self.trailing = trailing;
            }
        }
        self.last_t = t;
        self.last_delta = delta;
        self.last_v = v;
        self.count += 1;
    }

    /// The samples in time order.
    #[must_use]
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            data: &self.data,
            pos: 0,
            left: self.count,
            seen: 0,
            t: 0,
            delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
        }
    }

    fn write(&mut self, value: u64, n: u32) {
        let mut left = n;
        while left > 0 {
            let bit_off = self.bits % 8;
            if bit_off == 0 {
                self.data.push(0);
            }
            let room = 8 - bit_off as u32;
            let take = room.min(left);
            // The next `take` bits of value, most significant first.
            let chunk = (value >> (left - take)) & mask(take);
            let shift = room - take;
            if let Some(last) = self.data.last_mut() {
                *last |= (chunk << shift) as u8;
            }
            self.bits += take as usize;
            left -= take;
        }
    }
}

impl<'a> IntoIterator for &'a Chunk {
    type Item = (i64, f64);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn fits_signed(v: i64, bits: u32) -> bool {
    let lim = 1i64 << (bits - 1);
    // Prometheus' ranges: [-(2^(n-1)-1), 2^(n-1)].
    v > -lim && v <= lim
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    let signed = ((v << shift) as i64) >> shift;
    // 2^(n-1) is written as its n-bit pattern, which reads back negative.
    if signed == -(1i64 << (bits - 1)) {
        -signed
    } else {
        signed
    }
}

/// Decodes a chunk's samples in order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    data: &'a [u8],
    pos: usize,
    left: u16,
    seen: u16,
    t: i64,
    delta: i64,
    v: u64,
    leading: u32,
    trailing: u32,
}

impl Iter<'_> {
    /// The next `n` (at most 64) bits, most significant first.
    fn read(&mut self, n: u32) -> Option<u64> {
        debug_assert!(n <= 64);
        if n == 0 {
            return Some(0);
        }
        let end = self.pos + n as usize;
        if end > self.data.len() * 8 {
            return None;
        }
        // One unaligned 16-byte window holds any 64 bits at any bit offset.
        let byte = self.pos / 8;
        let off = (self.pos % 8) as u32;
        let mut buf = [0u8; 16];
        if let Some(w) = self.data.get(byte..byte + 16) {
            buf.copy_from_slice(w);
        } else {
            let tail = &self.data[byte..];
            buf[..tail.len()].copy_from_slice(tail);
        }
        let window = u128::from_be_bytes(buf);
        self.pos = end;
        Some(((window << off) >> (128 - n)) as u64)
    }

    fn bit(&mut self) -> Option<bool> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(b == 1)
    }

    fn next_sample(&mut self) -> Option<(i64, f64)> {
        if self.seen == 0 {
            self.t = self.read(64)? as i64;
            self.v = self.read(64)?;
            return Some((self.t, f64::from_bits(self.v)));
        }
        // The class is the number of 1 bits before the first 0 (at most 4).
        let mut ones = 0usize;
        while ones < 4 && self.bit()? {
            ones += 1;
        }
        let dod = if ones == 0 {
            0
        } else if let Some(&(_, _, bits)) = DOD_CLASSES.get(ones - 1) {
            sign_extend(self.read(bits)?, bits)
        } else {
            self.read(64)? as i64
        };
        self.delta = self.delta.wrapping_add(dod);
        self.t = self.t.wrapping_add(self.delta);
        if self.bit()? {
            if self.bit()? {
                self.leading = self.read(5)? as u32;
                let sig = match self.read(6)? as u32 {
                    0 => 64,
                    n => n,
                };
                self.trailing = 64 - self.leading - sig;
            }
            let sig = 64 - self.leading - self.trailing;
            self.v ^= self.read(sig)? << self.trailing;
        }
        Some((self.t, f64::from_bits(self.v)))
    }
}

impl Iterator for Iter<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        // A short buffer cannot happen for chunks written by `push`; if it
        // did, ending the iteration is safer than inventing samples.
        let s = self.next_sample()?;
        self.left -= 1;
        self.seen += 1;
        Some(s)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(usize::from(self.left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn roundtrip(samples: &[(i64, f64)]) {
        let mut c = Chunk::new();
        for &(t, v) in samples {
            c.push(t, v);
        }
        let back: Vec<(i64, f64)> = c.iter().collect();
        assert_eq!(back.len(), samples.len());
        for (a, b) in samples.iter().zip(&back) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "value bits at t={}", a.0);
        }
        assert_eq!(
            c.last().map(|(t, v)| (t, v.to_bits())),
            samples.last().map(|(t, v)| (*t, v.to_bits()))
        );
    }

    #[test]
    fn special_values_round_trip_bit_exactly() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        roundtrip(&[
            (0, 1.0),
            (1000, stale),
            (2000, f64::NAN),
            (3000, f64::INFINITY),
            (4000, f64::NEG_INFINITY),
            (5000, -0.0),
            (6000, 0.0),
            (7000, f64::MIN_POSITIVE),
            (8000, f64::MAX),
            (9000, f64::from_bits(1)),
            (10_000, stale),
            (i64::MAX / 2, -1.0),
        ]);
    }

    #[test]
    fn every_delta_class_and_extremes() {
        let mut s = vec![(i64::MIN, 0.0), (i64::MIN + 1, 1.0)];
        let mut t = 0i64;
        for d in [
            1000,
            1000,
            1001,
            999,
            9192,
            1000 + 8192,
            1 << 13,
            1 << 16,
            1 << 19,
            1 << 40,
            1,
            1,
            2,
        ] {
            t += d;
            s.push((t, t as f64));
        }
        s.push((i64::MAX, 2.0));
        roundtrip(&s);
        // Boundaries of each class, both signs.
        for bits in DOD_CLASSES.map(|(_, _, bits)| bits) {
            let lim = 1i64 << (bits - 1);
            for dod in [lim, lim + 1, -lim, -lim + 1, lim - 1] {
                roundtrip(&[(0, 0.0), (10_000_000, 1.0), (20_000_000 + dod, 2.0)]);
            }
        }
    }

    #[test]
    fn fuzz_random_series() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let n = rng.random_range(1..=usize::from(SAMPLES_PER_CHUNK));
            let mut t: i64 = rng.random_range(-1_000_000_000_000..1_000_000_000_000);
            let mut v: f64 = rng.random();
            let mut s = Vec::with_capacity(n);
            for _ in 0..n {
                s.push((t, v));
                t += match rng.random_range(0..4) {
                    0 => 1000,
                    1 => rng.random_range(1..2000),
                    2 => rng.random_range(1..1 << 22),
                    _ => rng.random_range(1..1i64 << 50),
                };
                v = match rng.random_range(0..6) {
                    0 => v,
                    1 => v + 1.0,
                    2 => f64::from_bits(rng.random()),
                    3 => rng.random_range(-1e6..1e6),
                    4 => f64::from_bits(0x7ff0_0000_0000_0002),
                    _ => (v * 3.0).floor(),
                };
            }
            roundtrip(&s);
        }
    }

    #[test]
    fn regular_series_is_small() {
        let mut c = Chunk::new();
        for i in 0..i64::from(SAMPLES_PER_CHUNK) {
            // Jittered 1 s interval, a slowly growing counter.
            c.push(
                1_700_000_000_000 + i * 1000 + (i % 3),
                (i / 4) as f64 * 4096.0,
            );
        }
        let per_sample = c.bits as f64 / 8.0 / f64::from(SAMPLES_PER_CHUNK);
        assert!(per_sample < 4.0, "{per_sample} bytes/sample");
    }
}
