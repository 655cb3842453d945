//! One module per kernel source; [`registry`] lists them all.

use crate::collector::CollectorSpec;

pub mod zfs;
pub mod zpool;

/// Every collector this build knows, in the order they run.
#[must_use]
#[allow(clippy::vec_init_then_push, reason = "entries are added per target OS")]
pub fn registry() -> Vec<CollectorSpec> {
    let mut specs = vec![];
    // ZFS kstats exist only on Linux (`/proc/spl`); FreeBSD has them as sysctls (`freebsd::arc`).
    #[cfg(target_os = "linux")]
    specs.push(zfs::SPEC);
    specs.push(zpool::SPEC);
    #[cfg(target_os = "freebsd")]
    specs.extend(crate::freebsd::specs());
    specs
}
