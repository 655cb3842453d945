//! promtool test rules
