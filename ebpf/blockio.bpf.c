// SPDX-License-Identifier: GPL-2.0-only
/*
 * Block I/O latency per device and operation, issue to completion, as log2
 * histograms in the kernel (the biolatency approach of bcc/ebpf_exporter).
 *
 * The classic block_rq_issue/block_rq_complete tracepoints do not carry the
 * struct request pointer, so a request is keyed by (dev, sector); only the
 * record is read, which keeps the program loadable under
 * lockdown=confidentiality. Two requests in flight on the same sector of the
 * same device (flushes all have sector 0) share a slot: the later issue wins.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "nodewatch.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * LRU: a request whose completion is never seen (requeued and reissued
 * under another sector, a device torn down mid-flight) would otherwise stay
 * forever and, once the map is full, stop all timing.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NW_BIO_INFLIGHT);
	__type(key, struct bio_start_key);
	__type(value, __u64);
} bio_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NW_BIO_HISTS);
	__type(key, struct bio_hist_key);
	__type(value, struct bio_hist);
} block_io_latency SEC(".maps");

/* Scratch space for a new histogram (too large for the 512-byte stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bio_hist);
} bio_zero SEC(".maps");

SEC("tracepoint/block/block_rq_issue")
int block_rq_issue(struct trace_event_raw_block_rq *ctx)
{
	struct bio_start_key key = {
		.sector = ctx->sector,
		.dev = ctx->dev,
	};
	__u64 ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&bio_start, &key, &ts, BPF_ANY);
	return 0;
}

static __always_inline __u32 op_of(char c0, char c1)
{
	/* rwbs: an optional leading 'F' (REQ_PREFLUSH), then the operation. */
	char c = c0 == 'F' && (c1 == 'W' || c1 == 'R' || c1 == 'D') ? c1 : c0;
	switch (c) {
	case 'R':
		return NW_BIO_OP_READ;
	case 'W':
		return NW_BIO_OP_WRITE;
	case 'D':
		return NW_BIO_OP_DISCARD;
	case 'F':
		return NW_BIO_OP_FLUSH;
	default:
		return NW_BIO_OP_OTHER;
	}
}

static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 slot = 0;
#pragma unroll
	for (int i = 0; i < NW_BIO_SLOTS - 1; i++) {
		if (v >= 2) {
			v >>= 1;
			slot++;
		}
	}
	return slot;
}

static __always_inline int complete(__u32 dev, __u64 sector, char c0, char c1)
{
	struct bio_start_key key = { .sector = sector, .dev = dev };
	__u64 *start = bpf_map_lookup_elem(&bio_start, &key);
	if (!start)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 delta_us = now > *start ? (now - *start) / 1000 : 0;
	bpf_map_delete_elem(&bio_start, &key);

	struct bio_hist_key hk = { .dev = dev, .op = op_of(c0, c1) };
	struct bio_hist *h = bpf_map_lookup_elem(&block_io_latency, &hk);
	if (!h) {
		__u32 zero = 0;
		struct bio_hist *z = bpf_map_lookup_elem(&bio_zero, &zero);
		if (!z)
			return 0;
		bpf_map_update_elem(&block_io_latency, &hk, z, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&block_io_latency, &hk);
		if (!h)
			return 0; /* map full: this device/op is not timed */
	}
	__u32 slot = log2_slot(delta_us);
	if (slot >= NW_BIO_SLOTS)
		slot = NW_BIO_SLOTS - 1;
	__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->sum_us, delta_us);
	__sync_fetch_and_add(&h->count, 1);
	return 0;
}

SEC("tracepoint/block/block_rq_complete")
int block_rq_complete(void *ctx)
{
	if (bpf_core_type_exists(struct trace_event_raw_block_rq_completion)) {
		struct trace_event_raw_block_rq_completion *r = ctx;
		return complete(r->dev, r->sector, r->rwbs[0], r->rwbs[1]);
	}
	struct trace_event_raw_block_rq_with_error *r = ctx;
	return complete(r->dev, r->sector, r->rwbs[0], r->rwbs[1]);
}
