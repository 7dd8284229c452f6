//! Talking to nodes on a request's behalf: one keyed request with the retry
//! rules ([`keyed`]), a multi-key get spread over nodes ([`multi_get`]), and
//! a request sent to every node ([`fan_out`], [`flush_all`]).
//!
//! Retry rules (better than moxi, which swallowed NOT_MY_VBUCKET on quiet
//! writes and turned exhausted retries into misses): NOT_MY_VBUCKET → try
//! the forward map's server, else ask the watcher for a fresh config and
//! wait for a newer map; a node that cannot be reached → wait for a newer
//! map (or for the node to come back); a request that was sent and then
//! lost is retried only when idempotent. Everything stops at the retry
//! deadline with [`CallError::Unavailable`]; an error is never reported as
//! a miss.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use fxhash::FxHashMap;
use shoal_protocol::binary::{encode_request, Opcode, RequestFields, Status, HEADER_LEN};
use shoal_vbmap::{ServerIdx, VbucketId};
use tokio::time::Instant;

use crate::config::MapSource;
use crate::downstream::{self, Batch, DownstreamError, NodePool, Pending, Reply, Wire};
use crate::routing::Routing;
use crate::shared::Shared;

/// Multi-gets up to this many keys find duplicates by scanning.
const SCAN_DEDUP_MAX: usize = 32;

/// How long to wait for a newer map before trying a down node again.
const DOWN_RETRY: Duration = Duration::from_millis(50);

/// How long to wait for a fresh config after NOT_MY_VBUCKET before trying
/// again with the map we have.
const NMVB_WAIT: Duration = Duration::from_millis(100);

/// Why a request got no reply from a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No node could take it before the retry deadline (node down, no map,
    /// map kept saying NOT_MY_VBUCKET). Safe for the client to retry.
    #[error("temporary failure")]
    Unavailable,
    /// A non-idempotent request was sent and its connection failed: it may
    /// or may not have been applied, so it was not sent again.
    #[error("outcome unknown: connection to the node failed")]
    OutcomeUnknown,
    /// The cluster refuses the proxy's credentials for its bucket: nothing
    /// was sent, and retrying will not help until the password is fixed.
    #[error("the cluster refuses the proxy's bucket credentials")]
    CredentialsRefused,
}

/// A keyed request, encodable for any vbucket and opaque.
pub trait Encode {
    /// Appends the request frame, addressed to `vbucket`, tagged `opaque`.
    fn encode(&self, out: &mut BytesMut, vbucket: VbucketId, opaque: u32);

    /// The protocol it is sent in (and so the pool that carries it).
    fn wire(&self) -> Wire {
        Wire::Binary
    }
}

/// A meta request for a static ring's plain memcached server, sent as the
/// client wrote it and followed by `mn`, which ends its reply.
#[derive(Debug)]
pub struct MetaText<'a> {
    /// The request's bytes (line and data block).
    pub request: &'a [u8],
}

impl Encode for MetaText<'_> {
    fn encode(&self, out: &mut BytesMut, _vbucket: VbucketId, _opaque: u32) {
        out.extend_from_slice(self.request);
        out.extend_from_slice(b"mn\r\n");
    }

    fn wire(&self) -> Wire {
        Wire::MetaText
    }
}

/// A plain binary request: header fields, extras, key, value.
#[derive(Debug)]
pub struct Plain<'a> {
    /// Opcode (never quiet: a quiet request would leave the batch open).
    pub opcode: Opcode,
    /// CAS to compare, or 0.
    pub cas: u64,
    /// Extras, in wire form.
    pub extras: &'a [u8],
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

impl<'a> Plain<'a> {
    /// A request for `key` with `extras`, no CAS and no value.
    pub fn new(opcode: Opcode, key: &'a [u8], extras: &'a [u8]) -> Plain<'a> {
        Plain {
            opcode,
            cas: 0,
            extras,
            key,
            value: &[],
        }
    }
}

impl Encode for Plain<'_> {
    fn encode(&self, out: &mut BytesMut, vbucket: VbucketId, opaque: u32) {
        let fields = RequestFields {
            opcode: self.opcode,
            data_type: 0,
            vbucket,
            opaque,
            cas: self.cas,
        };
        // Parts come from parsed client requests, inside every length field.
        let _ = encode_request(out, &fields, self.extras, self.key, self.value);
    }
}

/// Sends one request for `key` and returns the node's reply, following the
/// retry rules in the module doc.
pub async fn keyed(
    shared: &Shared,
    key: &[u8],
    request: &impl Encode,
    idempotent: bool,
) -> Result<Reply, CallError> {
    let deadline = Instant::now() + shared.config.retry_deadline;
    let mut forward: Option<(u64, ServerIdx)> = None;
    let mut attempt = 0u32;
    loop {
        let mut changes = shared.maps.subscribe();
        let generation = *changes.borrow_and_update();
        let routing = shared.maps.snapshot();
        if attempt > 0 {
            shared.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        attempt += 1;
        let route = routing.route(key);
        let server = match forward.take() {
            Some((g, server)) if g == generation => Some(server),
            _ => route.server,
        };
        let wire = request.wire();
        let Some(pool) = server.and_then(|s| routing.pool_for(s, wire)).cloned() else {
            if shared.config_refused.load(Ordering::Relaxed) {
                return Err(CallError::CredentialsRefused);
            }
            wait_for_map(&mut changes, deadline).await?;
            continue;
        };
        match pool.call(single(&pool, request, route.vbucket)).await {
            Ok(mut replies) => {
                let Some(reply) = replies.pop() else {
                    return Err(CallError::Unavailable);
                };
                if reply.response.header.status != Status::NOT_MY_VBUCKET {
                    return Ok(reply);
                }
                shared.stats.not_my_vbucket.fetch_add(1, Ordering::Relaxed);
                match routing.forward(route.vbucket) {
                    Some(next) if Some(next) != server => forward = Some((generation, next)),
                    _ => {
                        shared.refresh.notify_one();
                        let until = deadline.min(Instant::now() + NMVB_WAIT);
                        let _ = tokio::time::timeout_at(until, changes.changed()).await;
                    }
                }
            }
            Err(DownstreamError::AuthRefused) => return Err(CallError::CredentialsRefused),
            Err(DownstreamError::NotSent) => {
                let until = deadline.min(Instant::now() + DOWN_RETRY);
                let _ = tokio::time::timeout_at(until, changes.changed()).await;
            }
            Err(DownstreamError::Lost | DownstreamError::Timeout) if !idempotent => {
                return Err(CallError::OutcomeUnknown);
            }
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(CallError::Unavailable);
        }
    }
}

/// Whether the cluster accepts a client's SASL PLAIN `message` for the
/// proxy's bucket, asked of the first node of the current map on a
/// connection of its own. A static ring has no cluster to ask: never.
pub async fn check_login(shared: &Shared, message: &[u8]) -> bool {
    let MapSource::Cluster { bucket, .. } = &shared.config.source else {
        return false;
    };
    let routing = shared.maps.snapshot();
    let Some(pool) = routing.pools.first() else {
        return false;
    };
    downstream::check_plain(
        (pool.addr(), pool.tls_port()),
        message,
        bucket,
        &shared.config.downstream,
    )
    .await
}

/// `request` alone in a batch for `pool`, addressed to `vbucket`.
fn single(pool: &NodePool, request: &impl Encode, vbucket: VbucketId) -> Batch {
    let opaque = pool.opaques(1);
    let mut frame = BytesMut::new();
    request.encode(&mut frame, vbucket, opaque);
    Batch {
        frames: frame.freeze(),
        first: opaque,
        terminator: opaque,
    }
}

/// Waits for a map newer than the one `changes` last saw, up to `deadline`.
async fn wait_for_map(
    changes: &mut tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
) -> Result<(), CallError> {
    match tokio::time::timeout_at(deadline, changes.changed()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(CallError::Unavailable),
    }
}

/// The outcome of one key of a multi-get.
#[derive(Clone, Debug)]
pub enum KeyResult {
    /// The node's reply (a hit; misses are `Miss`).
    Hit(Reply),
    /// Not found.
    Miss,
    /// No reply before the deadline.
    Failed(CallError),
}

/// Gets many keys: one batch per node, all nodes at once, of quiet GETKQs
/// (or GATKQs, with `extras`) whose last request is the non-quiet twin
/// (GETK/GATK): its reply, hit or miss, ends the batch, so no NOOP fence
/// is needed (one frame fewer per node; memcached spent about a third less
/// CPU per 10-key get without it). Keys whose node failed or answered
/// NOT_MY_VBUCKET are retried one by one under [`keyed`]'s rules. Results
/// are in the order of `keys`; duplicate keys are fetched once.
pub async fn multi_get(
    shared: &Shared,
    keys: &[&[u8]],
    quiet_opcode: Opcode,
    extras: &[u8],
) -> Vec<KeyResult> {
    let routing = shared.maps.snapshot();
    let mut get = MultiGet::plan(&routing, keys, extras.len());
    get.send(&routing, quiet_opcode, extras).await;
    get.collect(shared).await;
    get.retry(shared, quiet_opcode.non_quiet(), extras).await;
    get.finish()
}

/// One key of a multi-get's plan.
#[derive(Clone, Copy, Debug)]
struct KeyPlan {
    /// The key's first occurrence in the client's list (itself unless it
    /// repeats an earlier key): a repeat is not fetched again, it shares
    /// the first occurrence's result.
    first: usize,
    /// Its vbucket (the key is hashed once).
    vbucket: VbucketId,
    /// The batch that fetches it: set only on the first occurrence of a key
    /// the map places on a node.
    batch: Option<usize>,
}

/// The keys of a multi-get bound for one node.
#[derive(Debug)]
struct NodeBatch {
    server: ServerIdx,
    /// Its keys: a range of [`MultiGet::by_batch`].
    keys: Range<usize>,
    /// Opaque of the batch's first key; its `n`th key is tagged `base + n`,
    /// so a reply finds its key with one subtraction.
    base: u32,
    /// The batch on its connection, or `None` if it could not be queued.
    sent: Option<Pending>,
}

/// A multi-get on its way: planned, sent, collected, retried, finished.
#[derive(Debug)]
struct MultiGet<'k> {
    /// The client's keys, in its order.
    keys: &'k [&'k [u8]],
    /// Per key of `keys`, what the plan made of it.
    plans: Vec<KeyPlan>,
    /// The keys to fetch (indices into `keys`), batch after batch, each
    /// batch's keys in the client's order.
    by_batch: Vec<usize>,
    /// One per node, in the order their first key came.
    batches: Vec<NodeBatch>,
    /// Bytes of every batch's frames, so they are encoded into one buffer.
    frames_len: usize,
    /// Per key of `keys`: a miss until a reply or a retry says otherwise
    /// (a quiet miss sends no reply).
    results: Vec<KeyResult>,
    /// Keys to fetch again one by one: no node in the map for them, their
    /// batch failed, or their node answered NOT_MY_VBUCKET or an error.
    stragglers: Vec<usize>,
}

// === impl MultiGet ===

impl<'k> MultiGet<'k> {
    /// Finds each key's first occurrence, routes each distinct key once and
    /// groups the keys by node.
    fn plan(routing: &Routing, keys: &'k [&'k [u8]], extras_len: usize) -> MultiGet<'k> {
        let mut get = MultiGet {
            keys,
            plans: Vec::with_capacity(keys.len()),
            by_batch: Vec::new(),
            batches: Vec::new(),
            frames_len: 0,
            results: vec![KeyResult::Miss; keys.len()],
            stragglers: Vec::new(),
        };
        // A short list is scanned for repeats: cheaper than hashing every
        // key.
        let mut first_of: FxHashMap<&[u8], usize> = FxHashMap::default();
        for (i, &key) in keys.iter().enumerate() {
            let first = if keys.len() <= SCAN_DEDUP_MAX {
                keys[..i].iter().position(|&k| k == key).unwrap_or(i)
            } else {
                *first_of.entry(key).or_insert(i)
            };
            let mut plan = KeyPlan {
                first,
                vbucket: 0,
                batch: None,
            };
            if first == i {
                let route = routing.route(key);
                plan.vbucket = route.vbucket;
                match route.server.filter(|&s| routing.pool(s).is_some()) {
                    Some(server) => {
                        plan.batch = Some(get.count_into_batch(server));
                        get.frames_len += HEADER_LEN + extras_len + key.len();
                    }
                    None => get.stragglers.push(i),
                }
            }
            get.plans.push(plan);
        }
        get.lay_out_batches();
        get
    }

    /// Counts one more key for `server`'s batch, opened if it is the first;
    /// returns the batch. Few servers per request: a list beats a map.
    fn count_into_batch(&mut self, server: ServerIdx) -> usize {
        // While planning, a batch's `keys.end` counts its keys.
        match self.batches.iter().position(|b| b.server == server) {
            Some(b) => {
                self.batches[b].keys.end += 1;
                b
            }
            None => {
                self.batches.push(NodeBatch {
                    server,
                    keys: 0..1,
                    base: 0,
                    sent: None,
                });
                self.batches.len() - 1
            }
        }
    }

    /// Gives each batch its range of `by_batch` (from the counts) and fills
    /// it with the batch's keys in the client's order: a counting sort, one
    /// pass over the keys, no list per node.
    fn lay_out_batches(&mut self) {
        let mut start = 0;
        for batch in &mut self.batches {
            let len = batch.keys.end;
            batch.keys = start..start;
            start += len;
        }
        self.by_batch = vec![0; start];
        for (i, plan) in self.plans.iter().enumerate() {
            if let Some(b) = plan.batch {
                let keys = &mut self.batches[b].keys;
                self.by_batch[keys.end] = i;
                keys.end += 1;
            }
        }
    }

    /// Encodes every batch into one buffer and queues each on its node
    /// before waiting for any: the nodes work in parallel.
    async fn send(&mut self, routing: &Routing, quiet_opcode: Opcode, extras: &[u8]) {
        let mut frames = BytesMut::with_capacity(self.frames_len);
        let non_quiet = quiet_opcode.non_quiet();
        for batch in &mut self.batches {
            let Some(pool) = routing.pool(batch.server) else {
                continue;
            };
            let keys = &self.by_batch[batch.keys.clone()];
            let len = u32::try_from(keys.len()).unwrap_or(u32::MAX);
            batch.base = pool.opaques(len);
            for (n, &i) in keys.iter().enumerate() {
                let opcode = if n + 1 == keys.len() {
                    non_quiet
                } else {
                    quiet_opcode
                };
                Plain::new(opcode, self.keys[i], extras).encode(
                    &mut frames,
                    self.plans[i].vbucket,
                    batch.base.wrapping_add(n as u32),
                );
            }
            let frames = Batch {
                frames: frames.split().freeze(),
                first: batch.base,
                terminator: batch.base.wrapping_add(len - 1),
            };
            batch.sent = pool.send(frames).await.ok();
        }
    }

    /// Collects each node's replies: a hit is kept; quiet misses send none,
    /// so a key with no reply in a completed batch stays a miss; any other
    /// answer, or a failed batch, sends the key to the retries.
    async fn collect(&mut self, shared: &Shared) {
        for batch in &mut self.batches {
            let keys = &self.by_batch[batch.keys.clone()];
            let outcome = match batch.sent.take() {
                Some(pending) => pending.replies().await,
                None => Err(DownstreamError::NotSent),
            };
            let Ok(replies) = outcome else {
                self.stragglers.extend_from_slice(keys);
                continue;
            };
            for reply in replies {
                let n = reply.response.header.opaque.wrapping_sub(batch.base);
                // The connection checked the opaque is within the batch; a
                // key of another batch would be a node bug.
                let Some(&i) = keys.get(n as usize) else {
                    continue;
                };
                match reply.response.header.status {
                    Status::OK => self.results[i] = KeyResult::Hit(reply),
                    Status::KEY_NOT_FOUND => {}
                    status => {
                        if status == Status::NOT_MY_VBUCKET {
                            shared.stats.not_my_vbucket.fetch_add(1, Ordering::Relaxed);
                        }
                        self.stragglers.push(i);
                    }
                }
            }
        }
    }

    /// Fetches the stragglers with one keyed (idempotent) get each,
    /// concurrently.
    async fn retry(&mut self, shared: &Shared, opcode: Opcode, extras: &[u8]) {
        if self.stragglers.is_empty() {
            return;
        }
        // Several keys to retry: the map is likely stale, so ask the
        // watcher for a fresh one at once.
        if self.stragglers.len() > 1 {
            shared.refresh.notify_one();
        }
        let keys = self.keys;
        let retried = futures_util::future::join_all(
            self.stragglers
                .iter()
                .map(|&i| async move { (i, get_one(shared, keys[i], opcode, extras).await) }),
        )
        .await;
        for (i, result) in retried {
            self.results[i] = result;
        }
    }

    /// The results in the client's order, repeats sharing their first
    /// occurrence's result.
    fn finish(mut self) -> Vec<KeyResult> {
        for (i, plan) in self.plans.iter().enumerate() {
            if plan.first != i {
                self.results[i] = self.results[plan.first].clone();
            }
        }
        self.results
    }
}

/// Gets one key with a plain (non-quiet) GET/GETK/GAT/GATK, idempotent,
/// under [`keyed`]'s retry rules.
pub async fn get_one(shared: &Shared, key: &[u8], opcode: Opcode, extras: &[u8]) -> KeyResult {
    match keyed(shared, key, &Plain::new(opcode, key, extras), true).await {
        Ok(reply) if reply.response.header.status == Status::OK => KeyResult::Hit(reply),
        Ok(reply) if reply.response.header.status == Status::KEY_NOT_FOUND => KeyResult::Miss,
        Ok(_) => KeyResult::Failed(CallError::Unavailable),
        Err(e) => KeyResult::Failed(e),
    }
}

/// Sends `request` (not keyed) to every node of the current map, once per
/// node; returns each node's reply or error.
pub async fn fan_out(
    shared: &Shared,
    request: &Plain<'_>,
) -> Vec<Result<Vec<Reply>, DownstreamError>> {
    let routing = shared.maps.snapshot();
    let calls = routing.pools.iter().map(|pool| async move {
        let opaque = pool.opaques(2);
        let mut frames = BytesMut::new();
        request.encode(&mut frames, 0, opaque);
        // STAT answers with many frames ended by an empty one; a NOOP after
        // it makes the end unambiguous for every opcode.
        Plain::new(Opcode::Noop, &[], &[]).encode(&mut frames, 0, opaque.wrapping_add(1));
        pool.call(Batch {
            frames: frames.freeze(),
            first: opaque,
            terminator: opaque.wrapping_add(1),
        })
        .await
        .map(|mut replies| {
            replies.pop(); // the NOOP
            replies
        })
    });
    futures_util::future::join_all(calls).await
}

/// What `flush_all` on every node came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Every node flushed.
    All,
    /// A node does not allow flushing the bucket (its `flushEnabled` is
    /// off): memcached's "not allowed".
    NotAllowed,
    /// A node failed or did not answer.
    Failed,
}

/// FLUSH on every node of the map (`extras`: the optional delay).
pub async fn flush_all(shared: &Shared, extras: &[u8]) -> Flushed {
    let request = Plain::new(Opcode::Flush, &[], extras);
    let mut outcome = Flushed::All;
    for node in fan_out(shared, &request).await {
        let statuses = node.iter().flatten().map(|r| r.response.header.status);
        for status in statuses {
            match status {
                Status::OK => {}
                Status::NOT_SUPPORTED => outcome = Flushed::NotAllowed,
                _ if outcome == Flushed::All => outcome = Flushed::Failed,
                _ => {}
            }
        }
        if node.is_err() && outcome == Flushed::All {
            outcome = Flushed::Failed;
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use shoal_vbmap::config::ServerAddr;

    use super::*;
    use crate::config::ProxyConfig;

    /// A multi-get of `count` keys cycling over 25 names (so `count` > 25
    /// repeats some) on a static ring of three servers nobody listens on:
    /// planning never connects.
    async fn planned(count: usize, check: impl Fn(&Routing, &[&[u8]], &MultiGet<'_>)) {
        let shared = Shared::new(ProxyConfig::default());
        let servers = (1..=3)
            .map(|port| ServerAddr::parse(&format!("127.0.0.1:{port}")).unwrap())
            .collect();
        shared.maps.install_static(servers, &[]);
        let routing = shared.maps.snapshot();
        let names: Vec<String> = (0..count).map(|i| format!("key{}", i % 25)).collect();
        let keys: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
        let get = MultiGet::plan(&routing, &keys, 4);
        check(&routing, &keys, &get);
    }

    #[tokio::test]
    async fn plan_fetches_each_distinct_key_once_in_its_nodes_batch_in_client_order() {
        // 10 keys take the scanning path, 40 the hashing one.
        for count in [10, 40] {
            planned(count, |routing, keys, get| {
                let distinct: Vec<usize> = (0..keys.len())
                    .filter(|&i| !keys[..i].contains(&keys[i]))
                    .collect();
                for (i, plan) in get.plans.iter().enumerate() {
                    assert_eq!(keys[plan.first], keys[i]);
                    assert_eq!(plan.first == i, distinct.contains(&i));
                }
                let mut fetched = Vec::new();
                let mut servers = Vec::new();
                for batch in &get.batches {
                    let batch_keys = &get.by_batch[batch.keys.clone()];
                    assert!(batch_keys.windows(2).all(|w| w[0] < w[1]), "client order");
                    for &i in batch_keys {
                        assert_eq!(routing.route(keys[i]).server, Some(batch.server));
                    }
                    fetched.extend_from_slice(batch_keys);
                    servers.push(batch.server);
                }
                fetched.sort_unstable();
                assert_eq!(fetched, distinct, "every distinct key, once");
                servers.sort_unstable();
                servers.dedup();
                assert_eq!(servers.len(), get.batches.len(), "one batch per node");
                let frames: usize = distinct
                    .iter()
                    .map(|&i| HEADER_LEN + 4 + keys[i].len())
                    .sum();
                assert_eq!(get.frames_len, frames);
                assert!(get.stragglers.is_empty());
            })
            .await;
        }
    }
}
