//! What `stats` answers, in ASCII and binary alike: `stats proxy` lists the
//! proxy's own counters, map and per-node figures; any other group is sent
//! to every node and the answers are merged.

use std::sync::atomic::{AtomicU64, Ordering};

use fxhash::FxHashMap;
use shoal_protocol::binary::{Opcode, Status};

use super::call::{fan_out, Plain};
use super::VERSION;
use crate::downstream::{DownstreamError, Reply};
use crate::shared::Shared;
use crate::stats::COUNTERS;

/// The `(name, value)` pairs `stats <group>` answers with, in order, or
/// `Err(status)` when no node knows the group (the status the nodes gave,
/// which the ASCII front end words as memcached's `ERROR`).
pub(super) async fn stats(
    shared: &Shared,
    group: &[u8],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Status> {
    if group == b"proxy" {
        return Ok(proxy_stats(shared)
            .into_iter()
            .map(|(name, value)| (name.into_bytes(), value.into_bytes()))
            .collect());
    }
    if group == b"conns" {
        // The connections a client could ask about are the proxy's, and
        // it keeps no per-connection table (nor does a node): memcached's
        // shape, empty.
        return Ok(Vec::new());
    }
    let request = Plain::new(Opcode::Stat, group, &[]);
    let replies = fan_out(shared, &request).await;
    if let Some(status) = refused_by_all(&replies) {
        return Err(status);
    }
    let mut merged = merged_stats(replies, group.is_empty());
    if group.is_empty() {
        own_identity(shared, &mut merged);
    }
    Ok(merged)
}

/// The status every node that answered refused the group with, if none
/// accepted it.
fn refused_by_all(replies: &[Result<Vec<Reply>, DownstreamError>]) -> Option<Status> {
    let mut refusal = None;
    for node in replies.iter().flatten() {
        match node.last().map(|r| r.response.header.status) {
            Some(Status::OK) => return None,
            Some(status) => refusal = Some(status),
            None => {}
        }
    }
    refusal
}

/// How one general stat of several nodes becomes the proxy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Merge {
    /// A count or an amount the nodes hold between them: the sum.
    Sum,
    /// A worst case (`…_max`): the largest.
    Max,
    /// A limit every node applies to each request: the smallest.
    Min,
    /// Not a number to add: the first node's.
    First,
    /// The process a client talks to is the proxy: its own value
    /// (see [`own_identity`]).
    Proxy,
}

/// The general stats a client learns from the proxy itself: who it talks
/// to and since when, and its own connections.
const FROM_PROXY: &[&str] = &[
    "pid",
    "uptime",
    "time",
    "version",
    "pointer_size",
    "curr_connections",
    "total_connections",
    "rejected_connections",
];

fn merge_rule(name: &[u8]) -> Merge {
    let name = std::str::from_utf8(name).unwrap_or("");
    if FROM_PROXY.contains(&name) {
        Merge::Proxy
    } else if name.ends_with("_max") && name != "item_size_max" {
        Merge::Max
    } else if name == "item_size_max" || name == "max_connections" {
        Merge::Min
    } else {
        Merge::Sum
    }
}

/// Overwrites (or adds) the [`FROM_PROXY`] stats with the proxy's values.
fn own_identity(shared: &Shared, stats: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    let s = &shared.stats;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let own = [
        ("pid", std::process::id().to_string()),
        ("uptime", shared.started.elapsed().as_secs().to_string()),
        ("time", now.to_string()),
        ("version", VERSION.to_string()),
        ("pointer_size", (usize::BITS).to_string()),
        (
            "curr_connections",
            s.curr_connections.load(Ordering::Relaxed).to_string(),
        ),
        (
            "total_connections",
            s.total_connections.load(Ordering::Relaxed).to_string(),
        ),
        (
            "rejected_connections",
            s.rejected_connections.load(Ordering::Relaxed).to_string(),
        ),
    ];
    for (name, value) in own {
        match stats.iter_mut().find(|(n, _)| n == name.as_bytes()) {
            Some(held) => held.1 = value.into_bytes(),
            None => stats.push((name.as_bytes().to_vec(), value.into_bytes())),
        }
    }
}

/// `stats proxy`: the proxy's own counters, map and per-node figures.
fn proxy_stats(shared: &Shared) -> Vec<(String, String)> {
    let s = &shared.stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
    let routing = shared.maps.load();
    let mut stats = vec![("proxy_version".to_string(), VERSION.to_string())];
    stats.extend(
        COUNTERS
            .iter()
            .map(|c| (c.stat.to_string(), load((c.read)(s)))),
    );
    stats.extend([
        (
            "proxy_map_rev".into(),
            routing
                .revision
                .and_then(|r| r.rev)
                .map_or("none".into(), |r| r.to_string()),
        ),
        ("proxy_servers".into(), routing.servers.len().to_string()),
        (
            "proxy_latency_p50_us".into(),
            s.latency_quantile_micros(0.5).to_string(),
        ),
        (
            "proxy_latency_p99_us".into(),
            s.latency_quantile_micros(0.99).to_string(),
        ),
    ]);
    for (addr, pool) in routing.servers.iter().zip(&routing.pools) {
        let n = &pool.stats;
        let prefix = format!("node_{addr}");
        stats.push((format!("{prefix}_batches"), load(&n.batches)));
        stats.push((format!("{prefix}_errors"), load(&n.errors)));
        stats.push((format!("{prefix}_in_flight"), load(&n.in_flight)));
        stats.push((
            format!("{prefix}_down"),
            u8::from(pool.is_down()).to_string(),
        ));
    }
    stats
}

/// Merges the nodes' stats: for the general group by each stat's
/// [`merge_rule`] (counters and amounts summed, worst cases maxed, limits
/// minimised, text kept from the first node); for any other group
/// (`settings`, `items`, …: per-node facts, not amounts) the first node's
/// value. Order: first appearance.
fn merged_stats(
    replies: Vec<Result<Vec<Reply>, DownstreamError>>,
    general: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut values: FxHashMap<Vec<u8>, Vec<u8>> = FxHashMap::default();
    for node in replies.into_iter().flatten() {
        for reply in node {
            let name = reply.key();
            if name.is_empty() || reply.response.header.status != Status::OK {
                continue;
            }
            let value = reply.response.value.of(&reply.frame);
            let Some(held) = values.get_mut(name) else {
                order.push(name.to_vec());
                values.insert(name.to_vec(), value.to_vec());
                continue;
            };
            let rule = if general {
                merge_rule(name)
            } else {
                Merge::First
            };
            if let Some(merged) = merge(rule, held, value) {
                *held = merged.to_string().into_bytes();
            }
        }
    }
    order
        .into_iter()
        .map(|name| {
            let value = values.remove(&name).unwrap_or_default();
            (name, value)
        })
        .collect()
}

/// `held` and `value` merged by `rule`, or `None` to keep `held` (a rule
/// that keeps the first, or values that are not both whole numbers).
fn merge(rule: Merge, held: &[u8], value: &[u8]) -> Option<u64> {
    let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
    let (a, b) = (number(held)?, number(value)?);
    match rule {
        Merge::Sum => Some(a.saturating_add(b)),
        Merge::Max => Some(a.max(b)),
        Merge::Min => Some(a.min(b)),
        Merge::First | Merge::Proxy => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stat_merges_the_way_it_means() {
        assert_eq!(merge_rule(b"cmd_get"), Merge::Sum);
        assert_eq!(merge_rule(b"curr_items"), Merge::Sum);
        assert_eq!(merge_rule(b"replication_lag_max"), Merge::Max);
        assert_eq!(merge_rule(b"item_size_max"), Merge::Min);
        for identity in ["pid", "time", "uptime", "version", "curr_connections"] {
            assert_eq!(merge_rule(identity.as_bytes()), Merge::Proxy, "{identity}");
        }
        assert_eq!(merge(Merge::Sum, b"2", b"3"), Some(5));
        assert_eq!(merge(Merge::Max, b"2", b"3"), Some(3));
        assert_eq!(merge(Merge::Min, b"2", b"3"), Some(2));
        assert_eq!(merge(Merge::Proxy, b"2", b"3"), None);
        assert_eq!(
            merge(Merge::Sum, b"0.5", b"3"),
            None,
            "not a whole number: the first stays"
        );
    }
}
