//! Host-wide state the tests change: the lock that keeps such tests apart
//! from the others of their binary, and memory cgroups in which processes
//! are OOM-killed for real.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Cargo runs the tests of one binary side by side. A test that changes what
/// every process on the host sees (the kernel's OOM-kill counter, network
/// namespaces and firewall rules, memory cgroups) or that is
/// timing-sensitive holds this for writing, so it runs alone; every other
/// test of a binary that has such tests holds it for reading.
static HOST: RwLock<()> = RwLock::new(());

/// Held while a test runs alone: see [`host_exclusive`].
#[must_use = "the host is held only while the guard lives"]
pub struct HostExclusive {
    _guard: RwLockWriteGuard<'static, ()>,
}

/// Held while a test runs beside others that leave the host as it is: see
/// [`host_shared`].
#[must_use = "the host is held only while the guard lives"]
pub struct HostShared {
    _guard: RwLockReadGuard<'static, ()>,
}

/// The host to oneself: no other test of this binary runs until the guard
/// drops. (A test that failed while holding it does not block the rest.)
pub fn host_exclusive() -> HostExclusive {
    HostExclusive {
        _guard: HOST.write().unwrap_or_else(PoisonError::into_inner),
    }
}

/// The host shared with other tests that leave it as it is.
pub fn host_shared() -> HostShared {
    HostShared {
        _guard: HOST.read().unwrap_or_else(PoisonError::into_inner),
    }
}

/// A memory cgroup (v1 `memory` controller, or v2 where that is what is
/// mounted) with a limit, removed on drop. `None` where neither is available.
pub struct MemCgroup {
    pub dir: PathBuf,
}

impl MemCgroup {
    /// `nodewatch-<tag>-<pid>` limited to `limit` bytes, with swap closed so
    /// a process over the limit is OOM-killed rather than paged out.
    #[must_use]
    pub fn new(tag: &str, limit: u64) -> Option<Self> {
        let name = format!("nodewatch-{tag}-{}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), "memory.limit_in_bytes")
        } else if PathBuf::from("/sys/fs/cgroup/cgroup.controllers").exists() {
            (PathBuf::from("/sys/fs/cgroup").join(&name), "memory.max")
        } else {
            return None;
        };
        std::fs::create_dir(&dir).ok()?;
        let cg = Self { dir };
        std::fs::write(cg.dir.join(limit_file), limit.to_string()).ok()?;
        let _ = std::fs::write(cg.dir.join("memory.swappiness"), "0");
        let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
        let _ = std::fs::write(
            cg.dir.join("memory.memsw.limit_in_bytes"),
            limit.to_string(),
        );
        Some(cg)
    }

    /// A process in this cgroup that grows until the kernel kills it:
    /// `tail` of an endless file without newlines keeps everything it reads.
    #[must_use]
    pub fn hog(&self) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec tail /dev/zero",
                self.dir.join("cgroup.procs").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
