//! `node_selinux_enabled` (0 where SELinux is not mounted: Debian, Talos),
//! and, where it is, `node_selinux_{config,current}_mode` from selinuxfs.

use std::path::PathBuf;

use crate::collector::{CollectError, Collector, CollectorSpec, Paths, Sink, Unavailable};
use crate::collectors::{read_optional, read_trimmed};

pub const SPEC: CollectorSpec = CollectorSpec::new("selinux", build);

pub fn build(paths: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(SelinuxCollector {
        enforce: paths.sys("fs/selinux/enforce"),
        config: paths.root("/etc/selinux/config"),
    }))
}

pub struct SelinuxCollector {
    enforce: PathBuf,
    config: PathBuf,
}

/// `SELINUX=` of `/etc/selinux/config` as the library's mode number
/// (enforcing 1, permissive 0, disabled -1).
#[must_use]
pub fn config_mode(text: &str) -> f64 {
    for line in text.lines() {
        if let Some(v) = line.trim().strip_prefix("SELINUX=") {
            return match v.trim() {
                "enforcing" => 1.0,
                "permissive" => 0.0,
                _ => -1.0,
            };
        }
    }
    -1.0
}

impl Collector for SelinuxCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let Some(enforce) = read_trimmed(&self.enforce)? else {
            sink.gauge(
                "node_selinux_enabled",
                "SELinux is enabled, 1 is true, 0 is false",
                &[],
                0.0,
            );
            return Ok(());
        };
        sink.gauge(
            "node_selinux_enabled",
            "SELinux is enabled, 1 is true, 0 is false",
            &[],
            1.0,
        );
        let config = read_optional(&self.config)?.map_or(-1.0, |t| config_mode(&t));
        sink.gauge(
            "node_selinux_config_mode",
            "Configured SELinux enforcement mode",
            &[],
            config,
        );
        let current = if enforce == "1" { 1.0 } else { 0.0 };
        sink.gauge(
            "node_selinux_current_mode",
            "Current SELinux enforcement mode",
            &[],
            current,
        );
        Ok(())
    }
}
