//! [`ConfigError`]: every way a bucket config, or the stream carrying it, can
//! be refused. Each variant's message names the offending field the way the
//! JSON spells it (`vBucketMap`, `serverList`, …), so an operator reading a
//! log line can find the problem in the document without reading Shoal's
//! source.

use crate::map::MapError;

/// Why a bucket config was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The document is not JSON at all (or ends early).
    #[error("bucket config is not valid JSON: {reason} (line {line}, column {column})")]
    Syntax {
        /// 1-based line of the error, as serde_json reports it.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's description, without its position suffix.
        reason: String,
    },
    /// The document is JSON, but a field is missing or has the wrong type.
    #[error("bucket config has a bad field: {reason} (line {line}, column {column})")]
    Schema {
        /// 1-based line of the error, as serde_json reports it.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's description, without its position suffix.
        reason: String,
    },
    /// `nodeLocator` is `vbucket` (or absent, which means the same) but
    /// there is no `vBucketServerMap` to route with.
    #[error("nodeLocator is \"vbucket\" but the config has no vBucketServerMap")]
    MissingServerMap,
    /// `hashAlgorithm` is not `CRC`, the only one libvbucket and Shoal know.
    #[error("vBucketServerMap.hashAlgorithm is {0:?}, but only \"CRC\" is supported")]
    HashAlgorithm(String),
    /// The list of servers (`serverList`, or `nodes` for a ketama bucket) is
    /// empty, so no key could go anywhere.
    #[error("{field} is empty: a bucket needs at least one server")]
    EmptyServerList {
        /// `"vBucketServerMap.serverList"` or `"nodes"`.
        field: &'static str,
    },
    /// A server address is not `host:port`.
    #[error("{field} entry {entry:?} is not a valid host:port address: {reason}")]
    ServerAddress {
        /// Where the address came from, e.g. `"vBucketServerMap.serverList"`.
        field: &'static str,
        /// The address as written.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `vBucketMap` or `vBucketMapForward` breaks a map invariant: vbucket
    /// count not a power of two, a row whose length is not
    /// `numReplicas + 1`, or a server index outside `-1..serverList.len()`.
    #[error("vBucketServerMap.{field}: {source}")]
    Map {
        /// `"vBucketMap"` or `"vBucketMapForward"`.
        field: &'static str,
        /// The broken invariant.
        source: MapError,
    },
    /// `vBucketMapForward` has a different number of vbuckets than
    /// `vBucketMap`; a forward map must describe the same vbuckets.
    #[error(
        "vBucketServerMap.vBucketMapForward has {forward} vbuckets, \
         but vBucketMap has {current}"
    )]
    ForwardMapSize {
        /// Vbuckets in `vBucketMap`.
        current: usize,
        /// Vbuckets in `vBucketMapForward`.
        forward: usize,
    },
    /// A streamed document grew past the splitter's limit without a
    /// separator; the peer is broken or hostile and the stream must be
    /// dropped.
    #[error("streamed bucket config exceeds the maximum document size of {limit} bytes")]
    DocumentTooLarge {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
}

impl ConfigError {
    /// Convert a serde_json error, keeping its position but not repeating
    /// it: serde_json appends " at line L column C" to its message, and our
    /// own message puts the position in a fixed place instead.
    pub(crate) fn from_json(err: &serde_json::Error) -> Self {
        let (line, column) = (err.line(), err.column());
        let full = err.to_string();
        let suffix = format!(" at line {line} column {column}");
        let reason = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        if err.is_data() {
            ConfigError::Schema {
                line,
                column,
                reason,
            }
        } else {
            // Syntax, early EOF, and (impossible for in-memory input) I/O.
            ConfigError::Syntax {
                line,
                column,
                reason,
            }
        }
    }
}
