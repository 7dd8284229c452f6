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
use std::time::Duration;

use bytes::BytesMut;
use fxhash::FxHashMap;
use shoal_protocol::binary::{encode_request, Opcode, RequestFields, Status, HEADER_LEN};
use shoal_vbmap::{ServerIdx, VbucketId};
use tokio::time::Instant;

use crate::downstream::{Batch, DownstreamError, Pending, Reply};
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
#[derive(Clone, Debug)]
pub enum KeyResult {
    /// The node's reply (a hit; misses are `Miss`).
    Hit(Reply),
    /// Not found.
    Miss,
    /// No reply before the deadline.
    Failed(CallError),
}

/// Marks "no key" in [`Slot::next`] and "no batch" in [`Slot::group`].
const NONE: usize = usize::MAX;

/// One key of a multi-get: where it goes and how its batch treated it.
#[derive(Debug)]
struct Slot {
    /// The key's first occurrence (itself unless it repeats an earlier key).
    first: usize,
    /// The batch (index into the groups) that fetches it, or [`NONE`].
    group: usize,
    /// The next key of the same batch, or [`NONE`]: the batches are lists
    /// threaded through the slots, not a vector per node.
    next: usize,
    /// Its vbucket (the key is hashed once).
    vbucket: VbucketId,
    /// Its batch asked for a retry (NOT_MY_VBUCKET or another error).
    retrying: bool,
}

/// The keys of a multi-get bound for one node.
#[derive(Debug)]
struct Group {
    server: ServerIdx,
    /// The first and last key of the batch, in the client's order.
    first: usize,
    last: usize,
    /// Opaque of key `first`; key `i` is tagged `base + (i - first)`, so a
    /// reply finds its key with one subtraction.
    base: u32,
    /// The batch on its connection, or `None` if it could not be queued.
    sent: Option<Pending>,
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
    // Per key, its first occurrence (duplicates are fetched once). A short
    // list is scanned: cheaper than hashing every key.
    let mut slots: Vec<Slot> = Vec::with_capacity(keys.len());
    let mut first_of: FxHashMap<&[u8], usize> = FxHashMap::default();
    for (i, key) in keys.iter().enumerate() {
        let first = if keys.len() <= SCAN_DEDUP_MAX {
            keys[..i].iter().position(|k| k == key).unwrap_or(i)
        } else {
            *first_of.entry(key).or_insert(i)
        };
        slots.push(Slot {
            first,
            group: NONE,
            next: NONE,
            vbucket: 0,
            retrying: false,
        });
    }
    let mut results: Vec<Option<KeyResult>> = (0..keys.len()).map(|_| None).collect();
    let mut retry: Vec<usize> = Vec::new();

    // Group distinct keys per server, hashing each key once. Few servers
    // per request: a list beats a map.
    let mut groups: Vec<Group> = Vec::new();
    let mut frames_len = 0usize;
    for (i, key) in keys.iter().enumerate() {
        if slots[i].first != i {
            continue;
        }
        let route = routing.route(key);
        slots[i].vbucket = route.vbucket;
        let server = match route.server {
            Some(server) if routing.pool(server).is_some() => server,
            _ => {
                retry.push(i);
                continue;
            }
        };
        frames_len += HEADER_LEN + extras.len() + key.len();
        match groups.iter().position(|g| g.server == server) {
            Some(g) => {
                let last = groups[g].last;
                slots[last].next = i;
                groups[g].last = i;
                slots[i].group = g;
            }
            None => {
                slots[i].group = groups.len();
                groups.push(Group {
                    server,
                    first: i,
                    last: i,
                    base: 0,
                    sent: None,
                });
            }
        }
    }

    // Encode every batch into one buffer and queue each on its node before
    // waiting for any: the nodes work in parallel.
    let mut frames = BytesMut::with_capacity(frames_len);
    let non_quiet = quiet_opcode.non_quiet();
    for group in &mut groups {
        let Some(pool) = routing.pool(group.server) else {
            continue;
        };
        let span = u32::try_from(group.last - group.first).unwrap_or(u32::MAX - 1);
        group.base = pool.opaques(span + 1);
        let mut i = group.first;
        while i != NONE {
            Plain {
                opcode: if i == group.last {
                    non_quiet
                } else {
                    quiet_opcode
                },
                cas: 0,
                extras,
                key: keys[i],
                value: &[],
            }
            .encode(
                &mut frames,
                slots[i].vbucket,
                group.base.wrapping_add((i - group.first) as u32),
            );
            i = slots[i].next;
        }
        let batch = Batch {
            frames: frames.split().freeze(),
            first: group.base,
            terminator: group.base.wrapping_add(span),
        };
        group.sent = pool.send(batch).await.ok();
    }

    // Collect each node's replies: quiet misses send none, so a key with
    // no reply in a completed batch is a miss.
    for (g, group) in groups.iter_mut().enumerate() {
        let outcome = match group.sent.take() {
            Some(pending) => pending.replies().await,
            None => Err(DownstreamError::NotSent),
        };
        match outcome {
            Ok(replies) => {
                for reply in replies {
                    let offset = reply.response.header.opaque.wrapping_sub(group.base);
                    let i = group.first.saturating_add(offset as usize);
                    // The connection checked the opaque is within the
                    // batch; a key of another batch would be a node bug.
                    match slots.get(i) {
                        Some(slot) if slot.group == g && slot.first == i => {}
                        _ => continue,
                    }
                    let status = reply.response.header.status;
                    if status == Status::OK {
                        results[i] = Some(KeyResult::Hit(reply));
                    } else if status != Status::KEY_NOT_FOUND {
                        if status == Status::NOT_MY_VBUCKET {
                            shared.stats.not_my_vbucket.fetch_add(1, Ordering::Relaxed);
                        }
                        retry.push(i);
                        slots[i].retrying = true;
                    }
                }
                let mut i = group.first;
                while i != NONE {
                    if results[i].is_none() && !slots[i].retrying {
                        results[i] = Some(KeyResult::Miss);
                    }
                    i = slots[i].next;
                }
            }
            Err(_) => {
                let mut i = group.first;
                while i != NONE {
                    retry.push(i);
                    i = slots[i].next;
                }
            }
        }
    }

    // Stragglers: one keyed (idempotent) get each, concurrently.
    if !retry.is_empty() {
        if retry.len() > 1 {
            shared.refresh.notify_one();
        }
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
    // earlier, so it is already in place).
    for i in 0..keys.len() {
        let first = slots[i].first;
        if first != i {
            results[i] = results[first].clone();
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(KeyResult::Miss))
        .collect()
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
