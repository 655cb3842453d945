//! Kubernetes-derived signals (Linux).
//!
//! - [`quantity`]: `250m`, `1.5`, `128Mi` → numbers.
//! - [`image`]: registry of an image reference; why a pull failed.
//! - [`resources`]: pod list and Node parsers.

pub mod image;
pub mod quantity;
pub mod resources;
