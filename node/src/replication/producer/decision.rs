//! The rollback decision for a DCP_STREAM_REQ: does the consumer's history
//! (the branch it names by vbucket UUID, and how far it got) continue ours,
//! or must it roll back? Pure, so every case is a unit test.

/// What to answer a STREAM_REQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamDecision {
    /// The consumer's history is a prefix of ours: stream from its seqno.
    Accept,
    /// The consumer has seqnos our history does not: it must roll back
    /// (this node answers the seqno where the histories last agreed; the
    /// Shoal consumer rolls back to 0 whatever it is).
    Rollback(u64),
}

/// The rollback decision for a consumer at `start_seqno` on the branch
/// `vbucket_uuid`, given our failover `log` (newest first) and our high
/// seqno. From 0 anything goes. Otherwise the consumer's branch must be in
/// our log; it ends where the next newer branch starts (the newest one at
/// our high seqno), and the consumer must not be past that end nor past
/// our high seqno.
pub fn decide_stream(
    start_seqno: u64,
    snap_end_seqno: u64,
    vbucket_uuid: u64,
    log: &[(u64, u64)],
    high_seqno: u64,
) -> StreamDecision {
    if start_seqno == 0 {
        return StreamDecision::Accept;
    }
    // A consumer in the middle of a disk snapshot holds a state that is
    // only consistent at the snapshot's end: that is what must lie on
    // this history.
    let claimed = start_seqno.max(snap_end_seqno);
    let Some(at) = log.iter().position(|&(uuid, _)| uuid == vbucket_uuid) else {
        return StreamDecision::Rollback(0);
    };
    let branch_end = match at.checked_sub(1).and_then(|newer| log.get(newer)) {
        Some(&(_, newer_start)) => newer_start,
        None => high_seqno,
    };
    if claimed > branch_end || start_seqno > high_seqno {
        StreamDecision::Rollback(branch_end.min(high_seqno))
    } else {
        StreamDecision::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_mid_disk_snapshot_must_have_its_snapshot_end_on_this_history() {
        // Branch 1 ends at 100 on this producer (branch 2 started there).
        let log = [(2, 100), (1, 0)];
        assert_eq!(decide_stream(40, 90, 1, &log, 150), StreamDecision::Accept);
        assert_eq!(
            decide_stream(40, 120, 1, &log, 150),
            StreamDecision::Rollback(100),
            "its snapshot runs past the branch point: its state may hold \
             none of the keys changed in 41..=100 on this history"
        );
        assert_eq!(decide_stream(40, 120, 2, &log, 150), StreamDecision::Accept);
    }

    #[test]
    fn from_zero_everything_is_accepted() {
        assert_eq!(decide_stream(0, 0, 0, &[], 0), StreamDecision::Accept);
        assert_eq!(
            decide_stream(0, 0, 77, &[(1, 0)], 10),
            StreamDecision::Accept
        );
    }

    #[test]
    fn a_known_branch_is_accepted_up_to_its_end() {
        // Branch 1 from 0, then branch 2 from 100 (a failover), high 150.
        let log = [(2, 100), (1, 0)];
        assert_eq!(
            decide_stream(150, 150, 2, &log, 150),
            StreamDecision::Accept
        );
        assert_eq!(
            decide_stream(120, 120, 2, &log, 150),
            StreamDecision::Accept
        );
        assert_eq!(
            decide_stream(100, 100, 1, &log, 150),
            StreamDecision::Accept
        );
        assert_eq!(decide_stream(40, 40, 1, &log, 150), StreamDecision::Accept);
    }

    #[test]
    fn a_consumer_past_its_branch_or_our_high_rolls_back() {
        let log = [(2, 100), (1, 0)];
        // It kept taking writes on branch 1 that we never had.
        assert_eq!(
            decide_stream(130, 130, 1, &log, 150),
            StreamDecision::Rollback(100)
        );
        // Ahead of us on our own branch (we lost writes in a restart).
        assert_eq!(
            decide_stream(160, 160, 2, &log, 150),
            StreamDecision::Rollback(150)
        );
        // An old branch ends at the next entry, capped by our high seqno.
        assert_eq!(
            decide_stream(130, 130, 1, &log, 90),
            StreamDecision::Rollback(90)
        );
    }

    #[test]
    fn an_unknown_branch_rolls_back_to_zero() {
        assert_eq!(
            decide_stream(5, 5, 9, &[(2, 100), (1, 0)], 150),
            StreamDecision::Rollback(0)
        );
        assert_eq!(
            decide_stream(5, 5, 0, &[], 150),
            StreamDecision::Rollback(0)
        );
    }
}
