//! The spool: every collection is kept in a bounded on-disk segment log until
//! every aggregator has acknowledged it, and for a while after (so an
//! aggregator that restarted with an empty memory gets the recent past back).
//!
//! # Format
//! `<dir>/<first seq, 20 digits>.seg` files of records (a segment started
//! for an older record written out late takes the next number instead, so
//! segments always sort oldest first)
//! `[len: u32 LE][crc32c(payload): u32 LE][payload: SpoolRecord protobuf]`.
//! A torn tail after a crash (short header, short payload, bad checksum,
//! undecodable payload) is detected at start-up and cut, never read as data.
//! `<dir>/instance` holds the agent instance id, so sequence numbers (and the
//! aggregators' dedup cursors) continue across agent restarts.
//! `<dir>/seq` holds the next seq to hand out, as 20 decimal digits and a
//! newline, rewritten in place before each record is written: sequence
//! numbers never go backwards across restarts, whatever a torn tail or the
//! cap cut from the segments (the next seq is the larger of this and the
//! newest record's seq + 1). The file keeps its size, so rewriting it needs no
//! new blocks and still works on a full disk. A stream's Welcome is the last
//! line of defence: an aggregator whose cursor is past the next seq (the seq
//! file lost with a power cut) moves it past that cursor.
//!
//! # Durability
//! Records are written with `write(2)`, so they survive an agent crash or
//! `kill -9`. A record carrying events is `fdatasync`ed at once; sample-only
//! records at most every [`SYNC_INTERVAL`], so a host power loss costs at most
//! that much of samples and no events. One fdatasync costs ~0.1–2 ms on SSDs,
//! once a second per node: negligible.
//!
//! # When full
//! Past the cap, the oldest segment goes: its records' events are first
//! copied forward into the newest segment (samples dropped), so samples are
//! dropped oldest-first and events last; every drop is counted. With a single
//! segment over the cap, that segment is sealed and a new one started first,
//! so the cap frees space whatever the count of segments.
//!
//! # When a write fails
//! A failed write (a full disk, an I/O error) is rolled back: the segment is
//! truncated to the end of its last good record, so later records are never
//! indexed at a wrong offset. If even the truncation fails, the segment is
//! sealed (its torn tail is cut at the next start) and a new one started.
//! On a full disk the spool first frees segments every aggregator has
//! acknowledged (the backfill window gives way to new data) and retries.
//! A collection that still cannot be written is kept in memory, up to
//! [`MAX_UNSPOOLED_BYTES`], and streamed like any other; once writes work
//! again it is written out, so an agent restart does not lose it. Only a
//! collection pushed out of memory before any aggregator acknowledged it is
//! lost, and counted (`reason="write_failed"`). [`Spool::write_error`] says
//! while writes fail (the agent's `/readyz` and
//! `nodewatch_agent_spool_writable`).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodewatch_proto::v1::{MetricMetadata, SpoolRecord};
use prost::Message;
use tracing::{info, warn};

use crate::batch::Collection;
use crate::collector::{Family, MetricKind, Sample};

/// Default spool folder (on Talos, `/var` is the EPHEMERAL volume and survives reboots).
pub const DEFAULT_DIR: &str = "/var/lib/nodewatch/spool";
/// Default cap on the spool's size on disk.
pub const DEFAULT_CAP_BYTES: u64 = 64 * 1024 * 1024;
/// Default time acknowledged records are kept for backfill: the aggregator's default retention.
pub const DEFAULT_RETAIN_ACKED: Duration = Duration::from_mins(15);
/// Segment size: small enough that dropping the oldest frees space in steps
/// of ~1/16 of the default cap, large enough to keep the file count low.
pub const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// How long sample-only records may sit unsynced.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Smallest segment: a small cap still drops in steps of a quarter of it.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
/// Collections kept in memory while the spool cannot write: a few minutes of
/// a large node's collections at the default interval, bounded so a full
/// disk never turns into an out-of-memory kill.
pub const MAX_UNSPOOLED_BYTES: usize = 16 * 1024 * 1024;
/// Size of the `seq` file: 20 digits and a newline.
const SEQ_FILE_BYTES: usize = 21;
/// Largest record accepted when reading; anything larger is corruption.
const MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;
const HEADER: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Debug)]
enum Body {
    Disk { seg: u64, offset: u64, len: u32 },
    Mem(Arc<Collection>),
}

#[derive(Clone, Debug)]
struct Entry {
    body: Body,
    t_ms: i64,
    samples: u32,
    events: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// End of the last good record: where the next one goes.
    bytes: u64,
    /// No more records go here (a failed rollback, or the cap rolled it).
    sealed: bool,
}

/// What opening an existing spool found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub records: usize,
    /// Bytes cut from segment tails (torn or corrupt writes).
    pub cut_bytes: u64,
}

/// Counts of what the spool dropped: `samples`/`events` because of the cap,
/// `write_failed_*` because they could not be written and left memory before
/// any aggregator acknowledged them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub samples: u64,
    pub events: u64,
    pub write_failed_samples: u64,
    pub write_failed_events: u64,
}

pub struct Spool {
    dir: Option<PathBuf>,
    cap: u64,
    retain_acked_ms: i64,
    segments: BTreeMap<u64, Segment>,
    active: Option<(u64, File)>,
    index: BTreeMap<u64, Entry>,
    cursors: Vec<u64>,
    next_seq: u64,
    instance_id: String,
    dropped: Dropped,
    last_sync: Instant,
    /// The newest collection, kept decoded: streams usually send it right away.
    hot: Option<Arc<Collection>>,
    /// Where the next seq is kept (`<dir>/seq`).
    seq_file: Option<File>,
    /// Set while writes fail: the last error.
    write_error: Option<String>,
    /// Failed writes since start.
    write_errors: u64,
    /// Largest segment before a new one is started.
    segment_bytes: u64,
}

/// The owned form of [`encode_record`]'s output (the reference it is tested against).
#[cfg(test)]
fn to_record(c: &Collection) -> SpoolRecord {
    use nodewatch_proto::v1::{Label, SpoolSample};
    SpoolRecord {
        seq: c.seq,
        t_ms: c.t_ms,
        metadata: c
            .families
            .iter()
            .map(|(name, f)| MetricMetadata {
                name: name.clone(),
                r#type: f.kind.to_proto() as i32,
                help: f.help.clone(),
            })
            .collect(),
        samples: c
            .samples
            .iter()
            .map(|s| SpoolSample {
                name: s.name.clone(),
                labels: s
                    .labels
                    .iter()
                    .map(|(k, v)| Label {
                        name: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                value: s.value,
            })
            .collect(),
        events: c.events.clone(),
    }
}

/// Encodes a collection as a `SpoolRecord` straight from its borrowed
/// strings: byte for byte what `to_record(c).encode_to_vec()` gives, without
/// copying every name and label first (the agent does this every interval).
fn encode_record(c: &Collection) -> Vec<u8> {
    use prost::encoding::{self, encode_key, encode_varint, encoded_len_varint, WireType};
    let label_len = |k: &String, v: &String| {
        encoding::string::encoded_len(1, k) + encoding::string::encoded_len(2, v)
    };
    let sample_len = |s: &Sample| {
        encoding::string::encoded_len(1, &s.name)
            + s.labels
                .iter()
                .map(|(k, v)| {
                    let l = label_len(k, v);
                    encoding::key_len(2) + encoded_len_varint(l as u64) + l
                })
                .sum::<usize>()
            + if s.value == 0.0 {
                0
            } else {
                encoding::double::encoded_len(3, &s.value)
            }
    };
    let mut buf = Vec::with_capacity(64 + c.samples.len() * 64);
    encoding::uint64::encode(1, &c.seq, &mut buf);
    encoding::int64::encode(2, &c.t_ms, &mut buf);
    for (name, f) in c.families.iter() {
        let m = MetricMetadata {
            name: name.clone(),
            r#type: f.kind.to_proto() as i32,
            help: f.help.clone(),
        };
        encoding::message::encode(3, &m, &mut buf);
    }
    for s in &c.samples {
        encode_key(4, WireType::LengthDelimited, &mut buf);
        encode_varint(sample_len(s) as u64, &mut buf);
        encoding::string::encode(1, &s.name, &mut buf);
        for (k, v) in &s.labels {
            encode_key(2, WireType::LengthDelimited, &mut buf);
            encode_varint(label_len(k, v) as u64, &mut buf);
            encoding::string::encode(1, k, &mut buf);
            encoding::string::encode(2, v, &mut buf);
        }
        // proto3 omits a zero double (prost's generated code tests `!= 0.0`, so -0.0 too).
        if s.value != 0.0 {
            encoding::double::encode(3, &s.value, &mut buf);
        }
    }
    for e in &c.events {
        encoding::message::encode(5, e, &mut buf);
    }
    buf
}

fn from_record(r: SpoolRecord) -> Collection {
    use nodewatch_proto::v1::MetricType as T;
    let families = r
        .metadata
        .into_iter()
        .map(|m| {
            let kind = match T::try_from(m.r#type).unwrap_or(T::Untyped) {
                T::Gauge => MetricKind::Gauge,
                T::Counter => MetricKind::Counter,
                T::Histogram => MetricKind::Histogram,
                _ => MetricKind::Untyped,
            };
            (m.name, Family { kind, help: m.help })
        })
        .collect();
    Collection {
        seq: r.seq,
        t_ms: r.t_ms,
        families: Arc::new(families),
        samples: r
            .samples
            .into_iter()
            .map(|s| Sample {
                name: s.name,
                labels: s.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                value: s.value,
            })
            .collect(),
        events: r.events,
    }
}

/// Parses the records of one segment; returns them, each with its offset and
/// payload length, with the offset where valid data ends (the rest is a torn
/// or corrupt tail). Public only for the fuzzer: a pure function on bytes.
#[doc(hidden)]
#[must_use]
pub fn parse_segment(data: &[u8]) -> (Vec<(u64, u32, SpoolRecord)>, u64) {
    let mut out = Vec::new();
    let mut off = 0usize;
    while let Some(header) = data.get(off..off + HEADER as usize) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD_BYTES {
            break;
        }
        let start = off + HEADER as usize;
        let Some(payload) = data.get(start..start + len as usize) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(rec) = SpoolRecord::decode(payload) else {
            break;
        };
        out.push((off as u64, len, rec));
        off = start + len as usize;
    }
    (out, off as u64)
}

/// The segment files in `dir`, oldest first (named by their first seq).
fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path();
            let first = p
                .file_name()?
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()?;
            Some((first, p))
        })
        .collect();
    names.sort();
    Ok(names)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`; `None` keeps everything in
    /// memory (lost on restart). `aggregators` is the number of cursors.
    pub fn open(
        dir: Option<&Path>,
        cap: u64,
        retain_acked: Duration,
        aggregators: usize,
    ) -> Result<(Self, Recovered), SpoolError> {
        let mut s = Spool {
            dir: dir.map(Path::to_path_buf),
            cap,
            retain_acked_ms: retain_acked.as_millis() as i64,
            segments: BTreeMap::new(),
            active: None,
            index: BTreeMap::new(),
            cursors: vec![0; aggregators],
            next_seq: 1,
            instance_id: format!("{:016x}", rand::random::<u64>()),
            dropped: Dropped::default(),
            last_sync: Instant::now(),
            hot: None,
            seq_file: None,
            write_error: None,
            write_errors: 0,
            segment_bytes: (cap / 4).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES),
        };
        let mut rec = Recovered::default();
        let Some(dir) = dir else { return Ok((s, rec)) };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        s.load_instance_id(dir)?;
        for (first, path) in segment_files(dir)? {
            s.recover_segment(first, path, &mut rec)?;
        }
        s.open_seq_file(dir)?;
        if rec.records > 0 {
            info!(
                records = rec.records,
                next_seq = s.next_seq,
                "Spool recovered; unacknowledged data will be resent."
            );
        }
        Ok((s, rec))
    }

    /// Keeps the instance id of an earlier run in `dir`, or saves this one's.
    fn load_instance_id(&mut self, dir: &Path) -> Result<(), SpoolError> {
        let id_path = dir.join("instance");
        match std::fs::read_to_string(&id_path) {
            Ok(id) if !id.trim().is_empty() => self.instance_id = id.trim().to_string(),
            _ => std::fs::write(&id_path, &self.instance_id).map_err(io(&id_path))?,
        }
        Ok(())
    }

    /// Reads one segment back into the index, cutting a torn or corrupt tail.
    fn recover_segment(
        &mut self,
        first: u64,
        path: PathBuf,
        rec: &mut Recovered,
    ) -> Result<(), SpoolError> {
        let data = std::fs::read(&path).map_err(io(&path))?;
        let (records, valid) = parse_segment(&data);
        if valid < data.len() as u64 {
            let cut = data.len() as u64 - valid;
            warn!(path = %path.display(), cut_bytes = cut, "Spool segment has a torn or corrupt tail; cut.");
            rec.cut_bytes += cut;
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            f.set_len(valid).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
        }
        for (offset, len, r) in records {
            self.next_seq = self.next_seq.max(r.seq + 1);
            // A later copy of the same seq (events carried forward) wins.
            self.index.insert(
                r.seq,
                Entry {
                    body: Body::Disk {
                        seg: first,
                        offset,
                        len,
                    },
                    t_ms: r.t_ms,
                    samples: r.samples.len() as u32,
                    events: r.events.len() as u32,
                },
            );
            rec.records += 1;
        }
        self.segments.insert(
            first,
            Segment {
                path,
                bytes: valid,
                sealed: false,
            },
        );
        Ok(())
    }

    /// Numbering never goes back: the seq file holds the next seq even when
    /// every segment that carried the last ones is gone.
    fn open_seq_file(&mut self, dir: &Path) -> Result<(), SpoolError> {
        let seq_path = dir.join("seq");
        if let Some(stored) = std::fs::read_to_string(&seq_path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            self.next_seq = self.next_seq.max(stored);
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&seq_path)
            .map_err(io(&seq_path))?;
        self.seq_file = Some(f);
        self.persist_seq(self.next_seq).map_err(io(&seq_path))
    }

    #[must_use]
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The seq the next collection gets.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    #[must_use]
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// The last write error while writes fail; `None` when the spool writes.
    #[must_use]
    pub fn write_error(&self) -> Option<&str> {
        self.write_error.as_deref()
    }

    /// Failed writes since start.
    #[must_use]
    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }

    /// Collections kept in memory only (not written to disk).
    #[must_use]
    pub fn unspooled(&self) -> usize {
        if self.dir.is_none() {
            return 0;
        }
        self.index
            .values()
            .filter(|e| matches!(e.body, Body::Mem(_)))
            .count()
    }

    /// Moves the next seq past `seq`: an aggregator has stored it, so this
    /// instance must never hand it out again (the `seq` file was lost).
    pub fn never_below(&mut self, seq: u64) {
        if seq >= self.next_seq {
            warn!(
                next_seq = self.next_seq,
                aggregator_cursor = seq,
                "An aggregator has stored seqs this spool does not remember; numbering continues after them."
            );
            self.next_seq = seq + 1;
            if let Err(error) = self.persist_seq(self.next_seq) {
                self.failed(&error.to_string());
            }
        }
    }

    /// Writes the next seq to the `seq` file, in place.
    fn persist_seq(&self, next: u64) -> std::io::Result<()> {
        let Some(f) = &self.seq_file else {
            return Ok(());
        };
        let text = format!("{next:020}\n");
        debug_assert_eq!(text.len(), SEQ_FILE_BYTES);
        f.write_all_at(text.as_bytes(), 0)
    }

    fn failed(&mut self, error: &str) {
        self.write_errors += 1;
        if self.write_error.is_none() {
            warn!(%error, "Spool cannot write; collections are kept in memory and streamed until it can.");
        }
        self.write_error = Some(error.to_string());
    }

    /// Bytes on disk.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    /// Records not yet acknowledged by aggregator `i`.
    #[must_use]
    pub fn pending(&self, i: usize) -> usize {
        let c = self.cursors.get(i).copied().unwrap_or(0);
        self.index.range(c + 1..).count()
    }

    #[must_use]
    pub fn acked(&self, i: usize) -> u64 {
        self.cursors.get(i).copied().unwrap_or(0)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Appends a collection built for the next seq; returns that seq.
    ///
    /// The collection is kept whatever happens: if it cannot be written it
    /// stays in memory (see the module doc) and the error is returned for
    /// the caller to report.
    pub fn append(&mut self, build: impl FnOnce(u64) -> Collection) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let c = Arc::new(build(seq));
        self.hot = Some(Arc::clone(&c));
        // The seq is on disk before any record carrying it.
        let seq_written = match (&self.dir, self.persist_seq(self.next_seq)) {
            (Some(dir), Err(source)) => Err(SpoolError::Io {
                path: dir.join("seq"),
                source,
            }),
            _ => Ok(()),
        };
        let stored = self.store(&c);
        let r = seq_written.and(stored);
        match &r {
            Ok(()) => {
                if self.write_error.take().is_some() {
                    info!(
                        write_errors = self.write_errors,
                        "Spool writes again; collections kept in memory are written out."
                    );
                }
                self.write_out_unspooled();
            }
            Err(e) => self.failed(&e.to_string()),
        }
        // What the cap carries forward and cannot write stays in memory too.
        if let Err(e) = self.enforce_cap() {
            self.failed(&e.to_string());
        }
        self.bound_unspooled();
        r.map(|()| seq)
    }

    /// Writes collections kept in memory to disk, oldest first, while writes work.
    fn write_out_unspooled(&mut self) {
        if self.dir.is_none() {
            return;
        }
        let acked_by_all = self.cursors.iter().copied().min().unwrap_or(0);
        let waiting: Vec<Arc<Collection>> = self
            .index
            .range(acked_by_all + 1..)
            .filter_map(|(_, e)| match &e.body {
                Body::Mem(c) => Some(Arc::clone(c)),
                Body::Disk { .. } => None,
            })
            .collect();
        for c in waiting {
            if let Err(e) = self.store(&c) {
                self.failed(&e.to_string());
                return;
            }
        }
    }

    /// Keeps collections held in memory under [`MAX_UNSPOOLED_BYTES`]:
    /// acknowledged ones go first, then the oldest; one no aggregator
    /// acknowledged is counted as lost.
    fn bound_unspooled(&mut self) {
        if self.dir.is_none() {
            return;
        }
        let size = |e: &Entry| match &e.body {
            Body::Mem(c) => c.approx_bytes(),
            Body::Disk { .. } => 0,
        };
        let mut bytes: usize = self.index.values().map(size).sum();
        if bytes <= MAX_UNSPOOLED_BYTES {
            return;
        }
        let acked_by_all = self.cursors.iter().copied().min().unwrap_or(0);
        let acked_by_any = self.cursors.iter().copied().max().unwrap_or(0);
        let mem: Vec<u64> = self
            .index
            .iter()
            .filter(|(_, e)| matches!(e.body, Body::Mem(_)))
            .map(|(s, _)| *s)
            .collect();
        let (acked, unacked): (Vec<u64>, Vec<u64>) =
            mem.into_iter().partition(|s| *s <= acked_by_all);
        for seq in acked.into_iter().chain(unacked) {
            if bytes <= MAX_UNSPOOLED_BYTES {
                break;
            }
            let Some(e) = self.index.remove(&seq) else {
                continue;
            };
            bytes -= size(&e);
            if seq > acked_by_any {
                self.dropped.write_failed_samples += u64::from(e.samples);
                self.dropped.write_failed_events += u64::from(e.events);
            }
        }
    }

    fn store(&mut self, c: &Arc<Collection>) -> Result<(), SpoolError> {
        let entry = |body| Entry {
            body,
            t_ms: c.t_ms,
            samples: c.samples.len() as u32,
            events: c.events.len() as u32,
        };
        if self.dir.is_none() {
            self.index.insert(c.seq, entry(Body::Mem(Arc::clone(c))));
            return Ok(());
        }
        let payload = encode_record(c);
        let (seg, offset) = match self.write(c.seq, &payload, !c.events.is_empty()) {
            Ok(at) => at,
            Err(e) => {
                // Kept in memory, streamed, written out once writes work again.
                self.index.insert(c.seq, entry(Body::Mem(Arc::clone(c))));
                return Err(e);
            }
        };
        self.index.insert(
            c.seq,
            entry(Body::Disk {
                seg,
                offset,
                len: payload.len() as u32,
            }),
        );
        Ok(())
    }

    /// Writes one record to the active segment (rolling it when full). A
    /// failed write is rolled back; on a full disk, segments every
    /// aggregator acknowledged are freed and the write is tried once more.
    fn write(
        &mut self,
        seq: u64,
        payload: &[u8],
        sync_now: bool,
    ) -> Result<(u64, u64), SpoolError> {
        match self.write_once(seq, payload, sync_now) {
            Err(SpoolError::Io { source, .. })
                if source.raw_os_error() == Some(libc::ENOSPC) && self.free_acked() =>
            {
                self.write_once(seq, payload, sync_now)
            }
            r => r,
        }
    }

    fn write_once(
        &mut self,
        seq: u64,
        payload: &[u8],
        sync_now: bool,
    ) -> Result<(u64, u64), SpoolError> {
        let Some(dir) = self.dir.clone() else {
            return Ok((0, 0));
        };
        let limit = self.segment_bytes;
        let roll = match (
            &self.active,
            self.active
                .as_ref()
                .and_then(|(id, _)| self.segments.get(id)),
        ) {
            (Some(_), Some(seg)) => seg.bytes >= limit || seg.sealed,
            _ => true,
        };
        if roll {
            if let Some((_, f)) = &self.active {
                let _ = f.sync_data();
            }
            // Continue the newest segment after a restart if it has room.
            let reuse = self
                .segments
                .iter()
                .next_back()
                .filter(|(_, s)| s.bytes < limit && !s.sealed && self.active.is_none())
                .map(|(id, s)| (*id, s.path.clone()));
            // A new segment sorts after every other, even when the record
            // is an older one written out late.
            let next_id = self
                .segments
                .keys()
                .next_back()
                .map_or(seq, |newest| seq.max(newest + 1));
            let (id, path) =
                reuse.unwrap_or_else(|| (next_id, dir.join(format!("{next_id:020}.seg"))));
            self.active = None;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            self.segments.entry(id).or_insert(Segment {
                path,
                bytes: 0,
                sealed: false,
            });
            self.active = Some((id, f));
        }
        let Some((id, f)) = self.active.as_mut() else {
            return Ok((0, 0));
        };
        let id = *id;
        let Some(seg) = self.segments.get_mut(&id) else {
            return Ok((0, 0));
        };
        let mut rec = Vec::with_capacity(payload.len() + HEADER as usize);
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        rec.extend_from_slice(payload);
        let offset = seg.bytes;
        let written = f.write_all(&rec).and_then(|()| {
            if sync_now || self.last_sync.elapsed() >= SYNC_INTERVAL {
                f.sync_data()?;
                self.last_sync = Instant::now();
            }
            Ok(())
        });
        if let Err(source) = written {
            // Roll back to the last good record, so the next one is indexed
            // where it really lands; failing that, seal the segment (its
            // torn tail is cut at the next start) and start a new one.
            if let Err(error) = f.set_len(offset) {
                warn!(path = %seg.path.display(), %error, "Could not roll back a failed spool write; segment sealed.");
                seg.sealed = true;
                self.active = None;
            }
            return Err(SpoolError::Io {
                path: seg.path.clone(),
                source,
            });
        }
        seg.bytes += rec.len() as u64;
        Ok((id, offset))
    }

    /// On a full disk: frees every segment whose records all aggregators
    /// acknowledged, the active one included (sealed first), whatever the
    /// backfill window says. Returns whether anything was freed.
    fn free_acked(&mut self) -> bool {
        let min = self.cursors.iter().copied().min().unwrap_or(0);
        let freeable: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|id| {
                self.index
                    .iter()
                    .filter(|(_, e)| matches!(e.body, Body::Disk { seg, .. } if seg == *id))
                    .all(|(s, _)| *s <= min)
            })
            .filter(|id| self.segments.get(id).is_some_and(|s| s.bytes > 0))
            .collect();
        for id in &freeable {
            if self.active.as_ref().is_some_and(|(a, _)| a == id) {
                self.active = None;
            }
            self.remove_segment(*id);
        }
        if !freeable.is_empty() {
            info!(
                segments = freeable.len(),
                "Disk full: acknowledged spool segments freed before their backfill window ended."
            );
        }
        !freeable.is_empty()
    }

    /// Reads the collection with `seq`.
    fn load(&self, seq: u64) -> Option<Arc<Collection>> {
        if let Some(h) = self.hot.as_ref().filter(|h| h.seq == seq) {
            return Some(Arc::clone(h));
        }
        let e = self.index.get(&seq)?;
        match &e.body {
            Body::Mem(c) => Some(Arc::clone(c)),
            Body::Disk { seg, offset, len } => {
                let path = &self.segments.get(seg)?.path;
                let f = File::open(path).ok()?;
                let mut buf = vec![0u8; HEADER as usize + *len as usize];
                f.read_exact_at(&mut buf, *offset).ok()?;
                let payload = &buf[HEADER as usize..];
                let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                if crc32c::crc32c(payload) != crc {
                    warn!(path = %path.display(), seq, "Spool record failed its checksum; skipped.");
                    return None;
                }
                SpoolRecord::decode(payload)
                    .ok()
                    .map(|r| Arc::new(from_record(r)))
            }
        }
    }

    /// The first collection after `seq` (for resending).
    #[must_use]
    pub fn next_after(&self, seq: u64) -> Option<Arc<Collection>> {
        let mut range = self.index.range(seq + 1..);
        loop {
            let (s, _) = range.next()?;
            if let Some(c) = self.load(*s) {
                return Some(c);
            }
        }
    }

    /// Records that aggregator `i` stored everything up to `seq`.
    pub fn ack(&mut self, i: usize, seq: u64, now_ms: i64) {
        if let Some(c) = self.cursors.get_mut(i) {
            *c = (*c).max(seq);
        }
        self.gc(now_ms);
    }

    /// Drops segments whose records all aggregators acked and that are older than the backfill window.
    pub fn gc(&mut self, now_ms: i64) {
        let min = self.cursors.iter().copied().min().unwrap_or(0);
        let horizon = now_ms - self.retain_acked_ms;
        if self.dir.is_none() {
            self.index.retain(|seq, e| *seq > min || e.t_ms >= horizon);
            return;
        }
        // Collections kept in memory (writes failing) go like records do.
        self.index
            .retain(|seq, e| !matches!(e.body, Body::Mem(_)) || *seq > min || e.t_ms >= horizon);
        let active = self.active.as_ref().map(|(id, _)| *id);
        let newest = self.segments.keys().next_back().copied();
        let removable: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|id| Some(*id) != active && Some(*id) != newest)
            .filter(|id| {
                self.index
                    .iter()
                    .filter(|(_, e)| matches!(e.body, Body::Disk { seg, .. } if seg == *id))
                    .all(|(s, e)| *s <= min && e.t_ms < horizon)
            })
            .collect();
        for id in removable {
            self.remove_segment(id);
        }
    }

    fn remove_segment(&mut self, id: u64) {
        if let Some(seg) = self.segments.remove(&id) {
            if let Err(error) = std::fs::remove_file(&seg.path) {
                warn!(path = %seg.path.display(), %error, "Could not remove a spool segment.");
            }
        }
        self.index
            .retain(|_, e| !matches!(e.body, Body::Disk { seg, .. } if seg == id));
    }

    fn enforce_cap(&mut self) -> Result<(), SpoolError> {
        if self.dir.is_none() {
            // In memory the cap counts records' approximate size.
            let mut bytes: u64 = self
                .index
                .values()
                .map(|e| u64::from(e.samples) * 96 + u64::from(e.events) * 256)
                .sum();
            while bytes > self.cap {
                let Some((&seq, e)) = self
                    .index
                    .iter()
                    .find(|(_, e)| e.events == 0)
                    .or_else(|| self.index.iter().next())
                else {
                    break;
                };
                bytes -= u64::from(e.samples) * 96 + u64::from(e.events) * 256;
                self.dropped.samples += u64::from(e.samples);
                self.dropped.events += u64::from(e.events);
                self.index.remove(&seq);
            }
            return Ok(());
        }
        // Each round removes a segment; bounded, so a cap smaller than the
        // events carried forward cannot make this spin.
        let mut rounds = self.segments.len() + 1;
        while self.bytes() > self.cap && rounds > 0 {
            rounds -= 1;
            let Some(&oldest) = self.segments.keys().next() else {
                break;
            };
            // The only segment: seal it, so what is carried forward (and
            // what comes next) goes to a new one and this one can go.
            if let Some(seg) = self.segments.get_mut(&oldest) {
                seg.sealed = true;
            }
            // Carry the oldest segment's events forward before it goes.
            let carried: Vec<(u64, Arc<Collection>)> = self
                .index
                .iter()
                .filter(|(_, e)| {
                    e.events > 0 && matches!(e.body, Body::Disk { seg, .. } if seg == oldest)
                })
                .filter_map(|(s, _)| self.load(*s).map(|c| (*s, c)))
                .collect();
            // Only data some aggregator never acknowledged is lost; acknowledged
            // records kept for backfill are not counted as dropped.
            let acked_by_all = self.cursors.iter().copied().min().unwrap_or(0);
            for (seq, e) in &self.index {
                if *seq > acked_by_all && matches!(e.body, Body::Disk { seg, .. } if seg == oldest)
                {
                    self.dropped.samples += u64::from(e.samples);
                }
            }
            if self.active.as_ref().is_some_and(|(id, _)| *id == oldest) {
                self.active = None;
            }
            self.remove_segment(oldest);
            for (seq, c) in carried {
                let events_only = Arc::new(Collection {
                    seq,
                    t_ms: c.t_ms,
                    families: Arc::new(BTreeMap::new()),
                    samples: Vec::new(),
                    events: c.events.clone(),
                });
                self.store(&events_only)?;
            }
            warn!(
                dropped_samples = self.dropped.samples,
                cap = self.cap,
                "Spool full: oldest samples dropped (events kept)."
            );
        }
        // Only events left and still too big: drop the oldest events, counted.
        while self.bytes() > self.cap.saturating_mul(2) {
            let Some((&seq, e)) = self.index.iter().next() else {
                break;
            };
            self.dropped.events += u64::from(e.events);
            self.index.remove(&seq);
            if self.index.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Syncs unsynced data (on shutdown).
    pub fn sync(&mut self) {
        if let Some((_, f)) = &self.active {
            let _ = f.sync_data();
        }
    }
}

/// Shared spool plus one wake-up per aggregator stream.
pub struct Shared {
    pub spool: std::sync::Mutex<Spool>,
    pub notify: Vec<tokio::sync::Notify>,
}

impl Shared {
    #[must_use]
    pub fn new(spool: Spool, aggregators: usize) -> Arc<Self> {
        Arc::new(Self {
            spool: std::sync::Mutex::new(spool),
            notify: (0..aggregators)
                .map(|_| tokio::sync::Notify::new())
                .collect(),
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn wake_all(&self) {
        for n in &self.notify {
            n.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Sink;
    use nodewatch_proto::v1::{event, Event, OomKill};

    fn collection(seq: u64, t_ms: i64, n: usize, events: usize) -> Collection {
        let mut sink = Sink::new();
        for i in 0..n {
            sink.gauge("m", "M.", &[("i", &format!("{i:0>100}"))], i as f64);
        }
        Collection {
            seq,
            t_ms,
            families: Arc::new(sink.families),
            samples: sink.samples,
            events: (0..events)
                .map(|_| Event {
                    t_ms,
                    node: String::new(),
                    kind: Some(event::Kind::OomKill(OomKill {
                        pid: 7,
                        ..OomKill::default()
                    })),
                })
                .collect(),
        }
    }

    #[test]
    fn survives_restart_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rec) =
            Spool::open(Some(dir.path()), DEFAULT_CAP_BYTES, DEFAULT_RETAIN_ACKED, 1).unwrap();
        assert_eq!(rec, Recovered::default());
        let id = s.instance_id().to_string();
        for i in 0..5 {
            s.append(|seq| collection(seq, 1000 + i, 10, 0)).unwrap();
        }
        drop(s);
        // A crash in the middle of a write: half a record at the end.
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let (s, rec) =
            Spool::open(Some(dir.path()), DEFAULT_CAP_BYTES, DEFAULT_RETAIN_ACKED, 1).unwrap();
        assert_eq!(rec.records, 5);
        assert_eq!(rec.cut_bytes, 10);
        assert_eq!(s.instance_id(), id, "instance id must survive restarts");
        assert_eq!(s.next_seq(), 6);
        let c = s.next_after(2).unwrap();
        assert_eq!((c.seq, c.samples.len(), c.t_ms), (3, 10, 1002));
        assert_eq!(c.families.get("m").map(|f| f.kind), Some(MetricKind::Gauge));
    }

    #[test]
    fn a_corrupt_byte_is_never_read_as_data() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) =
            Spool::open(Some(dir.path()), DEFAULT_CAP_BYTES, DEFAULT_RETAIN_ACKED, 1).unwrap();
        for i in 0..3 {
            s.append(|seq| collection(seq, i, 5, 0)).unwrap();
        }
        drop(s);
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .unwrap()
            .path();
        let mut data = std::fs::read(&seg).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x40;
        std::fs::write(&seg, &data).unwrap();
        let (s, rec) =
            Spool::open(Some(dir.path()), DEFAULT_CAP_BYTES, DEFAULT_RETAIN_ACKED, 1).unwrap();
        assert!(rec.records < 3 && rec.cut_bytes > 0, "{rec:?}");
        // What is left reads back intact.
        let mut seq = 0;
        while let Some(c) = s.next_after(seq) {
            assert_eq!(c.samples.len(), 5);
            seq = c.seq;
        }
    }

    #[test]
    fn ack_gc_and_backfill_window() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(
            Some(dir.path()),
            DEFAULT_CAP_BYTES,
            Duration::from_mins(1),
            2,
        )
        .unwrap();
        for i in 0..3 {
            s.append(|seq| collection(seq, i * 1000, 3, 0)).unwrap();
        }
        s.ack(0, 3, 10_000);
        assert_eq!(s.pending(0), 0);
        assert_eq!(
            s.pending(1),
            3,
            "the other aggregator still needs everything"
        );
        // Acked by all but inside the backfill window: still there for a restarted aggregator.
        s.ack(1, 3, 10_000);
        assert_eq!(s.next_after(0).map(|c| c.seq), Some(1));
    }

    #[test]
    fn cap_drops_oldest_samples_first_and_keeps_events() {
        let dir = tempfile::tempdir().unwrap();
        let cap = SEGMENT_BYTES * 2;
        let (mut s, _) = Spool::open(Some(dir.path()), cap, DEFAULT_RETAIN_ACKED, 1).unwrap();
        // One early collection carries an OOM kill; then lots of samples.
        s.append(|seq| collection(seq, 0, 100, 1)).unwrap();
        for i in 1..250 {
            s.append(|seq| collection(seq, i, 400, 0)).unwrap();
        }
        assert!(
            s.bytes() <= cap + SEGMENT_BYTES,
            "spool grew to {} bytes",
            s.bytes()
        );
        let d = s.dropped();
        assert!(d.samples > 0 && d.events == 0, "{d:?}");
        let first = s.next_after(0).unwrap();
        assert_eq!(first.seq, 1, "the event-carrying record must survive");
        assert_eq!(first.events.len(), 1);
        assert!(first.samples.is_empty(), "its samples were dropped first");
        // And after a restart too.
        drop(s);
        let (s, _) = Spool::open(Some(dir.path()), cap, DEFAULT_RETAIN_ACKED, 1).unwrap();
        assert_eq!(
            s.next_after(0).map(|c| (c.seq, c.events.len())),
            Some((1, 1))
        );
    }

    #[test]
    fn seqs_never_go_backwards_whatever_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) =
            Spool::open(Some(dir.path()), DEFAULT_CAP_BYTES, DEFAULT_RETAIN_ACKED, 1).unwrap();
        for i in 0..5 {
            s.append(|seq| collection(seq, i, 3, 0)).unwrap();
        }
        drop(s);
        // Every segment lost (cut as corrupt, or removed by hand).
        for e in std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
        {
            if e.path().extension().is_some_and(|x| x == "seg") {
                std::fs::write(e.path(), b"garbage").unwrap();
            }
        }
        let (mut s, rec) =
            Spool::open(Some(dir.path()), DEFAULT_CAP_BYTES, DEFAULT_RETAIN_ACKED, 1).unwrap();
        assert_eq!(rec.records, 0);
        assert_eq!(s.next_seq(), 6, "seq 1..=5 were handed out already");
        // The seq file lost too: an aggregator's cursor moves numbering past it.
        std::fs::remove_file(dir.path().join("seq")).unwrap();
        drop(s);
        let (mut s2, _) =
            Spool::open(Some(dir.path()), DEFAULT_CAP_BYTES, DEFAULT_RETAIN_ACKED, 1).unwrap();
        s2.never_below(5);
        assert_eq!(s2.append(|seq| collection(seq, 9, 1, 0)).unwrap(), 6);
        s = s2;
        assert_eq!(s.next_seq(), 7);
    }

    #[test]
    fn the_cap_frees_space_with_a_single_segment() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 256 * 1024;
        let (mut s, _) = Spool::open(Some(dir.path()), cap, DEFAULT_RETAIN_ACKED, 1).unwrap();
        // Records bigger than a segment: every segment holds one record.
        for i in 0..20 {
            s.append(|seq| collection(seq, i, 1500, 0)).unwrap();
            assert!(s.bytes() <= cap + 200 * 1024, "{} bytes", s.bytes());
        }
        assert!(s.dropped().samples > 0);
        assert!(s.next_after(0).is_some(), "the newest is kept");
    }

    #[test]
    fn direct_encoding_matches_prost() {
        let mut c = collection(9, 1234, 5, 2);
        c.samples[0].value = 0.0;
        c.samples[1].value = -0.0;
        c.samples[2].value = f64::NAN;
        let a = encode_record(&c);
        let b = to_record(&c).encode_to_vec();
        assert_eq!(a, b);
    }

    #[test]
    fn parser_never_panics_on_garbage() {
        let mut x: u64 = 7;
        for len in 0..2000 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let (_, valid) = parse_segment(&data);
            assert!(valid <= data.len() as u64);
        }
    }
}
