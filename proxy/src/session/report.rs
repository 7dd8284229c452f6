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

/// The `(name, value)` pairs `stats <group>` answers with, in order.
pub(super) async fn stats(shared: &Shared, group: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    if group == b"proxy" {
        return proxy_stats(shared)
            .into_iter()
            .map(|(name, value)| (name.into_bytes(), value.into_bytes()))
            .collect();
    }
    let request = Plain::new(Opcode::Stat, group, &[]);
    merged_stats(fan_out(shared, &request).await)
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

/// Sums numeric stats across nodes (moxi's merge); a non-numeric stat keeps
/// the first node's value. Order: first appearance.
fn merged_stats(replies: Vec<Result<Vec<Reply>, DownstreamError>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut values: FxHashMap<Vec<u8>, Vec<u8>> = FxHashMap::default();
    for node in replies.into_iter().flatten() {
        for reply in node {
            let name = reply.key();
            if name.is_empty() || reply.response.header.status != Status::OK {
                continue;
            }
            let value = reply.response.value.of(&reply.frame);
            match values.get_mut(name) {
                Some(held) => {
                    let sum = std::str::from_utf8(held)
                        .ok()
                        .and_then(|h| h.parse::<u64>().ok())
                        .zip(
                            std::str::from_utf8(value)
                                .ok()
                                .and_then(|v| v.parse::<u64>().ok()),
                        );
                    if let Some((a, b)) = sum {
                        *held = a.saturating_add(b).to_string().into_bytes();
                    }
                }
                None => {
                    order.push(name.to_vec());
                    values.insert(name.to_vec(), value.to_vec());
                }
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
