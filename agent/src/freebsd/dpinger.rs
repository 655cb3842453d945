//! dpinger
