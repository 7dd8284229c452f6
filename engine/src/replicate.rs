//! Replication in the engine. The active's side: a replication stream reads
//! a vbucket's checkpoint queue through a cursor ([`Bucket::open_cursor`],
//! [`Bucket::read_cursor`]), which keeps the entries it has not read alive;
//! what the queue no longer holds must first come from disk (a backfill). The
//! replica's side: [`Bucket::apply_replicated`] installs its active's
//! mutations with their seqnos and CAS and queues them for its own flusher,
//! and [`Bucket::reset_vbucket`] rolls a diverged replica back to nothing.
//! Both sides keep the vbucket's failover log: a new entry whenever a
//! vbucket becomes active, adopted by its replicas, so a stream can tell a
//! replica whose history branched off from its active's.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;

use super::item::{Hints, Item};
use super::memory::{item_charge, NeedMemory};
use super::vbucket::{CursorWake, VbInner, VbucketState, MAX_FAILOVER_ENTRIES};
use super::{Bucket, EngineError, OpError};
use crate::mutation::{Mutation, MutationKind, VbucketId};

/// A replication cursor, unique within its bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CursorId(pub u64);

/// Where a new cursor's stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorStart {
    /// Everything after the requested seqno is in memory: read the cursor.
    Memory,
    /// The queue starts later: first send the records with seqnos in
    /// (requested, `until`] from disk — once the persisted seqno reaches
    /// `until` — then read the cursor.
    Backfill {
        /// The last seqno the backfill must cover.
        until: u64,
    },
}

/// What [`Bucket::read_cursor`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorRead {
    /// This many mutations were read (0: caught up, wait for the wake).
    Items(usize),
    /// The cursor lagged too far and was dropped: reopen it where the
    /// stream is (which starts with a backfill).
    Dropped,
    /// No such cursor: the vbucket was cleared or deleted.
    Closed,
}

// === impl Bucket ===

impl Bucket {
    /// Opens a cursor on `vb` that has read everything up to `start_seqno`;
    /// `wake` is called (with the vbucket locked: keep it cheap) whenever a
    /// mutation is queued or the cursor is dropped. Any state: a takeover
    /// follows the old active whatever it has become (which copies a
    /// stream may follow is the producer's policy); a cursor keeps a dead
    /// copy from being dropped. Ephemeral buckets queue nothing and have
    /// nothing to stream.
    pub fn open_cursor(
        &self,
        vb: VbucketId,
        start_seqno: u64,
        wake: CursorWake,
    ) -> Result<(CursorId, CursorStart), EngineError> {
        if self.config.ephemeral {
            return Err(EngineError::NotMyVbucket);
        }
        let vbucket = self.vbucket(vb)?;
        let mut inner = vbucket.lock();
        let id = self.cursor_ids.fetch_add(1, Ordering::Relaxed) + 1;
        let start = match inner.open_cursor(id, start_seqno, wake) {
            None => CursorStart::Memory,
            Some(until) => CursorStart::Backfill { until },
        };
        Ok((CursorId(id), start))
    }

    /// Appends up to `max` mutations after the cursor's position to `out`,
    /// in seqno order, and moves the cursor past them.
    pub fn read_cursor(
        &self,
        vb: VbucketId,
        id: CursorId,
        max: usize,
        out: &mut Vec<Mutation>,
    ) -> CursorRead {
        let Ok(vbucket) = self.vbucket(vb) else {
            return CursorRead::Closed;
        };
        let result = vbucket.lock().read_cursor(id.0, max, out);
        match result {
            Ok((n, released)) => {
                self.mem.release(released);
                CursorRead::Items(n)
            }
            Err(true) => CursorRead::Dropped,
            Err(false) => CursorRead::Closed,
        }
    }

    /// Closes a cursor (a no-op if it is gone already).
    pub fn close_cursor(&self, vb: VbucketId, id: CursorId) {
        if let Ok(vbucket) = self.vbucket(vb) {
            let released = vbucket.lock().close_cursor(id.0);
            self.mem.release(released);
        }
    }

    /// Drops the replication cursors that keep more than `keep` drained
    /// mutations of a vbucket in memory, in every vbucket; returns the
    /// bytes released. The pager calls it with 0 when ejection alone
    /// cannot get below the high watermark.
    pub fn drop_lagging_cursors(&self, keep: usize) -> usize {
        let mut released = 0usize;
        for vbucket in self.vbuckets.iter() {
            released = released.saturating_add(vbucket.lock().drop_lagging_cursors(keep));
        }
        self.mem.release(released);
        released
    }

    /// Whether a replication stream still reads `vb` (a dead vbucket is
    /// not dropped while one does: it may still be handing its last
    /// mutations over).
    pub fn has_cursors(&self, vb: VbucketId) -> bool {
        self.vbucket(vb).is_ok_and(|v| v.lock().has_cursors())
    }

    /// Whether `vb` holds any item or queued mutation.
    pub fn holds_data(&self, vb: VbucketId) -> bool {
        self.vbucket(vb).is_ok_and(|v| v.lock().holds_data())
    }

    /// A replica starts applying a disk snapshot ending at `end` (see
    /// `VbInner::disk_snapshot_end`); ignored if it has reached `end`.
    pub fn begin_disk_snapshot(&self, vb: VbucketId, end: u64) {
        if let Ok(v) = self.vbucket(vb) {
            let mut inner = v.lock();
            if end > inner.high_seqno {
                inner.disk_snapshot_end = end;
            }
        }
    }

    /// The end of the disk snapshot `vb` is in the middle of, if any.
    pub fn open_disk_snapshot(&self, vb: VbucketId) -> Option<u64> {
        let v = self.vbucket(vb).ok()?;
        let inner = v.lock();
        (inner.disk_snapshot_end > inner.high_seqno).then_some(inner.disk_snapshot_end)
    }

    /// `vb`'s failover log, newest first: (vbucket UUID, start seqno).
    pub fn failover_log(&self, vb: VbucketId) -> Vec<(u64, u64)> {
        self.vbucket(vb)
            .map(|v| v.lock().failover.clone())
            .unwrap_or_default()
    }

    /// Replaces `vb`'s failover log: a replica adopting its active's, or
    /// warmup restoring what was persisted. Keeps the newest entries.
    pub fn set_failover_log(&self, vb: VbucketId, mut log: Vec<(u64, u64)>) {
        log.truncate(MAX_FAILOVER_ENTRIES);
        if let Ok(vbucket) = self.vbucket(vb) {
            vbucket.lock().failover = log;
        }
    }

    /// Installs a mutation received from `vb`'s active on this replica (or
    /// pending) vbucket: same seqno, CAS, flags and expiry; queued for this
    /// node's flusher under the same seqno, so seqnos agree across copies.
    /// A seqno at or below the vbucket's high seqno was applied already and
    /// is ignored. NOT_MY_VBUCKET unless the vbucket is a replica or
    /// pending; TempFail while warming up; OutOfMemory when even ejection
    /// cannot make room (the stream retries: back-pressure).
    pub fn apply_replicated(&self, vb: VbucketId, m: &Mutation) -> Result<(), EngineError> {
        if self.is_warming_up() {
            return Err(EngineError::TempFail);
        }
        if self.config.ephemeral {
            return Err(EngineError::NotMyVbucket);
        }
        let vbucket = self.vbucket(vb)?;
        self.with_memory(|| {
            let mut inner = vbucket.lock();
            if !matches!(
                vbucket.state(),
                VbucketState::Replica | VbucketState::Pending
            ) {
                return Err(OpError::Engine(EngineError::NotMyVbucket));
            }
            if m.seqno <= inner.high_seqno {
                return Ok(());
            }
            self.apply_locked(vb, &mut inner, m)?;
            if m.seqno >= inner.disk_snapshot_end {
                inner.disk_snapshot_end = 0;
            }
            Ok(())
        })?;
        self.cas.fetch_max(m.cas, Ordering::Relaxed);
        Ok(())
    }

    fn apply_locked(
        &self,
        vb: VbucketId,
        inner: &mut VbInner,
        m: &Mutation,
    ) -> Result<(), NeedMemory> {
        let old = inner
            .table
            .get_key_value(&m.key[..])
            .map(|(k, it)| (k.clone(), it.seqno, it.resident_len()));
        let queue_charge = self.queue_charge(m.key.len());
        match &m.kind {
            MutationKind::Set {
                value,
                flags,
                exptime,
            } => {
                let (charge, release) = match &old {
                    Some((_, seqno, len)) => (
                        value.len().saturating_add(queue_charge),
                        inner.release_of(*seqno, *len),
                    ),
                    None => (
                        item_charge(m.key.len(), value.len()).saturating_add(queue_charge),
                        0,
                    ),
                };
                self.mem.apply(charge, release)?;
                if let Some((_, seqno, len)) = &old {
                    inner.retire_value(*seqno, *len);
                }
                let key = old.map_or_else(|| m.key.clone(), |(k, _, _)| k);
                inner.push_at(m.seqno, queue_charge, |_| Mutation {
                    vbucket: vb,
                    key: key.clone(),
                    ..m.clone()
                });
                let item = Item {
                    value: Some(value.clone()),
                    flags: *flags,
                    exptime: *exptime,
                    cas: m.cas,
                    seqno: m.seqno,
                    time: m.time,
                    referenced: false,
                    hints: Hints::default(),
                    accessed: m.time,
                };
                if inner.table.insert(key, item).is_none() {
                    self.note_item_added();
                }
            }
            MutationKind::Delete => {
                let release = match &old {
                    Some((k, seqno, len)) => {
                        item_charge(k.len(), 0).saturating_add(inner.release_of(*seqno, *len))
                    }
                    None => 0,
                };
                self.mem.apply(queue_charge, release)?;
                if let Some((_, seqno, len)) = &old {
                    inner.retire_value(*seqno, *len);
                    inner.table.remove(&m.key[..]);
                    self.note_item_removed();
                }
                // Queued even for a key this replica never had: an older
                // copy may be on its disk.
                inner.push_at(m.seqno, queue_charge, |_| Mutation {
                    vbucket: vb,
                    ..m.clone()
                });
            }
        }
        self.note_queued();
        Ok(())
    }

    /// Rolls `vb` back to nothing — a replica whose history diverged from
    /// its active's (the stream answered "rollback") streams again from 0.
    /// Drops items, queue and cursors, resets the seqnos and the failover
    /// log, keeps the state. The caller drops the vbucket on disk too.
    /// An active vbucket is never reset (its copy is the one that counts:
    /// a stream's rollback answer that raced with a takeover must not
    /// empty it): that is `NotMyVbucket`.
    pub fn reset_vbucket(&self, vb: VbucketId) -> Result<(), EngineError> {
        let vbucket = self.vbucket(vb)?;
        let mut inner = vbucket.lock();
        if vbucket.state() == VbucketState::Active {
            return Err(EngineError::NotMyVbucket);
        }
        let cleared = inner.forget();
        inner.high_seqno = 0;
        inner.drained_seqno = 0;
        inner.persisted_seqno = 0;
        drop(inner);
        self.uncharge(cleared);
        Ok(())
    }

    /// Starts a new history for `vb` (it became active): a failover log
    /// entry with a fresh UUID at the high seqno.
    pub(super) fn new_failover_entry(inner: &mut VbInner) {
        inner.new_failover_entry(fresh_uuid());
    }
}

/// A random, non-zero vbucket UUID (std's per-process random hasher keys,
/// mixed with the time, so restarts and vbuckets never repeat one).
fn fresh_uuid() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use bytes::Bytes;

    use super::super::tests::{active_bucket, set, NOW};
    use super::super::Lookup;
    use super::*;

    fn counter() -> (Arc<AtomicUsize>, CursorWake) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (
            n,
            Arc::new(move || {
                m.fetch_add(1, Ordering::Relaxed);
            }),
        )
    }

    fn read(b: &Bucket, id: CursorId, max: usize) -> (CursorRead, Vec<u64>) {
        let mut out = Vec::new();
        let r = b.read_cursor(0, id, max, &mut out);
        (r, out.iter().map(|m| m.seqno).collect())
    }

    #[test]
    fn cursor_reads_in_order_and_keeps_entries_past_the_flusher() {
        let b = active_bucket();
        let (wakes, wake) = counter();
        let (id, start) = b.open_cursor(0, 0, wake).unwrap();
        assert_eq!(start, CursorStart::Memory);
        for i in 0..5 {
            set(&b, &format!("k{i}"), "v");
        }
        assert_eq!(wakes.load(Ordering::Relaxed), 5);
        // The flusher takes everything; the cursor still reads it all.
        assert_eq!(b.drain(100).len(), 5);
        assert_eq!(b.queue_len(), 0);
        assert_eq!(read(&b, id, 3), (CursorRead::Items(3), vec![1, 2, 3]));
        assert_eq!(read(&b, id, 10), (CursorRead::Items(2), vec![4, 5]));
        assert_eq!(read(&b, id, 10), (CursorRead::Items(0), vec![]));
        b.close_cursor(0, id);
        assert_eq!(read(&b, id, 10).0, CursorRead::Closed);
        b.assert_accounting();
    }

    #[test]
    fn a_cursor_behind_the_queue_starts_with_a_backfill() {
        let b = active_bucket();
        for i in 0..4 {
            set(&b, &format!("k{i}"), "v");
        }
        b.drain(2);
        let (_, wake) = counter();
        // Seqnos 1 and 2 left the queue: they must come from disk.
        let (id, start) = b.open_cursor(0, 0, wake.clone()).unwrap();
        assert_eq!(start, CursorStart::Backfill { until: 2 });
        assert_eq!(read(&b, id, 10), (CursorRead::Items(2), vec![3, 4]));
        let (id2, start) = b.open_cursor(0, 2, wake.clone()).unwrap();
        assert_eq!(start, CursorStart::Memory);
        assert_eq!(read(&b, id2, 10).1, vec![3, 4]);
        b.drain(10);
        let (id3, start) = b.open_cursor(0, 4, wake).unwrap();
        assert_eq!(start, CursorStart::Memory, "caught up: nothing to send");
        assert_eq!(read(&b, id3, 10), (CursorRead::Items(0), vec![]));
        b.assert_accounting();
    }

    #[test]
    fn pinned_memory_is_released_when_the_cursor_moves_or_is_dropped() {
        let b = active_bucket();
        let (_, wake) = counter();
        let empty = b.mem_used();
        let (id, _) = b.open_cursor(0, 0, wake.clone()).unwrap();
        set(&b, "a", "1");
        b.delete(0, b"a", 0, NOW).unwrap();
        b.drain(10);
        assert!(b.mem_used() > empty, "the cursor pins both mutations");
        read(&b, id, 10);
        assert_eq!(b.mem_used(), empty);
        let (id, _) = b.open_cursor(0, 2, wake).unwrap();
        set(&b, "b", "2");
        b.drain(10);
        b.drop_lagging_cursors(0);
        b.assert_accounting();
        assert_eq!(read(&b, id, 10).0, CursorRead::Dropped);
        assert_eq!(read(&b, id, 10).0, CursorRead::Closed);
    }

    #[test]
    fn a_dead_copy_can_still_be_followed_until_it_is_dropped() {
        let b = active_bucket();
        let (_, wake) = counter();
        set(&b, "a", "1");
        set(&b, "b", "2");
        b.set_vbucket_state(0, VbucketState::Dead).unwrap();
        // The old active of a takeover: its successor reads its last writes.
        let (id, start) = b.open_cursor(0, 0, wake.clone()).unwrap();
        assert_eq!(start, CursorStart::Memory);
        assert_eq!(read(&b, id, 10), (CursorRead::Items(2), vec![1, 2]));
        b.delete_vbucket(0).unwrap();
        assert_eq!(read(&b, id, 10).0, CursorRead::Closed);
        assert!(b.open_cursor(60_000, 0, wake).is_err());
    }

    fn replica() -> Bucket {
        let b = active_bucket();
        b.set_vbucket_state(0, VbucketState::Replica).unwrap();
        b
    }

    fn put(seqno: u64, key: &'static str, value: &'static str, cas: u64) -> Mutation {
        Mutation {
            vbucket: 0,
            seqno,
            key: Bytes::from_static(key.as_bytes()),
            cas,
            time: NOW,
            kind: MutationKind::Set {
                value: Bytes::from_static(value.as_bytes()),
                flags: 7,
                exptime: 0,
            },
        }
    }

    #[test]
    fn a_replica_applies_seqnos_and_cas_as_given_and_skips_what_it_has() {
        let b = replica();
        b.apply_replicated(0, &put(3, "a", "1", 100)).unwrap();
        b.apply_replicated(0, &put(9, "a", "2", 200)).unwrap();
        b.apply_replicated(0, &put(9, "a", "stale", 300)).unwrap();
        b.apply_replicated(0, &put(12, "b", "3", 50)).unwrap();
        let del = Mutation {
            kind: MutationKind::Delete,
            ..put(14, "b", "", 400)
        };
        b.apply_replicated(0, &del).unwrap();
        b.apply_replicated(
            0,
            &Mutation {
                seqno: 15,
                key: Bytes::from_static(b"never"),
                ..del.clone()
            },
        )
        .unwrap();
        assert_eq!(b.high_seqno(0), Some(15));
        match b.get_replica(0, b"a", NOW).unwrap() {
            Lookup::Hit(hit) => {
                assert_eq!((hit.cas, &hit.value[..], hit.flags), (200, &b"2"[..], 7));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.get_replica(0, b"b", NOW), Err(EngineError::NotFound));
        assert_eq!(b.get(0, b"a", NOW), Err(EngineError::NotMyVbucket));
        let seqnos: Vec<u64> = b.drain(100).iter().map(|m| m.seqno).collect();
        assert_eq!(
            seqnos,
            [3, 9, 12, 14, 15],
            "queued for disk under the same seqnos"
        );
        b.assert_accounting();
        // Promoted, it hands out CAS values above every one it applied.
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        assert!(set(&b, "c", "x").cas > 400);
        assert_eq!(b.high_seqno(0), Some(16));
    }

    #[test]
    fn only_replicas_apply_and_reset_starts_over() {
        let b = active_bucket();
        assert_eq!(
            b.apply_replicated(0, &put(1, "a", "1", 1)),
            Err(EngineError::NotMyVbucket)
        );
        set(&b, "kept", "1");
        assert_eq!(
            b.reset_vbucket(0),
            Err(EngineError::NotMyVbucket),
            "an active copy is never emptied"
        );
        assert_eq!(b.curr_items(), 1);
        let b = replica();
        b.apply_replicated(0, &put(5, "a", "1", 1)).unwrap();
        b.set_failover_log(0, vec![(9, 0)]);
        b.reset_vbucket(0).unwrap();
        assert_eq!(b.high_seqno(0), Some(0));
        assert!(b.failover_log(0).is_empty());
        assert_eq!(b.curr_items(), 0);
        assert_eq!(b.vbucket_state(0), Some(VbucketState::Replica));
        b.apply_replicated(0, &put(1, "a", "1", 1)).unwrap();
        b.assert_accounting();
    }

    #[test]
    fn becoming_active_starts_a_new_history() {
        let b = replica();
        b.set_failover_log(0, vec![(11, 0)]);
        b.apply_replicated(0, &put(4, "a", "1", 1)).unwrap();
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        let log = b.failover_log(0);
        assert_eq!(log.len(), 2);
        assert_eq!(log[1], (11, 0));
        assert_eq!(log[0].1, 4);
        assert!(log[0].0 != 0 && log[0].0 != 11);
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        assert_eq!(b.failover_log(0).len(), 2, "already active: no new entry");
    }
}
