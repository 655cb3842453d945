//! `*.prom` files in `collectors.textfile.directory` (a folder, or a glob of
//! folders), exported as they are, with `node_textfile_mtime_seconds{file}`
//! and `node_textfile_scrape_error`, as `node_exporter`'s `textfile` collector:
//! cron jobs (backups, SMART checks) write their own metrics there.
//!
//! A file that cannot be read or parsed, has client-side timestamps, or
//! disagrees with another file on a family's TYPE or HELP costs only its own
//! series and sets `node_textfile_scrape_error` to 1; the rest is exported.
//! A series already written by an earlier file is dropped (and counted as
//! an error) rather than sent twice. Summaries are passed on as untyped
//! series (`x`, `x_sum`, `x_count`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::collector::{
    CollectError, Collector, CollectorOptions, CollectorSpec, MetricKind, Paths, Sink, Unavailable,
};

pub const SPEC: CollectorSpec = CollectorSpec::new("textfile", build);

pub fn build(_: &Paths) -> Result<Box<dyn Collector>, Unavailable> {
    Ok(Box::new(TextfileCollector { directory: None }))
}

/// A series' labels as read, in file order.
pub type Labels = Vec<(String, String)>;

/// One family of a parsed file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedFamily {
    pub name: String,
    /// `counter`, `gauge`, `histogram`, `summary`, `untyped`; `None` without a TYPE line.
    pub kind: Option<String>,
    pub help: Option<String>,
    /// (series name, labels, value)
    pub samples: Vec<(String, Labels, f64)>,
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s
            .parse()
            .ok()
            .filter(|_| !s.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')),
    }
}

/// `{a="x",b="y\"z"}` after the name: the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("expected '{'")?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = rest[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name:?} given twice"));
        }
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value without '\"'")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let Some((i, c)) = chars.next() else {
                return Err("unterminated label value".into());
            };
            match c {
                '"' => break i,
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    _ => return Err("bad escape in label value".into()),
                },
                c => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

/// The family a sample belongs to, given the TYPEs declared so far.
fn family_of<'a>(series: &'a str, kinds: &BTreeMap<String, String>) -> &'a str {
    for (suffixes, kind) in [
        (&["_bucket", "_sum", "_count"][..], "histogram"),
        (&["_sum", "_count"][..], "summary"),
    ] {
        for suf in suffixes {
            if let Some(base) = series.strip_suffix(suf) {
                if kinds.get(base).is_some_and(|k| k == kind) {
                    return base;
                }
            }
        }
    }
    series
}

/// Parses Prometheus text format 0.0.4 as `node_exporter`'s parser does,
/// refusing what it refuses (a second HELP or TYPE for a family, a TYPE after
/// its samples, bad names, values and escapes) and client-side timestamps,
/// which the textfile collector does not accept.
pub fn parse(path: &Path, text: &str) -> Result<Vec<ParsedFamily>, CollectError> {
    let mut fams: Vec<ParsedFamily> = Vec::new();
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    let index = |fams: &mut Vec<ParsedFamily>, name: &str| -> usize {
        if let Some(i) = fams.iter().position(|f| f.name == name) {
            i
        } else {
            fams.push(ParsedFamily {
                name: name.to_string(),
                ..ParsedFamily::default()
            });
            fams.len() - 1
        }
    };
    for (i, line) in text.lines().enumerate() {
        let bad = |msg: String| CollectError::parse(path, i + 1, msg);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let c = c.trim_start();
            let (kw, rest) = c.split_once(char::is_whitespace).unwrap_or((c, ""));
            if kw != "HELP" && kw != "TYPE" {
                continue;
            }
            let rest = rest.trim_start();
            let (name, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if !valid_metric_name(name) {
                return Err(bad(format!("invalid metric name {name:?} in {kw}")));
            }
            let at = index(&mut fams, name);
            let f = &mut fams[at];
            if kw == "HELP" {
                if f.help.is_some() {
                    return Err(bad(format!("second HELP line for {name}")));
                }
                f.help = Some(arg.replace("\\n", "\n").replace("\\\\", "\\"));
            } else {
                let k = arg.trim().to_lowercase();
                if !matches!(
                    k.as_str(),
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ) {
                    return Err(bad(format!("unknown type {k:?} for {name}")));
                }
                if f.kind.is_some() {
                    return Err(bad(format!("second TYPE line for {name}")));
                }
                if !f.samples.is_empty() {
                    return Err(bad(format!("TYPE line for {name} after its samples")));
                }
                f.kind = Some(k.clone());
                kinds.insert(name.to_string(), k);
            }
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(bad(format!("invalid metric name {name:?}")));
        }
        let rest = &line[name_end..];
        let (labels, rest) = if rest.starts_with('{') {
            parse_labels(rest).map_err(bad)?
        } else {
            (Vec::new(), rest)
        };
        let mut vals = rest.split_whitespace();
        let v = vals
            .next()
            .ok_or_else(|| bad(format!("{name}: no value")))?;
        let value = parse_value(v).ok_or_else(|| bad(format!("{name}: bad value {v:?}")))?;
        if vals.next().is_some() {
            return Err(bad(format!(
                "{name}: client-side timestamps are not supported"
            )));
        }
        let family = family_of(name, &kinds).to_string();
        let at = index(&mut fams, &family);
        fams[at].samples.push((name.to_string(), labels, value));
    }
    fams.retain(|f| !f.samples.is_empty());
    Ok(fams)
}

pub struct TextfileCollector {
    directory: Option<PathBuf>,
}

/// The folders a directory option names: a glob's matches, else the path itself.
fn folders(dir: &Path) -> Vec<PathBuf> {
    let s = dir.to_string_lossy();
    if !s.contains(['*', '?', '[']) {
        return vec![dir.to_path_buf()];
    }
    // A glob in the last component only (`/var/lib/*/textfile` is not supported).
    let (Some(parent), Some(pat)) = (dir.parent(), dir.file_name()) else {
        return vec![dir.to_path_buf()];
    };
    let re = regex::escape(&pat.to_string_lossy())
        .replace("\\*", ".*")
        .replace("\\?", ".");
    let Ok(re) = regex::Regex::new(&format!("^{re}$")) else {
        return vec![dir.to_path_buf()];
    };
    let mut out: Vec<PathBuf> = crate::collectors::list_dir(parent)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| re.is_match(n))
        .map(|n| parent.join(n))
        .collect();
    if out.is_empty() {
        out.push(dir.to_path_buf());
    }
    out
}

/// The names in a directory, sorted.
fn sorted_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// One `.prom` file's families and its modification time.
fn read_prom(path: &Path) -> Result<(Vec<ParsedFamily>, std::time::SystemTime), CollectError> {
    let b = std::fs::read(path).map_err(|e| CollectError::io(path, e))?;
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| CollectError::io(path, e))?;
    let text = String::from_utf8(b).map_err(|_| CollectError::parse(path, 0, "not UTF-8"))?;
    Ok((parse(path, &text)?, mtime))
}

impl TextfileCollector {
    /// Everything of one collection; returns whether anything went wrong.
    fn export(&self, sink: &mut Sink) -> bool {
        let Some(dir) = &self.directory else {
            return false;
        };
        let mut errored = false;
        let mut seen_series: HashSet<(String, Labels)> = HashSet::new();
        // family → (kind, help, files)
        let mut known: BTreeMap<String, (MetricKind, Option<String>, Vec<String>)> =
            BTreeMap::new();
        let mut accepted: Vec<ParsedFamily> = Vec::new();
        let mut mtimes = Vec::new();
        for folder in folders(dir) {
            let names = match sorted_names(&folder) {
                Ok(v) => v,
                Err(error) => {
                    tracing::warn!(path = %folder.display(), %error, "Cannot read the textfile directory.");
                    errored = true;
                    continue;
                }
            };
            for name in names
                .iter()
                .filter(|n| Path::new(n).extension().is_some_and(|e| e == "prom"))
            {
                let path = folder.join(name);
                let (families, mtime) = match read_prom(&path) {
                    Ok(x) => x,
                    Err(error) => {
                        tracing::warn!(%error, "Textfile not exported.");
                        errored = true;
                        continue;
                    }
                };
                let file = path.to_string_lossy().into_owned();
                for mut f in families {
                    let kind = match f.kind.as_deref() {
                        Some("counter") => MetricKind::Counter,
                        Some("gauge") => MetricKind::Gauge,
                        Some("histogram") => MetricKind::Histogram,
                        _ => MetricKind::Untyped,
                    };
                    if let Some((k, help, files)) = known.get_mut(&f.name) {
                        if *k != kind || (f.help.is_some() && help.is_some() && f.help != *help) {
                            tracing::warn!(family = %f.name, file = %file, first = %files[0], "Textfile family disagrees with an earlier file on TYPE or HELP; not exported.");
                            errored = true;
                            continue;
                        }
                        files.push(file.clone());
                    } else {
                        known.insert(f.name.clone(), (kind, f.help.clone(), vec![file.clone()]));
                    }
                    let before = f.samples.len();
                    f.samples.retain(|(series, labels, _)| {
                        let mut l = labels.clone();
                        l.sort();
                        seen_series.insert((series.clone(), l))
                    });
                    if f.samples.len() != before {
                        tracing::warn!(family = %f.name, file = %file, "Textfile repeats a series already read; the repeat is dropped.");
                        errored = true;
                    }
                    accepted.push(f);
                }
                mtimes.push((file, mtime));
            }
        }
        for f in &accepted {
            let Some((kind, help, files)) = known.get(&f.name) else {
                continue;
            };
            let help = help
                .clone()
                .unwrap_or_else(|| format!("Metric read from {}", files.join(", ")));
            for (series, labels, v) in &f.samples {
                let l: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                sink.sample(&f.name, *kind, &help, series, &l, *v);
            }
        }
        for (file, mtime) in mtimes {
            let secs = mtime
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64().floor());
            sink.gauge(
                "node_textfile_mtime_seconds",
                "Unixtime mtime of textfiles successfully read.",
                &[("file", &file)],
                secs,
            );
        }
        errored
    }
}

impl Collector for TextfileCollector {
    fn configure(&mut self, options: &CollectorOptions) -> Result<(), Unavailable> {
        self.directory.clone_from(&options.textfile_directory);
        Ok(())
    }

    fn collect(&mut self, sink: &mut Sink) -> Result<(), CollectError> {
        let errored = self.export(sink);
        sink.gauge(
            "node_textfile_scrape_error",
            "1 if there was an error opening or reading a file, 0 otherwise",
            &[],
            if errored { 1.0 } else { 0.0 },
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "values compared are exact")]
mod tests {
    use super::*;
    use crate::collectors::testutil;

    const GOOD: &str = "# HELP backup_last_success_timestamp_seconds Last good backup.\n# TYPE backup_last_success_timestamp_seconds gauge\nbackup_last_success_timestamp_seconds{job=\"nas\",path=\"/srv/a \\\"b\\\"\"} 1.7e9\n# TYPE smart_reallocated counter\nsmart_reallocated{disk=\"sda\"} 0\n# TYPE rt histogram\nrt_bucket{le=\"1\"} 2\nrt_bucket{le=\"+Inf\"} 3\nrt_sum 4.5\nrt_count 3\nplain 7\n";

    fn collector(dir: &Path) -> TextfileCollector {
        let mut c = TextfileCollector { directory: None };
        c.configure(&CollectorOptions {
            textfile_directory: Some(dir.into()),
            ..CollectorOptions::default()
        })
        .unwrap();
        c
    }

    fn run(c: &mut TextfileCollector) -> (Sink, f64) {
        let mut sink = Sink::new();
        c.collect(&mut sink).unwrap();
        let err = sink
            .samples
            .iter()
            .find(|s| s.name == "node_textfile_scrape_error")
            .unwrap()
            .value;
        (sink, err)
    }

    #[test]
    fn parses_the_text_format() {
        let f = parse(Path::new("x.prom"), GOOD).unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(f[0].samples[0].1[1], ("path".into(), "/srv/a \"b\"".into()));
        let rt = f.iter().find(|f| f.name == "rt").unwrap();
        assert_eq!(rt.samples.len(), 4);
        assert_eq!(rt.samples[1].2, f64::INFINITY.min(3.0));
        for bad in [
            "x 1 1700000000\n",
            "x{a=\"1\" 2\n",
            "1x 2\n",
            "x{a=1} 2\n",
            "x two\n",
            "# TYPE x gauge\n# TYPE x counter\nx 1\n",
            "x 1\n# TYPE x gauge\n",
            "x{a=\"\\q\"} 1\n",
        ] {
            assert!(parse(Path::new("x.prom"), bad).is_err(), "{bad:?}");
        }
        testutil::assert_no_panic(GOOD, 43, |t| parse(Path::new("x.prom"), t));
    }

    /// Files written during the test: a good one, a malformed one, one
    /// repeating a series of the good one, one with a conflicting TYPE, an
    /// unreadable one (a folder named `*.prom`), and one that is not `*.prom`.
    #[test]
    fn bad_files_cost_only_themselves() {
        let dir = tempfile::Builder::new()
            .prefix("nodewatch-parity-textfile-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::write(d.join("a_good.prom"), GOOD).unwrap();
        let mut c = collector(d);
        let (sink, err) = run(&mut c);
        assert_eq!(err, 0.0);
        let text = sink.render_text();
        assert!(text.contains("# TYPE rt histogram\n"), "{text}");
        assert!(text.contains("rt_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("# HELP plain Metric read from "), "{text}");
        assert!(sink
            .samples
            .iter()
            .any(|s| s.name == "node_textfile_mtime_seconds" && s.value > 1e9));

        std::fs::write(d.join("b_malformed.prom"), "ok_metric 1\nbroken{ 2\n").unwrap();
        std::fs::write(
            d.join("c_duplicate.prom"),
            "smart_reallocated{disk=\"sda\"} 5\nsmart_other 1\n",
        )
        .unwrap();
        std::fs::write(d.join("d_conflict.prom"), "# TYPE plain counter\nplain 1\n").unwrap();
        std::fs::create_dir(d.join("e_unreadable.prom")).unwrap();
        std::fs::write(d.join("notes.txt"), "not a metric").unwrap();
        let (sink, err) = run(&mut c);
        assert_eq!(err, 1.0);
        let names: HashSet<&str> = sink.samples.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names.contains("backup_last_success_timestamp_seconds") && names.contains("rt_count")
        );
        assert!(
            !names.contains("ok_metric"),
            "a malformed file is not exported at all"
        );
        assert!(
            names.contains("smart_other"),
            "a file with one repeated series keeps its others"
        );
        let realloc: Vec<f64> = sink
            .samples
            .iter()
            .filter(|s| s.name == "smart_reallocated")
            .map(|s| s.value)
            .collect();
        assert_eq!(realloc, [0.0], "the first file's value wins");
        assert_eq!(sink.samples.iter().filter(|s| s.name == "plain").count(), 1);
        let mtimes = sink
            .samples
            .iter()
            .filter(|s| s.name == "node_textfile_mtime_seconds")
            .count();
        assert_eq!(mtimes, 3, "good, duplicate and conflict files were read");

        // A missing directory is an error too, not a failure of the collector.
        let mut gone = collector(&d.join("missing"));
        assert_eq!(run(&mut gone).1, 1.0);
        // No directory configured: nothing read, no error (node_exporter's default).
        let mut off = TextfileCollector { directory: None };
        assert_eq!(run(&mut off).1, 0.0);
    }
}
