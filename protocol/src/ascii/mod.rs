//! The classic ASCII protocol. (Filled in by the ASCII codec.)
