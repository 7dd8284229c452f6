//! The flusher's side of the checkpoint queues: take acknowledged mutations
//! out in seqno order (per vbucket, or bucket-wide in turns) and report
//! which seqnos reached disk, which is what makes items clean and their
//! values ejectable. A drained mutation leaves the engine's accounting: the
//! flusher bounds what it holds (its batch limit). Draining works in every
//! vbucket state and during warmup — what was acknowledged must reach disk.

use std::sync::atomic::Ordering;

use super::Bucket;
use crate::mutation::{Mutation, VbucketId};

// === impl Bucket ===

impl Bucket {
    /// Moves up to `max` of `vb`'s queued mutations, oldest first, into
    /// `out`; returns how many. Each acknowledged mutation comes out
    /// exactly once.
    pub fn drain_mutations(&self, vb: VbucketId, max: usize, out: &mut Vec<Mutation>) -> usize {
        let Ok(vbucket) = self.vbucket(vb) else {
            return 0;
        };
        let (n, released) = vbucket.lock().drain(max, out);
        self.mem.release(released);
        self.queued.fetch_sub(n, Ordering::Relaxed);
        n
    }

    /// Up to `max` mutations from all vbuckets, in seqno order within each
    /// vbucket — the shape the flusher's `drain` wants. Takes vbuckets in
    /// turn from where the last call stopped, so one busy vbucket cannot
    /// starve the others.
    pub fn drain(&self, max: usize) -> Vec<Mutation> {
        let mut out = Vec::new();
        let n = self.vbuckets.len();
        for _ in 0..n {
            if out.len() >= max || self.queue_len() == 0 {
                break;
            }
            let i = self.cursors.drain.fetch_add(1, Ordering::Relaxed) % n;
            let vb = VbucketId::try_from(i).unwrap_or(VbucketId::MAX);
            self.drain_mutations(vb, max - out.len(), &mut out);
        }
        out
    }

    /// Records that `vb`'s mutations up to `seqno` are on disk. Values at
    /// or below it become ejectable. Clamped to what was drained, so a
    /// stale report (say, about a vbucket deleted since) cannot make
    /// unwritten items look clean.
    pub fn mark_persisted(&self, vb: VbucketId, seqno: u64) {
        if let Ok(vbucket) = self.vbucket(vb) {
            vbucket.lock().mark_persisted(seqno);
        }
    }

    /// [`Bucket::mark_persisted`] for each `(vbucket, seqno)` — the shape
    /// the flusher reports in.
    pub fn mark_persisted_all(&self, seqnos: &[(VbucketId, u64)]) {
        for &(vb, seqno) in seqnos {
            self.mark_persisted(vb, seqno);
        }
    }

    /// Mutations waiting for the flusher, all vbuckets (`ep_queue_size`).
    pub fn queue_len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// `vb`'s last acknowledged seqno.
    pub fn high_seqno(&self, vb: VbucketId) -> Option<u64> {
        Some(self.vbucket(vb).ok()?.lock().high_seqno)
    }

    /// `vb`'s last persisted seqno.
    pub fn persisted_seqno(&self, vb: VbucketId) -> Option<u64> {
        Some(self.vbucket(vb).ok()?.lock().persisted_seqno)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{active_bucket, set, NOW};
    use super::super::VbucketState;
    use super::*;
    use crate::mutation::MutationKind;

    #[test]
    fn every_mutation_is_drained_once_in_order() {
        let b = active_bucket();
        b.set_vbucket_state(1, VbucketState::Active).unwrap();
        let mut acked = Vec::new();
        for i in 0..10u32 {
            let vb = (i % 2) as VbucketId;
            let key = bytes::Bytes::from(format!("k{i}"));
            let req = super::super::StoreRequest {
                mode: super::super::StoreMode::Set,
                key,
                value: "v".into(),
                flags: 0,
                exptime: 0,
                cas: 0,
            };
            acked.push((vb, b.store(vb, &req, NOW).unwrap().seqno));
        }
        assert_eq!(b.queue_len(), 10);
        let mut drained = b.drain(3);
        assert_eq!(drained.len(), 3);
        drained.extend(b.drain(100));
        assert!(b.drain(100).is_empty());
        assert_eq!(b.queue_len(), 0);
        for vb in 0..2 {
            let got: Vec<u64> = drained
                .iter()
                .filter(|m| m.vbucket == vb)
                .map(|m| m.seqno)
                .collect();
            let want: Vec<u64> = acked.iter().filter(|a| a.0 == vb).map(|a| a.1).collect();
            assert_eq!(got, want, "vbucket {vb}");
            assert_eq!(got, (1..=5).collect::<Vec<_>>());
        }
        assert_eq!(b.high_seqno(1), Some(5));
        b.assert_accounting();
    }

    #[test]
    fn persisted_seqno_follows_reports_clamped_to_drained() {
        let b = active_bucket();
        set(&b, "a", "1");
        set(&b, "b", "2");
        b.mark_persisted(0, 2);
        assert_eq!(b.persisted_seqno(0), Some(0));
        let mut out = Vec::new();
        assert_eq!(b.drain_mutations(0, 1, &mut out), 1);
        b.mark_persisted_all(&[(0, 2), (900, 5)]);
        assert_eq!(b.persisted_seqno(0), Some(1));
        assert_eq!(b.persisted_seqno(4096), None);
        assert_eq!(b.drain_mutations(4096, 1, &mut out), 0);
        assert!(matches!(out[0].kind, MutationKind::Set { .. }));
    }

    #[test]
    fn drained_mutations_release_their_memory() {
        let b = active_bucket();
        let empty = b.mem_used();
        set(&b, "a", "1");
        let with_queue = b.mem_used();
        b.drain(10);
        assert!(b.mem_used() < with_queue && b.mem_used() > empty);
        b.delete(0, b"a", 0, NOW).unwrap();
        b.drain(10);
        assert_eq!(b.mem_used(), empty);
    }
}
