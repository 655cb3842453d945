//! oomlog
