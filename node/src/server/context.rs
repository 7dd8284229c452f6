//! [`Context`]: what every connection of a node shares — the bucket, its
//! store and flusher, the clock and the server's own counters — plus the
//! two helpers every protocol front end needs: reading through to disk for
//! ejected values, and retrying a write that needs an ejected value.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_protocol::Limits;

use crate::engine::{Bucket, EngineError, Hit, Lookup};
use crate::mutation::VbucketId;
use crate::persist::{BucketStore, Flusher};

/// Attempts at an operation that keeps finding its value ejected (the pager
/// can eject between our fetch and the retry; twice in a row is already
/// unusual).
const EJECTED_RETRIES: usize = 4;

/// The version string `version` answers: memcached's protocol level, so
/// clients that gate features on it (meta commands need 1.6) enable them,
/// then Shoal's own.
pub const VERSION: &str = concat!("1.6.18-shoal-", env!("CARGO_PKG_VERSION"));

/// A seconds clock read on every request without a syscall: a background
/// task stores the time every 100 ms (memcached keeps a 1 s timer for the
/// same reason).
#[derive(Debug)]
pub struct Clock {
    now: AtomicU32,
}

impl Clock {
    /// A clock set to the current time.
    pub fn new() -> Clock {
        let clock = Clock {
            now: AtomicU32::new(0),
        };
        clock.tick();
        clock
    }

    /// Unix seconds, as of the last tick.
    #[inline]
    pub fn now(&self) -> u32 {
        self.now.load(Ordering::Relaxed)
    }

    /// Reads the system clock.
    pub fn tick(&self) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.now
            .store(u32::try_from(secs).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Counters of the server around the engine (memcached's names).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Open client connections.
    pub curr_connections: AtomicU64,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// Bytes read from clients.
    pub bytes_read: AtomicU64,
    /// Bytes written to clients.
    pub bytes_written: AtomicU64,
    /// Values read back from disk because they were ejected.
    pub bg_fetches: AtomicU64,
    /// Requests rejected by a parser.
    pub protocol_errors: AtomicU64,
}

/// Everything a connection needs, shared behind an `Arc`.
#[derive(Debug)]
pub struct Context {
    /// The one bucket.
    pub bucket: Bucket,
    /// Its on-disk store.
    pub store: BucketStore,
    /// The write-behind flusher draining `bucket` into `store`.
    pub flusher: Flusher,
    /// Parser limits.
    pub limits: Limits,
    /// The request clock.
    pub clock: Clock,
    /// Server counters.
    pub stats: ServerStats,
    /// When the node started (for `uptime`).
    pub started: Instant,
    /// Set once warmup has finished (`ep_warmup_thread: complete`).
    pub warmup_done: std::sync::atomic::AtomicBool,
    /// Items loaded by warmup so far (`ep_warmup_count`).
    pub warmup_count: AtomicU64,
    /// Standalone nodes place every key by its own hash, ignoring the
    /// binary header's vbucket: plain memcached binary clients send 0 there,
    /// and their keys must land where ASCII clients will look for them.
    pub hash_keys: bool,
}

impl Context {
    /// The vbucket of `key`, computed with libvbucket's rule.
    #[inline]
    pub fn vbucket_of(&self, key: &[u8]) -> VbucketId {
        shoal_vbmap::hash::vbucket_of(key, self.bucket.config().num_vbuckets)
    }

    /// The vbucket a binary request for `key` addresses.
    #[inline]
    pub fn route(&self, header_vbucket: VbucketId, key: &[u8]) -> VbucketId {
        if self.hash_keys {
            self.vbucket_of(key)
        } else {
            header_vbucket
        }
    }

    /// Reads `key` with its value, fetching an ejected value from disk.
    pub fn get(&self, vb: VbucketId, key: &[u8], now: u32) -> Result<Hit, EngineError> {
        match self.bucket.get(vb, key, now)? {
            Lookup::Hit(hit) => Ok(hit),
            Lookup::Ejected {
                cas,
                flags,
                exptime,
                seqno,
            } => {
                let value = self.fetch(vb, key, seqno)?;
                Ok(Hit {
                    value,
                    flags,
                    exptime,
                    cas,
                    seqno,
                })
            }
        }
    }

    /// Runs `op`; when it needs a value that was ejected, reads the value
    /// back into memory and runs it again.
    pub fn with_resident<T>(
        &self,
        vb: VbucketId,
        key: &[u8],
        now: u32,
        mut op: impl FnMut() -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        for _ in 0..EJECTED_RETRIES {
            match op() {
                Err(EngineError::ValueEjected) => {
                    if let Lookup::Ejected { seqno, .. } = self.bucket.get(vb, key, now)? {
                        self.fetch(vb, key, seqno)?;
                    }
                }
                other => return other,
            }
        }
        Err(EngineError::TempFail)
    }

    /// Reads the value of `key` at `seqno` from disk and hands it back to
    /// the engine. A synchronous read on the connection's task: ejected
    /// reads are off the hot path by design (the pager keeps the working set
    /// resident), and the store's block cache serves most of them.
    fn fetch(&self, vb: VbucketId, key: &[u8], seqno: u64) -> Result<Bytes, EngineError> {
        self.stats.bg_fetches.fetch_add(1, Ordering::Relaxed);
        match self.store.get(vb, key) {
            Ok(Some(item)) if !item.is_tombstone() && item.header.seqno == seqno => {
                self.bucket
                    .restore_value(vb, key, seqno, item.value.clone());
                Ok(item.value)
            }
            Ok(_) => {
                // The version on disk is not the one in memory: a newer
                // write raced us. The caller's retry reads the new state.
                Err(EngineError::TempFail)
            }
            Err(error) => {
                tracing::error!(%error, vb, "background fetch failed");
                Err(EngineError::TempFail)
            }
        }
    }
}
