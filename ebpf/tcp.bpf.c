// SPDX-License-Identifier: GPL-2.0-only
/*
 * TCP retransmits and resets, counted per CPU. Only the event is counted,
 * no record field is read, so the programs attach on every kernel that has
 * the tracepoints whatever their record layout (on v6.18 the retransmit
 * record is trace_event_raw_tcp_retransmit_skb, earlier kernels share
 * trace_event_raw_tcp_event_sk_skb). The loader skips the reset programs
 * where those tracepoints do not exist.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include "nodewatch.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NW_TCP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} tcp_counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&tcp_counters, &idx);
	if (v)
		*v += 1; /* per-CPU slot: no other writer, no atomic needed */
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tcp_retransmit_skb(void *ctx)
{
	count(NW_TCP_RETRANSMIT);
	return 0;
}

SEC("tracepoint/tcp/tcp_send_reset")
int tcp_send_reset(void *ctx)
{
	count(NW_TCP_RESET_SENT);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int tcp_receive_reset(void *ctx)
{
	count(NW_TCP_RESET_RECEIVED);
	return 0;
}
