//! Prometheus rule files: loading, evaluation, alert state and unit tests.
pub mod file;
pub mod template;
