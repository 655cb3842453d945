//! System plumbing the collectors share: waiting on calls that may block.
//!
//! - [`statfs_pool`]: `statfs(2)` calls with a deadline, for the `filesystem` collectors.

pub mod statfs_pool;
