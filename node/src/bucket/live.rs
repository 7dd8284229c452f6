//! [`LiveBucket`]: one running bucket and what every connection on it
//! shares — the engine, its store and flusher, its clock, the node's
//! counters, its durability monitor and whether the bucket was deleted —
//! plus what every caller needs on top of the engine: reading through to
//! disk for ejected values, retrying a write that needs an ejected value,
//! and changing a vbucket's state (or emptying it, or the whole bucket) in
//! memory and on disk together.
//!
//! Must not import anything above the bucket runtime (`server`,
//! `replication`, `cluster_view`, `manager`, `admin`, `node`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use shoal_auth::PasswordHash;
use shoal_engine::{Bucket, EngineError, Hit, Lookup, VbucketId, VbucketState};
use shoal_persist::{BucketStore, Flusher};
use shoal_protocol::Limits;
use tokio::sync::watch;

use super::{BucketKind, BucketSpec, Clock, DurabilityMonitor, ServerStats};

/// Attempts at an operation that keeps finding its value ejected (the pager
/// can eject between our fetch and the retry; twice in a row is already
/// unusual).
const EJECTED_RETRIES: usize = 4;

/// One bucket of a node and everything a connection working on it needs,
/// shared behind an `Arc` (by [`Buckets`](super::Buckets), the bucket's
/// background work and every connection that selected it).
#[derive(Debug)]
pub struct LiveBucket {
    /// The bucket's name (`default`, or what the cluster manager created).
    pub name: String,
    /// Persistent (membase) or memory only (memcached).
    pub kind: BucketKind,
    /// The bucket's items, in memory.
    pub engine: Bucket,
    /// Its on-disk store; `None` for a memcached bucket, which has none.
    pub store: Option<BucketStore>,
    /// The write-behind flusher draining `engine` into `store` (never
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
    /// Who may use the bucket and whether it may be flushed: read when a
    /// connection selects the bucket or flushes it, replaced whole when
    /// the bucket's settings change.
    access: ArcSwap<BucketAccess>,
}

/// The settings of a bucket that decide who may use it and how; they can
/// change while it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketAccess {
    /// The bucket's password, hashed; `None` for an open bucket.
    pub password: Option<PasswordHash>,
    /// Whether `flush_all` may empty it.
    pub flush_enabled: bool,
}

impl BucketAccess {
    /// The access settings `spec` gives.
    pub fn of(spec: &BucketSpec) -> BucketAccess {
        BucketAccess {
            password: spec.password.clone(),
            flush_enabled: spec.flush_enabled,
        }
    }
}

/// Why `flush_all` emptied nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// The bucket's settings do not allow flushing it.
    #[error("flush is disabled for this bucket")]
    Disabled,
    /// The engine refused (warming up) or the deadline could not be
    /// persisted.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The parts of a [`LiveBucket`] that are not derived: what
/// [`LiveBucket::new`] needs.
#[derive(Debug)]
pub(super) struct LiveBucketParts {
    /// The bucket's name.
    pub name: String,
    /// Its kind.
    pub kind: BucketKind,
    /// Its items (built empty; warming up for a membase bucket).
    pub engine: Bucket,
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
    /// See [`LiveBucket::hash_keys`].
    pub hash_keys: bool,
    /// Who may use it, and whether it may be flushed.
    pub access: BucketAccess,
}

impl LiveBucket {
    /// A live bucket made of `parts`, warmup not done, not deleted.
    pub(super) fn new(parts: LiveBucketParts) -> LiveBucket {
        let num_vbuckets = parts.engine.config().num_vbuckets;
        LiveBucket {
            name: parts.name,
            kind: parts.kind,
            engine: parts.engine,
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
            access: ArcSwap::from_pointee(parts.access),
        }
    }

    /// Who may use the bucket, and whether it may be flushed, now.
    pub fn access(&self) -> Arc<BucketAccess> {
        self.access.load_full()
    }

    /// Whether the bucket has a password.
    pub fn is_protected(&self) -> bool {
        self.access.load().password.is_some()
    }

    /// Takes the access settings of `spec` (the cluster manager calls this
    /// on every pass; a change takes effect for the next selection or
    /// flush).
    pub fn apply_access(&self, spec: &BucketSpec) {
        let wanted = BucketAccess::of(spec);
        if **self.access.load() != wanted {
            self.access.store(Arc::new(wanted));
        }
    }

    /// Adopts the failover log `vb`'s active sent (a replica's stream was
    /// accepted), in memory and on disk.
    pub fn adopt_failover_log(&self, vb: VbucketId, log: Vec<(u64, u64)>) {
        if self.engine.failover_log(vb) == log {
            return;
        }
        self.engine.set_failover_log(vb, log);
        if let Some(store) = &self.store {
            let log = self.engine.failover_log(vb);
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
        self.engine.reset_vbucket(vb)?;
        let Some(_) = &self.store else {
            return Ok(());
        };
        let ctx = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let store = ctx.store.as_ref()?;
            if let Err(error) = ctx.flusher.flush_now() {
                tracing::warn!(bucket = %ctx.name, %error, vb, "flush before rollback failed");
            }
            let state = ctx.engine.vbucket_state(vb)?;
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

    /// Sets vbucket `vb`'s state in memory and on disk (SET_VBUCKET, and
    /// every state the cluster manager drives). Blocking: a synced disk
    /// write.
    pub fn set_vbucket_state(&self, vb: VbucketId, state: VbucketState) -> Result<(), EngineError> {
        self.engine.set_vbucket_state(vb, state)?;
        let Some(store) = &self.store else {
            return Ok(());
        };
        let wire = u8::try_from(state.to_wire()).unwrap_or(u8::MAX);
        // An active vbucket may have started a new history: its failover log
        // goes to disk with the state, in one synced batch.
        let result = if state == VbucketState::Active {
            let log = self.engine.failover_log(vb);
            store.set_failover_logs(&[(vb, Some(wire), &log[..])])
        } else {
            store.set_vbucket_state(vb, wire)
        };
        if let Err(error) = result {
            tracing::error!(bucket = %self.name, %error, vb, "could not persist vbucket state");
            return Err(EngineError::TempFail);
        }
        Ok(())
    }

    /// Drops vbucket `vb`'s items from memory and disk, leaving it dead
    /// (DEL_VBUCKET, and a vbucket that moved away). Blocking.
    pub fn delete_vbucket(&self, vb: VbucketId) -> Result<(), EngineError> {
        self.engine.delete_vbucket(vb)?;
        let Some(store) = &self.store else {
            return Ok(());
        };
        let wire = u8::try_from(VbucketState::Dead.to_wire()).unwrap_or(u8::MAX);
        let result = store
            .delete_vbucket(vb)
            .and_then(|_| store.set_vbucket_state(vb, wire));
        if let Err(error) = result {
            tracing::error!(bucket = %self.name, %error, vb, "could not delete vbucket on disk");
            return Err(EngineError::TempFail);
        }
        Ok(())
    }

    /// `flush_all`: invalidates everything as of `deadline` (0 = now) and
    /// records the deadline so a restart honours it — if the bucket allows
    /// flushing at all.
    pub fn flush_all(&self, deadline: u32, now: u32) -> Result<(), FlushError> {
        if !self.access.load().flush_enabled {
            return Err(FlushError::Disabled);
        }
        let effective = self.engine.flush_all(deadline, now)?;
        let Some(store) = &self.store else {
            return Ok(());
        };
        if let Err(error) = store.set_flush_deadline(effective) {
            tracing::error!(bucket = %self.name, %error, "could not persist flush_all deadline");
            return Err(FlushError::Engine(EngineError::TempFail));
        }
        Ok(())
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
    pub fn deleted_signal(&self) -> watch::Receiver<bool> {
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
        shoal_vbmap::hash::vbucket_of(key, self.engine.config().num_vbuckets)
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
        let lookup = self.engine.get(vb, key, now)?;
        self.resident(vb, key, lookup)
    }

    /// GET_REPLICA: [`LiveBucket::get`] on a replica vbucket.
    pub fn get_replica(&self, vb: VbucketId, key: &[u8], now: u32) -> Result<Hit, EngineError> {
        let lookup = self.engine.get_replica(vb, key, now)?;
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
                    if let Lookup::Ejected { seqno, .. } = self.engine.get(vb, key, now)? {
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
    pub fn fetch(&self, vb: VbucketId, key: &[u8], seqno: u64) -> Result<Bytes, EngineError> {
        self.stats.bg_fetches.fetch_add(1, Ordering::Relaxed);
        // Only persistent buckets eject values, so only they fetch.
        let Some(store) = &self.store else {
            return Err(EngineError::TempFail);
        };
        match store.get(vb, key) {
            Ok(Some(item)) if !item.is_tombstone() && item.header.seqno == seqno => {
                self.engine
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
