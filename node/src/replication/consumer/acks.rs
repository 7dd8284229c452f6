//! [`AckTracker`]: which seqnos a replica stream acknowledges to its
//! active (DCP_SEQNO_ACKNOWLEDGED), per vbucket — what it holds in memory,
//! or what it has persisted — and which vbuckets still have something to
//! acknowledge. Pure: the seqnos are read through closures.

use std::collections::{BTreeMap, BTreeSet};

use shoal_engine::mutation::VbucketId;

/// The seqnos acknowledged to the active, per vbucket, and which vbuckets
/// may have more to acknowledge.
#[derive(Debug, Default)]
pub(super) struct AckTracker {
    /// vbucket → (its stream's opaque, the seqno last acknowledged).
    acked: BTreeMap<VbucketId, (u32, u64)>,
    /// vbuckets with changes applied and not yet all acknowledged.
    pending: BTreeSet<VbucketId>,
}

impl AckTracker {
    /// `vb`'s stream opened with `opaque`; its acknowledgements carry it.
    pub(super) fn open(&mut self, vb: VbucketId, opaque: u32) {
        self.acked.entry(vb).or_insert((opaque, 0)).0 = opaque;
    }

    /// `vb` was rolled back: its next acknowledgement may be lower.
    pub(super) fn reset(&mut self, vb: VbucketId) {
        self.acked.remove(&vb);
        self.pending.remove(&vb);
    }

    /// A change of `vb` was applied.
    pub(super) fn applied(&mut self, vb: VbucketId) {
        self.pending.insert(vb);
    }

    /// Whether some applied change is not acknowledged yet.
    pub(super) fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Appends (vbucket, opaque, seqno) for every pending vbucket whose
    /// `reached` seqno moved past what was acknowledged; a vbucket stays
    /// pending while `reached` is below its `high` seqno (persistence
    /// still to come).
    pub(super) fn collect(
        &mut self,
        reached: impl Fn(VbucketId) -> Option<u64>,
        high: impl Fn(VbucketId) -> Option<u64>,
        out: &mut Vec<(VbucketId, u32, u64)>,
    ) {
        let acked = &mut self.acked;
        self.pending.retain(|&vb| {
            let Some(seqno) = reached(vb) else {
                return false;
            };
            let Some((opaque, last)) = acked.get_mut(&vb) else {
                return false;
            };
            if seqno > *last {
                *last = seqno;
                out.push((vb, *opaque, seqno));
            }
            high(vb).is_some_and(|high| seqno < high)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_in_memory_are_sent_once_per_new_seqno() {
        let mut t = AckTracker::default();
        t.open(3, 0x1_0003);
        t.applied(3);
        let mut out = Vec::new();
        t.collect(|_| Some(10), |_| Some(10), &mut out);
        assert_eq!(out, [(3, 0x1_0003, 10)]);
        assert!(!t.waiting());
        out.clear();
        t.applied(3);
        t.collect(|_| Some(10), |_| Some(10), &mut out);
        assert!(out.is_empty(), "nothing new");
    }

    #[test]
    fn persisted_acks_follow_the_flusher_until_it_catches_up() {
        let mut t = AckTracker::default();
        t.open(1, 0x2_0001);
        t.applied(1);
        let mut out = Vec::new();
        t.collect(|_| Some(0), |_| Some(5), &mut out);
        assert!(out.is_empty());
        assert!(t.waiting(), "still to persist");
        t.collect(|_| Some(3), |_| Some(5), &mut out);
        assert_eq!(out, [(1, 0x2_0001, 3)]);
        assert!(t.waiting());
        t.collect(|_| Some(5), |_| Some(5), &mut out);
        assert_eq!(out, [(1, 0x2_0001, 3), (1, 0x2_0001, 5)]);
        assert!(!t.waiting());
    }

    #[test]
    fn a_rollback_lets_acks_go_down_and_reopening_keeps_the_seqno() {
        let mut t = AckTracker::default();
        t.open(1, 0x1_0001);
        t.applied(1);
        let mut out = Vec::new();
        t.collect(|_| Some(9), |_| Some(9), &mut out);
        t.open(1, 0x2_0001);
        t.applied(1);
        t.collect(|_| Some(9), |_| Some(9), &mut out);
        assert_eq!(out, [(1, 0x1_0001, 9)], "reopened at the same seqno");
        t.reset(1);
        t.open(1, 0x3_0001);
        t.applied(1);
        t.collect(|_| Some(2), |_| Some(2), &mut out);
        assert_eq!(out.last(), Some(&(1, 0x3_0001, 2)));
        // A vbucket that is gone, or never opened, is dropped.
        t.applied(7);
        t.applied(1);
        t.collect(|_| None, |_| None, &mut out);
        assert!(!t.waiting());
    }
}
