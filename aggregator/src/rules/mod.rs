//! Prometheus rule files.
