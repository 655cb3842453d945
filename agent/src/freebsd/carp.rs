//! carp
