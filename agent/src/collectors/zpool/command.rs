//! The `zpool` command lines, best form first, and the search for the one
//! this host's `zpool` accepts.

use crate::collector::CollectError;
use crate::sys::command::{CommandError, CommandRunner};

/// `zpool status` forms, best first: JSON with exact numbers (OpenZFS 2.3+),
/// text with exact numbers (`-p`, ZoL 0.7+ and OpenZFS), plain text (the
/// legacy FreeBSD ≤ 12 `zpool`, which knows neither option).
pub(super) const STATUS_JSON_ARGS: &[&str] = &["status", "-j", "-p"];
pub(super) const STATUS_TEXT_ARGS: &[&str] = &["status", "-p"];
pub(super) const STATUS_LEGACY_ARGS: &[&str] = &["status"];
pub(super) const STATUS_FORMS: &[&[&str]] =
    &[STATUS_JSON_ARGS, STATUS_TEXT_ARGS, STATUS_LEGACY_ARGS];

/// `zpool list` forms, best first: exact numbers, then the `%`/`x` form.
pub(super) const LIST_ARGS: &[&str] = &[
    "list",
    "-Hp",
    "-o",
    "name,health,size,alloc,free,fragmentation,capacity,dedupratio",
];
pub(super) const LIST_LEGACY_ARGS: &[&str] = &[
    "list",
    "-H",
    "-o",
    "name,health,size,alloc,free,fragmentation,capacity,dedupratio",
];
pub(super) const LIST_FORMS: &[&[&str]] = &[LIST_ARGS, LIST_LEGACY_ARGS];

/// Directories searched for `zpool` besides `PATH`: the agent may run with a
/// minimal environment (rc.d, a container), and the binary lives in `/sbin`
/// (FreeBSD, most Linux) or `/usr/local/sbin` (ports).
pub(super) const ZPOOL_DIRS: &[&str] =
    &["/sbin", "/usr/sbin", "/usr/local/sbin", "/bin", "/usr/bin"];

/// Which form of a command works on this host, found by trying them in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Form {
    /// Not known yet: try from the first.
    Unknown,
    Known(usize),
}

/// Runs the forms of a command from the known one (or the first), moving on
/// when one is rejected (non-zero exit: an unknown option prints usage and
/// exits 2) or when `parse` rejects its output. A form is remembered once
/// its output parses, so later collections run one command.
pub(super) fn run_forms<T>(
    runner: &dyn CommandRunner,
    program: &str,
    forms: &[&[&str]],
    known: &mut Form,
    parse: impl Fn(usize, &str) -> Option<T>,
) -> Result<Option<T>, CollectError> {
    let start = match *known {
        Form::Known(i) => i,
        Form::Unknown => 0,
    };
    let mut last_err = None;
    for (i, args) in forms.iter().enumerate().skip(start) {
        match runner.run(program, args) {
            // No such program: ZFS is not installed.
            Ok(None) => return Ok(None),
            Ok(Some(out)) => {
                if let Some(v) = parse(i, &out) {
                    *known = Form::Known(i);
                    return Ok(Some(v));
                }
            }
            Err(e @ CommandError::Failed { .. }) if *known == Form::Unknown => last_err = Some(e),
            Err(e) => return Err(CollectError::Other(e.to_string())),
        }
    }
    match last_err {
        Some(e) => Err(CollectError::Other(e.to_string())),
        None => Ok(None),
    }
}
