//! Configuration loading shared by the binaries: one YAML file per binary,
//! unknown keys refused, and a validation pass that reports every problem at
//! once, each with its path (`tls.ca: file not found: /etc/…`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::tls::TlsFiles;

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `serde_yaml`'s message names the key and the line/column.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{}", .0)]
    Invalid(Problems),
}

/// Every problem found while validating, each with its key path.
#[derive(Debug, Default)]
pub struct Problems {
    source: Option<PathBuf>,
    items: Vec<(String, String)>,
}

impl Problems {
    #[must_use]
    pub fn new(source: Option<&Path>) -> Self {
        Self {
            source: source.map(Path::to_path_buf),
            items: Vec::new(),
        }
    }

    pub fn add(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.items.push((key.into(), msg.into()));
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// `Ok(())` if nothing was found, else every problem.
    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.items.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self))
        }
    }

    /// Checks that `path` names a readable file.
    pub fn file(&mut self, key: &str, path: &Path) {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.add(key, format!("not a file: {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.add(key, format!("file not found: {}", path.display()));
            }
            Err(e) => self.add(key, format!("{}: {e}", path.display())),
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.items.len();
        match &self.source {
            Some(p) => writeln!(
                f,
                "{}: {n} problem{}:",
                p.display(),
                if n == 1 { "" } else { "s" }
            )?,
            None => writeln!(
                f,
                "{n} configuration problem{}:",
                if n == 1 { "" } else { "s" }
            )?,
        }
        for (k, m) in &self.items {
            writeln!(f, "  {k}: {m}")?;
        }
        Ok(())
    }
}

/// Reads and parses a YAML file into `T` (which should be `deny_unknown_fields`).
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_yaml(&text, path)
}

/// Parses YAML text; `path` is only used in messages.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    // An empty file means "all defaults", as for Prometheus.
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The TLS block every binary has.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle (PEM) that the peer's certificate must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This side's certificate (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// This side's private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Checks all three files and returns them, recording problems under `prefix`.
    pub fn validate(&self, prefix: &str, problems: &mut Problems) -> Option<TlsFiles> {
        let mut get = |name: &str, v: &Option<PathBuf>| {
            if let Some(p) = v {
                problems.file(&format!("{prefix}.{name}"), p);
                Some(p.clone())
            } else {
                problems.add(
                    format!("{prefix}.{name}"),
                    "required (mutual TLS is always on)",
                );
                None
            }
        };
        let ca = get("ca", &self.ca);
        let cert = get("cert", &self.cert);
        let key = get("key", &self.key);
        Some(TlsFiles {
            ca: ca?,
            cert: cert?,
            key: key?,
        })
    }
}

/// Parses a duration like Prometheus does (`15s`, `1m30s`, `500ms`, `1h`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// Serde helper for durations written as strings.
pub mod duration {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct C {
        #[allow(dead_code)]
        tls: TlsConfig,
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = parse_yaml::<C>("tls:\n  ca: /x\n  cetr: /y\n", Path::new("a.yaml")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("a.yaml") && msg.contains("cetr") && msg.contains("line 3"),
            "{msg}"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let mut p = Problems::new(Some(Path::new("agent.yaml")));
        let tls = TlsConfig {
            ca: Some("/nonexistent/ca.crt".into()),
            cert: None,
            key: None,
        };
        assert!(tls.validate("tls", &mut p).is_none());
        let msg = p.to_string();
        assert!(
            msg.contains("tls.ca: file not found: /nonexistent/ca.crt"),
            "{msg}"
        );
        assert!(
            msg.contains("tls.cert: required") && msg.contains("tls.key: required"),
            "{msg}"
        );
        assert!(msg.contains("3 problems"), "{msg}");
    }
}
