//! `zpool status` text (`-p` or plain), as `cmd/zpool/zpool_main.c`
//! `status_callback` prints it.

use chrono::{NaiveDate, NaiveDateTime};

use super::{PoolStatus, Scan, ScanFunction, ScanState, Vdev};

/// Section keys `status_callback` prints, right-aligned in a 6-wide column.
pub(super) const KEYS: &[&str] = &[
    "pool",
    "id",
    "state",
    "status",
    "action",
    "see",
    "scan",
    "scrub",
    "remove",
    "checkpoint",
    "config",
    "errors",
];

/// Splits `  key: value` when `key` is one of [`KEYS`] and the line is not a
/// config row (those start with a tab or 8+ spaces).
pub(super) fn key_line(line: &str) -> Option<(&str, &str)> {
    if line.starts_with('\t') {
        return None;
    }
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() >= 8 {
        return None;
    }
    let (key, rest) = trimmed.split_once(':')?;
    if KEYS.contains(&key) {
        Some((key, rest.trim()))
    } else {
        None
    }
}

/// Indentation width with tabs as 8 columns.
pub(super) fn indent_width(line: &str) -> usize {
    let mut w = 0;
    for c in line.chars() {
        match c {
            ' ' => w += 1,
            '\t' => w = (w / 8 + 1) * 8,
            _ => break,
        }
    }
    w
}

/// Parses an error count as printed: exact with `-p`, else `zfs_nicenum`
/// (`1.2K`), which is decimal-ish rounding of powers of 1024.
pub(super) fn parse_count(s: &str) -> Option<u64> {
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let v = parse_nicenum(s)?;
    if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
        Some(v as u64)
    } else {
        None
    }
}

/// `zfs_nicenum` output (`512`, `1.5K`, `27.2T`, `0B`) to a number.
pub(super) fn parse_nicenum(s: &str) -> Option<f64> {
    let s = s.strip_suffix('B').unwrap_or(s);
    let (num, mult) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let exp = match c.to_ascii_uppercase() {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                'P' => 5,
                'E' => 6,
                _ => return None,
            };
            (&s[..i], 1024f64.powi(exp))
        }
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * mult)
}

/// Parses a `ctime(3)`-style date as `zpool status` prints it
/// (`Sat Feb 10 20:34:42 2024`, day space-padded).
#[must_use]
pub fn parse_zpool_time(s: &str) -> Option<NaiveDateTime> {
    let f: Vec<&str> = s.split_whitespace().collect();
    if f.len() != 5 {
        return None;
    }
    let month = match f[1] {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let day: u32 = f[2].parse().ok()?;
    let year: i32 = f[4].parse().ok()?;
    let mut hms = f[3].split(':').map(str::parse::<u32>);
    let (h, m, sec) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, m, sec)
}

/// The `N.NN% done` figure of a scan text, as a ratio.
pub(super) fn scan_progress(text: &str) -> Option<f64> {
    let idx = text.find("% done")?;
    let start = text[..idx]
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let pct: f64 = text[start..idx].parse().ok()?;
    (pct.is_finite() && (0.0..=100.0).contains(&pct)).then_some(pct / 100.0)
}

/// Parses the scan section (first line and its continuation lines joined
/// with newlines), in the forms `print_scan_scrub_resilver_status` prints
/// and the older ` scrub:` forms (`scrub completed after …`, `resilver in
/// progress, 0.14% done`).
#[must_use]
pub fn parse_scan(text: &str) -> Scan {
    let first = text.lines().next().unwrap_or("").trim();
    let function = if first.starts_with("scrub") {
        ScanFunction::Scrub
    } else if first.starts_with("resilver") {
        ScanFunction::Resilver
    } else if first.starts_with("none requested") || first.is_empty() {
        ScanFunction::None
    } else {
        ScanFunction::Unknown
    };
    let state = if function == ScanFunction::None {
        ScanState::None
    } else if first.contains("in progress") {
        ScanState::InProgress
    } else if first.contains("paused") {
        ScanState::Paused
    } else if first.contains("canceled") {
        ScanState::Canceled
    } else if first.starts_with("scrub repaired")
        || first.starts_with("resilvered")
        || first.contains("completed")
    {
        ScanState::Finished
    } else {
        ScanState::Unknown
    };
    let progress = if state == ScanState::InProgress {
        scan_progress(text)
    } else {
        None
    };
    let errors = if state == ScanState::Finished {
        first
            .split_once("with ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(parse_count)
    } else {
        None
    };
    let end_time = if state == ScanState::Finished {
        first
            .rsplit_once(" on ")
            .and_then(|(_, t)| parse_zpool_time(t))
    } else {
        None
    };
    Scan {
        function,
        state,
        progress,
        errors,
        end_time,
        end_epoch: None,
    }
}

/// Parses the `errors:` section lines into a count of damaged files.
pub(super) fn parse_data_errors(lines: &[String]) -> Option<u64> {
    let mut count = None;
    let mut listing = false;
    let mut files = 0u64;
    for line in lines {
        let t = line.trim();
        if t.starts_with("No known data errors") {
            count = Some(count.unwrap_or(0));
        } else if let Some(n) = t
            .split_once(" data error")
            .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        {
            count = Some(count.unwrap_or(0).max(n));
        } else if t.starts_with("Permanent errors have been detected") {
            listing = true;
        } else if listing && !t.is_empty() {
            files = files.saturating_add(1);
        }
    }
    if listing {
        // The list holds one line per damaged file (or `<0x..>:<0x..>` object).
        count = Some(count.unwrap_or(0).max(files.max(1)));
    }
    count
}

/// Parses the config tree. `lines` start after `config:`.
pub(super) fn parse_config(pool: &str, lines: &[String]) -> Vec<Vdev> {
    let mut vdevs = Vec::new();
    let mut base: Option<usize> = None;
    // (indent, name) of the rows above the current one.
    let mut stack: Vec<(usize, String)> = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields[0] == "NAME" && fields.get(1) == Some(&"STATE") {
            base = Some(indent_width(line));
            continue;
        }
        let Some(base) = base else { continue };
        let indent = indent_width(line);
        if indent < base {
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let name = fields[0];
        let path = if indent == base && name == pool {
            name.to_string()
        } else {
            let mut parts: Vec<&str> = stack
                .iter()
                .filter(|(i, n)| !(*i == base && n == pool))
                .map(|(_, n)| n.as_str())
                .collect();
            parts.push(name);
            parts.join("/")
        };
        stack.push((indent, name.to_string()));
        // Section headers (`logs`, `spares`, `cache`, `special`, `dedup`) have no state.
        let Some(state) = fields.get(1) else { continue };
        let counts: Vec<Option<u64>> = fields[2..fields.len().min(5)]
            .iter()
            .map(|s| parse_count(s))
            .collect();
        let has_counts = counts.len() == 3 && counts.iter().all(Option::is_some);
        let count = |i: usize| if has_counts { counts[i] } else { None };
        vdevs.push(Vdev {
            path,
            state: (*state).to_string(),
            read: count(0),
            write: count(1),
            checksum: count(2),
        });
    }
    vdevs
}

/// Parses the text output of `zpool status` (one or more pools). Pools
/// without a `state:` line are skipped.
#[must_use]
pub fn parse_status_text(text: &str) -> Vec<PoolStatus> {
    let mut pools = Vec::new();
    // Current pool: its sections as (key, lines).
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let flush = |sections: &mut Vec<(String, Vec<String>)>, pools: &mut Vec<PoolStatus>| {
        if let Some(p) = pool_from_sections(sections) {
            pools.push(p);
        }
        sections.clear();
    };
    for line in text.lines() {
        if let Some((key, rest)) = key_line(line) {
            if key == "pool" {
                flush(&mut sections, &mut pools);
            }
            sections.push((key.to_string(), vec![rest.to_string()]));
        } else if let Some((_, lines)) = sections.last_mut() {
            lines.push(line.to_string());
        }
    }
    flush(&mut sections, &mut pools);
    pools
}

pub(super) fn pool_from_sections(sections: &[(String, Vec<String>)]) -> Option<PoolStatus> {
    let get = |k: &str| sections.iter().find(|(key, _)| key == k).map(|(_, l)| l);
    let name = get("pool")?.first()?.trim().to_string();
    let state = get("state")?.first()?.trim().to_string();
    if name.is_empty() || state.is_empty() {
        return None;
    }
    let scan = get("scan")
        .or_else(|| get("scrub"))
        .map(|l| parse_scan(&l.join("\n")));
    let vdevs = get("config")
        .map(|l| parse_config(&name, l))
        .unwrap_or_default();
    let error_lines: Vec<String> = sections
        .iter()
        .filter(|(k, _)| k == "errors")
        .flat_map(|(_, l)| l.iter().cloned())
        .collect();
    Some(PoolStatus {
        name,
        state,
        scan,
        vdevs,
        data_errors: parse_data_errors(&error_lines),
    })
}
