//! System plumbing the collectors share: file reads, and calls that may
//! block, run with a deadline.
//!
//! - [`files`]: procfs and sysfs reads through handles kept open.
//! - [`command`]: external commands (`zpool`, `pfctl`, `ifconfig`) with a
//!   timeout and an output cap, behind a runner tests replace.
//! - [`statfs_pool`]: `statfs(2)` calls with a deadline, for the `filesystem` collectors.

pub mod command;
pub mod files;
pub mod statfs_pool;
