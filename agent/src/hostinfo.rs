//! What the agent says about its host in Hello.

use nodewatch_proto::v1::Hello;

use crate::collector::Paths;

/// Builds the Hello for this host and agent instance.
#[must_use]
pub fn hello(paths: &Paths, node: &str, collectors: Vec<String>, interval_ms: u64) -> Hello {
    let boot_id = std::fs::read_to_string(paths.proc("sys/kernel/random/boot_id")).map_or_else(
        |_| format!("boot-{}", sysinfo::System::boot_time().unwrap_or(0)),
        |s| s.trim().to_string(),
    );
    let instance_id = format!("{:016x}", rand::random::<u64>());
    Hello {
        agent_version: nodewatch_proto::VERSION.to_string(),
        node: node.to_string(),
        os: std::env::consts::OS.to_string(),
        os_pretty: sysinfo::System::long_os_version().unwrap_or_default(),
        kernel: sysinfo::System::kernel_version().unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        boot_id,
        instance_id,
        collectors,
        resume_from: 1,
        interval_ms,
    }
}

/// The host name, as a fallback node name.
#[must_use]
pub fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|_| "localhost".to_string())
}
