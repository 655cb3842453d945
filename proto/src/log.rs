//! Log output shared by the binaries: `tracing` to stderr, either as text
//! for people or as one JSON object per line for log pipelines (Loki,
//! Vector, Fluent Bit), as node_exporter offers with `--log.format`.
//!
//! Colour codes are written only when stderr is a terminal (and `NO_COLOR`
//! is unset): `kubectl logs`, journald and files get plain text, never
//! `ESC[2m…ESC[0m` around every field.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use serde::Deserialize;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-07T01:02:03.456Z  INFO Message. key=value`: for people.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and every
    /// field at the top level (`{"level":"WARN","message":"…","node":"a"}`).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}; one of: text, json")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// The `log:` section of a daemon's configuration file.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`; the `--log.format` flag wins over this.
    #[serde(default)]
    pub format: Option<LogFormat>,
}

/// Whether colour codes may be written to stderr: only to a terminal, and
/// not when `NO_COLOR` is set to anything (<https://no-color.org>).
#[must_use]
pub fn stderr_wants_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the process-wide subscriber: `filter` in `RUST_LOG` syntax,
/// lines to stderr in `format`. A second call does nothing (the first
/// subscriber stays), so tests may call it freely.
pub fn init(filter: &str, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(stderr_wants_colour()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .try_init(),
    };
}

/// Starts logging for a binary whose configuration file may name the log
/// format: the one `flag` names wins, then the file's (`format_of`), then
/// text. The file is read first, so its own errors cannot be logged: they
/// go to stderr plainly, named after `program` (and the binary exits with 2).
pub fn init_with_file<F, E: fmt::Display>(
    program: &str,
    filter: &str,
    flag: Option<LogFormat>,
    file: Result<F, E>,
    format_of: impl Fn(&F) -> Option<LogFormat>,
) -> Option<F> {
    let format = flag
        .or(file.as_ref().ok().and_then(format_of))
        .unwrap_or_default();
    init(filter, format);
    file.map_err(|e| eprintln!("{program}: {e}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_from_flags_and_yaml() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        let err = "logfmt".parse::<LogFormat>().unwrap_err();
        assert!(
            err.contains("logfmt") && err.contains("text, json"),
            "{err}"
        );
        let c: LogConfig = serde_yaml_ng::from_str("format: json").unwrap();
        assert_eq!(c.format, Some(LogFormat::Json));
        assert!(serde_yaml_ng::from_str::<LogConfig>("format: xml").is_err());
        assert!(serde_yaml_ng::from_str::<LogConfig>("fromat: json").is_err());
    }
}
