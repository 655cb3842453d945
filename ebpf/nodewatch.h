/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Records and map layouts shared between the BPF programs in this folder and
 * the agent (the modules in agent/src/ebpf mirror each struct as #[repr(C)] with a
 * size assertion; change both sides together).
 */
#ifndef NODEWATCH_H
#define NODEWATCH_H

/* TASK_COMM_LEN, include/linux/sched.h (16 since Linux 2.6). */
#define NW_COMM_LEN 16

/*
 * OOM ring buffer size. One record is 96 bytes plus an 8-byte ring header;
 * an OOM storm kills at most a few hundred tasks per second, so 64 KiB
 * (~630 records) absorbs a burst while user space is scheduled. Must be a
 * power of two multiple of the page size (kernel/bpf/ringbuf.c).
 */
#define NW_OOM_RINGBUF_BYTES (64 * 1024)

/* oom_event.flags: which optional fields the running kernel provided. */
#define NW_OOM_HAVE_RSS 0x1  /* anon/file/shmem_rss: not in older kernels' record; probed with bpf_core_field_exists */
#define NW_OOM_HAVE_UID 0x2  /* uid: added to the record after rss; probed the same way */
#define NW_OOM_HAVE_COMM 0x4 /* comm read from the record (needs bpf_probe_read_kernel) */
#define NW_OOM_HAVE_SCORE_ADJ 0x8 /* oom_score_adj: added with the rss fields */

/* One OOM kill, from tracepoint/oom/mark_victim (mm/oom_kill.c). */
struct oom_event {
	__u64 ktime_ns;          /* bpf_ktime_get_ns() at mark_victim */
	__u64 anon_rss_kb;       /* victim's MM_ANONPAGES in KiB */
	__u64 file_rss_kb;       /* MM_FILEPAGES */
	__u64 shmem_rss_kb;      /* MM_SHMEMPAGES */
	__u64 killer_cgroup_id;  /* cgroup v2 id of the task that ran the OOM killer */
	__u32 pid;               /* victim pid (the tracepoint's task->pid) */
	__u32 uid;               /* victim's uid */
	__u32 killer_tgid;       /* process that ran the OOM killer (often the victim for memcg OOMs) */
	__u32 flags;             /* NW_OOM_HAVE_* */
	char comm[NW_COMM_LEN];  /* victim's comm */
	char killer_comm[NW_COMM_LEN];
	__s32 oom_score_adj;     /* victim's, -1000..1000 */
	__u32 _pad;
};

/*
 * Victims remembered by the tp_btf program until user space reads them.
 * An OOM storm on a large node kills at most hundreds of tasks before the
 * reader catches up (it runs within milliseconds); LRU eviction drops the
 * oldest beyond this.
 */
#define NW_OOM_VICTIMS 1024

/* What tp_btf/mark_victim can see that the classic record lacks. */
struct oom_victim {
	__u64 memcg_id;          /* kernfs id of the victim's memory cgroup (0: none) */
	__u32 tgid;
	__u32 _pad;
	char comm[NW_COMM_LEN];
};

/* tcp_counters array indexes. */
#define NW_TCP_RETRANSMIT 0
#define NW_TCP_RESET_SENT 1
#define NW_TCP_RESET_RECEIVED 2
#define NW_TCP_COUNTERS 3

/*
 * Peers tracked for the per-peer view. LRU: a node talking to more peers
 * keeps the most recently active ones; user space exports only the busiest
 * (MAX_PEER_SERIES in agent/src/ebpf/tcp.rs) to bound series.
 */
#define NW_TCP_PEERS 1024

/* AF_INET, AF_INET6 (include/linux/socket.h). */
#define NW_AF_INET 2
#define NW_AF_INET6 10

struct tcp_peer_key {
	__u8 addr[16];   /* IPv4 in the first 4 bytes, rest zero */
	__u32 family;    /* NW_AF_INET or NW_AF_INET6 */
};

struct tcp_peer_counts {
	__u64 counts[NW_TCP_COUNTERS]; /* indexed like tcp_counters */
};

/*
 * Drop reasons counted in a per-CPU array indexed by the reason itself: an
 * array lookup is inlined by the verifier into an address computation, where
 * a hash lookup is a call that hashes the key and walks a bucket. enum
 * skb_drop_reason has 128 core values in v6.18 (SKB_DROP_REASON_MAX, include/net/dropreason-core.h,
 * a few more each release); 256 slots leave room for years of them.
 */
#define NW_SKB_DROP_CORE_SLOTS 256

/*
 * Reasons at or above NW_SKB_DROP_CORE_SLOTS: the subsystem ranges in the
 * high 16 bits (SKB_DROP_REASON_SUBSYS_MASK, include/net/dropreason.h:
 * mac80211, openvswitch) and any core value past the array. They go to a
 * per-CPU hash bounded at 1024 distinct reasons; a reason seen when that is
 * full is counted under NW_SKB_DROP_OVERFLOW_KEY.
 */
#define NW_SKB_DROP_MAX_REASONS 1024
#define NW_SKB_DROP_OVERFLOW_KEY 0xffffffffu

/* Block I/O operations (first letter of the tracepoint's rwbs, blk_fill_rwbs() in block/blktrace.c). */
#define NW_BIO_OP_READ 0
#define NW_BIO_OP_WRITE 1
#define NW_BIO_OP_DISCARD 2
#define NW_BIO_OP_FLUSH 3
#define NW_BIO_OP_OTHER 4

/*
 * log2 latency slots in microseconds: slot i counts [2^i, 2^(i+1)) us; the
 * last slot (2^27 us = 134 s) takes everything slower, well past the block
 * layer's default 30 s request timeout (BLK_DEFAULT_SG_TIMEOUT).
 */
#define NW_BIO_SLOTS 28

/*
 * In-flight requests tracked between issue and completion by the classic
 * tracepoint pair (blockio.bpf.c; the tp_btf program needs no such map). A queue holds at
 * most nr_requests (default 256 per hardware queue, BLKDEV_DEFAULT_RQ in
 * include/linux/blkdev.h); 16384 covers 64 such queues. An LRU map: when
 * full, the oldest start is dropped (that request is not timed).
 */
#define NW_BIO_INFLIGHT 16384

/*
 * Distinct (device, op, from) histograms in the per-CPU hash
 * block_io_latency: 5 ops x ~200 devices. The hash takes only what the
 * slot table below has no room for.
 */
#define NW_BIO_HISTS 1024

/*
 * Per-CPU slot table (block_io_slots) in front of that hash: a completion
 * finds its histogram by a multiplicative hash of the packed key and up to
 * NW_BIO_SLOT_PROBES linear probes in a per-CPU array, whose lookups the
 * verifier inlines, instead of hashing the key and walking a bucket. A
 * node has a few disks x 2-4 ops x (mostly) one start point: 32 slots
 * hold ~20 series with room to spare for probing. The table is
 * preallocated: 32 x 248 bytes = 7.75 KiB per possible CPU (2 MiB at 256
 * CPUs). Each CPU claims slots in its own copy (one writer), so two CPUs
 * may put one key in different slots; user space sums by key.
 */
#define NW_BIO_SLOTS_TABLE_BITS 5
#define NW_BIO_SLOTS_TABLE (1 << NW_BIO_SLOTS_TABLE_BITS)
#define NW_BIO_SLOT_PROBES 4

struct bio_start_key {
	__u64 sector;
	__u32 dev;  /* kernel dev_t: major << 20 | minor */
	__u32 _pad;
};

/*
 * Where a histogram's interval starts (bio_hist_key.from). Both end at
 * block_rq_complete.
 *  ISSUE: the driver was handed the request (block_rq_issue; in the tp_btf
 *         program rq->io_start_time_ns, stamped at the same point in
 *         blk_mq_start_request() when the queue keeps I/O statistics, e.g.
 *         for writeback throttling).
 *  ALLOC: the request was allocated for its first bio (rq->start_time_ns,
 *         the start of the kernel's own diskstats time): includes time in
 *         the plug, the I/O scheduler and waiting for a driver tag. Used by
 *         the tp_btf program only where the issue time is not stamped.
 */
#define NW_BIO_FROM_ISSUE 0
#define NW_BIO_FROM_ALLOC 1

struct bio_hist_key {
	__u32 dev;
	__u32 op;   /* NW_BIO_OP_* */
	__u32 from; /* NW_BIO_FROM_* */
};

struct bio_hist {
	__u64 slots[NW_BIO_SLOTS];
	__u64 sum_us;
	__u64 count;
};

/*
 * A bio_hist_key packed into the slot table's key, non-zero for a claimed
 * slot: dev in the high 32 bits, NW_BIO_SLOT_USED, op in bits 1-3, from in
 * bit 0.
 */
#define NW_BIO_SLOT_USED (1ULL << 31)
#define NW_BIO_SLOT_KEY(dev, op, from) \
	(((__u64)(dev) << 32) | NW_BIO_SLOT_USED | ((__u64)((op) & 0x7) << 1) | ((from) & 0x1))

struct bio_slot {
	__u64 key;  /* NW_BIO_SLOT_KEY, 0: free */
	struct bio_hist hist;
};

/* The agent asserts the same sizes on its #[repr(C)] mirrors. */
_Static_assert(sizeof(struct oom_event) == 96, "oom_event layout");
_Static_assert(sizeof(struct oom_victim) == 32, "oom_victim layout");
_Static_assert(sizeof(struct tcp_peer_key) == 20, "tcp_peer_key layout");
_Static_assert(sizeof(struct tcp_peer_counts) == 24, "tcp_peer_counts layout");
_Static_assert(sizeof(struct bio_start_key) == 16, "bio_start_key layout");
_Static_assert(sizeof(struct bio_hist_key) == 12, "bio_hist_key layout");
_Static_assert(sizeof(struct bio_hist) == 240, "bio_hist layout");
_Static_assert(sizeof(struct bio_slot) == 248, "bio_slot layout");

#endif /* NODEWATCH_H */
