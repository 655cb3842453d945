//! Which container a process or cgroup belongs to (Linux): the tables the
//! OOM sources ([`crate::oom`]) and the Kubernetes reader ([`crate::kube`])
//! share.
//!
//! # Layout
//! - [`cgroup`]: `/proc/<pid>/cgroup` and cgroup path → pod UID / container id,
//!   memory cgroup limits and usage, per-memcg OOM kill counters.
//! - [`pods`]: pod UID / container id → namespace, pod and container names
//!   (a cache of the kubelet's pod list, filled by [`crate::kube`]).

pub mod cgroup;
pub mod pods;
