//! Talking to nodes on a request's behalf: one keyed request with the retry
//! rules ([`keyed`]), a multi-key get spread over nodes ([`multi_get`]), and
//! a request sent to every node ([`fan_out`]).
//!
//! Retry rules (better than moxi, which swallowed NOT_MY_VBUCKET on quiet
//! writes and turned exhausted retries into misses): NOT_MY_VBUCKET → try
//! the forward map's server, else ask the watcher for a fresh config and
//! wait for a newer map; a node that cannot be reached → wait for a newer
//! map (or for the node to come back); a request that was sent and then
//! lost is retried only when idempotent. Everything stops at the retry
//! deadline with [`CallError::Unavailable`]; an error is never reported as
//! a miss.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fxhash::FxHashMap;
use shoal_protocol::binary::{encode_request, Opcode, RequestFields, Status};
use shoal_vbmap::{ServerIdx, VbucketId};
use tokio::time::Instant;

use crate::downstream::{Batch, DownstreamError, NodePool, Reply};
use crate::Shared;

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
}

/// A keyed request, encodable for any vbucket and opaque.
pub trait Encode {
    /// Appends the request frame, addressed to `vbucket`, tagged `opaque`.
    fn encode(&self, out: &mut BytesMut, vbucket: VbucketId, opaque: u32);
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
        let Some(pool) = server.and_then(|s| routing.pool(s)).cloned() else {
            wait_for_map(&mut changes, deadline).await?;
            continue;
        };
        let opaque = pool.opaques(1);
        let mut frame = BytesMut::new();
        request.encode(&mut frame, route.vbucket, opaque);
        let batch = Batch {
            frames: frame.freeze(),
            first: opaque,
            terminator: opaque,
        };
        match pool.call(batch).await {
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
#[derive(Debug)]
pub enum KeyResult {
    /// The node's reply (a hit; misses are `Miss`).
    Hit(Reply),
    /// Not found.
    Miss,
    /// No reply before the deadline.
    Failed(CallError),
}

/// Gets many keys: one batch per node of quiet GETKQs (or GATKQs, with
/// `extras`) closed by a NOOP, all nodes at once; keys whose node failed or
/// answered NOT_MY_VBUCKET are retried one by one under [`keyed`]'s rules.
/// Results are in the order of `keys`; duplicate keys are fetched once.
pub async fn multi_get(
    shared: &Shared,
    keys: &[&[u8]],
    quiet_opcode: Opcode,
    extras: &[u8],
) -> Vec<KeyResult> {
    let routing = shared.maps.snapshot();
    // Per key, its first occurrence (duplicates are fetched once). A short
    // list is scanned: cheaper than hashing every key.
    let slot_of: Vec<usize> = if keys.len() <= SCAN_DEDUP_MAX {
        (0..keys.len())
            .map(|i| keys[..i].iter().position(|k| *k == keys[i]).unwrap_or(i))
            .collect()
    } else {
        let mut first_of: FxHashMap<&[u8], usize> = FxHashMap::default();
        keys.iter()
            .enumerate()
            .map(|(i, key)| *first_of.entry(key).or_insert(i))
            .collect()
    };
    let mut results: Vec<Option<KeyResult>> = (0..keys.len()).map(|_| None).collect();
    let mut retry: Vec<usize> = Vec::new();
    // Whether a key is in `retry`: a lookup per key, not a scan of `retry`
    // (quadratic in a large multi-get whose node says NOT_MY_VBUCKET).
    let mut retrying = vec![false; keys.len()];

    // Group distinct keys per server.
    // Each key is hashed once: its vbucket travels with it.
    // Few servers per request: a list beats a map.
    let mut groups: Vec<(ServerIdx, Vec<usize>)> = Vec::new();
    let mut vbuckets = vec![0u16; keys.len()];
    for (i, key) in keys.iter().enumerate() {
        if slot_of[i] != i {
            continue;
        }
        let route = routing.route(key);
        vbuckets[i] = route.vbucket;
        match route.server {
            Some(server) if routing.pool(server).is_some() => {
                match groups.iter_mut().find(|(s, _)| *s == server) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((server, vec![i])),
                }
            }
            _ => retry.push(i),
        }
    }
    let vbuckets = &vbuckets;
    let calls = groups.into_iter().map(|(server, members)| {
        let routing = routing.clone();
        async move {
            let pool = routing.pool(server).cloned();
            let outcome = match pool {
                Some(pool) => {
                    send_group(&pool, keys, vbuckets, &members, quiet_opcode, extras).await
                }
                None => Err(DownstreamError::NotSent),
            };
            (members, outcome)
        }
    });
    for (members, outcome) in futures_util::future::join_all(calls).await {
        match outcome {
            Ok((base, replies)) => {
                for reply in replies {
                    let opaque = reply.response.header.opaque;
                    let Some(&i) = members.get(opaque.wrapping_sub(base) as usize) else {
                        continue; // the NOOP terminator
                    };
                    let status = reply.response.header.status;
                    if status == Status::OK {
                        results[i] = Some(KeyResult::Hit(reply));
                    } else if status != Status::KEY_NOT_FOUND {
                        if status == Status::NOT_MY_VBUCKET {
                            shared.stats.not_my_vbucket.fetch_add(1, Ordering::Relaxed);
                        }
                        retry.push(i);
                        retrying[i] = true;
                    }
                }
                for &i in &members {
                    if results[i].is_none() && !retrying[i] {
                        results[i] = Some(KeyResult::Miss);
                    }
                }
            }
            Err(_) => retry.extend(members.iter().copied()),
        }
    }

    // Stragglers: one keyed (idempotent) get each, concurrently.
    if !retry.is_empty() {
        if retry.len() > 1 {
            shared.refresh.notify_one();
        }
        let non_quiet = quiet_opcode.non_quiet();
        let retried = futures_util::future::join_all(
            retry
                .iter()
                .map(|&i| async move { (i, get_one(shared, keys[i], non_quiet, extras).await) }),
        )
        .await;
        for (i, result) in retried {
            results[i] = Some(result);
        }
    }

    // Duplicates share their first occurrence's result (which comes
    // earlier, so it is read before anything is moved out of it).
    let mut out: Vec<KeyResult> = Vec::with_capacity(keys.len());
    for i in 0..keys.len() {
        let first = slot_of[i];
        let result = if first == i {
            results[i].take().unwrap_or(KeyResult::Miss)
        } else {
            match &out[first] {
                KeyResult::Hit(r) => KeyResult::Hit(r.clone()),
                KeyResult::Failed(e) => KeyResult::Failed(*e),
                KeyResult::Miss => KeyResult::Miss,
            }
        };
        out.push(result);
    }
    out
}

/// Gets one key with a plain (non-quiet) GET/GETK/GAT/GATK, idempotent,
/// under [`keyed`]'s retry rules.
pub async fn get_one(shared: &Shared, key: &[u8], opcode: Opcode, extras: &[u8]) -> KeyResult {
    let request = Plain {
        opcode,
        cas: 0,
        extras,
        key,
        value: &[],
    };
    match keyed(shared, key, &request, true).await {
        Ok(reply) if reply.response.header.status == Status::OK => KeyResult::Hit(reply),
        Ok(reply) if reply.response.header.status == Status::KEY_NOT_FOUND => KeyResult::Miss,
        Ok(_) => KeyResult::Failed(CallError::Unavailable),
        Err(e) => KeyResult::Failed(e),
    }
}

async fn send_group(
    pool: &Arc<NodePool>,
    keys: &[&[u8]],
    vbuckets: &[VbucketId],
    members: &[usize],
    quiet_opcode: Opcode,
    extras: &[u8],
) -> Result<(u32, Vec<Reply>), DownstreamError> {
    let n = u32::try_from(members.len()).unwrap_or(u32::MAX - 1);
    let base = pool.opaques(n + 1);
    let mut frames = BytesMut::with_capacity(members.len() * 64);
    for (j, &i) in members.iter().enumerate() {
        let request = Plain {
            opcode: quiet_opcode,
            cas: 0,
            extras,
            key: keys[i],
            value: &[],
        };
        request.encode(&mut frames, vbuckets[i], base.wrapping_add(j as u32));
    }
    let terminator = base.wrapping_add(n);
    Plain {
        opcode: Opcode::Noop,
        cas: 0,
        extras: &[],
        key: &[],
        value: &[],
    }
    .encode(&mut frames, 0, terminator);
    let replies = pool
        .call(Batch {
            frames: frames.freeze(),
            first: base,
            terminator,
        })
        .await?;
    Ok((base, replies))
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
        Plain {
            opcode: Opcode::Noop,
            cas: 0,
            extras: &[],
            key: &[],
            value: &[],
        }
        .encode(&mut frames, 0, opaque.wrapping_add(1));
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
