// SPDX-License-Identifier: GPL-2.0-only
/*
 * TCP retransmits and resets: totals in per-CPU counters, and per peer
 * address in a bounded LRU map. Only record fields are read (CO-RE
 * relocated), so the programs load under lockdown=confidentiality. On v6.18
 * the retransmit record is trace_event_raw_tcp_retransmit_skb; earlier
 * kernels share trace_event_raw_tcp_event_sk_skb. The loader skips the
 * reset programs where those tracepoints do not exist.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "nodewatch.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NW_TCP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} tcp_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NW_TCP_PEERS);
	__type(key, struct tcp_peer_key);
	__type(value, struct tcp_peer_counts);
} tcp_peers SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&tcp_counters, &idx);
	if (v)
		*v += 1; /* per-CPU slot: no other writer, no atomic needed */
}

static __always_inline void count_peer(struct tcp_peer_key *key, __u32 idx)
{
	if (key->family != NW_AF_INET && key->family != NW_AF_INET6)
		return;
	if (idx >= NW_TCP_COUNTERS)
		return;
	struct tcp_peer_counts *c = bpf_map_lookup_elem(&tcp_peers, key);
	if (!c) {
		/*
		 * A new peer is inserted with its first count already in: one
		 * hash operation instead of insert-zero-then-look-up-again. A
		 * reset storm from a scan is mostly new peers.
		 */
		struct tcp_peer_counts first = {};
		first.counts[idx] = 1;
		if (bpf_map_update_elem(&tcp_peers, key, &first, BPF_NOEXIST) == 0)
			return;
		/* Another CPU inserted it first: add to its entry. */
		c = bpf_map_lookup_elem(&tcp_peers, key);
		if (!c)
			return;
	}
	__sync_fetch_and_add(&c->counts[idx], 1);
}

/*
 * Record layouts with fixed offsets (no preserve_access_index), read only
 * after the CO-RE-relocated offsets of the running kernel's record are
 * checked equal to these. The verifier allows only constant-offset loads
 * from the context, and a CO-RE array access compiles to a load through a
 * computed pointer ("dereference of modified ctx ptr"); fixed offsets give
 * plain constant loads, with no bpf_probe_read (fine under lockdown).
 * Offsets are those of /sys/kernel/tracing/events/tcp/<event>/format on
 * v6.18, unchanged since the address fields were added (v4.15-v4.16).
 *
 * The address arrays carry the alignment their offsets have (2, or 4 for the
 * sockaddr), so the copies below compile to 16- and 32-bit loads rather than
 * one load per byte; the verifier accepts naturally aligned context loads.
 */
#define A2 __attribute__((aligned(2)))
#define A4 __attribute__((aligned(4)))

struct rec_sk_skb_fixed {           /* tcp_retransmit_skb (tcp_event_sk_skb before v6.x) */
	__u8 _head[32];
	__u16 family;                   /* 32 */
	__u8 saddr[4] A2;               /* 34 */
	__u8 daddr[4] A2;               /* 38 */
	__u8 saddr_v6[16] A2;           /* 42 */
	__u8 daddr_v6[16] A2;           /* 58 */
};

struct rec_sk_fixed {               /* tcp_event_sk: tcp_receive_reset */
	__u8 _head[20];
	__u16 family;                   /* 20 */
	__u8 saddr[4] A2;               /* 22 */
	__u8 daddr[4] A2;               /* 26 */
	__u8 saddr_v6[16] A2;           /* 30 */
	__u8 daddr_v6[16] A2;           /* 46 */
};

struct rec_send_reset_fixed {       /* tcp_send_reset since v6.10 */
	__u8 _head[60];
	__u8 daddr[28] A4;              /* 60: struct sockaddr_in / sockaddr_in6 of the peer */
};

/* The alignment attributes must not move a field. */
_Static_assert(__builtin_offsetof(struct rec_sk_skb_fixed, daddr_v6) == 58, "rec_sk_skb_fixed layout");
_Static_assert(__builtin_offsetof(struct rec_sk_fixed, daddr_v6) == 46, "rec_sk_fixed layout");
_Static_assert(__builtin_offsetof(struct rec_send_reset_fixed, daddr) == 60, "rec_send_reset_fixed layout");

#define SAME_LAYOUT(type, fixed)                                                        \
	(bpf_core_field_offset(type, family) == __builtin_offsetof(fixed, family) &&    \
	 bpf_core_field_offset(type, daddr) == __builtin_offsetof(fixed, daddr) &&      \
	 bpf_core_field_offset(type, daddr_v6) == __builtin_offsetof(fixed, daddr_v6))

/* Fills key from a fixed-layout record with family, daddr, daddr_v6. */
#define PEER_FROM_RECORD(key, r)                                        \
	do {                                                            \
		(key).family = (r)->family;                             \
		if ((key).family == NW_AF_INET)                         \
			__builtin_memcpy((key).addr, (r)->daddr, 4);    \
		else                                                    \
			__builtin_memcpy((key).addr, (r)->daddr_v6, 16); \
	} while (0)

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tcp_retransmit_skb(void *ctx)
{
	struct rec_sk_skb_fixed *r = ctx;
	struct tcp_peer_key key = {};
	int known = 0;

	count(NW_TCP_RETRANSMIT);
	if (bpf_core_type_exists(struct trace_event_raw_tcp_retransmit_skb))
		known = SAME_LAYOUT(struct trace_event_raw_tcp_retransmit_skb, struct rec_sk_skb_fixed);
	else if (bpf_core_type_exists(struct trace_event_raw_tcp_event_sk_skb))
		known = SAME_LAYOUT(struct trace_event_raw_tcp_event_sk_skb, struct rec_sk_skb_fixed);
	if (known) {
		PEER_FROM_RECORD(key, r);
		count_peer(&key, NW_TCP_RETRANSMIT);
	}
	return 0;
}

SEC("tracepoint/tcp/tcp_send_reset")
int tcp_send_reset(void *ctx)
{
	count(NW_TCP_RESET_SENT);
	/*
	 * daddr is the peer (the record swaps the incoming packet's addresses
	 * when there is no socket). Older kernels recorded this event in the
	 * tcp_event_sk_skb layout and get no per-peer view here.
	 */
	if (bpf_core_type_exists(struct trace_event_raw_tcp_send_reset) &&
	    bpf_core_field_offset(struct trace_event_raw_tcp_send_reset, daddr) ==
		    __builtin_offsetof(struct rec_send_reset_fixed, daddr)) {
		struct rec_send_reset_fixed *r = ctx;
		struct tcp_peer_key key = {};
		/* sa_family is host-endian: a 16-bit load reads it as is. */
		__u16 family;
		__builtin_memcpy(&family, r->daddr, sizeof(family));
		key.family = family;
		if (key.family == NW_AF_INET)
			__builtin_memcpy(key.addr, &r->daddr[4], 4);   /* sin_addr */
		else
			__builtin_memcpy(key.addr, &r->daddr[8], 16);  /* sin6_addr */
		count_peer(&key, NW_TCP_RESET_SENT);
	}
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int tcp_receive_reset(void *ctx)
{
	struct rec_sk_fixed *r = ctx;
	struct tcp_peer_key key = {};

	count(NW_TCP_RESET_RECEIVED);
	if (bpf_core_type_exists(struct trace_event_raw_tcp_event_sk) &&
	    SAME_LAYOUT(struct trace_event_raw_tcp_event_sk, struct rec_sk_fixed)) {
		PEER_FROM_RECORD(key, r);
		count_peer(&key, NW_TCP_RESET_RECEIVED);
	}
	return 0;
}

/*
 * tp_btf twins, attached where the classic tracepoints cannot be: under
 * lockdown=confidentiality tracefs creates no files, so there is no event id
 * to attach by (LOCKDOWN_TRACEFS). The tracepoints' arguments are the socket
 * (and skb); the peer is read from the socket with BTF-checked loads, which
 * lockdown allows (it refuses the bpf_probe_read_kernel helper only).
 * tcp_send_reset has no socket for a segment to a closed port: counted in
 * the total, with no peer (its address is in the skb's IP header, which
 * only bpf_probe_read_kernel could read).
 */
static __always_inline void count_sock_peer(const struct sock *sk, __u32 idx)
{
	struct tcp_peer_key key = {};

	if (!sk)
		return;
	key.family = sk->__sk_common.skc_family;
	if (key.family == NW_AF_INET) {
		__u32 a = sk->__sk_common.skc_daddr;
		__builtin_memcpy(key.addr, &a, 4);
	} else if (key.family == NW_AF_INET6) {
		__builtin_memcpy(key.addr, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
	}
	count_peer(&key, idx);
}

SEC("tp_btf/tcp_retransmit_skb")
int tcp_retransmit_skb_btf(__u64 *ctx)
{
	count(NW_TCP_RETRANSMIT);
	count_sock_peer((const struct sock *)ctx[0], NW_TCP_RETRANSMIT);
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int tcp_send_reset_btf(__u64 *ctx)
{
	count(NW_TCP_RESET_SENT);
	count_sock_peer((const struct sock *)ctx[0], NW_TCP_RESET_SENT);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int tcp_receive_reset_btf(__u64 *ctx)
{
	count(NW_TCP_RESET_RECEIVED);
	count_sock_peer((const struct sock *)ctx[0], NW_TCP_RESET_RECEIVED);
	return 0;
}
