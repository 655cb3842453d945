//! OOM kills from FreeBSD's kernel log.
//!
//! FreeBSD's page daemon logs every process it kills for lack of memory
//! (`sys/vm/vm_pageout.c`, `vm_pageout_oom`):
//!
//! ```text
//! pid %d (%s), jid %d, uid %d, was killed: %s
//! ```
//!
//! with the reason `out of swap space`, `failed to reclaim memory` or `a
//! thread waited too long to allocate a page`; releases before 12.0 print
//! `pid %d (%s), uid %d, was killed: out of swap space` (no jail id). syslogd
//! writes it as `<date> <host> kernel: pid …`. Each such line becomes one
//! `OomKill` event with `source = "kmsg"` and `constraint = "global"` (the
//! FreeBSD page daemon has no per-cgroup OOM).
//!
//! [`KernelLogCollector`] follows a log file incrementally: it starts at the
//! end (kills from before the agent started were reported by the previous
//! run), reads only complete new lines, and starts over at offset 0 when the
//! file is replaced or truncated (newsyslog rotation, OPNsense's daily
//! `latest.log` link).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use nodewatch_proto::v1::{event, OomKill};

use crate::collector::{CollectError, Collector, Sink};

/// Log files tried in order: OPNsense's syslog-ng system log, then FreeBSD's
/// default `/var/log/messages` (`/etc/syslog.conf`).
pub const LOG_PATHS: &[&str] = &["/var/log/system/latest.log", "/var/log/messages"];

/// At most this much new log is read per collection; a burst beyond it is
/// read in the following ones, so one huge write cannot stall the agent.
pub const MAX_READ_BYTES: u64 = 1 << 20;

const SOURCE: &str = "kmsg";

/// Parses one FreeBSD kernel log line; `None` when it is not an OOM kill.
#[must_use]
pub fn parse_freebsd_line(line: &str) -> Option<OomKill> {
    let (head, reason) = line.split_once(", was killed: ")?;
    // The message is at the end of a syslog line; `pid ` starts it.
    let start = head.rfind("pid ")?;
    let rest = &head[start + 4..];
    let (pid, rest) = rest.split_once(" (")?;
    let pid: u32 = pid.parse().ok()?;
    // The command name may itself contain `), `; the fields after it never do.
    let (comm, fields) = rest.rsplit_once("), ")?;
    let mut jail_id = 0;
    let mut uid = None;
    for field in fields.split(", ") {
        match field.split_once(' ') {
            Some(("jid", v)) => jail_id = v.parse().ok()?,
            Some(("uid", v)) => uid = Some(v.parse().ok()?),
            _ => return None,
        }
    }
    Some(OomKill {
        pid,
        tgid: pid,
        comm: comm.to_string(),
        uid: uid?,
        jail_id,
        reason: reason.trim().to_string(),
        source: SOURCE.to_string(),
        constraint: "global".to_string(),
        ..OomKill::default()
    })
}

/// Where the follower stands in the current file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    /// Identity of the file (device, inode), to notice replacement.
    id: (u64, u64),
    offset: u64,
}

/// Follows a kernel log file and turns OOM kill lines into events.
pub struct KernelLogCollector {
    candidates: Vec<PathBuf>,
    parse: fn(&str) -> Option<OomKill>,
    position: Option<Position>,
}

impl KernelLogCollector {
    /// Follows the first existing file of `candidates` (checked each
    /// collection), parsing lines with `parse`.
    #[must_use]
    pub fn new(candidates: Vec<PathBuf>, parse: fn(&str) -> Option<OomKill>) -> Self {
        Self {
            candidates,
            parse,
            position: None,
        }
    }
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(unix)]
impl Collector for KernelLogCollector {
    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let Some(path) = self.candidates.iter().find(|p| p.is_file()).cloned() else {
            return Ok(());
        };
        let mut file = std::fs::File::open(&path).map_err(|e| CollectError::io(&path, e))?;
        let meta = file.metadata().map_err(|e| CollectError::io(&path, e))?;
        let id = file_id(&meta);
        let offset = match self.position {
            // First sight: skip history, report only what happens from now on.
            None => {
                self.position = Some(Position {
                    id,
                    offset: meta.len(),
                });
                return Ok(());
            }
            Some(p) if p.id == id && p.offset <= meta.len() => p.offset,
            // Rotated or truncated: the new file is all news.
            Some(_) => 0,
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| CollectError::io(&path, e))?;
        let mut buf = Vec::new();
        file.take(MAX_READ_BYTES)
            .read_to_end(&mut buf)
            .map_err(|e| CollectError::io(&path, e))?;
        // Only complete lines; a line being written is read next time.
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in String::from_utf8_lossy(&buf[..complete]).lines() {
            if let Some(kill) = (self.parse)(line) {
                sink.event(event::Kind::OomKill(kill));
            }
        }
        self.position = Some(Position {
            id,
            offset: offset + complete as u64,
        });
        Ok(())
    }
}

#[cfg(target_os = "freebsd")]
pub const SPEC: crate::collector::CollectorSpec =
    crate::collector::CollectorSpec::new("oomlog", |paths| {
        Ok(Box::new(KernelLogCollector::new(
            LOG_PATHS.iter().map(|p| paths.root(p)).collect(),
            parse_freebsd_line,
        )))
    });

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::collectors::testutil::{fixture_text, fuzz_inputs};

    /// Lines in `vm_pageout_oom`'s format as syslogd writes them, one per reason,
    /// a pre-12 line without jid, and a command name with `), ` in it.
    const FREEBSD_LOG: &str = "\
Nov 25 10:01:02 fw kernel: pid 4242 (php-cgi), jid 0, uid 0, was killed: out of swap space
Nov 25 10:01:03 fw kernel: pid 77 (unbound), jid 3, uid 59, was killed: failed to reclaim memory
Nov 25 10:01:04 fw kernel: pid 91 (python3.11), jid 0, uid 0, was killed: a thread waited too long to allocate a page
Nov 25 10:01:05 fw kernel: pid 12 (odd), name), uid 1001, was killed: out of swap space
Nov 25 10:01:06 fw kernel: swap_pager_getswapspace(32): failed
Nov 25 10:01:07 fw kernel: pid 5 (x), jid zero, uid 0, was killed: out of swap space
";

    #[test]
    fn freebsd_lines() {
        let kills: Vec<OomKill> = FREEBSD_LOG.lines().filter_map(parse_freebsd_line).collect();
        assert_eq!(kills.len(), 4);
        let k = &kills[0];
        assert_eq!(
            (k.pid, k.comm.as_str(), k.uid, k.jail_id),
            (4242, "php-cgi", 0, 0)
        );
        assert_eq!(k.reason, "out of swap space");
        assert_eq!(
            (k.source.as_str(), k.constraint.as_str()),
            ("kmsg", "global")
        );
        assert_eq!(
            (kills[1].jail_id, kills[1].uid, kills[1].reason.as_str()),
            (3, 59, "failed to reclaim memory")
        );
        assert_eq!(
            kills[2].reason,
            "a thread waited too long to allocate a page"
        );
        assert_eq!((kills[3].comm.as_str(), kills[3].uid), ("odd), name", 1001));
    }

    fn kills(sink: &Sink) -> Vec<u32> {
        sink.events
            .iter()
            .filter_map(|e| match e {
                event::Kind::OomKill(k) => Some(k.pid),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn follows_appends_partial_lines_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages");
        let mut lines = FREEBSD_LOG.lines();
        std::fs::write(&path, format!("{}\n", lines.next().unwrap())).unwrap();
        let mut c = KernelLogCollector::new(
            vec![dir.path().join("missing"), path.clone()],
            parse_freebsd_line,
        );

        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(
            sink.events.is_empty(),
            "history before start is not replayed"
        );

        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let second = lines.next().unwrap();
        let (a, b) = second.split_at(20);
        f.write_all(a.as_bytes()).unwrap();
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(sink.events.is_empty(), "half a line waits");
        writeln!(f, "{b}").unwrap();
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert_eq!(kills(&sink), [77]);

        // newsyslog: the old file is renamed away, a new one created.
        std::fs::rename(&path, dir.path().join("messages.0")).unwrap();
        std::fs::write(&path, format!("{}\n", lines.next().unwrap())).unwrap();
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert_eq!(kills(&sink), [91]);
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(sink.events.is_empty(), "each line once");
    }

    #[test]
    fn no_log_is_no_data() {
        let mut c =
            KernelLogCollector::new(vec!["/nonexistent/messages".into()], parse_freebsd_line);
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        assert!(sink.events.is_empty());
    }

    #[test]
    fn never_panics() {
        let seeds = [
            FREEBSD_LOG.to_string(),
            fixture_text("oom/cadvisor-v1-docker-memcg-oom-kernel4.8-part2.log"),
            fixture_text("oom/cadvisor-single-lines.log"),
        ];
        for input in fuzz_inputs(&seeds, 0x0077) {
            for line in input.lines() {
                let _ = parse_freebsd_line(line);
            }
            let _ = parse_freebsd_line(&input);
        }
    }
}
