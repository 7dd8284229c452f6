//! The consumer side of replication: a [`Replicator`] per node keeps one
//! task per (bucket, source node) that streams this node's replica
//! vbuckets from their active. Each task connects to the source's data
//! port, logs in as the cluster (SCRAM with the cluster secret) and
//! selects the bucket, opens a DCP connection named
//! `replica:<our data address>`, asks for every vbucket from its high seqno
//! and failover-log branch, and installs what arrives with the active's
//! seqnos and CAS ([`Bucket::apply_replicated`](shoal_engine::Bucket::apply_replicated)).
//! A ROLLBACK answer empties the vbucket and streams it again from 0;
//! memory pressure stops reading (back-pressure through TCP and the
//! producer's flow-control window) until the engine has room. After each
//! batch it acknowledges the bytes (flow control) and, per vbucket, the
//! seqno it holds in memory — or on disk, when the bucket's durability
//! level counts persisted copies — which the active's durability monitor
//! waits for. A lost connection is retried with backoff; the desired set of
//! streams is replaced whole by [`Replicator::set_streams`].
//!
//! Modules: `session` (one connection to a source: handshake, stream
//! requests, applying, acknowledging), `acks` (which seqnos to acknowledge).

mod acks;
mod session;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;

use self::session::Session;
use super::producer::REPLICA_NAME_PREFIX;
use crate::access::ClusterSecret;
use crate::bucket::LiveBucket;
use crate::transport::Transport;
use shoal_engine::mutation::VbucketId;

/// First reconnect delay after a connection fails.
const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// Reconnect delays double up to this: a source that is down is retried
/// every second, so a replica resumes quickly once it is back.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

// === the replicator ===

/// Counters of one bucket's replica streams (all sources), for stats.
#[derive(Debug, Default)]
pub struct ReplicationCounters {
    /// Mutations, deletions and expirations applied.
    pub messages: AtomicU64,
    /// Bytes read from producers.
    pub bytes: AtomicU64,
    /// Snapshot markers received.
    pub snapshots: AtomicU64,
    /// Connections lost (or refused) and retried.
    pub reconnects: AtomicU64,
    /// Vbuckets rolled back to 0 because their history diverged.
    pub rollbacks: AtomicU64,
    /// Times a mutation waited for memory (back-pressure).
    pub backpressure: AtomicU64,
}

/// What one (bucket, source) stream task was started with; a change of any
/// of it restarts the task.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LinkSpec {
    /// Sorted, without duplicates, never empty.
    vbuckets: Vec<VbucketId>,
    ack_persisted: bool,
    /// The bucket's context, by address: a bucket deleted and created
    /// again under the same name is a new bucket.
    bucket: usize,
}

/// A running stream task; aborted when dropped.
#[derive(Debug)]
struct Task {
    spec: LinkSpec,
    connected: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

#[derive(Debug, Default)]
struct State {
    /// By (bucket, source data address).
    tasks: BTreeMap<(String, String), Task>,
    /// By bucket.
    counters: BTreeMap<String, Arc<ReplicationCounters>>,
}

/// This node's replica streams, for every bucket: one task per (bucket,
/// source node). Must be used inside a Tokio runtime (it spawns the tasks).
#[derive(Debug)]
pub struct Replicator {
    /// Our data address as the cluster map spells it: the producer's name
    /// for us, and what its durability monitor counts acks under.
    me: String,
    /// The cluster secret, which streams log in to their sources with.
    secret: ClusterSecret,
    /// How streams reach their sources (plain or cluster TLS).
    transport: Transport,
    /// Why a `std` mutex: held only to diff and swap task handles, never
    /// across an `.await`.
    state: Mutex<State>,
}

impl Replicator {
    /// A replicator for the node whose data address is `me` ("host:port"),
    /// logging in to sources with `secret`, reaching them by `transport`.
    pub fn new(me: String, secret: ClusterSecret, transport: Transport) -> Replicator {
        Replicator {
            me,
            secret,
            transport,
            state: Mutex::new(State::default()),
        }
    }

    /// This node's data address.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Makes `ctx`'s bucket replicate exactly `sources` (source data
    /// address → the vbuckets this node replicates from it). A source whose
    /// vbuckets or `ack_persisted` changed is restarted, sources no longer
    /// listed (or with no vbuckets) are stopped, the rest left running.
    /// `ack_persisted`: acknowledge seqnos once persisted here rather than
    /// once in memory (for a `persistToMajority` bucket).
    pub fn set_streams(
        &self,
        ctx: Arc<LiveBucket>,
        sources: BTreeMap<String, Vec<VbucketId>>,
        ack_persisted: bool,
    ) {
        let bucket_id = Arc::as_ptr(&ctx) as usize;
        let desired: BTreeMap<String, LinkSpec> = sources
            .into_iter()
            .filter(|(source, _)| *source != self.me)
            .filter_map(|(source, mut vbuckets)| {
                vbuckets.sort_unstable();
                vbuckets.dedup();
                (!vbuckets.is_empty()).then_some((
                    source,
                    LinkSpec {
                        vbuckets,
                        ack_persisted,
                        bucket: bucket_id,
                    },
                ))
            })
            .collect();
        let mut state = self.lock();
        let running: BTreeMap<String, LinkSpec> = state
            .tasks
            .iter()
            .filter(|((bucket, _), _)| *bucket == ctx.name)
            .map(|((_, source), task)| (source.clone(), task.spec.clone()))
            .collect();
        let (stop, start) = plan(&running, &desired);
        for source in stop {
            tracing::info!(bucket = %ctx.name, %source, "stopping replica stream");
            state.tasks.remove(&(ctx.name.clone(), source));
        }
        if start.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(bucket = %ctx.name, "replica streams need a Tokio runtime");
            return;
        };
        let counters = state.counters.entry(ctx.name.clone()).or_default().clone();
        for source in start {
            let Some(spec) = desired.get(&source).cloned() else {
                continue;
            };
            tracing::info!(bucket = %ctx.name, %source, vbuckets = spec.vbuckets.len(), "starting replica stream");
            let connected = Arc::new(AtomicBool::new(false));
            let link = Link {
                ctx: ctx.clone(),
                secret: self.secret.clone(),
                transport: self.transport.clone(),
                source: source.clone(),
                vbuckets: spec.vbuckets.clone(),
                ack_persisted: spec.ack_persisted,
                name: format!("{REPLICA_NAME_PREFIX}{}", self.me),
                counters: counters.clone(),
                connected: connected.clone(),
            };
            let handle = runtime.spawn(run(link));
            state.tasks.insert(
                (ctx.name.clone(), source),
                Task {
                    spec,
                    connected,
                    handle,
                },
            );
        }
    }

    /// Stops every stream of `bucket` (it was deleted, or is no longer
    /// replicated here) and forgets its counters.
    pub fn stop_bucket(&self, bucket: &str) {
        let mut state = self.lock();
        state.tasks.retain(|(b, _), _| b != bucket);
        state.counters.remove(bucket);
    }

    /// Stops every stream (node shutdown).
    pub fn stop_all(&self) {
        let mut state = self.lock();
        state.tasks.clear();
        state.counters.clear();
    }

    /// The source `bucket`'s vbucket `vb` streams from now, if any.
    pub fn source_of(&self, bucket: &str, vb: VbucketId) -> Option<String> {
        self.lock()
            .tasks
            .iter()
            .find(|((b, _), task)| b == bucket && task.spec.vbuckets.binary_search(&vb).is_ok())
            .map(|((_, source), _)| source.clone())
    }

    /// Every stream task: (bucket, source, vbuckets, connected).
    pub fn streams(&self) -> Vec<(String, String, usize, bool)> {
        self.lock()
            .tasks
            .iter()
            .map(|((bucket, source), task)| {
                (
                    bucket.clone(),
                    source.clone(),
                    task.spec.vbuckets.len(),
                    task.connected.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// `bucket`'s counters, once it has had a stream.
    pub fn counters(&self, bucket: &str) -> Option<Arc<ReplicationCounters>> {
        self.lock().counters.get(bucket).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding it; if something did, the map is
        // still a valid set of handles.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Which sources to stop and which to start to go from `running` to
/// `desired`: changed ones are in both lists, unchanged ones in neither.
fn plan(
    running: &BTreeMap<String, LinkSpec>,
    desired: &BTreeMap<String, LinkSpec>,
) -> (Vec<String>, Vec<String>) {
    let stop = running
        .iter()
        .filter(|(source, spec)| desired.get(*source) != Some(spec))
        .map(|(source, _)| source.clone())
        .collect();
    let start = desired
        .iter()
        .filter(|(source, spec)| running.get(*source) != Some(spec))
        .map(|(source, _)| source.clone())
        .collect();
    (stop, start)
}

// === one stream task ===

/// Everything a (bucket, source) task needs.
#[derive(Debug)]
struct Link {
    ctx: Arc<LiveBucket>,
    /// What the link logs in to its source with.
    secret: ClusterSecret,
    /// How it reaches the source.
    transport: Transport,
    source: String,
    vbuckets: Vec<VbucketId>,
    ack_persisted: bool,
    /// Our DCP connection name: `replica:<me>`.
    name: String,
    counters: Arc<ReplicationCounters>,
    connected: Arc<AtomicBool>,
}

/// Streams until the bucket is deleted (or the task is aborted),
/// reconnecting with backoff.
async fn run(link: Link) {
    let mut backoff = RECONNECT_MIN;
    let mut failures = 0u64;
    loop {
        if link.ctx.is_deleted() {
            return;
        }
        let mut session = Session::new(&link);
        let result = session.run().await;
        let opened = session.opened();
        link.connected.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(error) => {
                failures += 1;
                // A source that is down fails every second: say so once,
                // then now and then.
                if opened || failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(bucket = %link.ctx.name, source = %link.source, %error, failures, "replica stream lost; reconnecting");
                } else {
                    tracing::debug!(bucket = %link.ctx.name, source = %link.source, %error, "replica stream reconnect failed");
                }
            }
        }
        if opened {
            backoff = RECONNECT_MIN;
            failures = 0;
        }
        link.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(vbuckets: &[VbucketId], ack_persisted: bool, bucket: usize) -> LinkSpec {
        LinkSpec {
            vbuckets: vbuckets.to_vec(),
            ack_persisted,
            bucket,
        }
    }

    fn map(entries: &[(&str, LinkSpec)]) -> BTreeMap<String, LinkSpec> {
        entries
            .iter()
            .map(|(s, spec)| (s.to_string(), spec.clone()))
            .collect()
    }

    #[test]
    fn plan_restarts_changed_stops_removed_and_keeps_the_rest() {
        let running = map(&[
            ("a:1", spec(&[0, 1], false, 7)),
            ("b:1", spec(&[2], false, 7)),
            ("c:1", spec(&[3], false, 7)),
            ("d:1", spec(&[4], false, 7)),
        ]);
        let desired = map(&[
            ("a:1", spec(&[0, 1], false, 7)),
            ("b:1", spec(&[2, 5], false, 7)),
            ("d:1", spec(&[4], true, 7)),
            ("e:1", spec(&[6], false, 7)),
        ]);
        let (stop, start) = plan(&running, &desired);
        assert_eq!(stop, ["b:1", "c:1", "d:1"]);
        assert_eq!(start, ["b:1", "d:1", "e:1"]);
        // A bucket created again under the same name restarts everything.
        let recreated = map(&[("a:1", spec(&[0, 1], false, 8))]);
        let (stop, start) = plan(&map(&[("a:1", spec(&[0, 1], false, 7))]), &recreated);
        assert_eq!(
            (stop, start),
            (vec!["a:1".to_string()], vec!["a:1".to_string()])
        );
        let (stop, start) = plan(&running, &running);
        assert!(stop.is_empty() && start.is_empty());
    }
}
