// SPDX-License-Identifier: GPL-2.0-only
/*
 * Block I/O latency per device and operation from one program at
 * completion, with no in-flight map: tp_btf/block_rq_complete hands over
 * the struct request itself, which carries the kernel's own timestamps.
 *
 *  - rq->io_start_time_ns: when the driver was handed the request, stamped
 *    in blk_mq_start_request() right after block_rq_issue fires, but only
 *    on queues that keep I/O statistics (QUEUE_FLAG_STATS: writeback
 *    throttling, which most devices have on by default, io.latency, polling
 *    statistics). Reset to 0 at every request allocation, so 0 means "not
 *    stamped". Used when set: the same issue-to-completion interval as the
 *    classic tracepoint pair (blockio.bpf.c).
 *  - rq->start_time_ns: when the request was allocated for its first bio
 *    (blk_mq_rq_time_init()), 0 when nothing needs it (no iostats, no
 *    scheduler, no stats; always for passthrough on recent kernels). It is
 *    what /proc/diskstats' time spent doing I/O counts from
 *    (blk_account_io_done(): now - start_time_ns), so it includes time in
 *    the plug, the I/O scheduler and waiting for a tag. Used when the issue
 *    time is not stamped, and labelled so (NW_BIO_FROM_ALLOC).
 *  - both 0: the request is not timed.
 *
 * Both stamps come from ktime_get_ns() (possibly the plug's cached copy of
 * it, blk_time_get_ns()), the clock bpf_ktime_get_ns() reads.
 *
 * Pointer reads are BTF-checked loads (no bpf_probe_read), which the agent
 * does not attempt under lockdown=confidentiality; there, and on kernels
 * whose request_queue has no disk pointer (before v5.15), the loader uses
 * blockio.bpf.o instead.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "nodewatch.h"
#include "blockio.h"

char LICENSE[] SEC("license") = "GPL";

/* include/linux/blk_types.h: the operation is the low REQ_OP_BITS (8) of cmd_flags. */
#define NW_REQ_OP_MASK 0xff
/* include/linux/kdev_t.h: the kernel-internal dev_t the classic record carries. */
#define NW_MINORBITS 20

/* REQ_OP_* to NW_BIO_OP_*, as blk_fill_rwbs() would letter them for the classic program. */
static __always_inline __u32 op_of(__u32 cmd_flags)
{
	__u32 op = cmd_flags & NW_REQ_OP_MASK;

	switch (op) {
	case 0: /* REQ_OP_READ */
		return NW_BIO_OP_READ;
	case 1: /* REQ_OP_WRITE */
		return NW_BIO_OP_WRITE;
	case 2: /* REQ_OP_FLUSH */
		return NW_BIO_OP_FLUSH;
	case 3: /* REQ_OP_DISCARD */
	case 5: /* REQ_OP_SECURE_ERASE */
		return NW_BIO_OP_DISCARD;
	}
	/* rwbs letters a zone append 'W' too. */
	if (bpf_core_enum_value_exists(enum req_op, REQ_OP_ZONE_APPEND) &&
	    op == bpf_core_enum_value(enum req_op, REQ_OP_ZONE_APPEND))
		return NW_BIO_OP_WRITE;
	return NW_BIO_OP_OTHER;
}

/* TP_PROTO(struct request *rq, blk_status_t error, unsigned int nr_bytes) */
SEC("tp_btf/block_rq_complete")
int block_rq_complete_btf(__u64 *ctx)
{
	struct request *rq = (struct request *)ctx[0];
	unsigned int nr_bytes = (unsigned int)ctx[2];
	__u32 from = NW_BIO_FROM_ISSUE;
	__u64 start;

	if (!rq)
		return 0;
	/*
	 * blk_update_request() fires this for every partial completion, with
	 * __data_len still the bytes outstanding: time the request once, at
	 * the call that completes it.
	 */
	if (nr_bytes < rq->__data_len)
		return 0;
	start = rq->io_start_time_ns;
	if (!start) {
		start = rq->start_time_ns;
		from = NW_BIO_FROM_ALLOC;
		if (!start)
			return 0;
	}
	__u64 now = bpf_ktime_get_ns();

	/* The classic record's dev: disk_devt(rq->q->disk), 0 without a disk. */
	struct gendisk *disk = rq->q->disk;
	__u32 dev = disk ? ((__u32)disk->major << NW_MINORBITS) | (__u32)disk->first_minor : 0;

	record(dev, op_of(rq->cmd_flags), from, now > start ? now - start : 0);
	return 0;
}
