//! The kernel's lockdown mode (`/sys/kernel/security/lockdown`): under
//! `confidentiality` BPF may not read kernel memory and tracefs lists no
//! events, so the loader picks program variants and attach kinds by it.

use crate::collector::Paths;

/// Kernel lockdown mode (`/sys/kernel/security/lockdown`, Linux 5.4+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lockdown {
    None,
    Integrity,
    /// BPF may not read kernel memory (`LOCKDOWN_BPF_READ_KERNEL`): Talos
    /// with `SecureBoot` up to 1.13.
    Confidentiality,
}

/// Parses `none [integrity] confidentiality`: the bracketed word is in force.
#[must_use]
pub fn parse_lockdown(text: &str) -> Option<Lockdown> {
    let start = text.find('[')?;
    let end = start + text.get(start..)?.find(']')?;
    match text.get(start + 1..end)? {
        "none" => Some(Lockdown::None),
        "integrity" => Some(Lockdown::Integrity),
        "confidentiality" => Some(Lockdown::Confidentiality),
        _ => None,
    }
}

/// The lockdown mode in force, from `/sys/kernel/security/lockdown` (mounting
/// securityfs when it is not). `None` when it cannot be read (kernel without
/// the lockdown LSM, or not root): the loader then tries and falls back.
#[must_use]
pub fn lockdown(paths: &Paths) -> Option<Lockdown> {
    let file = paths.sys("kernel/security/lockdown");
    let read = || {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| parse_lockdown(&t))
    };
    if let Some(l) = read() {
        return Some(l);
    }
    // securityfs is not always mounted (minimal images, containers that
    // bind /sys without it): mount it when root, as systemd would.
    let dir = paths.sys("kernel/security");
    let empty = std::fs::read_dir(&dir).is_ok_and(|mut e| e.next().is_none());
    if empty && nix::unistd::geteuid().is_root() {
        if let Err(error) = nix::mount::mount(
            Some("securityfs"),
            &dir,
            Some("securityfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            tracing::debug!(%error, path = %dir.display(), "Could not mount securityfs.");
        }
    }
    read()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_modes() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n"),
            Some(Lockdown::Integrity)
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality\n"),
            Some(Lockdown::None)
        );
        assert_eq!(
            parse_lockdown("none integrity [confidentiality]\n"),
            Some(Lockdown::Confidentiality)
        );
        assert_eq!(parse_lockdown("none integrity confidentiality"), None);
        assert_eq!(parse_lockdown("]["), None);
        assert_eq!(parse_lockdown("[bogus]"), None);
    }

    #[test]
    fn lockdown_fuzz_no_panic() {
        let seed = b"none [integrity] confidentiality\n";
        for i in 0..seed.len() {
            for j in i..=seed.len() {
                let s = String::from_utf8_lossy(&seed[i..j]);
                let _ = parse_lockdown(&s);
                let mut m = seed.to_vec();
                m[i] = b"[]\xff "[j % 4];
                let _ = parse_lockdown(&String::from_utf8_lossy(&m));
            }
        }
    }
}
