//! [`VBucket`]: one vbucket — its state (an atomic, read on every request
//! without a lock) and, behind one mutex, its hash table, its seqnos, its
//! failover log and its checkpoint queue of acknowledged mutations. The
//! queue has two kinds of readers: the flusher (`drained_seqno`) and any
//! number of replication cursors; an entry leaves the queue once the
//! flusher and every live cursor have passed it. Entries are in seqno
//! order (an active vbucket's seqnos are contiguous; a replica's may skip
//! the ones its active deduplicated), so the entry with a given seqno is
//! found by binary search. A cursor that lags too far is dropped (its
//! stream falls back to a backfill from disk) so a slow replica cannot pin
//! unbounded memory. This file also holds the queue-side half of memory
//! accounting: which charge a value moves to when its item lets go of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use fxhash::FxHashMap;

use super::item::Item;
use super::memory::item_charge;
use crate::mutation::Mutation;

/// A vbucket's role on this node, with the wire values of SET_VBUCKET and
/// GET_VBUCKET (1 active, 2 replica, 3 pending, 4 dead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VbucketState {
    /// Serves reads and writes.
    Active,
    /// Holds a copy fed by replication; clients get NOT_MY_VBUCKET.
    Replica,
    /// Being taken over during rebalance; clients get NOT_MY_VBUCKET.
    Pending,
    /// Not served here (the initial state of every vbucket).
    Dead,
}

impl VbucketState {
    /// Parses the wire value (1–4).
    pub fn from_wire(value: u32) -> Option<VbucketState> {
        match value {
            1 => Some(VbucketState::Active),
            2 => Some(VbucketState::Replica),
            3 => Some(VbucketState::Pending),
            4 => Some(VbucketState::Dead),
            _ => None,
        }
    }

    /// The wire value (1–4).
    pub fn to_wire(self) -> u32 {
        match self {
            VbucketState::Active => 1,
            VbucketState::Replica => 2,
            VbucketState::Pending => 3,
            VbucketState::Dead => 4,
        }
    }

    /// The name `stats vbucket` prints.
    pub fn name(self) -> &'static str {
        match self {
            VbucketState::Active => "active",
            VbucketState::Replica => "replica",
            VbucketState::Pending => "pending",
            VbucketState::Dead => "dead",
        }
    }
}

/// One vbucket.
#[derive(Debug)]
pub(super) struct VBucket {
    /// [`VbucketState::to_wire`] as a `u8`. Read without the lock on every
    /// request to turn away NOT_MY_VBUCKET cheaply; written only with the
    /// lock held, so a check repeated under the lock is authoritative.
    state: AtomicU8,
    /// Why one plain `std::sync::Mutex` around table, seqnos and queue
    /// together: every operation touches the item, the seqno and the queue
    /// as one step (a mutation must be queued in the order its seqno was
    /// assigned), and each critical section is a hash lookup plus a few
    /// field writes — at most a value copy for append — so the lock is held
    /// for well under a microsecond. With 1024 vbuckets the keys spread
    /// contention over 1024 locks, far more than there are cores. The
    /// engine never takes two vbucket locks at once (so no ordering to get
    /// wrong) and is synchronous: its async callers cannot hold a guard
    /// across an `.await`.
    inner: Mutex<VbInner>,
}

/// What a vbucket's lock protects.
#[derive(Debug, Default)]
pub(super) struct VbInner {
    /// The items. Only live-or-not-yet-purged versions; no tombstones.
    pub(super) table: FxHashMap<Bytes, Item>,
    /// Seqno of the last mutation acknowledged (0 = none yet).
    pub(super) high_seqno: u64,
    /// Seqno of the last mutation handed to the flusher.
    pub(super) drained_seqno: u64,
    /// Seqno up to which the flusher reported the mutations on disk; items
    /// at or below it are clean, and only clean values may be ejected.
    pub(super) persisted_seqno: u64,
    /// Mutations in seqno order: every one not yet drained, preceded by
    /// drained ones a replication cursor has not read yet.
    queue: VecDeque<Queued>,
    /// Replication cursors reading `queue`.
    cursors: Vec<Cursor>,
    /// The failover log, newest first: (vbucket UUID, seqno the history
    /// with that UUID starts at). A new entry is added whenever the vbucket
    /// becomes active; a replica adopts its active's log.
    pub(super) failover: Vec<(u64, u64)>,
    /// The end of the disk snapshot a replica is applying, until it has
    /// applied a mutation at or past it (0 = none open). A disk snapshot
    /// holds each key's latest version only, so this copy is consistent
    /// with its active's history only at the snapshot's end; a stream that
    /// resumes mid-snapshot says so, and a new active whose history
    /// branched off inside the snapshot makes it roll back.
    pub(super) disk_snapshot_end: u64,
    /// Where the pager's clock hand stopped in this table (an iteration
    /// index: approximate once the table changes, which is fine for a
    /// clock).
    pub(super) pager_hand: usize,
    /// The bucket is memory only: mutations get seqnos but are not queued
    /// (see `EngineConfig::ephemeral`).
    ephemeral: bool,
}

/// Wakes a cursor's reader when a mutation is queued.
pub type CursorWake = Arc<dyn Fn() + Send + Sync>;

/// A replication cursor: the last seqno its stream has read.
pub(super) struct Cursor {
    pub(super) id: u64,
    pub(super) seqno: u64,
    wake: CursorWake,
    /// Lagged too far and let go of its entries; its next read says so.
    dropped: bool,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("id", &self.id)
            .field("seqno", &self.seqno)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

/// Queue entries retained for cursors beyond which the slowest cursor is
/// dropped (per vbucket). At Couchbase's 1024 vbuckets that bounds a dead
/// replica's pinned mutations well before the quota matters for small
/// items; the pager drops cursors too when memory runs short.
pub(super) const MAX_CURSOR_LAG: usize = 50_000;

/// Failover log entries kept (Couchbase keeps 25).
pub(super) const MAX_FAILOVER_ENTRIES: usize = 25;

/// A queued mutation and the bytes charged for it.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) mutation: Mutation,
    /// `mutation_charge(key)`, plus the value's length once the item no
    /// longer holds that value (overwritten, deleted): then this entry is
    /// what keeps the allocation alive.
    pub(super) charge: usize,
}

// === impl VBucket ===

impl VBucket {
    /// A dead, empty vbucket; `ephemeral` ones never queue mutations.
    pub(super) fn new(ephemeral: bool) -> VBucket {
        VBucket {
            state: AtomicU8::new(VbucketState::Dead.to_wire() as u8),
            inner: Mutex::new(VbInner {
                ephemeral,
                ..VbInner::default()
            }),
        }
    }

    /// The current state, without the lock.
    pub(super) fn state(&self) -> VbucketState {
        VbucketState::from_wire(u32::from(self.state.load(Ordering::Acquire)))
            .unwrap_or(VbucketState::Dead)
    }

    /// Changes the state; the caller holds the lock (see `state`).
    pub(super) fn set_state(&self, _locked: &mut VbInner, state: VbucketState) {
        self.state.store(state.to_wire() as u8, Ordering::Release);
    }

    /// Locks the vbucket. A poisoned lock is taken over: no critical
    /// section panics by design, and if a bug made one panic, refusing every
    /// later request for 1/1024 of the keys would be worse than serving the
    /// table as the panicking operation left it.
    pub(super) fn lock(&self) -> MutexGuard<'_, VbInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl VbInner ===

impl VbInner {
    /// Acknowledges a mutation: gives it the next seqno, queues it with its
    /// charge (already reserved by the caller), returns the seqno. An
    /// ephemeral vbucket only counts the seqno (its callers reserve no
    /// charge) and never builds the mutation; it stays "drained", so the
    /// queue invariant holds with an empty queue.
    pub(super) fn push(&mut self, charge: usize, build: impl FnOnce(u64) -> Mutation) -> u64 {
        let seqno = self.high_seqno + 1;
        self.push_at(seqno, charge, build);
        seqno
    }

    /// [`VbInner::push`] at a given seqno, above the high seqno (a
    /// replica applies its active's seqnos, which may skip). Wakes the
    /// cursors, and drops one that lagged past [`MAX_CURSOR_LAG`] (the
    /// entries it pinned go at the flusher's next drain).
    pub(super) fn push_at(
        &mut self,
        seqno: u64,
        charge: usize,
        build: impl FnOnce(u64) -> Mutation,
    ) {
        debug_assert!(seqno > self.high_seqno);
        self.high_seqno = seqno;
        if self.ephemeral {
            self.drained_seqno = seqno;
            return;
        }
        self.queue.push_back(Queued {
            mutation: build(seqno),
            charge,
        });
        self.wake_cursors();
        if self.queue.len() > MAX_CURSOR_LAG && !self.cursors.is_empty() {
            self.mark_lagging_cursors(MAX_CURSOR_LAG);
        }
    }

    /// Whether any replication cursor is registered.
    pub(super) fn has_cursors(&self) -> bool {
        !self.cursors.is_empty()
    }

    /// Whether any item or queued mutation is held.
    pub(super) fn holds_data(&self) -> bool {
        !self.table.is_empty() || !self.queue.is_empty()
    }

    /// Calls every live cursor's wake.
    pub(super) fn wake_cursors(&self) {
        for cursor in &self.cursors {
            if !cursor.dropped {
                (cursor.wake)();
            }
        }
    }

    /// Index of the first entry the flusher has not taken.
    fn undrained_start(&self) -> usize {
        self.queue
            .partition_point(|q| q.mutation.seqno <= self.drained_seqno)
    }

    /// Mutations waiting for the flusher.
    pub(super) fn queued(&self) -> usize {
        self.queue.len() - self.undrained_start()
    }

    /// The item with this seqno is going away or changing value: who keeps
    /// paying for its old value? If the mutation that wrote that value is
    /// still queued it shares the allocation, which lives on until the
    /// flusher takes it, so the charge moves to that queue entry and
    /// nothing is freed. Otherwise the allocation dies with the item (or
    /// with the flusher's batch, which the flusher bounds) and the bytes
    /// come back. Returns the bytes to release.
    pub(super) fn retire_value(&mut self, seqno: u64, resident_len: usize) -> usize {
        if resident_len == 0 {
            return 0;
        }
        match self.queued_index(seqno) {
            Some(i) => {
                if let Some(entry) = self.queue.get_mut(i) {
                    entry.charge = entry.charge.saturating_add(resident_len);
                }
                0
            }
            None => resident_len,
        }
    }

    /// What [`VbInner::retire_value`] would release, without doing it (an
    /// operation plans its memory before changing anything).
    pub(super) fn release_of(&self, seqno: u64, resident_len: usize) -> usize {
        match self.queued_index(seqno) {
            Some(_) => 0,
            None => resident_len,
        }
    }

    /// The queue index of the mutation with this seqno, if still queued.
    fn queued_index(&self, seqno: u64) -> Option<usize> {
        self.queue
            .binary_search_by_key(&seqno, |q| q.mutation.seqno)
            .ok()
    }

    /// Hands up to `max` undrained mutations, oldest first, to `out` (as
    /// shared clones: an entry stays while a cursor still needs it);
    /// returns how many and the bytes released by entries nobody needs
    /// any more.
    pub(super) fn drain(&mut self, max: usize, out: &mut Vec<Mutation>) -> (usize, usize) {
        let start = self.undrained_start();
        let n = max.min(self.queue.len() - start);
        for entry in self.queue.range(start..start + n) {
            self.drained_seqno = entry.mutation.seqno;
            out.push(entry.mutation.clone());
        }
        (n, self.trim())
    }

    /// Drops the entries the flusher and every live cursor have passed;
    /// returns their charge.
    fn trim(&mut self) -> usize {
        let floor = self
            .cursors
            .iter()
            .filter(|c| !c.dropped)
            .map(|c| c.seqno)
            .fold(self.drained_seqno, u64::min);
        let mut released = 0usize;
        while self
            .queue
            .front()
            .is_some_and(|q| q.mutation.seqno <= floor)
        {
            if let Some(entry) = self.queue.pop_front() {
                released = released.saturating_add(entry.charge);
            }
        }
        released
    }

    /// Drops every live cursor that pins more than `keep` drained entries
    /// (all that pin any for `keep == 0`); returns the bytes released.
    pub(super) fn drop_lagging_cursors(&mut self, keep: usize) -> usize {
        self.mark_lagging_cursors(keep);
        self.trim()
    }

    /// [`VbInner::drop_lagging_cursors`] without releasing anything yet.
    fn mark_lagging_cursors(&mut self, keep: usize) {
        let retained = self.undrained_start();
        if retained <= keep {
            return;
        }
        // Cursors at or below this seqno pin more than `keep` entries.
        let limit = self
            .queue
            .get(retained - keep - 1)
            .map_or(0, |q| q.mutation.seqno);
        for cursor in &mut self.cursors {
            if !cursor.dropped && cursor.seqno < limit {
                cursor.dropped = true;
                (cursor.wake)();
            }
        }
    }

    /// Registers a cursor that has read everything up to `start`. If the
    /// queue no longer holds everything after `start`, the cursor starts
    /// where the queue does and the caller must first send
    /// `(start, until]` from disk: returns `Some(until)`.
    pub(super) fn open_cursor(&mut self, id: u64, start: u64, wake: CursorWake) -> Option<u64> {
        // Every mutation after `covered` is in the queue.
        let covered = match self.queue.front() {
            Some(q) => q.mutation.seqno - 1,
            None => self.high_seqno,
        };
        let (seqno, backfill) = if start >= covered {
            (start, None)
        } else {
            (covered, Some(covered))
        };
        self.cursors.push(Cursor {
            id,
            seqno,
            wake,
            dropped: false,
        });
        backfill
    }

    /// Copies up to `max` mutations after the cursor's position to `out`
    /// and moves it past them. `Err(true)` if the cursor was dropped (it
    /// is removed), `Err(false)` if there is no such cursor. `Ok` carries
    /// how many were read and the bytes released.
    pub(super) fn read_cursor(
        &mut self,
        id: u64,
        max: usize,
        out: &mut Vec<Mutation>,
    ) -> Result<(usize, usize), bool> {
        let i = self.cursors.iter().position(|c| c.id == id).ok_or(false)?;
        if self.cursors[i].dropped {
            self.cursors.swap_remove(i);
            return Err(true);
        }
        let after = self.cursors[i].seqno;
        let start = self.queue.partition_point(|q| q.mutation.seqno <= after);
        let n = max.min(self.queue.len() - start);
        let mut last = after;
        for entry in self.queue.range(start..start + n) {
            last = entry.mutation.seqno;
            out.push(entry.mutation.clone());
        }
        self.cursors[i].seqno = last;
        Ok((n, if n > 0 { self.trim() } else { 0 }))
    }

    /// Removes a cursor; returns the bytes released.
    pub(super) fn close_cursor(&mut self, id: u64) -> usize {
        self.cursors.retain(|c| c.id != id);
        self.trim()
    }

    /// Adds a failover log entry: a new history starts at the high seqno.
    pub(super) fn new_failover_entry(&mut self, uuid: u64) {
        self.failover.insert(0, (uuid, self.high_seqno));
        self.failover.truncate(MAX_FAILOVER_ENTRIES);
    }

    /// Records that everything up to `seqno` is on disk. Clamped to what
    /// was drained: a persisted report can only be about mutations the
    /// flusher received, so a stale or wild value cannot make unwritten
    /// items look clean (and get their values dropped).
    pub(super) fn mark_persisted(&mut self, seqno: u64) {
        self.persisted_seqno = self.persisted_seqno.max(seqno.min(self.drained_seqno));
    }

    /// Raises all three seqnos to at least `seqno`, for warmup (what is on
    /// disk is drained and persisted by definition). Only with an empty
    /// queue, which would otherwise lose its contiguity.
    pub(super) fn load_seqno(&mut self, seqno: u64) -> bool {
        if !self.queue.is_empty() {
            return false;
        }
        self.high_seqno = self.high_seqno.max(seqno);
        self.drained_seqno = self.high_seqno;
        self.persisted_seqno = self.high_seqno;
        true
    }

    /// Drops every item, queued mutation and cursor (DEL_VBUCKET; their
    /// streams find their cursor gone). Seqnos are kept
    /// and everything so far counts as persisted, so a flusher report about
    /// the old contents arriving late cannot mark new items clean. Returns
    /// (items dropped, undrained mutations dropped, bytes to release).
    pub(super) fn clear(&mut self) -> (usize, usize, usize) {
        let items = self.table.len();
        let queued = self.queued();
        let released = self.charged();
        self.table = FxHashMap::default();
        self.queue = VecDeque::new();
        for cursor in self.cursors.drain(..) {
            (cursor.wake)();
        }
        self.drained_seqno = self.high_seqno;
        self.persisted_seqno = self.high_seqno;
        self.pager_hand = 0;
        (items, queued, released)
    }

    /// [`clear`](Self::clear), and the history goes too: the failover log
    /// and any disk snapshot in progress (a vbucket rolled back or
    /// dropped has no past a stream could resume).
    pub(super) fn forget(&mut self) -> (usize, usize, usize) {
        let cleared = self.clear();
        self.failover.clear();
        self.disk_snapshot_end = 0;
        cleared
    }

    /// Everything this vbucket is charged for, recomputed from scratch (for
    /// `clear` and for the tests that check the running total).
    pub(super) fn charged(&self) -> usize {
        let items = self
            .table
            .iter()
            .map(|(k, it)| item_charge(k.len(), it.resident_len()));
        let queue = self.queue.iter().map(|q| q.charge);
        items.chain(queue).fold(0, usize::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutation::MutationKind;

    fn push(inner: &mut VbInner, key: &'static [u8]) -> u64 {
        inner.push(10, |seqno| Mutation {
            vbucket: 0,
            seqno,
            key: Bytes::from_static(key),
            cas: seqno,
            time: 0,
            kind: MutationKind::Delete,
        })
    }

    #[test]
    fn state_wire_values_round_trip() {
        for v in 1..=4 {
            let s = VbucketState::from_wire(v).unwrap();
            assert_eq!(s.to_wire(), v);
        }
        assert_eq!(VbucketState::from_wire(0), None);
        assert_eq!(VbucketState::from_wire(5), None);
        assert_eq!(VbucketState::Pending.name(), "pending");
        let vb = VBucket::new(false);
        assert_eq!(vb.state(), VbucketState::Dead, "vbuckets start dead");
        vb.set_state(&mut vb.lock(), VbucketState::Replica);
        assert_eq!(vb.state(), VbucketState::Replica);
    }

    #[test]
    fn seqnos_are_contiguous_and_drained_in_order() {
        let mut inner = VbInner::default();
        assert_eq!((push(&mut inner, b"a"), push(&mut inner, b"b")), (1, 2));
        push(&mut inner, b"c");
        let mut out = Vec::new();
        assert_eq!(inner.drain(2, &mut out), (2, 20));
        assert_eq!(out.iter().map(|m| m.seqno).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            inner.drained_seqno + inner.queued() as u64,
            inner.high_seqno
        );
        assert_eq!(inner.drain(100, &mut out), (1, 10));
        assert_eq!(out.last().map(|m| m.seqno), Some(3));
        assert_eq!(inner.drain(100, &mut out), (0, 0));
    }

    #[test]
    fn persisted_is_clamped_to_drained() {
        let mut inner = VbInner::default();
        push(&mut inner, b"a");
        push(&mut inner, b"b");
        inner.mark_persisted(2);
        assert_eq!(inner.persisted_seqno, 0, "nothing was drained yet");
        inner.drain(1, &mut Vec::new());
        inner.mark_persisted(u64::MAX);
        assert_eq!(inner.persisted_seqno, 1);
        inner.mark_persisted(0);
        assert_eq!(inner.persisted_seqno, 1, "never goes back");
    }

    #[test]
    fn retired_value_moves_to_its_queued_mutation() {
        let mut inner = VbInner::default();
        let s1 = push(&mut inner, b"a");
        let s2 = push(&mut inner, b"a");
        assert_eq!(inner.release_of(s2, 100), 0);
        assert_eq!(inner.release_of(s1, 100), 0);
        assert_eq!(inner.retire_value(s2, 100), 0, "still queued: moves");
        assert_eq!(inner.queue[1].charge, 110);
        inner.drain(1, &mut Vec::new());
        assert_eq!(inner.release_of(s1, 100), 100);
        assert_eq!(inner.retire_value(s1, 100), 100, "drained: released");
        assert_eq!(inner.retire_value(99, 100), 100, "unknown: released");
        assert_eq!(inner.retire_value(s2, 0), 0);
        assert_eq!(inner.drain(9, &mut Vec::new()), (1, 110));
    }

    #[test]
    fn clear_keeps_seqnos_monotonic() {
        let mut inner = VbInner::default();
        push(&mut inner, b"a");
        push(&mut inner, b"b");
        assert_eq!(inner.clear(), (0, 2, 20));
        assert_eq!(
            (inner.high_seqno, inner.drained_seqno, inner.persisted_seqno),
            (2, 2, 2)
        );
        assert_eq!(push(&mut inner, b"c"), 3);
        inner.mark_persisted(2);
        assert!(
            inner.persisted_seqno < 3,
            "stale report must not clean seqno 3"
        );
    }

    #[test]
    fn ephemeral_vbuckets_count_seqnos_and_queue_nothing() {
        let vb = VBucket::new(true);
        let mut inner = vb.lock();
        assert_eq!((push(&mut inner, b"a"), push(&mut inner, b"b")), (1, 2));
        assert_eq!(inner.queued(), 0);
        assert_eq!(
            inner.drained_seqno + inner.queued() as u64,
            inner.high_seqno
        );
        assert_eq!(inner.retire_value(1, 100), 100, "nothing queued shares it");
        assert_eq!(inner.drain(10, &mut Vec::new()), (0, 0));
    }

    #[test]
    fn load_seqno_needs_an_empty_queue() {
        let mut inner = VbInner::default();
        assert!(inner.load_seqno(7));
        assert_eq!(
            (inner.high_seqno, inner.drained_seqno, inner.persisted_seqno),
            (7, 7, 7)
        );
        assert!(inner.load_seqno(3), "never lowers");
        assert_eq!(inner.high_seqno, 7);
        assert_eq!(push(&mut inner, b"a"), 8);
        assert!(!inner.load_seqno(20));
    }
}
