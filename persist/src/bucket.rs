//! One bucket's data in the [`Store`](super::Store): writing batches of
//! mutations with their persisted seqnos, vbucket metadata, point reads for
//! background fetch, vbucket deletion, and the warmup and backfill scans.
//! Data keys are `vb u16 BE ++ key`, so a vbucket is one contiguous key range
//! and both deletion and backfill are range scans. Synchronous; every call
//! may block on disk I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fjall::{Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};
use fxhash::FxHashMap;

use super::record::{self, StoredItem, MAX_ITEM_KEY_LEN};
use super::store::{
    lock, meta_key, meta_prefix, meta_u64, meta_vbucket, remove_bucket_meta, Shared, TAG_DELETING,
    TAG_FAILOVER, TAG_FLUSH_DEADLINE, TAG_SEQNO, TAG_STATE,
};
use super::PersistError;
use shoal_engine::mutation::{Mutation, VbucketId};

/// Keys removed per batch by [`BucketStore::delete_vbucket`]: bounds the
/// memory one deletion step holds (keys only) and the journal batch size.
const DELETE_CHUNK: usize = 10_000;

/// One failover log entry: (vbucket UUID, seqno its history starts at).
pub type FailoverEntry = (u64, u64);

/// A failover log, newest entry first.
pub type FailoverLog = [FailoverEntry];

/// One bucket's data in the [`Store`](super::Store). Cheap to clone; all
/// clones share state. Keep the `Store` alive while buckets are in use: its
/// drop stops the interval sync thread.
#[derive(Clone)]
pub struct BucketStore {
    inner: Arc<BucketInner>,
}

struct BucketInner {
    name: String,
    data: Keyspace,
    shared: Arc<Shared>,
    /// Persisted seqno per vbucket, as on disk. The lock is held across a
    /// batch's commit so the cache and the disk always agree and seqnos only
    /// grow; that serialises writers of one bucket, which is fine: a bucket
    /// has one flusher.
    seqnos: Mutex<BTreeMap<VbucketId, u64>>,
    /// The data keyspace's memtable size (`StoreOptions::max_memtable_bytes`).
    max_memtable_bytes: u64,
    /// Bytes written by `write_batch` since it last sealed the memtable
    /// (guarded by `seqnos`' lock, like the writes themselves).
    unsealed_bytes: AtomicU64,
    /// Set (under `seqnos`' lock) by `Store::delete_bucket`: later batches
    /// fail instead of landing in a keyspace that is gone.
    deleted: AtomicBool,
}

/// What [`BucketStore::warmup`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmupStats {
    /// Live items handed to the callback.
    pub items: u64,
    /// Tombstones skipped.
    pub tombstones: u64,
    /// Records that failed to decode and were skipped (each is logged).
    pub corrupt: u64,
    /// Key and value bytes handed to the callback.
    pub bytes: u64,
}

/// What [`BucketStore::scan`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Records (items and tombstones) handed to the callback.
    pub records: u64,
    /// Records skipped because their seqno was not after `after_seqno`.
    pub skipped: u64,
}

// === impl BucketStore ===

impl BucketStore {
    /// Opens (creating if needed) the keyspace of bucket `name`, loads its
    /// persisted seqnos and finishes any vbucket deletion a crash
    /// interrupted. [`Store::bucket`](super::Store::bucket) calls this once
    /// per name and hands out clones.
    pub(super) fn open(
        shared: Arc<Shared>,
        name: &str,
        large_value_threshold: Option<u32>,
        max_memtable_bytes: u64,
    ) -> Result<BucketStore, PersistError> {
        if !shared.db.keyspace_exists(name) {
            // A new bucket starts clean, even if an earlier one of this name
            // was deleted by a process that died between dropping the
            // keyspace and its metadata (see `Store::delete_bucket`).
            remove_bucket_meta(&shared, name)?;
        }
        let data = shared.db.keyspace(name, || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(max_memtable_bytes)
                .with_kv_separation(
                    large_value_threshold
                        .map(|t| KvSeparationOptions::default().separation_threshold(t)),
                )
        })?;
        let mut seqnos = BTreeMap::new();
        for guard in shared.meta.prefix(meta_prefix(name, TAG_SEQNO)) {
            let (k, v) = guard.into_inner()?;
            seqnos.insert(meta_vbucket(&k)?, meta_u64(&v)?);
        }
        let mut interrupted = Vec::new();
        for guard in shared.meta.prefix(meta_prefix(name, TAG_DELETING)) {
            interrupted.push(meta_vbucket(&guard.key()?)?);
        }
        let bucket = BucketStore {
            inner: Arc::new(BucketInner {
                name: name.to_owned(),
                data,
                shared,
                seqnos: Mutex::new(seqnos),
                max_memtable_bytes,
                unsealed_bytes: AtomicU64::new(0),
                deleted: AtomicBool::new(false),
            }),
        };
        for vb in interrupted {
            tracing::warn!(bucket = name, vb, "finishing interrupted vbucket deletion");
            bucket.delete_vbucket(vb)?;
        }
        Ok(bucket)
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The data keyspace (for [`Store::delete_bucket`](super::Store::delete_bucket)).
    pub(super) fn keyspace(&self) -> &Keyspace {
        &self.inner.data
    }

    /// Refuses every later [`BucketStore::write_batch`]; waits for one in
    /// progress to finish first.
    pub(super) fn mark_deleted(&self) {
        let _seqnos = lock(&self.inner.seqnos);
        self.inner.deleted.store(true, Ordering::Release);
    }

    /// Fails with [`PersistError::DiskFull`] when the store's filesystem
    /// has less free space than the store keeps (a failed `statvfs` lets
    /// the write go on: the write itself then says what is wrong).
    fn check_room(&self) -> Result<(), PersistError> {
        let shared = &self.inner.shared;
        let Ok(stat) = rustix::fs::statvfs(&shared.dir) else {
            return Ok(());
        };
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < shared.min_free_bytes {
            return Err(PersistError::DiskFull {
                free,
                kept: shared.min_free_bytes,
            });
        }
        Ok(())
    }

    /// Writes `mutations` as ONE atomic fjall batch, together with the new
    /// persisted seqno of every vbucket they touch, then makes it durable as
    /// the [`FsyncPolicy`](super::FsyncPolicy) says. After a crash either
    /// all of it is on disk or none of it is. A key longer than
    /// [`MAX_ITEM_KEY_LEN`] fails the call before anything is written.
    ///
    /// If a key appears more than once, only its highest-seqno mutation is
    /// written (fjall gives every entry of a batch the same sequence number,
    /// so two versions of one key in one batch would be ambiguous). A
    /// vbucket's persisted seqno never moves backwards.
    ///
    /// Costs one copy of each value: the record is header ++ value in one
    /// buffer, as fjall stores values contiguously.
    pub fn write_batch(&self, mutations: &[Mutation]) -> Result<(), PersistError> {
        if mutations.is_empty() {
            return Ok(());
        }
        self.check_room()?;
        let inner = &*self.inner;
        // Index of the newest mutation of each (vbucket, key), and the
        // highest seqno per vbucket (superseded mutations count: they are
        // persisted by the write that replaced them).
        let mut newest: FxHashMap<(VbucketId, &[u8]), usize> = FxHashMap::default();
        let mut vb_max: BTreeMap<VbucketId, u64> = BTreeMap::new();
        for (i, m) in mutations.iter().enumerate() {
            if m.key.len() > MAX_ITEM_KEY_LEN {
                return Err(PersistError::KeyTooLong { len: m.key.len() });
            }
            let slot = newest.entry((m.vbucket, &m.key[..])).or_insert(i);
            if mutations.get(*slot).is_some_and(|old| old.seqno < m.seqno) {
                *slot = i;
            }
            let max = vb_max.entry(m.vbucket).or_insert(0);
            *max = (*max).max(m.seqno);
        }
        let mut batch = inner
            .shared
            .db
            .batch()
            .durability(Some(inner.shared.batch_mode));
        let mut batch_bytes = 0u64;
        for (i, m) in mutations.iter().enumerate() {
            if newest.get(&(m.vbucket, &m.key[..])) != Some(&i) {
                continue;
            }
            let mut key = Vec::new();
            record::encode_key(m.vbucket, &m.key, &mut key);
            let mut value = Vec::new();
            record::encode_mutation(m, &mut value);
            batch_bytes += (key.len() + value.len()) as u64;
            batch.insert(&inner.data, key, value);
        }
        let mut seqnos = lock(&inner.seqnos);
        if inner.deleted.load(Ordering::Acquire) {
            return Err(PersistError::BucketDeleted);
        }
        for (vb, max) in &mut vb_max {
            *max = (*max).max(seqnos.get(vb).copied().unwrap_or(0));
            batch.insert(
                &inner.shared.meta,
                meta_key(&inner.name, TAG_SEQNO, Some(*vb)),
                max.to_be_bytes().to_vec(),
            );
        }
        batch.commit()?;
        seqnos.extend(vb_max);
        inner.shared.dirty.store(true, Ordering::Release);
        self.seal_full_memtable(batch_bytes)?;
        drop(seqnos);
        Ok(())
    }

    /// Seals the data keyspace's memtable once `write_batch` has put
    /// `max_memtable_bytes` into it. fjall only *requests* that from its
    /// worker pool when a write finds the memtable full, and the workers
    /// may be busy flushing the previous memtable: under a steady stream of
    /// batches the active memtable then grows by everything written during
    /// a flush (measured: 90 MB against a 4 MiB limit), each flush of a
    /// bigger memtable takes longer, and fjall's own brake — writers stall
    /// at four sealed memtables — never engages. All of it is outside the
    /// RAM quota (with key-value separation memtables hold whole values).
    /// Sealing here, on the flusher's thread, keeps each memtable near its
    /// size, so fjall's stall bounds the memtables at about five of them,
    /// and the stall reaches clients as back-pressure: the engine's queue
    /// grows inside the quota and writes get "out of memory" until the
    /// flush catches up. `rotate_memtable` is fjall's (doc-hidden) call for
    /// exactly this; it also runs the version GC that frees flushed
    /// memtables.
    fn seal_full_memtable(&self, batch_bytes: u64) -> Result<(), PersistError> {
        let inner = &*self.inner;
        let unsealed = inner
            .unsealed_bytes
            .fetch_add(batch_bytes, Ordering::Relaxed)
            + batch_bytes;
        if unsealed >= inner.max_memtable_bytes {
            inner.unsealed_bytes.store(0, Ordering::Relaxed);
            inner.data.rotate_memtable()?;
        }
        Ok(())
    }

    /// The highest persisted seqno of every vbucket that has one, by vbucket.
    pub fn persisted_seqnos(&self) -> Vec<(VbucketId, u64)> {
        lock(&self.inner.seqnos)
            .iter()
            .map(|(vb, s)| (*vb, *s))
            .collect()
    }

    /// Records `vbucket`'s state (the engine's encoding: 1 active, 2
    /// replica, 3 pending, 4 dead). Synced before returning, whatever the
    /// policy: a restarted node must not claim a vbucket it handed over.
    pub fn set_vbucket_state(&self, vbucket: VbucketId, state: u8) -> Result<(), PersistError> {
        let mut batch = self.meta_batch();
        batch.insert(
            &self.inner.shared.meta,
            meta_key(&self.inner.name, TAG_STATE, Some(vbucket)),
            vec![state],
        );
        batch.commit()?;
        Ok(())
    }

    /// Every recorded vbucket state, by vbucket.
    pub fn vbucket_states(&self) -> Result<Vec<(VbucketId, u8)>, PersistError> {
        let mut states = Vec::new();
        for guard in self
            .inner
            .shared
            .meta
            .prefix(meta_prefix(&self.inner.name, TAG_STATE))
        {
            let (k, v) = guard.into_inner()?;
            let [state] = v[..] else {
                return Err(PersistError::Corrupt {
                    reason: "vbucket state is not one byte",
                });
            };
            states.push((meta_vbucket(&k)?, state));
        }
        Ok(states)
    }

    /// Records failover logs ((UUID, seqno), newest first) and, for each
    /// vbucket given one, its state (the engine's encoding), in one batch.
    /// Synced before returning: a replica must never resume with a history
    /// its active no longer knows of, nor a restart claim a vbucket with
    /// the wrong history.
    pub fn set_failover_logs(
        &self,
        logs: &[(VbucketId, Option<u8>, &FailoverLog)],
    ) -> Result<(), PersistError> {
        let mut batch = self.meta_batch();
        for (vbucket, state, log) in logs {
            let mut value = Vec::with_capacity(log.len() * 16);
            for (uuid, seqno) in log.iter() {
                value.extend_from_slice(&uuid.to_be_bytes());
                value.extend_from_slice(&seqno.to_be_bytes());
            }
            batch.insert(
                &self.inner.shared.meta,
                meta_key(&self.inner.name, TAG_FAILOVER, Some(*vbucket)),
                value,
            );
            if let Some(state) = state {
                batch.insert(
                    &self.inner.shared.meta,
                    meta_key(&self.inner.name, TAG_STATE, Some(*vbucket)),
                    vec![*state],
                );
            }
        }
        batch.commit()?;
        Ok(())
    }

    /// Every recorded failover log, by vbucket.
    pub fn failover_logs(&self) -> Result<Vec<(VbucketId, Vec<FailoverEntry>)>, PersistError> {
        let mut logs = Vec::new();
        for guard in self
            .inner
            .shared
            .meta
            .prefix(meta_prefix(&self.inner.name, TAG_FAILOVER))
        {
            let (k, v) = guard.into_inner()?;
            if v.len() % 16 != 0 {
                return Err(PersistError::Corrupt {
                    reason: "failover log is not a whole number of entries",
                });
            }
            let log = v
                .chunks_exact(16)
                .map(|e| {
                    let (uuid, seqno) = e.split_at(8);
                    let word = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
                    (word(uuid), word(seqno))
                })
                .collect();
            logs.push((meta_vbucket(&k)?, log));
        }
        Ok(logs)
    }

    /// Records the bucket's `flush_all` deadline (unix seconds; items
    /// changed before it are invalid). Synced before returning.
    pub fn set_flush_deadline(&self, deadline: u32) -> Result<(), PersistError> {
        let mut batch = self.meta_batch();
        batch.insert(
            &self.inner.shared.meta,
            meta_key(&self.inner.name, TAG_FLUSH_DEADLINE, None),
            deadline.to_be_bytes().to_vec(),
        );
        batch.commit()?;
        Ok(())
    }

    /// The recorded `flush_all` deadline, 0 if none was ever set.
    pub fn flush_deadline(&self) -> Result<u32, PersistError> {
        let key = meta_key(&self.inner.name, TAG_FLUSH_DEADLINE, None);
        match self.inner.shared.meta.get(key)? {
            None => Ok(0),
            Some(v) => <[u8; 4]>::try_from(&v[..])
                .map(u32::from_be_bytes)
                .map_err(|_| PersistError::Corrupt {
                    reason: "flush deadline is not four bytes",
                }),
        }
    }

    /// Reads one key, for a background fetch of an ejected value. A
    /// tombstone comes back as `Some` with [`StoredItem::is_tombstone`], so
    /// the caller can tell "deleted at seqno N" from "never stored". The
    /// value is [detached](StoredItem::detach): it owns its bytes, as the
    /// engine will keep it in memory.
    pub fn get(&self, vbucket: VbucketId, key: &[u8]) -> Result<Option<StoredItem>, PersistError> {
        let mut k = Vec::new();
        record::encode_key(vbucket, key, &mut k);
        match self.inner.data.get(k)? {
            None => Ok(None),
            Some(v) => Ok(Some(record::decode_value(Bytes::from(v))?.detach())),
        }
    }

    /// Removes every item and tombstone of `vbucket`, its persisted seqno
    /// and its state; returns how many records were removed. Runs in chunks
    /// of `DELETE_CHUNK` (10k) keys behind a "deleting" marker, so a crash
    /// midway is finished by the next [`Store::bucket`](super::Store::bucket).
    /// Synced before returning. The caller must not write to `vbucket`
    /// meanwhile (the engine drops the vbucket and its queue first).
    pub fn delete_vbucket(&self, vbucket: VbucketId) -> Result<u64, PersistError> {
        let inner = &*self.inner;
        let marker = meta_key(&inner.name, TAG_DELETING, Some(vbucket));
        // Not synced on its own: the journal is replayed in order, so any
        // crash state that holds a later removal holds this marker too.
        inner.shared.meta.insert(marker.clone(), Vec::new())?;
        let mut removed = 0u64;
        let mut start = Bound::Included(record::vbucket_prefix(vbucket).to_vec());
        let end = vbucket_end(vbucket);
        loop {
            let mut keys = Vec::with_capacity(DELETE_CHUNK);
            for guard in inner
                .data
                .range::<Vec<u8>, _>((start.clone(), end.clone()))
                .take(DELETE_CHUNK)
            {
                keys.push(guard.key()?);
            }
            let Some(last) = keys.last() else { break };
            start = Bound::Excluded(last.to_vec());
            removed += keys.len() as u64;
            let mut batch = inner.shared.db.batch();
            for k in keys {
                batch.remove(&inner.data, k);
            }
            batch.commit()?;
        }
        let mut seqnos = lock(&inner.seqnos);
        let mut batch = self.meta_batch();
        batch.remove(
            &inner.shared.meta,
            meta_key(&inner.name, TAG_SEQNO, Some(vbucket)),
        );
        batch.remove(
            &inner.shared.meta,
            meta_key(&inner.name, TAG_STATE, Some(vbucket)),
        );
        batch.remove(
            &inner.shared.meta,
            meta_key(&inner.name, TAG_FAILOVER, Some(vbucket)),
        );
        batch.remove(&inner.shared.meta, marker);
        batch.commit()?;
        seqnos.remove(&vbucket);
        Ok(removed)
    }

    /// Streams every live item of the bucket, in (vbucket, key) order, to
    /// `f` — for warmup. Reads through an iterator, so memory stays bounded
    /// by what `f` keeps. Tombstones are skipped (counted): warmup rebuilds
    /// the hash tables, which hold no deleted items; the vbuckets' high
    /// seqnos come from [`BucketStore::persisted_seqnos`]. A record that
    /// fails to decode is logged and skipped (counted) rather than failing
    /// the warmup: one bad block must not keep a whole bucket offline.
    /// Keys and values are detached (own their bytes). `f` returns
    /// `ControlFlow::Break(())` to stop early.
    pub fn warmup<F>(&self, mut f: F) -> Result<WarmupStats, PersistError>
    where
        F: FnMut(VbucketId, Bytes, StoredItem) -> ControlFlow<()>,
    {
        let mut stats = WarmupStats::default();
        for guard in self.inner.data.iter() {
            let (k, v) = guard.into_inner()?;
            let decoded = record::decode_key(&k)
                .and_then(|(vb, key)| Ok((vb, key, record::decode_value(Bytes::from(v))?)));
            let (vb, key, item) = match decoded {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(bucket = %self.inner.name, key = ?&k[..], error = %e, "skipping corrupt record during warmup");
                    stats.corrupt += 1;
                    continue;
                }
            };
            if item.is_tombstone() {
                stats.tombstones += 1;
                continue;
            }
            stats.items += 1;
            stats.bytes += (key.len() + item.value.len()) as u64;
            if f(vb, Bytes::copy_from_slice(key), item.detach()).is_break() {
                break;
            }
        }
        Ok(stats)
    }

    /// Streams the records of one vbucket whose seqno is greater than
    /// `after_seqno`, tombstones included, in key order — for backfilling a
    /// replication stream. Cost is a scan of the whole vbucket (there is no
    /// seqno index). Values are zero-copy slices of fjall's buffers, fine for
    /// records that are sent and dropped; [`StoredItem::detach`] any you keep.
    /// A corrupt record fails the scan: a replica must not silently miss
    /// a key.
    pub fn scan<F>(
        &self,
        vbucket: VbucketId,
        after_seqno: u64,
        mut f: F,
    ) -> Result<ScanStats, PersistError>
    where
        F: FnMut(Bytes, StoredItem) -> ControlFlow<()>,
    {
        let mut stats = ScanStats::default();
        let start = Bound::Included(record::vbucket_prefix(vbucket).to_vec());
        for guard in self
            .inner
            .data
            .range::<Vec<u8>, _>((start, vbucket_end(vbucket)))
        {
            let (k, v) = guard.into_inner()?;
            let item = record::decode_value(Bytes::from(v))?;
            if item.header.seqno <= after_seqno {
                stats.skipped += 1;
                continue;
            }
            stats.records += 1;
            let key = Bytes::from(k).slice(record::KEY_PREFIX_LEN..);
            if f(key, item).is_break() {
                break;
            }
        }
        Ok(stats)
    }

    /// Estimated number of records (items and tombstones) in the bucket.
    /// O(1); overwritten and deleted keys are counted until compaction
    /// merges them away, so this overestimates after updates.
    pub fn item_count(&self) -> usize {
        self.inner.data.approximate_len()
    }

    /// Forces everything written so far to stable storage (all buckets share
    /// one journal), whatever the policy.
    pub fn sync(&self) -> Result<(), PersistError> {
        self.inner.shared.sync()
    }

    /// A batch for metadata changes: always synced (see the module docs).
    fn meta_batch(&self) -> fjall::OwnedWriteBatch {
        self.inner
            .shared
            .db
            .batch()
            .durability(Some(PersistMode::SyncData))
    }
}

impl fmt::Debug for BucketStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketStore")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

// === helpers ===

/// The end bound of `vbucket`'s key range: the next vbucket's prefix.
fn vbucket_end(vbucket: VbucketId) -> Bound<Vec<u8>> {
    match vbucket.checked_add(1) {
        Some(next) => Bound::Excluded(record::vbucket_prefix(next).to_vec()),
        None => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests;
