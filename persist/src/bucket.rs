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
mod tests {
    use super::*;
    use crate::record::{RecordHeader, RecordKind};
    use crate::testdir::TestDir;
    use crate::{Store, StoreOptions};
    use shoal_engine::mutation::MutationKind;
    use std::time::Instant;

    pub(crate) fn set(vb: VbucketId, seqno: u64, key: &str, value: &[u8]) -> Mutation {
        Mutation {
            vbucket: vb,
            seqno,
            key: Bytes::copy_from_slice(key.as_bytes()),
            cas: seqno * 1000 + u64::from(vb),
            time: 1_700_000_000,
            kind: MutationKind::Set {
                value: Bytes::copy_from_slice(value),
                flags: 7,
                exptime: 0,
            },
        }
    }

    fn del(vb: VbucketId, seqno: u64, key: &str) -> Mutation {
        Mutation {
            kind: MutationKind::Delete,
            ..set(vb, seqno, key, b"")
        }
    }

    fn open(dir: &TestDir) -> Store {
        Store::open(dir.path(), StoreOptions::default()).unwrap()
    }

    /// (vbucket, key) of every live item, via warmup, with the stats.
    fn live_keys(b: &BucketStore) -> (Vec<(VbucketId, Bytes)>, WarmupStats) {
        let mut keys = Vec::new();
        let stats = b
            .warmup(|vb, k, _| {
                keys.push((vb, k));
                ControlFlow::Continue(())
            })
            .unwrap();
        (keys, stats)
    }

    #[test]
    fn reopen_finds_every_item() {
        let dir = TestDir::new("reopen");
        let big = vec![0xabu8; 64 * 1024]; // past the blob-file threshold
        let mut written = Vec::new();
        {
            let store = open(&dir);
            let b = store.bucket("default").unwrap();
            for round in 0..5u64 {
                let batch: Vec<Mutation> = (0..100u64)
                    .map(|i| {
                        let vb = (i % 8) as VbucketId;
                        let value: &[u8] = if i == 7 { &big } else { b"small value" };
                        set(vb, round * 100 + i + 1, &format!("key-{round}-{i}"), value)
                    })
                    .collect();
                b.write_batch(&batch).unwrap();
                written.extend(batch);
            }
        }
        let store = open(&dir);
        assert_eq!(store.bucket_names(), vec!["default".to_string()]);
        let b = store.bucket("default").unwrap();
        for m in &written {
            let got = b
                .get(m.vbucket, &m.key)
                .unwrap()
                .expect("item survives reopen");
            assert_eq!(got.header, RecordHeader::from_mutation(m));
            let MutationKind::Set { value, .. } = &m.kind else {
                unreachable!("only sets were written")
            };
            assert_eq!(&got.value, value);
        }
        let (keys, stats) = live_keys(&b);
        assert_eq!(keys.len(), written.len());
        assert_eq!(stats.items, written.len() as u64);
        assert!(b.get(0, b"never-written").unwrap().is_none());
        assert!(b.item_count() >= written.len());
    }

    #[test]
    fn tombstones_hide_older_values() {
        let dir = TestDir::new("tombstones");
        {
            let store = open(&dir);
            let b = store.bucket("default").unwrap();
            b.write_batch(&[set(3, 1, "gone", b"old"), set(3, 2, "kept", b"v")])
                .unwrap();
            b.write_batch(&[del(3, 3, "gone")]).unwrap();
            // Several versions of one key in one batch: the highest seqno
            // wins whatever the order in the slice.
            b.write_batch(&[
                set(3, 5, "twice", b"new"),
                set(3, 4, "twice", b"older"),
                set(4, 1, "flip", b"x"),
                del(4, 2, "flip"),
            ])
            .unwrap();
        }
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        let gone = b.get(3, b"gone").unwrap().unwrap();
        assert_eq!(gone.header.kind, RecordKind::Tombstone);
        assert_eq!(gone.header.seqno, 3);
        assert!(gone.value.is_empty());
        assert_eq!(&b.get(3, b"twice").unwrap().unwrap().value[..], b"new");
        assert!(b.get(4, b"flip").unwrap().unwrap().is_tombstone());

        let (keys, stats) = live_keys(&b);
        assert_eq!(
            keys,
            vec![(3, Bytes::from("kept")), (3, Bytes::from("twice"))]
        );
        assert_eq!((stats.items, stats.tombstones, stats.corrupt), (2, 2, 0));
    }

    #[test]
    fn persisted_seqnos_survive_reopen_and_never_go_back() {
        let dir = TestDir::new("seqnos");
        {
            let store = open(&dir);
            let b = store.bucket("default").unwrap();
            b.write_batch(&[
                set(1, 10, "a", b"1"),
                set(2, 3, "b", b"2"),
                set(1, 11, "c", b"3"),
            ])
            .unwrap();
            assert_eq!(b.persisted_seqnos(), vec![(1, 11), (2, 3)]);
            // A lower seqno (a contract breach upstream) must not move the
            // persisted seqno backwards.
            b.write_batch(&[set(1, 5, "d", b"4"), set(7, 1, "e", b"5")])
                .unwrap();
            assert_eq!(b.persisted_seqnos(), vec![(1, 11), (2, 3), (7, 1)]);
            b.write_batch(&[]).unwrap();
        }
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        assert_eq!(b.persisted_seqnos(), vec![(1, 11), (2, 3), (7, 1)]);
        // Buckets do not see each other's metadata.
        assert!(store.bucket("other").unwrap().persisted_seqnos().is_empty());
    }

    #[test]
    fn vbucket_states_and_flush_deadline_survive_reopen() {
        let dir = TestDir::new("states");
        {
            let store = open(&dir);
            let b = store.bucket("default").unwrap();
            assert_eq!(b.flush_deadline().unwrap(), 0);
            b.set_vbucket_state(0, 1).unwrap();
            b.set_vbucket_state(513, 2).unwrap();
            b.set_vbucket_state(0, 4).unwrap();
            b.set_flush_deadline(1_700_000_123).unwrap();
            store.bucket("b2").unwrap().set_vbucket_state(9, 3).unwrap();
        }
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        assert_eq!(b.vbucket_states().unwrap(), vec![(0, 4), (513, 2)]);
        assert_eq!(b.flush_deadline().unwrap(), 1_700_000_123);
        assert_eq!(
            store.bucket("b2").unwrap().vbucket_states().unwrap(),
            vec![(9, 3)]
        );
        assert_eq!(
            store.bucket_names(),
            vec!["b2".to_string(), "default".to_string()]
        );
    }

    #[test]
    fn delete_vbucket_removes_exactly_that_range() {
        let dir = TestDir::new("delvb");
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        let mut batch = Vec::new();
        for vb in [0u16, 1, 2, 255, 256, u16::MAX] {
            for i in 0..50u64 {
                batch.push(set(vb, i + 1, &format!("k{i}"), b"v"));
            }
            b.set_vbucket_state(vb, 1).unwrap();
        }
        // The highest key of vb 1's range: 0x00 0x01 0xff 0xff sorts just
        // below vb 2's prefix 0x00 0x02, so it must go and vb 2 must stay.
        let mut edge = set(1, 51, "", b"edge");
        edge.key = Bytes::from_static(&[0xff, 0xff]);
        batch.push(edge);
        b.write_batch(&batch).unwrap();

        assert_eq!(b.delete_vbucket(1).unwrap(), 51);
        assert_eq!(b.delete_vbucket(u16::MAX).unwrap(), 50);
        assert_eq!(b.delete_vbucket(1).unwrap(), 0, "idempotent");

        let check = |b: &BucketStore| {
            let (keys, _) = live_keys(b);
            let mut per_vb: BTreeMap<VbucketId, usize> = BTreeMap::new();
            for (vb, _) in keys {
                *per_vb.entry(vb).or_default() += 1;
            }
            assert_eq!(
                per_vb,
                BTreeMap::from([(0, 50), (2, 50), (255, 50), (256, 50)])
            );
            assert_eq!(
                b.persisted_seqnos(),
                vec![(0, 50), (2, 50), (255, 50), (256, 50)]
            );
            assert_eq!(
                b.vbucket_states().unwrap(),
                vec![(0, 1), (2, 1), (255, 1), (256, 1)]
            );
            assert!(b.get(1, b"k0").unwrap().is_none());
            assert!(b.get(2, b"k0").unwrap().is_some());
        };
        check(&b);
        drop(b);
        drop(store);
        let store = open(&dir);
        check(&store.bucket("default").unwrap());
    }

    #[test]
    fn interrupted_vbucket_deletion_is_finished_on_open() {
        let dir = TestDir::new("delresume");
        {
            let store = open(&dir);
            let b = store.bucket("default").unwrap();
            b.write_batch(&[set(5, 1, "a", b"1"), set(6, 1, "b", b"2")])
                .unwrap();
            // What a crash right after the marker leaves behind.
            b.inner
                .shared
                .meta
                .insert(meta_key("default", TAG_DELETING, Some(5)), Vec::new())
                .unwrap();
        }
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        assert!(b.get(5, b"a").unwrap().is_none());
        assert!(b.get(6, b"b").unwrap().is_some());
        assert_eq!(b.persisted_seqnos(), vec![(6, 1)]);
        assert_eq!(
            b.inner
                .shared
                .meta
                .prefix(meta_prefix("default", TAG_DELETING))
                .count(),
            0
        );
    }

    #[test]
    fn scan_reports_items_and_tombstones_after_a_seqno() {
        let dir = TestDir::new("scan");
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        b.write_batch(&[
            set(9, 1, "a", b"1"),
            set(9, 2, "b", b"2"),
            set(10, 3, "other-vb", b"x"),
        ])
        .unwrap();
        b.write_batch(&[del(9, 3, "a"), set(9, 4, "c", b"3")])
            .unwrap();
        let mut seen = Vec::new();
        let stats = b
            .scan(9, 2, |k, item| {
                seen.push((k, item.header.seqno, item.is_tombstone()));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![(Bytes::from("a"), 3, true), (Bytes::from("c"), 4, false)]
        );
        assert_eq!(
            stats,
            ScanStats {
                records: 2,
                skipped: 1
            }
        );

        let mut first = Vec::new();
        b.scan(9, 0, |k, _| {
            first.push(k);
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(first, vec![Bytes::from("a")]);
    }

    #[test]
    fn corrupt_record_fails_get_and_is_skipped_by_warmup() {
        let dir = TestDir::new("corrupt");
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        b.write_batch(&[set(0, 1, "good", b"v")]).unwrap();
        let mut key = Vec::new();
        record::encode_key(0, b"bad", &mut key);
        let mut value = Vec::new();
        record::encode_mutation(&set(0, 2, "bad", b"payload"), &mut value);
        *value.last_mut().unwrap() ^= 1; // one flipped bit in the value
        b.inner.data.insert(key, value).unwrap();
        b.inner
            .data
            .insert(vec![0u8], b"key shorter than a vbucket prefix".to_vec())
            .unwrap();

        assert!(matches!(
            b.get(0, b"bad"),
            Err(PersistError::Corrupt {
                reason: "record checksum mismatch"
            })
        ));
        let (keys, stats) = live_keys(&b);
        assert_eq!(keys, vec![(0, Bytes::from("good"))]);
        assert_eq!((stats.items, stats.corrupt), (1, 2));
        assert!(b.scan(0, 0, |_, _| ControlFlow::Continue(())).is_err());
    }

    #[test]
    fn warmup_stops_when_asked() {
        let dir = TestDir::new("warmstop");
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        let batch: Vec<Mutation> = (0..10)
            .map(|i| set(0, i + 1, &format!("k{i}"), b"v"))
            .collect();
        b.write_batch(&batch).unwrap();
        let mut n = 0;
        let stats = b
            .warmup(|_, _, _| {
                n += 1;
                if n == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!((n, stats.items), (3, 3));
    }

    #[test]
    fn oversized_key_is_refused() {
        let dir = TestDir::new("bigkey");
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        let long = "k".repeat(record::MAX_ITEM_KEY_LEN + 1);
        assert!(matches!(
            b.write_batch(&[set(0, 1, &long, b"v")]),
            Err(PersistError::KeyTooLong { .. })
        ));
        assert!(b.persisted_seqnos().is_empty());
    }

    /// 200k small items written, the store reopened, and warmup streams them
    /// all. Debug builds are slow; the bound only catches pathologies (like
    /// loading everything at once or quadratic iteration).
    #[test]
    fn warmup_streams_200k_items() {
        const N: u64 = 200_000;
        let dir = TestDir::new("warm200k");
        let write_started = Instant::now();
        {
            let store = Store::open(
                dir.path(),
                StoreOptions {
                    fsync: crate::FsyncPolicy::Never,
                    ..StoreOptions::default()
                },
            )
            .unwrap();
            let b = store.bucket("default").unwrap();
            let mut seqno = [0u64; 1024];
            let mut batch = Vec::with_capacity(10_000);
            for i in 0..N {
                let vb = (i % 1024) as usize;
                seqno[vb] += 1;
                batch.push(set(
                    vb as VbucketId,
                    seqno[vb],
                    &format!("key:{i:08}"),
                    b"0123456789",
                ));
                if batch.len() == 10_000 {
                    b.write_batch(&batch).unwrap();
                    batch.clear();
                }
            }
            b.write_batch(&batch).unwrap();
        }
        let write_took = write_started.elapsed();
        let open_started = Instant::now();
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        let open_took = open_started.elapsed();
        let started = Instant::now();
        let mut last: Option<(VbucketId, Bytes)> = None;
        let mut ordered = true;
        let stats = b
            .warmup(|vb, k, _| {
                let here = (vb, k);
                if let Some(prev) = &last {
                    ordered &= *prev < here;
                }
                last = Some(here);
                ControlFlow::Continue(())
            })
            .unwrap();
        let took = started.elapsed();
        println!(
            "wrote {N} items in {write_took:?}; reopen (journal replay) {open_took:?}; \
             warmup of {} items took {took:?} ({:.0} items/s)",
            stats.items,
            stats.items as f64 / took.as_secs_f64()
        );
        assert_eq!(stats.items, N);
        assert!(ordered, "warmup streams in (vbucket, key) order");
        assert_eq!(b.persisted_seqnos().len(), 1024);
        assert!(took.as_secs() < 60, "warmup took {took:?}");
    }

    /// Release-only throughput probe: `cargo test --release -p shoal-node
    /// --lib persist::bucket::tests::write_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark; run in release by hand"]
    fn write_throughput() {
        for (name, fsync) in [
            ("every-batch", crate::FsyncPolicy::EveryBatch),
            ("never", crate::FsyncPolicy::Never),
        ] {
            const N: u64 = 1_000_000;
            let dir = TestDir::new("throughput");
            let store = Store::open(
                dir.path(),
                StoreOptions {
                    fsync,
                    ..StoreOptions::default()
                },
            )
            .unwrap();
            let b = store.bucket("default").unwrap();
            let value = [b'x'; 100];
            let all: Vec<Mutation> = (0..N)
                .map(|i| {
                    set(
                        (i % 1024) as VbucketId,
                        i / 1024 + 1,
                        &format!("key:{i:010}"),
                        &value,
                    )
                })
                .collect();
            let started = Instant::now();
            for chunk in all.chunks(10_000) {
                b.write_batch(chunk).unwrap();
            }
            let took = started.elapsed();
            println!(
                "{name}: {N} x 100-byte values in {took:?} = {:.0} items/s",
                N as f64 / took.as_secs_f64()
            );
            drop(b);
            drop(store);
            let started = Instant::now();
            let store = open(&dir);
            let b = store.bucket("default").unwrap();
            println!("{name}: reopen (journal replay) {:?}", started.elapsed());
            let started = Instant::now();
            let stats = b.warmup(|_, _, _| ControlFlow::Continue(())).unwrap();
            let took = started.elapsed();
            println!(
                "{name}: warmup of {} items in {took:?} = {:.0} items/s",
                stats.items,
                stats.items as f64 / took.as_secs_f64()
            );
        }
    }
}
