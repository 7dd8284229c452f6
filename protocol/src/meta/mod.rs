//! The meta text protocol. (Filled in by the meta codec.)
