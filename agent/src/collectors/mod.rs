//! One module per kernel source; [`registry`] lists them all.

use crate::collector::CollectorSpec;

/// Every collector this build knows, in the order they run.
#[must_use]
pub fn registry() -> Vec<CollectorSpec> {
    vec![]
}
