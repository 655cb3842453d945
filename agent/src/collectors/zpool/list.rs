//! `zpool list -Hp` (or `-H`): sizes, fragmentation, dedup ratio per pool.

use super::text::parse_nicenum;
use super::PoolList;

/// `-` (unset), a plain number, `N%` or `N.NNx`, or a `zfs_nicenum` size.
pub(super) fn parse_list_number(s: &str) -> Option<f64> {
    if s == "-" || s.is_empty() {
        return None;
    }
    let s = s
        .strip_suffix('%')
        .or_else(|| s.strip_suffix('x'))
        .unwrap_or(s);
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    parse_nicenum(s)
}

/// Parses `zpool list -Hp -o name,health,size,alloc,free,fragmentation,capacity,dedupratio`.
/// Also accepts the older output without `-p` (`8%`, `1.83x`). Rows with
/// fewer than 8 tab- or space-separated columns are skipped.
#[must_use]
pub fn parse_list(text: &str) -> Vec<PoolList> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = if line.contains('\t') {
                line.split('\t').collect()
            } else {
                line.split_whitespace().collect()
            };
            if f.len() < 8 || f[0].is_empty() {
                return None;
            }
            Some(PoolList {
                name: f[0].to_string(),
                health: f[1].to_string(),
                size: parse_list_number(f[2]),
                allocated: parse_list_number(f[3]),
                free: parse_list_number(f[4]),
                fragmentation: parse_list_number(f[5]).map(|p| p / 100.0),
                dedup: parse_list_number(f[7]),
            })
        })
        .collect()
}
