//! [`Context`]: what every connection on one bucket shares — the bucket,
//! its store and flusher, its clock, the node's counters and whether the
//! bucket was deleted — plus the two helpers every protocol front end
//! needs: reading through to disk for ejected values, and retrying a write
//! that needs an ejected value.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_protocol::Limits;
use tokio::sync::watch;

use super::buckets::BucketKind;
use crate::engine::{Bucket, EngineError, Hit, Lookup};
use crate::mutation::VbucketId;
use crate::persist::{BucketStore, Flusher};
use crate::replication::durability::DurabilityMonitor;

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

/// Counters of the server around the engine (memcached's names). One set
/// per node, shared by the contexts of all its buckets: connections and
/// bytes belong to the node, not to whichever bucket a connection selected.
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
    /// Writes answered with an error because their bucket's durability
    /// level was not met in time.
    pub durability_timeouts: AtomicU64,
}

/// One bucket of a node and everything a connection working on it needs,
/// shared behind an `Arc` (by [`Buckets`](super::Buckets), the bucket's
/// background work and every connection that selected it).
#[derive(Debug)]
pub struct Context {
    /// The bucket's name (`default`, or what the cluster manager created).
    pub name: String,
    /// Persistent (membase) or memory only (memcached).
    pub kind: BucketKind,
    /// The bucket's items.
    pub bucket: Bucket,
    /// Its on-disk store; `None` for a memcached bucket, which has none.
    pub store: Option<BucketStore>,
    /// The write-behind flusher draining `bucket` into `store` (never
    /// started for a memcached bucket: its stats stay zero).
    pub flusher: Flusher,
    /// Parser limits (the node's).
    pub limits: Limits,
    /// The request clock, ticked by the bucket's ticker.
    pub clock: Clock,
    /// The node's server counters.
    pub stats: Arc<ServerStats>,
    /// When the node started (for `uptime`).
    pub started: Instant,
    /// Set once warmup has finished (`ep_warmup_thread: complete`).
    pub warmup_done: AtomicBool,
    /// Items loaded by warmup so far (`ep_warmup_count`).
    pub warmup_count: AtomicU64,
    /// Standalone nodes place every key by its own hash, ignoring the
    /// binary header's vbucket: plain memcached binary clients send 0 there,
    /// and their keys must land where ASCII clients will look for them.
    pub hash_keys: bool,
    /// Set (once) when the bucket is deleted; read after every batch by
    /// the connections using it, which then close.
    deleted: AtomicBool,
    /// Flips to `true` with `deleted`, to wake connections idle in a read.
    deleted_signal: watch::Sender<bool>,
    /// The bucket's durability level and its replicas' acknowledgements.
    pub durability: Arc<DurabilityMonitor>,
}

/// The parts of a [`Context`] that are not derived: what
/// [`Context::new`] needs.
#[derive(Debug)]
pub(super) struct ContextParts {
    /// The bucket's name.
    pub name: String,
    /// Its kind.
    pub kind: BucketKind,
    /// Its items (built empty; warming up for a membase bucket).
    pub bucket: Bucket,
    /// Its store (`None` for a memcached bucket).
    pub store: Option<BucketStore>,
    /// Its flusher.
    pub flusher: Flusher,
    /// Parser limits.
    pub limits: Limits,
    /// The node's counters.
    pub stats: Arc<ServerStats>,
    /// When the node started.
    pub started: Instant,
    /// See [`Context::hash_keys`].
    pub hash_keys: bool,
}

impl Context {
    /// A context for `parts`, warmup not done, not deleted.
    pub(super) fn new(parts: ContextParts) -> Context {
        let num_vbuckets = parts.bucket.config().num_vbuckets;
        Context {
            name: parts.name,
            kind: parts.kind,
            bucket: parts.bucket,
            store: parts.store,
            flusher: parts.flusher,
            limits: parts.limits,
            clock: Clock::new(),
            stats: parts.stats,
            started: parts.started,
            warmup_done: AtomicBool::new(false),
            warmup_count: AtomicU64::new(0),
            hash_keys: parts.hash_keys,
            deleted: AtomicBool::new(false),
            deleted_signal: watch::channel(false).0,
            durability: Arc::new(DurabilityMonitor::new(num_vbuckets)),
        }
    }

    /// Adopts the failover log `vb`'s active sent (a replica's stream was
    /// accepted), in memory and on disk.
    pub fn adopt_failover_log(&self, vb: VbucketId, log: Vec<(u64, u64)>) {
        if self.bucket.failover_log(vb) == log {
            return;
        }
        self.bucket.set_failover_log(vb, log);
        if let Some(store) = &self.store {
            let log = self.bucket.failover_log(vb);
            if let Err(error) = store.set_failover_logs(&[(vb, None, &log[..])]) {
                tracing::error!(bucket = %self.name, %error, vb, "could not persist failover log");
            }
        }
    }

    /// Rolls replica vbucket `vb` back to nothing (its history diverged
    /// from its active's): empties it in memory, waits for the flusher to
    /// finish any batch that still holds its old mutations, then drops it
    /// on disk, keeping its state. The stream then starts again from 0.
    pub async fn rollback_vbucket(self: &Arc<Self>, vb: VbucketId) -> Result<(), EngineError> {
        self.bucket.reset_vbucket(vb)?;
        let Some(_) = &self.store else {
            return Ok(());
        };
        let ctx = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let store = ctx.store.as_ref()?;
            if let Err(error) = ctx.flusher.flush_now() {
                tracing::warn!(bucket = %ctx.name, %error, vb, "flush before rollback failed");
            }
            let state = ctx.bucket.vbucket_state(vb)?;
            let wire = u8::try_from(state.to_wire()).ok()?;
            let result = store
                .delete_vbucket(vb)
                .and_then(|_| store.set_vbucket_state(vb, wire));
            match result {
                Ok(()) => Some(()),
                Err(error) => {
                    tracing::error!(bucket = %ctx.name, %error, vb, "could not roll back vbucket on disk");
                    None
                }
            }
        })
        .await;
        match done {
            Ok(Some(())) => Ok(()),
            _ => Err(EngineError::TempFail),
        }
    }

    /// Whether the bucket was deleted (its connections close).
    #[inline]
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Marks the bucket deleted and wakes the connections using it.
    pub(super) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.deleted_signal.send_replace(true);
    }

    /// A receiver that sees `true` once the bucket is deleted.
    pub(super) fn deleted_signal(&self) -> watch::Receiver<bool> {
        self.deleted_signal.subscribe()
    }

    /// Called after a batch that wrote to the bucket: wakes the flusher
    /// (a memcached bucket has none and queues nothing).
    #[inline]
    pub fn wrote(&self) {
        if self.store.is_some() {
            self.flusher.notify();
        }
    }

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
        let lookup = self.bucket.get(vb, key, now)?;
        self.resident(vb, key, lookup)
    }

    /// GET_REPLICA: [`Context::get`] on a replica vbucket.
    pub fn get_replica(&self, vb: VbucketId, key: &[u8], now: u32) -> Result<Hit, EngineError> {
        let lookup = self.bucket.get_replica(vb, key, now)?;
        self.resident(vb, key, lookup)
    }

    /// The hit of a lookup, its value fetched from disk (and handed back
    /// to the engine) if it was ejected.
    fn resident(&self, vb: VbucketId, key: &[u8], lookup: Lookup) -> Result<Hit, EngineError> {
        match lookup {
            Lookup::Hit(hit) => Ok(hit),
            Lookup::Ejected {
                cas,
                flags,
                exptime,
                seqno,
            } => Ok(Hit {
                value: self.fetch(vb, key, seqno)?,
                flags,
                exptime,
                cas,
                seqno,
            }),
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
    pub(crate) fn fetch(
        &self,
        vb: VbucketId,
        key: &[u8],
        seqno: u64,
    ) -> Result<Bytes, EngineError> {
        self.stats.bg_fetches.fetch_add(1, Ordering::Relaxed);
        // Only persistent buckets eject values, so only they fetch.
        let Some(store) = &self.store else {
            return Err(EngineError::TempFail);
        };
        match store.get(vb, key) {
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
