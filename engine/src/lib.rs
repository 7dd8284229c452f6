//! The in-memory KV engine: one [`Bucket`] of vbuckets, each a hash table of
//! items with a state, seqnos and a checkpoint queue, under a RAM quota with
//! value ejection. It implements memcached 1.6's item semantics (store modes,
//! CAS, incr/decr, touch, expiry, `flush_all`) and produces one
//! [`Mutation`](crate::Mutation) per acknowledged write for the flusher and
//! replication — except in an ephemeral bucket (a memcached bucket:
//! [`EngineConfig::ephemeral`]), which queues nothing and evicts whole items
//! instead of ejecting values. It is synchronous and runtime-free: no async, no I/O, no
//! clock — every call takes `now` (unix seconds) — so the server calls it
//! from async tasks (locks are short and never cross an `.await`) and tests
//! control time. Values must own their allocation (see `memory`).
//! This crate depends on no other Shoal crate and on no async runtime,
//! network or disk library; the compiler holds it to that.
//!
//! Modules:
//! - [`mutation`]: [`Mutation`], the unit that flows from the engine to disk
//!   and to replicas.
//! - `item`: [`ItemMeta`], expiry ([`resolve_exptime`]) and the table's
//!   `Item`.
//! - `vbucket`: [`VbucketState`] and `VBucket` (state, table, seqnos, queue).
//! - `memory`: the quota ([`ITEM_OVERHEAD`], [`MUTATION_OVERHEAD`]).
//! - `flush`: `flush_all`'s barrier.
//! - `get`, `store`, `arith`, `delete`, `touch`: the verbs.
//! - `pager`: ejection and the expiry purge.
//! - `queue`: the flusher's side (drain, persisted seqnos).
//! - `replicate`: replication cursors (the producer's side), applying a
//!   replica's incoming mutations, and failover logs.
//! - `control`: bucket-wide commands — vbucket states and deletion,
//!   flush_all, stats.
//! - `warmup`: loading from disk at start.
//! - `stats`: counters.
//!
//! # Values on disk
//!
//! Only clean values (written at or below the vbucket's persisted seqno) are
//! ejected; the metadata of every item stays in memory. A get of an ejected
//! value answers [`Lookup::Ejected`]: the server fetches the value from disk,
//! serves it, and calls [`Bucket::restore_value`]. A write that needs the
//! old value (append, prepend, incr, decr, touch, gat) answers
//! [`EngineError::ValueEjected`]: the server fetches, restores, retries.

#![forbid(unsafe_code)]

mod arith;
mod control;
mod delete;
mod flush;
mod get;
mod item;
mod memory;
mod meta;
pub mod mutation;
mod pager;
mod queue;
mod replicate;
mod stats;
mod store;
mod touch;
mod vbucket;
mod warmup;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::MutexGuard;

pub use arith::{ArithCreate, ArithOp, ArithOutcome, ArithRequest, ARITH_NO_CREATE};
pub use get::{Hit, Lookup};
pub use item::{resolve_exptime, ItemMeta, EXPIRED, RELATIVE_EXPTIME_MAX};
pub use memory::{ITEM_OVERHEAD, MUTATION_OVERHEAD};
pub use meta::{MetaGetRequest, MetaHit};
pub use mutation::{Mutation, MutationKind, VbucketId};
pub use pager::{PagerReport, PurgeReport};
pub use replicate::{CursorId, CursorRead, CursorStart};
pub use store::{StoreMode, StoreRequest};
pub use vbucket::{CursorWake, VbucketState};
pub use warmup::Loaded;

use self::flush::FlushBarrier;
use self::item::Item;
use self::memory::{Memory, NeedMemory};
use self::stats::Stats;
use self::vbucket::{VBucket, VbInner};

/// Why the engine refused a request; each maps to one memcached reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// No such key (binary 0x01, `NOT_FOUND`; a get miss).
    #[error("not found")]
    NotFound,
    /// The CAS did not match (0x02, `EXISTS`).
    #[error("exists")]
    Exists,
    /// add on an existing key, replace/append/prepend on a missing one
    /// (0x05, `NOT_STORED`).
    #[error("not stored")]
    NotStored,
    /// incr/decr of a value that is not a decimal u64 (0x06).
    #[error("non-numeric value")]
    NonNumeric,
    /// The vbucket is not active here (0x07).
    #[error("not my vbucket")]
    NotMyVbucket,
    /// The bucket is warming up (0x86); never NotMyVbucket meanwhile.
    #[error("temporary failure")]
    TempFail,
    /// The value is longer than `max_value_len` (0x03, `SERVER_ERROR object
    /// too large for cache`).
    #[error("value too large")]
    TooLarge,
    /// The quota is reached and nothing clean could be ejected (0x82 or
    /// 0x86, `SERVER_ERROR out of memory storing object`).
    #[error("out of memory")]
    OutOfMemory,
    /// The operation needs the current value, which was ejected to disk:
    /// fetch it, [`Bucket::restore_value`], retry. Never reaches a client.
    #[error("value is on disk")]
    ValueEjected,
}

/// The CAS and seqno a write was acknowledged with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mutated {
    /// The item's CAS after the write (for a deletion, the tombstone's).
    pub cas: u64,
    /// The vbucket seqno of the write's [`Mutation`](crate::Mutation).
    pub seqno: u64,
}

/// A bucket's sizing.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// vbuckets: a power of two up to 65536 (libvbucket hashes with a
    /// mask); Couchbase's default is 1024.
    pub num_vbuckets: usize,
    /// The RAM quota, bytes (`ep_max_data_size`).
    pub quota_bytes: usize,
    /// Fraction of the quota above which the pager runs (Couchbase: 0.85).
    pub high_watermark: f64,
    /// Fraction of the quota the pager ejects down to (Couchbase: 0.75).
    pub low_watermark: f64,
    /// Longest value accepted; memcached's default item size limit is
    /// 1 MiB (`-I`).
    pub max_value_len: usize,
    /// Memory only (a memcached bucket): no mutation is queued — there is
    /// no flusher, so a queue would only grow — and the pager evicts whole
    /// unreferenced items (memcached's LRU eviction) instead of ejecting
    /// clean values, which would have nowhere to be read back from.
    pub ephemeral: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            num_vbuckets: 1024,
            quota_bytes: 100 * 1024 * 1024,
            high_watermark: 0.85,
            low_watermark: 0.75,
            max_value_len: 1024 * 1024,
            ephemeral: false,
        }
    }
}

/// A [`EngineConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `num_vbuckets` is not a power of two in 1..=65536.
    #[error("num_vbuckets must be a power of two from 1 to 65536, got {0}")]
    NumVbuckets(usize),
    /// `quota_bytes` is 0.
    #[error("quota_bytes must be positive")]
    Quota,
    /// Watermarks not in `0 < low < high <= 1`.
    #[error("watermarks must satisfy 0 < low < high <= 1")]
    Watermarks,
    /// `max_value_len` is 0.
    #[error("max_value_len must be positive")]
    MaxValueLen,
}

impl EngineConfig {
    /// Checks the config.
    pub fn validate(self) -> Result<EngineConfig, ConfigError> {
        let n = self.num_vbuckets;
        if !n.is_power_of_two() || n > usize::from(u16::MAX) + 1 {
            return Err(ConfigError::NumVbuckets(n));
        }
        if self.quota_bytes == 0 {
            return Err(ConfigError::Quota);
        }
        let (low, high) = (self.low_watermark, self.high_watermark);
        // Written so that NaN fails.
        if !(low > 0.0 && low < high && high <= 1.0) {
            return Err(ConfigError::Watermarks);
        }
        if self.max_value_len == 0 {
            return Err(ConfigError::MaxValueLen);
        }
        Ok(self)
    }
}

/// Mutations that may wait for a failing disk before client writes are
/// refused: enough to ride out a brief error, few enough that what was
/// acknowledged is bounded by far less than the memory quota.
pub const MAX_QUEUE_WHILE_DISK_FAILS: usize = 10_000;

/// The bits of `Bucket::gate`.
struct Gate;

impl Gate {
    /// Loading from disk: every request gets TempFail.
    const WARMING_UP: u8 = 1;
    /// Cut off from the cluster: active vbuckets answer NOT_MY_VBUCKET.
    const FENCED: u8 = 2;
    /// Disk writes fail: past [`MAX_QUEUE_WHILE_DISK_FAILS`] queued
    /// mutations, client writes get TempFail.
    const DISK_FAILING: u8 = 4;
}

/// One bucket: the public API of the engine. All methods take `&self`;
/// share it with an `Arc`.
pub struct Bucket {
    config: EngineConfig,
    vbuckets: Box<[VBucket]>,
    mem: Memory,
    /// The last CAS handed out. One counter for the bucket: CAS values only
    /// need to differ between versions of a key, and one `fetch_add` is
    /// cheaper than anything per vbucket would be worth.
    cas: AtomicU64,
    /// What closes the bucket to some requests, as [`Gate`] bits: one load
    /// on every request's path says whether anything does.
    gate: AtomicU8,
    flush: FlushBarrier,
    stats: Stats,
    /// Mutations queued in all vbuckets (`ep_queue_size`).
    queued: AtomicUsize,
    /// Items in all tables (`curr_items`).
    items: AtomicUsize,
    /// Where the next pager, purge and drain passes start: each pass picks
    /// up where the last stopped, so bounded passes still cover every
    /// vbucket in turn.
    cursors: Cursors,
    /// The last replication cursor id handed out.
    cursor_ids: AtomicU64,
}

/// Positions of the bucket-wide passes, as vbucket indexes (taken modulo
/// `num_vbuckets`).
#[derive(Debug, Default)]
struct Cursors {
    /// Pager clock over replica/dead vbuckets, then over active/pending.
    pager: [AtomicUsize; 2],
    /// The expiry purge.
    purge: AtomicUsize,
    /// Bucket-wide drains for the flusher.
    drain: AtomicUsize,
}

/// An operation's failure inside a critical section: an answer, or "needs
/// this many more bytes", upon which the lock is dropped, the pager ejects
/// and the operation runs once more.
enum OpError {
    Engine(EngineError),
    Memory(NeedMemory),
}

impl From<EngineError> for OpError {
    fn from(e: EngineError) -> Self {
        OpError::Engine(e)
    }
}

impl From<NeedMemory> for OpError {
    fn from(e: NeedMemory) -> Self {
        OpError::Memory(e)
    }
}

// === impl Bucket ===

impl Bucket {
    /// Builds an empty bucket; every vbucket starts [`VbucketState::Dead`]
    /// until the cluster manager sets it.
    pub fn try_new(config: EngineConfig) -> Result<Bucket, ConfigError> {
        let config = config.validate()?;
        let vbuckets = (0..config.num_vbuckets)
            .map(|_| VBucket::new(config.ephemeral))
            .collect();
        Ok(Bucket {
            mem: Memory::new(
                config.quota_bytes,
                config.high_watermark,
                config.low_watermark,
            ),
            config,
            vbuckets,
            cas: AtomicU64::new(0),
            gate: AtomicU8::new(0),
            flush: FlushBarrier::default(),
            stats: Stats::default(),
            queued: AtomicUsize::new(0),
            items: AtomicUsize::new(0),
            cursors: Cursors::default(),
            cursor_ids: AtomicU64::new(0),
        })
    }

    /// The config the bucket was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Bytes charged against the quota (`mem_used`).
    pub fn mem_used(&self) -> usize {
        self.mem.used()
    }

    /// Items in memory, ejected values included (`curr_items`).
    pub fn curr_items(&self) -> usize {
        self.items.load(Ordering::Relaxed)
    }

    /// Turns a vbucket id into its vbucket, NOT_MY_VBUCKET when out of
    /// range.
    fn vbucket(&self, vb: VbucketId) -> Result<&VBucket, EngineError> {
        self.vbuckets
            .get(usize::from(vb))
            .ok_or(EngineError::NotMyVbucket)
    }

    /// The cheap gate every request passes first: TempFail while warming
    /// up, NOT_MY_VBUCKET unless the vbucket is in `want` — read without
    /// the lock.
    fn admit(&self, vb: VbucketId, want: VbucketState) -> Result<&VBucket, EngineError> {
        self.admit_through(self.gate.load(Ordering::Acquire), vb, want)
    }

    /// [`admit`](Self::admit) past a `gate` already read.
    fn admit_through(
        &self,
        gate: u8,
        vb: VbucketId,
        want: VbucketState,
    ) -> Result<&VBucket, EngineError> {
        if gate & Gate::WARMING_UP != 0 {
            return Err(EngineError::TempFail);
        }
        if gate & Gate::FENCED != 0 && want == VbucketState::Active {
            self.stats.ep_num_not_my_vbuckets.incr();
            return Err(EngineError::NotMyVbucket);
        }
        match self.vbucket(vb) {
            Ok(vbucket) if vbucket.state() == want => Ok(vbucket),
            _ => {
                self.stats.ep_num_not_my_vbuckets.incr();
                Err(EngineError::NotMyVbucket)
            }
        }
    }

    /// [`admit`](Self::admit) for a client write to an active vbucket, which
    /// is refused (TempFail) while the disk fails and more than
    /// [`MAX_QUEUE_WHILE_DISK_FAILS`] mutations wait for it: what a client
    /// is told was stored must be on its way to disk, not held in memory
    /// until memory runs out.
    fn admit_write(&self, vb: VbucketId) -> Result<&VBucket, EngineError> {
        let gate = self.gate.load(Ordering::Acquire);
        if gate & Gate::DISK_FAILING != 0
            && self.queued.load(Ordering::Relaxed) > MAX_QUEUE_WHILE_DISK_FAILS
        {
            self.stats.ep_disk_queue_refusals.incr();
            return Err(EngineError::TempFail);
        }
        self.admit_through(gate, vb, VbucketState::Active)
    }

    /// Whether disk writes are failing (see [`admit_write`](Self::admit_write)).
    pub fn set_disk_failing(&self, failing: bool) {
        self.set_gate(Gate::DISK_FAILING, failing);
    }

    /// Fences the bucket (the node is cut off from its cluster's
    /// majority): requests for active vbuckets answer NOT_MY_VBUCKET, so
    /// no client reads or writes a copy the cluster may have replaced.
    pub fn set_fenced(&self, fenced: bool) {
        self.set_gate(Gate::FENCED, fenced);
    }

    /// Whether the bucket is fenced.
    pub fn is_fenced(&self) -> bool {
        self.gate.load(Ordering::Relaxed) & Gate::FENCED != 0
    }

    /// Sets or clears one [`Gate`] bit.
    fn set_gate(&self, bit: u8, on: bool) {
        // The ticker and the fence loop set their bits over and over: a
        // bit already so is not written, so the line every request reads
        // stays shared.
        if (self.gate.load(Ordering::Relaxed) & bit != 0) == on {
            return;
        }
        if on {
            self.gate.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.gate.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// Locks an admitted vbucket and checks its state again: states change
    /// only under the lock, so no write lands in a vbucket after it was
    /// handed over (set dead for takeover).
    fn lock_in<'a>(
        &self,
        vbucket: &'a VBucket,
        want: VbucketState,
    ) -> Result<MutexGuard<'a, VbInner>, EngineError> {
        let guard = vbucket.lock();
        if vbucket.state() != want {
            self.stats.ep_num_not_my_vbuckets.incr();
            return Err(EngineError::NotMyVbucket);
        }
        Ok(guard)
    }

    /// Runs a write's critical section; if it found the quota full, ejects
    /// inline (with no lock held) and runs it once more.
    fn with_memory<T>(&self, mut op: impl FnMut() -> Result<T, OpError>) -> Result<T, EngineError> {
        let need = match op() {
            Ok(t) => return Ok(t),
            Err(OpError::Engine(e)) => return Err(e),
            Err(OpError::Memory(NeedMemory(need))) => need,
        };
        self.eject_inline(need);
        match op() {
            Ok(t) => Ok(t),
            Err(OpError::Engine(e)) => Err(e),
            Err(OpError::Memory(_)) => {
                self.stats.ep_tmp_oom_errors.incr();
                Err(EngineError::OutOfMemory)
            }
        }
    }

    /// A fresh CAS: monotonic, never 0.
    fn next_cas(&self) -> u64 {
        self.cas
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1)
    }

    /// What queueing the mutation of a write to `key_len` bytes of key
    /// costs: nothing in an ephemeral bucket, which queues nothing.
    fn queue_charge(&self, key_len: usize) -> usize {
        if self.config.ephemeral {
            0
        } else {
            memory::mutation_charge(key_len)
        }
    }

    /// Bookkeeping after a mutation was queued (or, in an ephemeral
    /// bucket, would have been).
    fn note_queued(&self) {
        if self.config.ephemeral {
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.stats.ep_total_enqueued.incr();
    }

    fn note_item_added(&self) {
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    fn note_item_removed(&self) {
        self.items.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether an item is visible at `now` (neither expired nor flushed).
    fn is_live(&self, item: &Item, now: u32) -> bool {
        !item.is_expired(now) && !self.flush.is_flushed(item.time, item.cas, now)
    }
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("config", &self.config)
            .field("mem_used", &self.mem.used())
            .field("curr_items", &self.curr_items())
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("gate", &self.gate.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let b = Bucket::try_new(EngineConfig::default()).unwrap();
        assert_eq!(b.vbuckets.len(), 1024);
        assert_eq!(b.vbucket_state(0), Some(VbucketState::Dead));
        assert_eq!(b.vbucket_state(1024), None);
        assert!(format!("{b:?}").contains("mem_used"));
    }

    #[test]
    fn bad_configs_are_rejected() {
        let with = |f: fn(&mut EngineConfig)| {
            let mut c = EngineConfig::default();
            f(&mut c);
            c.validate()
        };
        assert_eq!(
            with(|c| c.num_vbuckets = 1000),
            Err(ConfigError::NumVbuckets(1000))
        );
        assert_eq!(
            with(|c| c.num_vbuckets = 0),
            Err(ConfigError::NumVbuckets(0))
        );
        assert_eq!(
            with(|c| c.num_vbuckets = 131_072),
            Err(ConfigError::NumVbuckets(131_072))
        );
        assert!(with(|c| c.num_vbuckets = 65_536).is_ok());
        assert!(with(|c| c.num_vbuckets = 1).is_ok());
        assert_eq!(with(|c| c.quota_bytes = 0), Err(ConfigError::Quota));
        assert_eq!(
            with(|c| c.low_watermark = 0.9),
            Err(ConfigError::Watermarks)
        );
        assert_eq!(
            with(|c| c.high_watermark = 1.5),
            Err(ConfigError::Watermarks)
        );
        assert_eq!(
            with(|c| c.low_watermark = f64::NAN),
            Err(ConfigError::Watermarks)
        );
        assert_eq!(
            with(|c| c.low_watermark = 0.0),
            Err(ConfigError::Watermarks)
        );
        assert_eq!(with(|c| c.max_value_len = 0), Err(ConfigError::MaxValueLen));
    }

    #[test]
    fn cas_is_monotonic_and_never_zero() {
        let b = Bucket::try_new(EngineConfig::default()).unwrap();
        let (a, c) = (b.next_cas(), b.next_cas());
        assert!(a >= 1 && c > a);
        b.cas.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(b.next_cas(), 1, "wraps past 0, never returns it");
    }
}
