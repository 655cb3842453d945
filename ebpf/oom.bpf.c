// SPDX-License-Identifier: GPL-2.0-only
/*
 * OOM kills as they happen: tracepoint/oom/mark_victim fires once per victim
 * in mark_oom_victim() (mm/oom_kill.c), for memcg and global OOMs alike and
 * for any process, not only a container's main process.
 *
 * The tracepoint runs in the context of the task that invoked the OOM killer,
 * not of the victim, so "current" helpers describe the killer; the victim is
 * only what the record carries (pid, comm, rss, uid). User space attributes
 * the victim's cgroup from /proc/<pid>/cgroup while the process exits.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "nodewatch.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * Set by the loader. Zero under lockdown=confidentiality, where
 * bpf_probe_read_kernel is refused (security/lockdown, LOCKDOWN_BPF_READ_KERNEL):
 * the verifier then prunes the branch that calls it, and the victim's comm
 * comes from /proc instead.
 */
const volatile __u32 cfg_read_kernel = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, NW_OOM_RINGBUF_BYTES);
} oom_events SEC(".maps");

/* Records lost because the ring buffer was full (index 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} oom_events_lost SEC(".maps");

/* Filled by oom_victim_memcg, read and deleted by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NW_OOM_VICTIMS);
	__type(key, __u32);
	__type(value, struct oom_victim);
} oom_victims SEC(".maps");

SEC("tracepoint/oom/mark_victim")
int oom_mark_victim(struct trace_event_raw_mark_victim *ctx)
{
	struct oom_event *ev = bpf_ringbuf_reserve(&oom_events, sizeof(*ev), 0);
	if (!ev) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&oom_events_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->pid = ctx->pid;
	if (bpf_core_field_exists(ctx->anon_rss)) {
		ev->anon_rss_kb = ctx->anon_rss;
		ev->file_rss_kb = ctx->file_rss;
		ev->shmem_rss_kb = ctx->shmem_rss;
		ev->flags |= NW_OOM_HAVE_RSS;
	}
	if (bpf_core_field_exists(ctx->oom_score_adj)) {
		ev->oom_score_adj = ctx->oom_score_adj;
		ev->flags |= NW_OOM_HAVE_SCORE_ADJ;
	}
	if (bpf_core_field_exists(ctx->uid)) {
		ev->uid = ctx->uid;
		ev->flags |= NW_OOM_HAVE_UID;
	}
	if (cfg_read_kernel && bpf_core_field_exists(ctx->__data_loc_comm)) {
		/* __data_loc: low 16 bits are the string's offset in the record. */
		__u32 loc = ctx->__data_loc_comm;
		if (bpf_probe_read_kernel_str(ev->comm, sizeof(ev->comm),
					      (void *)ctx + (loc & 0xffff)) > 0)
			ev->flags |= NW_OOM_HAVE_COMM;
	}
	ev->killer_tgid = bpf_get_current_pid_tgid() >> 32;
	ev->killer_cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(ev->killer_comm, sizeof(ev->killer_comm));
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/*
 * The same tracepoint as a BTF-typed raw tracepoint, which hands over the
 * victim's task_struct itself (TP_PROTO(struct task_struct *task, uid_t uid)
 * on v6.18): its memory cgroup, which /proc can no longer tell once the
 * victim is exiting (proc_cgroup_show() prints "/" for an exiting task on
 * cgroup v1 hierarchies). Pointer walks here are BTF-checked loads, which
 * the loader does not attempt under lockdown=confidentiality. Kernels whose
 * mark_victim still has TP_PROTO(int pid) hand over a scalar: the verifier
 * refuses the dereference, and this optional program is skipped.
 */
SEC("tp_btf/mark_victim")
int oom_victim_memcg(__u64 *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx[0];
	struct oom_victim v = {};
	__u32 pid;
	int memcg = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);

	if (!task)
		return 0;
	pid = task->pid;
	v.tgid = task->tgid;
	__builtin_memcpy(v.comm, task->comm, sizeof(v.comm));
	if (memcg >= 0 && memcg < 8) {
		struct css_set *cset = task->cgroups;
		struct cgroup_subsys_state *css = cset ? cset->subsys[memcg] : 0;
		struct cgroup *cg = css ? css->cgroup : 0;
		struct kernfs_node *kn = cg ? cg->kn : 0;
		if (kn)
			v.memcg_id = kn->id;
	}
	bpf_map_update_elem(&oom_victims, &pid, &v, BPF_ANY);
	return 0;
}

/*
 * The ring record where the classic tracepoint cannot be attached: under
 * lockdown=confidentiality tracefs creates no files (LOCKDOWN_TRACEFS), so
 * there is no event id to attach tracepoint/oom/mark_victim by. A tp_btf
 * program is attached by its BTF name alone, and BTF-checked loads from its
 * arguments are not bpf_probe_read_kernel (the helper lockdown refuses), so
 * it loads there. Since v6.8 (and in some stable updates of older series,
 * e.g. Debian's 6.1.176) the tracepoint hands over the victim's task_struct
 * and uid; before, only the pid (TP_PROTO(int pid)). The
 * record's rss fields came with that change, so their presence tells which
 * one this kernel passes. rss (v6.2+ counters, read as the classic record's
 * get_mm_counter() does) and oom_score_adj come from the task as well.
 */
SEC("tp_btf/mark_victim")
int oom_mark_victim_btf(__u64 *ctx)
{
	struct oom_event *ev = bpf_ringbuf_reserve(&oom_events, sizeof(*ev), 0);
	if (!ev) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&oom_events_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ktime_ns = bpf_ktime_get_ns();
	if (bpf_core_field_exists(((struct trace_event_raw_mark_victim *)0)->anon_rss)) {
		struct task_struct *task = (struct task_struct *)ctx[0];
		if (task) {
			struct mm_struct *mm = task->mm;
			struct signal_struct *sig = task->signal;
			ev->pid = task->pid;
			__builtin_memcpy(ev->comm, task->comm, sizeof(ev->comm));
			ev->flags |= NW_OOM_HAVE_COMM;
			/* As the classic record: get_mm_counter() in KiB (4 KiB pages). */
			if (mm && !bpf_core_type_exists(struct mm_rss_stat)) {
				__s64 anon = mm->rss_stat[1].count;
				__s64 file = mm->rss_stat[0].count;
				__s64 shmem = mm->rss_stat[3].count;
				ev->anon_rss_kb = anon > 0 ? anon << 2 : 0;
				ev->file_rss_kb = file > 0 ? file << 2 : 0;
				ev->shmem_rss_kb = shmem > 0 ? shmem << 2 : 0;
				ev->flags |= NW_OOM_HAVE_RSS;
			}
			if (sig) {
				ev->oom_score_adj = sig->oom_score_adj;
				ev->flags |= NW_OOM_HAVE_SCORE_ADJ;
			}
		}
		ev->uid = (__u32)ctx[1];
		ev->flags |= NW_OOM_HAVE_UID;
	} else {
		ev->pid = (__u32)ctx[0];
	}
	ev->killer_tgid = bpf_get_current_pid_tgid() >> 32;
	ev->killer_cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(ev->killer_comm, sizeof(ev->killer_comm));
	bpf_ringbuf_submit(ev, 0);
	return 0;
}
