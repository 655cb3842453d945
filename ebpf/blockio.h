/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The latency histograms both block I/O objects write: blockio_btf.bpf.c
 * (tp_btf, preferred) and blockio.bpf.c (classic tracepoints, the fallback).
 * Each object has its own copy of the maps; the agent reads whichever object
 * attached.
 */
#ifndef NODEWATCH_BLOCKIO_H
#define NODEWATCH_BLOCKIO_H

/*
 * Per-CPU histograms: a completion adds to its own CPU's copy with plain
 * increments, where a shared copy needs three atomic adds on a cache line
 * that completions on other CPUs keep taking away. User space sums the
 * copies. Not preallocated: a (dev, op, from) entry costs 240 bytes per
 * possible CPU, so only the ones in use get memory.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, NW_BIO_HISTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bio_hist_key);
	__type(value, struct bio_hist);
} block_io_latency SEC(".maps");

/*
 * The slot table in front of block_io_latency (NW_BIO_SLOTS_TABLE in
 * nodewatch.h): an array lookup is inlined by the verifier into a bounds
 * check and an address computation, where the hash lookup is a jhash of
 * the key and a bucket walk.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NW_BIO_SLOTS_TABLE);
	__type(key, __u32);
	__type(value, struct bio_slot);
} block_io_slots SEC(".maps");

/* Scratch space for a new histogram (too large for the 512-byte stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bio_hist);
} bio_zero SEC(".maps");

/*
 * floor(log2(v)) for v >= 1, 0 for v = 0, capped at the last slot: a binary
 * search in five steps, where a shift-per-bit loop would take up to 27.
 */
static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xffffffffULL) << 5;
	v >>= shift;
	r |= shift;
	shift = (v > 0xffff) << 4;
	v >>= shift;
	r |= shift;
	shift = (v > 0xff) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xf) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (__u32)(v >> 1);
	return r < NW_BIO_SLOTS - 1 ? r : NW_BIO_SLOTS - 1;
}

/*
 * delta_ns / 1000. BPF has no multiply-high, so clang keeps a 64-bit divide
 * (tens of cycles); below 2^32 ns (4.3 s, nearly every request) the
 * multiply-and-shift is exact (checked for every 32-bit value) and the
 * product fits in 64 bits.
 */
static __always_inline __u64 ns_to_us(__u64 ns)
{
	if (ns < (1ULL << 32))
		return (ns * 0x10624DD3ULL) >> 38;
	return ns / 1000;
}

/*
 * Adds delta_us to a histogram: this CPU's copy, and a program does not run
 * again on a CPU where it is already running (the kernel skips the nested
 * run): one writer, plain increments.
 */
static __always_inline void hist_add(struct bio_hist *h, __u64 delta_us)
{
	h->slots[log2_slot(delta_us)] += 1;
	h->sum_us += delta_us;
	h->count += 1;
}

/* Adds one request of delta_ns to the (dev, op, from) histogram. */
static __always_inline void record(__u32 dev, __u32 op, __u32 from, __u64 delta_ns)
{
	__u64 delta_us = ns_to_us(delta_ns);
	__u64 key = NW_BIO_SLOT_KEY(dev, op, from);
	/* Fibonacci hashing: the top bits of key x 2^64/phi pick the first slot. */
	__u32 first = (__u32)((key * 0x9E3779B97F4A7C15ULL) >> (64 - NW_BIO_SLOTS_TABLE_BITS));

#pragma unroll
	for (__u32 p = 0; p < NW_BIO_SLOT_PROBES; p++) {
		__u32 idx = (first + p) & (NW_BIO_SLOTS_TABLE - 1);
		struct bio_slot *s = bpf_map_lookup_elem(&block_io_slots, &idx);
		if (!s)
			return;
		if (s->key == key) {
			hist_add(&s->hist, delta_us);
			return;
		}
		if (s->key == 0) {
			/* Free in this CPU's copy: claim it (no other writer). */
			s->key = key;
			hist_add(&s->hist, delta_us);
			return;
		}
	}

	/* No room in the probed slots: the per-CPU hash. */
	struct bio_hist_key hk = { .dev = dev, .op = op, .from = from };
	struct bio_hist *h = bpf_map_lookup_elem(&block_io_latency, &hk);
	if (!h) {
		__u32 zero = 0;
		struct bio_hist *z = bpf_map_lookup_elem(&bio_zero, &zero);
		if (!z)
			return;
		/* Sets this CPU's copy; the kernel zeroes the other CPUs'. */
		bpf_map_update_elem(&block_io_latency, &hk, z, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&block_io_latency, &hk);
		if (!h)
			return; /* map full: this device/op is not timed */
	}
	hist_add(h, delta_us);
}

#endif /* NODEWATCH_BLOCKIO_H */
