/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The few kernel types the programs read, written by hand as CO-RE
 * definitions instead of committing a full vmlinux.h (2.8 MB for v6.18).
 * Every struct carries preserve_access_index, so the loader relocates each
 * field against the running kernel's BTF (/sys/kernel/btf/vmlinux): the
 * offsets below only need the right names and types, not the right layout.
 *
 * How they were taken (Linux 6.18):
 *   bpftool btf dump file /sys/kernel/btf/vmlinux format c > /tmp/vmlinux.h
 *   grep -A14 '^struct trace_event_raw_mark_victim {' /tmp/vmlinux.h   # and the others below
 * and cross-checked with /sys/kernel/tracing/events/<group>/<event>/format.
 * A hand list keeps the review surface small and the build independent of
 * the build host's kernel.
 */
#ifndef NODEWATCH_VMLINUX_MIN_H
#define NODEWATCH_VMLINUX_MIN_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef __u32 u32;
typedef __u32 uid_t;
typedef __u32 dev_t;
typedef __u64 sector_t;

/* UAPI values, include/uapi/linux/bpf.h (stable ABI). */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_HASH = 5,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

enum {
	BPF_F_NO_PREALLOC = 1,
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* include/linux/trace_events.h */
struct trace_entry {
	unsigned short type;
	unsigned char flags;
	unsigned char preempt_count;
	int pid;
};

/* include/trace/events/oom.h, TRACE_EVENT(mark_victim). */
struct trace_event_raw_mark_victim {
	struct trace_entry ent;
	int pid;
	u32 __data_loc_comm;
	unsigned long total_vm;
	unsigned long anon_rss;
	unsigned long file_rss;
	unsigned long shmem_rss;
	uid_t uid;
	unsigned long pgtables;
	short oom_score_adj;
};

/*
 * include/net/dropreason-core.h. Values are not listed: user space names them
 * from the running kernel's BTF; CO-RE only needs the field to be an enum.
 */
enum skb_drop_reason {
	SKB_DROP_REASON_NOT_SPECIFIED = 2,
};

/*
 * include/trace/events/tcp.h. tcp_retransmit_skb has its own record on
 * v6.18; older kernels share the tcp_event_sk_skb class (same fields).
 */
struct trace_event_raw_tcp_retransmit_skb {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
	int state;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

struct trace_event_raw_tcp_event_sk_skb {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
	int state;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

/* DECLARE_EVENT_CLASS(tcp_event_sk): tcp_receive_reset, tcp_destroy_sock. */
struct trace_event_raw_tcp_event_sk {
	struct trace_entry ent;
	const void *skaddr;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

/* TRACE_EVENT(tcp_send_reset) since v6.10: addresses as struct sockaddr_in/in6. */
struct trace_event_raw_tcp_send_reset {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
	int state;
	__u8 saddr[28];
	__u8 daddr[28];
};

/* include/trace/events/skb.h, TRACE_EVENT(kfree_skb); reason since v5.17. */
struct trace_event_raw_kfree_skb {
	struct trace_entry ent;
	void *skbaddr;
	void *location;
	unsigned short protocol;
	enum skb_drop_reason reason;
};

/* include/trace/events/block.h, DECLARE_EVENT_CLASS(block_rq) (block_rq_issue). */
struct trace_event_raw_block_rq {
	struct trace_entry ent;
	dev_t dev;
	sector_t sector;
	unsigned int nr_sector;
	unsigned int bytes;
	char rwbs[10];
};

/* DECLARE_EVENT_CLASS(block_rq_completion) (block_rq_complete); older kernels name the class block_rq_with_error. */
struct trace_event_raw_block_rq_completion {
	struct trace_entry ent;
	dev_t dev;
	sector_t sector;
	unsigned int nr_sector;
	int error;
	char rwbs[10];
};

/* The older name of the completion class (same fields). */
struct trace_event_raw_block_rq_with_error {
	struct trace_entry ent;
	dev_t dev;
	sector_t sector;
	unsigned int nr_sector;
	int error;
	char rwbs[10];
};

/*
 * The request handed to tp_btf/block_rq_complete (TP_PROTO(struct request
 * *rq, blk_status_t error, unsigned int nr_bytes) on v6.18; include/linux/
 * blk-mq.h, blkdev.h). request_queue.disk exists since v5.15 (earlier
 * kernels fail the relocation and get the classic tracepoint pair).
 */
struct gendisk {
	int major;
	int first_minor;
};

struct request_queue {
	struct gendisk *disk;
};

struct request {
	struct request_queue *q;
	__u32 cmd_flags;          /* blk_opf_t: REQ_OP_* in the low REQ_OP_BITS */
	unsigned int __data_len;  /* bytes not yet completed */
	__u64 start_time_ns;      /* allocation, 0 when not stamped (blk_mq_rq_time_init) */
	__u64 io_start_time_ns;   /* issue, 0 unless the queue keeps stats (blk_mq_start_request) */
};

/*
 * The path from a task to its memory cgroup's kernfs id, for the tp_btf
 * program (include/linux/sched.h, cgroup-defs.h, kernfs.h). kernfs_node.id
 * is a u64 since v5.5 and is what cgroupfs shows as the directory's inode
 * number. The subsys array length only has to cover memory_cgrp_id.
 */
struct kernfs_node {
	__u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct cgroup_subsys_state {
	struct cgroup *cgroup;
};

struct css_set {
	struct cgroup_subsys_state *subsys[8];
};

/*
 * include/linux/mm_types.h since v6.2: one percpu_counter per MM_* counter
 * (MM_FILEPAGES 0, MM_ANONPAGES 1, MM_SHMEMPAGES 3); count is what
 * get_mm_counter() reads, in pages. Before v6.2 the counters were a struct
 * mm_rss_stat, listed only so its presence can be tested.
 */
struct percpu_counter {
	__s64 count;
};

struct mm_struct {
	struct percpu_counter rss_stat[4];
};

struct mm_rss_stat {
	long count[4];
};

struct signal_struct {
	short oom_score_adj;
};

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	struct css_set *cgroups;
	struct mm_struct *mm;
	struct signal_struct *signal;
};

/*
 * include/net/sock.h: the peer of a socket, for the tp_btf TCP programs.
 * In the kernel skc_daddr sits in an anonymous struct in an anonymous
 * union; CO-RE matches it by name through those.
 */
struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
};

struct sock_common {
	__u32 skc_daddr;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
};

struct sock {
	struct sock_common __sk_common;
};

#pragma clang attribute pop

/*
 * include/linux/blk_types.h. Only the value that moved is listed: 13 in the
 * older enum req_opf (v5.8), 7 in enum req_op on v6.18; it is relocated with
 * bpf_core_enum_value behind bpf_core_enum_value_exists (a kernel with the
 * old enum name gets zone appends under "other"). READ 0, WRITE 1, FLUSH 2,
 * DISCARD 3, SECURE_ERASE 5 are the same in both.
 */
enum req_op {
	REQ_OP_ZONE_APPEND = 7,
};

/* include/linux/cgroup_subsys.h order; relocated with bpf_core_enum_value. */
enum cgroup_subsys_id {
	memory_cgrp_id = 4,
};

#endif /* NODEWATCH_VMLINUX_MIN_H */
