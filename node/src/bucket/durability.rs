//! Durable writes: [`DurabilityMonitor`] tracks, for every vbucket this
//! node holds active, which replicas it expects (from the cluster map) and
//! the seqno each has acknowledged, plus the seqno the node's own flusher
//! has persisted; a connection that made a write waits on
//! [`DurabilityMonitor::wait`] before answering the client, so legacy
//! clients get durability without any change. Acknowledgements are
//! cumulative (a replica applies in seqno order), so waiting for a later
//! seqno than the write's own is always safe, just possibly longer.
//!
//! A majority is counted over the copies the current map names: with one
//! replica that is both copies. After a failover leaves a vbucket without a
//! replica (the map names only its active until a rebalance restores the
//! replica count), its one copy is the majority: writes keep succeeding
//! instead of failing until someone rebalances, and `stats replication`
//! shows the vbucket's missing replica.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use shoal_engine::VbucketId;

use super::Durability;

/// How long a write waits for its durability level before the client gets
/// an error (Couchbase's default sync-write timeout is 2.5 s too... and a
/// proxy's own deadline is longer than the node's retry window).
pub const DURABILITY_TIMEOUT: Duration = Duration::from_millis(2500);

/// Why a durable write could not be confirmed. The write itself is not
/// undone: it may still reach its replicas (the client must treat the
/// outcome as unknown, as with any timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurabilityError {
    /// The level was not met within [`DURABILITY_TIMEOUT`].
    #[error("durability level not met in time")]
    Timeout,
}

/// What one vbucket's waiters look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VbAcks {
    /// The replicas the map names for this vbucket (their data addresses).
    pub replicas: Vec<String>,
    /// Acknowledged seqno per replica that ever acknowledged, by name.
    pub acked: Vec<(String, u64)>,
    /// Seqno this node's flusher has persisted.
    pub persisted: u64,
}

impl VbAcks {
    /// The seqno `replica` acknowledged (0 if none).
    pub fn acked_by(&self, replica: &str) -> u64 {
        self.acked
            .iter()
            .find(|(n, _)| n == replica)
            .map_or(0, |(_, s)| *s)
    }

    /// Whether a write at `seqno` meets `level`. Replicas acknowledge what
    /// they hold in memory, or — in a `persistToMajority` bucket — what
    /// they persisted, so one count serves every level.
    pub fn satisfied(&self, level: Durability, seqno: u64) -> bool {
        let copies = 1 + self.replicas.len();
        let majority = copies / 2 + 1;
        let replicas = self
            .replicas
            .iter()
            .filter(|r| self.acked_by(r) >= seqno)
            .count();
        let persisted = self.persisted >= seqno;
        match level {
            Durability::None => true,
            Durability::Majority => 1 + replicas >= majority,
            Durability::MajorityAndPersistActive => 1 + replicas >= majority && persisted,
            Durability::PersistToMajority => usize::from(persisted) + replicas >= majority,
        }
    }
}

/// One bucket's durability state.
#[derive(Debug)]
pub struct DurabilityMonitor {
    /// The bucket's `durabilityMinLevel`, as [`level_code`].
    level: AtomicU8,
    /// The bucket is configured with replicas (stats: an active vbucket
    /// with none named is missing its replica, as after a failover).
    expects_replicas: AtomicBool,
    /// Replication streams this node's producers serve for the bucket.
    producer_streams: AtomicUsize,
    vbuckets: Box<[watch::Sender<VbAcks>]>,
    /// How long a write waits ([`DURABILITY_TIMEOUT`] but in tests).
    timeout: Duration,
}

fn level_code(level: Durability) -> u8 {
    match level {
        Durability::None => 0,
        Durability::Majority => 1,
        Durability::MajorityAndPersistActive => 2,
        Durability::PersistToMajority => 3,
    }
}

fn level_of(code: u8) -> Durability {
    match code {
        1 => Durability::Majority,
        2 => Durability::MajorityAndPersistActive,
        3 => Durability::PersistToMajority,
        _ => Durability::None,
    }
}

impl DurabilityMonitor {
    /// A monitor for `num_vbuckets`, level none, no replicas.
    pub fn new(num_vbuckets: usize) -> DurabilityMonitor {
        DurabilityMonitor {
            level: AtomicU8::new(0),
            expects_replicas: AtomicBool::new(false),
            producer_streams: AtomicUsize::new(0),
            vbuckets: (0..num_vbuckets)
                .map(|_| watch::channel(VbAcks::default()).0)
                .collect(),
            timeout: DURABILITY_TIMEOUT,
        }
    }

    /// The bucket's level.
    pub fn level(&self) -> Durability {
        level_of(self.level.load(Ordering::Relaxed))
    }

    /// Sets the bucket's level.
    pub fn set_level(&self, level: Durability) {
        self.level.store(level_code(level), Ordering::Relaxed);
    }

    /// Records whether the bucket is configured with replicas.
    pub fn set_expects_replicas(&self, yes: bool) {
        self.expects_replicas.store(yes, Ordering::Relaxed);
    }

    /// Whether the bucket is configured with replicas.
    pub fn expects_replicas(&self) -> bool {
        self.expects_replicas.load(Ordering::Relaxed)
    }

    /// A producer started serving a stream of this bucket.
    pub fn stream_opened(&self) {
        self.producer_streams.fetch_add(1, Ordering::Relaxed);
    }

    /// A producer stopped serving a stream of this bucket.
    pub fn stream_closed(&self) {
        self.producer_streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Streams the producers serve now.
    pub fn producer_streams(&self) -> usize {
        self.producer_streams.load(Ordering::Relaxed)
    }

    /// Whether writes must wait at all (read on every write: one atomic).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.level.load(Ordering::Relaxed) != 0
    }

    /// Sets the replicas the map names for `vb` (empty when this node is
    /// not its active). Acknowledgements of replicas no longer named are
    /// forgotten.
    pub fn set_replicas(&self, vb: VbucketId, replicas: Vec<String>) {
        if let Some(tx) = self.vbuckets.get(usize::from(vb)) {
            tx.send_if_modified(|acks| {
                if acks.replicas == replicas {
                    return false;
                }
                acks.acked.retain(|(n, _)| replicas.contains(n));
                acks.replicas = replicas;
                true
            });
        }
    }

    /// `replica` acknowledged `vb` up to `seqno`. Acks only move forward,
    /// except that a lower one after a replica rolled back replaces the
    /// old (its copy really is behind now).
    pub fn ack(&self, vb: VbucketId, replica: &str, seqno: u64) {
        let Some(tx) = self.vbuckets.get(usize::from(vb)) else {
            return;
        };
        tx.send_if_modified(
            |acks| match acks.acked.iter_mut().find(|(n, _)| n == replica) {
                Some((_, s)) if *s == seqno => false,
                Some((_, s)) => {
                    *s = seqno;
                    true
                }
                None => {
                    acks.acked.push((replica.to_string(), seqno));
                    true
                }
            },
        );
    }

    /// This node's flusher persisted these (vbucket, seqno)s.
    pub fn persisted(&self, seqnos: &[(VbucketId, u64)]) {
        for &(vb, seqno) in seqnos {
            if let Some(tx) = self.vbuckets.get(usize::from(vb)) {
                tx.send_if_modified(|acks| {
                    let moved = seqno > acks.persisted;
                    acks.persisted = acks.persisted.max(seqno);
                    moved
                });
            }
        }
    }

    /// A copy of `vb`'s state (stats).
    pub fn snapshot(&self, vb: VbucketId) -> Option<VbAcks> {
        self.vbuckets
            .get(usize::from(vb))
            .map(|tx| tx.borrow().clone())
    }

    /// Waits until a write at `seqno` in `vb` meets the bucket's level, at
    /// most [`DURABILITY_TIMEOUT`].
    pub async fn wait(&self, vb: VbucketId, seqno: u64) -> Result<(), DurabilityError> {
        let level = self.level();
        let Some(tx) = self.vbuckets.get(usize::from(vb)) else {
            return Ok(());
        };
        if tx.borrow().satisfied(level, seqno) {
            return Ok(());
        }
        let mut rx = tx.subscribe();
        let met = tokio::time::timeout(
            self.timeout,
            rx.wait_for(|acks| acks.satisfied(level, seqno)),
        )
        .await;
        match met {
            Ok(_) => Ok(()),
            Err(_) => Err(DurabilityError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acks(replicas: &[&str], acked: &[(&str, u64)], persisted: u64) -> VbAcks {
        VbAcks {
            replicas: replicas.iter().map(|s| s.to_string()).collect(),
            acked: acked.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            persisted,
        }
    }

    #[test]
    fn levels_count_the_copies_the_map_names() {
        use Durability::*;
        let one = acks(&["b"], &[("b", 10)], 5);
        assert!(one.satisfied(None, 99));
        assert!(one.satisfied(Majority, 10));
        assert!(!one.satisfied(Majority, 11), "both copies needed");
        assert!(!one.satisfied(MajorityAndPersistActive, 10));
        assert!(one.satisfied(MajorityAndPersistActive, 5));
        assert!(!one.satisfied(PersistToMajority, 10));
        assert!(one.satisfied(PersistToMajority, 5));
        let stranger = acks(&["b"], &[("c", 10)], 10);
        assert!(
            !stranger.satisfied(Majority, 10),
            "only named replicas count"
        );
        let two = acks(&["b", "c"], &[("c", 10)], 0);
        assert!(two.satisfied(Majority, 10), "2 of 3");
        assert!(!two.satisfied(PersistToMajority, 10));
        let three = acks(&["b", "c", "d"], &[("c", 10)], 0);
        assert!(!three.satisfied(Majority, 10), "2 of 4 is no majority");
        let alone = acks(&[], &[], 3);
        assert!(alone.satisfied(Majority, 10), "a lone copy is the majority");
        assert!(!alone.satisfied(PersistToMajority, 10));
    }

    #[tokio::test]
    async fn waits_end_on_ack_or_time_out() {
        let m = std::sync::Arc::new(DurabilityMonitor {
            timeout: Duration::from_millis(50),
            ..DurabilityMonitor::new(4)
        });
        m.set_level(Durability::Majority);
        m.set_replicas(1, vec!["b".into()]);
        assert!(m.enabled());
        assert_eq!(m.wait(0, 5).await, Ok(()), "no replica named");
        let waiter = {
            let m = m.clone();
            tokio::spawn(async move { m.wait(1, 5).await })
        };
        tokio::task::yield_now().await;
        m.ack(1, "b", 4);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        m.ack(1, "b", 7);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(m.wait(1, 8).await, Err(DurabilityError::Timeout));
        m.set_replicas(1, vec!["c".into()]);
        assert_eq!(m.snapshot(1).unwrap().acked_by("b"), 0, "forgotten");
        m.persisted(&[(1, 9)]);
        assert_eq!(m.snapshot(1).unwrap().persisted, 9);
    }
}
