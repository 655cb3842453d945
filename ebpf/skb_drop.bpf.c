// SPDX-License-Identifier: GPL-2.0-only
/*
 * Packet drops by the kernel's own drop reason: tracepoint/skb/kfree_skb
 * fires for every freed-as-dropped skb with an enum skb_drop_reason (since
 * v5.17); consumed packets go to consume_skb and are not seen here. User
 * space names the reasons from the running kernel's BTF.
 *
 * Core reasons (small numbers, nearly every drop) are counted in a per-CPU
 * array slot: the verifier inlines the lookup, so the hot path is a bounds
 * check, an address computation and an increment. Only subsystem reasons
 * (high 16 bits set) pay for the hash below.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "nodewatch.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NW_SKB_DROP_CORE_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} skb_drop_core SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, NW_SKB_DROP_MAX_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} skb_drops SEC(".maps");

/* The rare path: a reason outside the array (inlined, but behind a branch the hot path jumps over). */
static __always_inline int count_other(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&skb_drops, &reason);
	if (v) {
		*v += 1; /* per-CPU value */
		return 0;
	}
	__u64 one = 1;
	if (bpf_map_update_elem(&skb_drops, &reason, &one, BPF_NOEXIST) != 0) {
		/* Full, or another CPU inserted it first: count in the overflow slot or retry once. */
		v = bpf_map_lookup_elem(&skb_drops, &reason);
		if (v) {
			*v += 1;
			return 0;
		}
		reason = NW_SKB_DROP_OVERFLOW_KEY;
		v = bpf_map_lookup_elem(&skb_drops, &reason);
		if (v)
			*v += 1;
		else
			bpf_map_update_elem(&skb_drops, &reason, &one, BPF_NOEXIST);
	}
	return 0;
}

static __always_inline int count(__u32 reason)
{
	if (reason < NW_SKB_DROP_CORE_SLOTS) {
		__u64 *v = bpf_map_lookup_elem(&skb_drop_core, &reason);
		if (v)
			*v += 1; /* per-CPU slot: no other writer, no atomic needed */
		return 0;
	}
	return count_other(reason);
}

SEC("tracepoint/skb/kfree_skb")
int skb_kfree_skb(struct trace_event_raw_kfree_skb *ctx)
{
	return count(ctx->reason);
}

/*
 * The same count where the classic tracepoint cannot be attached (no
 * tracefs events under lockdown=confidentiality): the reason is the third
 * argument, TP_PROTO(struct sk_buff *skb, void *location, enum
 * skb_drop_reason reason, ...) since v5.17. No pointer is followed.
 */
SEC("tp_btf/kfree_skb")
int skb_kfree_skb_btf(__u64 *ctx)
{
	return count((__u32)ctx[2]);
}
