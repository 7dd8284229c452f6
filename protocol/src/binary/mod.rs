//! The binary protocol. (Filled in by the binary codec.)
