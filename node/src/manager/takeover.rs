//! Takeovers: when the map makes this node active for a vbucket it was
//! streaming from another live node, the vbucket stays pending (clients are
//! told NOT_MY_VBUCKET and retry) until the old active has stopped being
//! active and this node has everything it had, then becomes active — so
//! no acknowledged write of the old active is left behind. [`Takeovers`]
//! registers the running ones and orders vbucket-state writes between a
//! reconcile pass and a takeover.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_engine::VbucketState;
use tokio::sync::Notify;

use super::peers::PeerClient;
use crate::bucket::LiveBucket;

/// Takeovers in progress, by (bucket, vbucket), and the lock that orders
/// the two writers of vbucket states: a pass applying its plan and a
/// takeover activating what it took over. Without it a pass planned just
/// before an activation would turn the fresh active back to pending.
#[derive(Debug, Default, Clone)]
pub(super) struct Takeovers {
    running: Arc<Mutex<BTreeSet<(String, u16)>>>,
    state_writes: Arc<Mutex<()>>,
}

impl Takeovers {
    /// Marks `vbs` as being taken over; returns those that were not yet.
    pub(super) fn start(&self, bucket: &str, vbs: Vec<u16>) -> Vec<u16> {
        let mut set = self.running.lock().unwrap_or_else(|e| e.into_inner());
        vbs.into_iter()
            .filter(|vb| set.insert((bucket.to_string(), *vb)))
            .collect()
    }

    pub(super) fn finish(&self, bucket: &str, vb: u16) {
        let mut set = self.running.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&(bucket.to_string(), vb));
    }

    /// Held while vbucket states are read and written.
    pub(super) fn write_states(&self) -> std::sync::MutexGuard<'_, ()> {
        self.state_writes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A takeover of `vbs` from the node at `source_admin`.
pub(super) struct TakeOver {
    /// The bucket taking over.
    pub ctx: Arc<LiveBucket>,
    /// For asking the old active where it is.
    pub peers: PeerClient,
    /// The old active's admin address.
    pub source_admin: String,
    /// The vbuckets to take over.
    pub vbs: Vec<u16>,
    /// Where the takeover is registered (and the state-write lock).
    pub takeovers: Takeovers,
    /// Woken when vbuckets are activated, so the loop runs again.
    pub kick: Arc<Notify>,
}

/// How often a takeover asks the old active where it is.
const TAKEOVER_POLL: Duration = Duration::from_millis(20);

/// How long the old active may be unreachable before its vbuckets are
/// taken over without its last word (it is down: whatever it did not
/// stream is lost with it, as in a failover).
const TAKEOVER_UNREACHABLE: Duration = Duration::from_secs(5);

/// How long a takeover waits for the old active to give its vbuckets up.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(30);

/// Activates each vbucket once the old active no longer is and this node
/// has reached the old active's high seqno, then runs the loop again.
pub(super) async fn take_over(job: TakeOver) {
    let TakeOver {
        ctx,
        peers,
        source_admin,
        mut vbs,
        takeovers,
        kick,
    } = job;
    let path = format!("/internal/vbuckets/{}", ctx.name);
    let started = Instant::now();
    let mut reached = Instant::now();
    while !vbs.is_empty() && !ctx.is_deleted() {
        let request = peers.get(&source_admin, &path);
        let reply = request.timeout(Duration::from_secs(1)).send().await;
        let states: Option<Vec<(u16, u32, u64)>> = match reply {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        let give_up = started.elapsed() > TAKEOVER_DEADLINE;
        let mut ready = Vec::new();
        match states {
            Some(states) => {
                reached = Instant::now();
                for &vb in &vbs {
                    let Some(&(_, st, high)) = states.iter().find(|s| s.0 == vb) else {
                        ready.push(vb);
                        continue;
                    };
                    let released = st != VbucketState::Active.to_wire();
                    let caught_up = ctx.engine.high_seqno(vb).unwrap_or(0) >= high;
                    if (released && caught_up) || give_up {
                        ready.push(vb);
                    }
                }
            }
            None if reached.elapsed() > TAKEOVER_UNREACHABLE || give_up => {
                tracing::warn!(bucket = %ctx.name, from = %source_admin, "old active unreachable: taking over without it");
                ready = vbs.clone();
            }
            None => {}
        }
        if !ready.is_empty() {
            let activate = {
                let (ctx, ready, takeovers) = (ctx.clone(), ready.clone(), takeovers.clone());
                tokio::task::spawn_blocking(move || {
                    let _writing = takeovers.write_states();
                    for vb in ready {
                        if ctx.engine.vbucket_state(vb) == Some(VbucketState::Pending) {
                            let _ = ctx.set_vbucket_state(vb, VbucketState::Active);
                        }
                    }
                })
            };
            let _ = activate.await;
            vbs.retain(|vb| !ready.contains(vb));
            for vb in ready {
                takeovers.finish(&ctx.name, vb);
            }
            kick.notify_one();
        }
        if !vbs.is_empty() {
            tokio::time::sleep(TAKEOVER_POLL).await;
        }
    }
    for vb in vbs {
        takeovers.finish(&ctx.name, vb);
    }
    kick.notify_one();
}
