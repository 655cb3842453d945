//! Finding tracefs, through whose `events/` classic tracepoints are
//! attached, and mounting it where no one has.

use std::path::Path;

/// Directories aya looks in for tracefs (`aya::programs::utils::find_tracefs_path`).
const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// What one of [`TRACEFS_DIRS`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TracefsDir {
    /// tracefs with its `events/`: classic tracepoints can be attached.
    Events,
    /// tracefs is mounted but lists no events: lockdown=confidentiality
    /// (`LOCKDOWN_TRACEFS`) has the kernel create none of its files.
    Empty,
    /// Something else (nothing mounted, or another filesystem).
    NotTracefs,
}

/// What to do about tracefs, from what each directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TracefsPlan {
    Use(&'static str),
    /// Mount tracefs at the first directory, then look again.
    Mount,
    /// No usable tracefs; the reason. Classic tracepoints are skipped,
    /// `tp_btf` programs (attached by BTF name) are still tried.
    Without(String),
}

fn plan_tracefs(found: [TracefsDir; 2], mount_allowed: bool, root: bool) -> TracefsPlan {
    if let Some(i) = found.iter().position(|f| *f == TracefsDir::Events) {
        return TracefsPlan::Use(TRACEFS_DIRS[i]);
    }
    // Mounted but empty: mounting again would fail (EBUSY: the same
    // superblock on the same mount point) and would list nothing more.
    if let Some(i) = found.iter().position(|f| *f == TracefsDir::Empty) {
        return TracefsPlan::Without(format!(
            "tracefs at {} lists no events (the kernel hides them under lockdown=confidentiality)",
            TRACEFS_DIRS[i]
        ));
    }
    let target = TRACEFS_DIRS[0];
    if !mount_allowed {
        TracefsPlan::Without(format!(
            "tracefs is not mounted at {target} and mounting it is disabled"
        ))
    } else if !root {
        TracefsPlan::Without(format!(
            "tracefs is not mounted at {target} and the agent is not root to mount it (mount -t tracefs tracefs {target})"
        ))
    } else {
        TracefsPlan::Mount
    }
}

/// What `dir` holds: tracefs is recognised by its filesystem magic, not by
/// whether it can be listed (under lockdown=confidentiality it is empty).
fn look_at_tracefs(dir: &str) -> TracefsDir {
    let listable = |d: &Path| {
        std::fs::read_dir(d)
            .ok()
            .and_then(|mut e| e.next())
            .is_some()
    };
    if listable(&Path::new(dir).join("events")) {
        TracefsDir::Events
    } else if nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TRACEFS_MAGIC)
    {
        TracefsDir::Empty
    } else {
        TracefsDir::NotTracefs
    }
}

/// The tracefs directory whose `events/` classic tracepoints are attached
/// through, mounting tracefs when none is (minimal systems, and this
/// project's build machine, boot without it). `Err`: why there is none.
pub(super) fn ensure_tracefs(mount_allowed: bool) -> Result<&'static str, String> {
    let look = || TRACEFS_DIRS.map(look_at_tracefs);
    match plan_tracefs(look(), mount_allowed, nix::unistd::geteuid().is_root()) {
        TracefsPlan::Use(dir) => Ok(dir),
        TracefsPlan::Without(why) => Err(why),
        TracefsPlan::Mount => {
            let target = TRACEFS_DIRS[0];
            nix::mount::mount(
                Some("tracefs"),
                target,
                Some("tracefs"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(|e| format!("mounting tracefs at {target}: {e}"))?;
            tracing::info!(path = target, "Mounted tracefs for tracepoint programs.");
            match plan_tracefs(look(), false, false) {
                TracefsPlan::Use(dir) => Ok(dir),
                TracefsPlan::Without(why) => Err(why),
                TracefsPlan::Mount => Err(format!("tracefs at {target} is empty after mounting")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracefs_mounted_but_empty_is_not_mounted_again() {
        use TracefsDir::{Empty, Events, NotTracefs};
        // lockdown=confidentiality: tracefs is mounted (by the system, as
        // Talos does) but lists nothing. Mounting it again failed with EBUSY
        // and turned every program off; now only classic tracepoints go.
        let plan = plan_tracefs([Empty, NotTracefs], true, true);
        assert!(
            matches!(&plan, TracefsPlan::Without(why) if why.contains("/sys/kernel/tracing") && why.contains("confidentiality")),
            "{plan:?}"
        );
        assert!(matches!(
            plan_tracefs([NotTracefs, Empty], true, true),
            TracefsPlan::Without(_)
        ));
        assert_eq!(
            plan_tracefs([Empty, Events], true, true),
            TracefsPlan::Use("/sys/kernel/debug/tracing")
        );
        assert_eq!(
            plan_tracefs([Events, NotTracefs], false, false),
            TracefsPlan::Use("/sys/kernel/tracing")
        );
        assert_eq!(
            plan_tracefs([NotTracefs, NotTracefs], true, true),
            TracefsPlan::Mount
        );
        assert!(matches!(
            plan_tracefs([NotTracefs, NotTracefs], false, true),
            TracefsPlan::Without(why) if why.contains("disabled")
        ));
        assert!(matches!(
            plan_tracefs([NotTracefs, NotTracefs], true, false),
            TracefsPlan::Without(why) if why.contains("not root")
        ));
    }

    #[test]
    fn tracefs_of_this_host() {
        // A plain directory is not tracefs, however it is listed.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("events")).unwrap();
        std::fs::write(dir.path().join("events/x"), "").unwrap();
        assert_eq!(
            look_at_tracefs(dir.path().to_str().unwrap()),
            TracefsDir::Events
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            look_at_tracefs(empty.path().to_str().unwrap()),
            TracefsDir::NotTracefs
        );
        // Where the host has tracefs mounted (tests/run.sh does), it is seen with its events.
        if nix::sys::statfs::statfs("/sys/kernel/tracing")
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TRACEFS_MAGIC)
        {
            assert_eq!(look_at_tracefs("/sys/kernel/tracing"), TracefsDir::Events);
        }
    }
}
