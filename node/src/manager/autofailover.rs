//! Automatic failover: while this node leads and the setting is on, it
//! probes every other active node's admin port twice a second and fails
//! over a node that has not answered for the configured timeout.
//!
//! The safety rules are Couchbase's: only one node at a time (with two or
//! more unresponsive the leader waits — it may be the one cut off, and a
//! second failover could lose data), never a failover that would leave a
//! vbucket without a copy (the failover itself refuses), and only with a
//! Raft majority (every metadata change needs one). A node that was
//! unresponsive starts its timeout again once it answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::state::Membership;
use super::{Manager, ManagerError, NodeId};

/// How often the leader probes.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// Runs until `shutdown` flips.
pub async fn run(manager: Arc<Manager>, mut shutdown: watch::Receiver<bool>) {
    let transport = manager.peers().transport().clone();
    let http = match transport
        .http_client()
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT)
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "auto-failover disabled: no HTTP client");
            return;
        }
    };
    // When each node last answered (or when watching it began).
    let mut last_seen: BTreeMap<NodeId, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let state = manager.state();
        if !state.auto_failover.enabled || !manager.is_leader() {
            last_seen.clear();
            continue;
        }
        let timeout = Duration::from_secs(u64::from(state.auto_failover.timeout_s));
        let me = manager.me().id;
        let watched: Vec<_> = state
            .nodes
            .values()
            .filter(|n| n.id != me && n.membership == Membership::Active)
            .collect();
        last_seen.retain(|id, _| watched.iter().any(|n| n.id == *id));
        let probes = watched.iter().map(|n| {
            let url = transport.admin_url(&n.admin_address(), "/internal/nodeInfo");
            let http = http.clone();
            async move {
                http.get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        });
        let answers = futures_util::future::join_all(probes).await;
        let now = Instant::now();
        let mut down = Vec::new();
        for (node, up) in watched.iter().zip(answers) {
            let seen = last_seen.entry(node.id).or_insert(now);
            if up {
                *seen = now;
            } else if now.duration_since(*seen) >= timeout {
                down.push(*node);
            }
        }
        let [node] = down.as_slice() else {
            if down.len() > 1 {
                tracing::warn!(
                    down = down.len(),
                    "several nodes unresponsive: not failing any over automatically"
                );
            }
            continue;
        };
        tracing::warn!(node = %node.otp_node(), ?timeout, "node unresponsive: failing it over");
        match manager.fail_over(node.id, false).await {
            Ok(()) => {
                tracing::warn!(node = %node.otp_node(), "auto-failover done");
                last_seen.remove(&node.id);
            }
            Err(ManagerError::Rejected(why)) => {
                tracing::error!(node = %node.otp_node(), %why, "auto-failover refused");
                // Ask again only after another full timeout.
                last_seen.insert(node.id, now);
            }
            Err(error) => tracing::error!(node = %node.otp_node(), %error, "auto-failover failed"),
        }
    }
}
