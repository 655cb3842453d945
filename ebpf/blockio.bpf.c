// SPDX-License-Identifier: GPL-2.0-only
/*
 * Block I/O latency per device and operation, issue to completion, as log2
 * histograms in the kernel (the biolatency approach of bcc/ebpf_exporter).
 *
 * The fallback for kernels where blockio_btf.bpf.c cannot load (before
 * v5.15, or lockdown=confidentiality): it pays for an in-flight map, an
 * update at every issue and a lookup and delete at every completion.
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
#include "blockio.h"

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

static __always_inline int complete(__u32 dev, __u64 sector, char c0, char c1)
{
	struct bio_start_key key = { .sector = sector, .dev = dev };
	__u64 *start = bpf_map_lookup_elem(&bio_start, &key);
	if (!start)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	/* Read before the delete: the element may be reused once freed. */
	__u64 delta_ns = now > *start ? now - *start : 0;
	bpf_map_delete_elem(&bio_start, &key);
	record(dev, op_of(c0, c1), NW_BIO_FROM_ISSUE, delta_ns);
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
