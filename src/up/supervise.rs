//! What `shoal up` does while the cluster runs: waits for Ctrl-C or
//! SIGTERM, and restarts a child that dies. The proxy is stateless and is
//! restarted at once. A node that dies is not: the cluster fails it over
//! first (auto-failover, which `up` switches on), the other nodes and the
//! proxy keep serving, and only then is the node restarted, with its data,
//! to wait — failed over, serving nothing — for an admin to bring it back
//! with `shoal ctl recover` and `shoal ctl rebalance` (or, when the
//! cluster cannot fail it over, to catch up by itself). A child that keeps
//! dying is given up on after [`MAX_RESTARTS`], and `up` says so.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;
use shoal_node::config::Credentials;

use super::{expect_ready_line, Running};

/// How often the children are checked.
const TICK: Duration = Duration::from_millis(500);

/// How long past the auto-failover timeout a dead node waits for its
/// failover before it is restarted anyway.
const FAILOVER_GRACE: Duration = Duration::from_secs(30);

/// Restarts of one child before `up` stops restarting it.
const MAX_RESTARTS: u32 = 5;

/// What supervising needs to ask the cluster about a dead node.
pub(super) struct Watch {
    /// An HTTP client for the nodes' admin ports.
    pub client: reqwest::Client,
    /// The admin credentials.
    pub admin: Credentials,
    /// Every node's admin port, by node number.
    pub admin_ports: Vec<u16>,
    /// The auto-failover timeout `up` set, seconds (0: off).
    pub auto_failover_s: u32,
}

/// A child that died and is not restarted yet.
struct Dead {
    index: usize,
    since: Instant,
}

/// Runs until Ctrl-C or SIGTERM, restarting children that die.
pub(super) async fn supervise(children: &mut [Running], watch: &Watch) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(TICK);
    let mut dead: Vec<Dead> = Vec::new();
    let mut restarts = vec![0u32; children.len()];
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            r = tokio::signal::ctrl_c() => return r.map_err(Into::into),
            _ = tick.tick() => {}
        }
        for (index, running) in children.iter_mut().enumerate() {
            let Ok(Some(status)) = running.child.try_wait() else {
                continue;
            };
            if dead.iter().any(|d| d.index == index) {
                continue;
            }
            if restarts[index] >= MAX_RESTARTS {
                bail!(
                    "{} exited again ({status}) after {MAX_RESTARTS} restarts; stopping the \
                     cluster (see its log under --dir)",
                    running.name
                );
            }
            announce_death(running, status, watch);
            dead.push(Dead {
                index,
                since: Instant::now(),
            });
        }
        let mut still_dead = Vec::new();
        for d in dead {
            let running = &mut children[d.index];
            match restart_due(running, &d, children_alive_ports(watch, d.index), watch).await {
                Some(reason) => {
                    restart(running, &reason)?;
                    restarts[d.index] += 1;
                }
                None => still_dead.push(d),
            }
        }
        dead = still_dead;
    }
}

/// Says what died and what happens next.
fn announce_death(running: &Running, status: std::process::ExitStatus, watch: &Watch) {
    match running.node_admin_port {
        None => eprintln!(
            "shoal: {} exited unexpectedly ({status}); restarting it",
            running.name
        ),
        Some(_) if watch.auto_failover_s > 0 => eprintln!(
            "shoal: {} exited unexpectedly ({status}); the cluster fails it over after {} s and \
             keeps serving; it is restarted with its data once failed over",
            running.name, watch.auto_failover_s
        ),
        Some(_) => eprintln!(
            "shoal: {} exited unexpectedly ({status}); auto-failover is off: restarting it with \
             its data",
            running.name
        ),
    }
}

/// The admin ports of every node but number `except`.
fn children_alive_ports(watch: &Watch, except: usize) -> Vec<u16> {
    let except_port = watch.admin_ports.get(except).copied();
    watch
        .admin_ports
        .iter()
        .copied()
        .filter(|p| Some(*p) != except_port)
        .collect()
}

/// Whether the dead child should be started again now, and what to say
/// when it is.
async fn restart_due(
    running: &Running,
    dead: &Dead,
    others: Vec<u16>,
    watch: &Watch,
) -> Option<String> {
    let Some(admin_port) = running.node_admin_port else {
        return Some(String::new());
    };
    if watch.auto_failover_s == 0 || others.is_empty() {
        return Some("it catches up with the cluster".into());
    }
    match membership(admin_port, &others, watch).await {
        Some((membership, otp)) if membership == "inactiveFailed" => Some(format!(
            "it is failed over and serves nothing until you bring it back: \
             `shoal ctl recover {otp} --delta` (keeps its data) or `--full`, then \
             `shoal ctl rebalance`"
        )),
        _ if dead.since.elapsed()
            > Duration::from_secs(u64::from(watch.auto_failover_s)) + FAILOVER_GRACE =>
        {
            Some(
                "the cluster did not fail it over (no majority, or a vbucket's last copy): \
                 it catches up with the cluster"
                    .into(),
            )
        }
        _ => None,
    }
}

/// Starts the child again and waits until it listens.
fn restart(running: &mut Running, reason: &str) -> anyhow::Result<()> {
    running.child = running.spawn.start(true)?;
    expect_ready_line(running)?;
    match reason {
        "" => eprintln!("shoal: {} restarted", running.name),
        _ => eprintln!("shoal: {} restarted; {reason}", running.name),
    }
    Ok(())
}

/// The node with `admin_port`'s `clusterMembership` and `otpNode`, as the
/// first of `others` that answers lists it.
async fn membership(admin_port: u16, others: &[u16], watch: &Watch) -> Option<(String, String)> {
    let hostname = format!("127.0.0.1:{admin_port}");
    for port in others {
        let reply = watch
            .client
            .get(format!("http://127.0.0.1:{port}/pools/default"))
            .basic_auth(&watch.admin.username, Some(&watch.admin.password))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let Ok(reply) = reply else { continue };
        let Ok(body) = reply.json::<Value>().await else {
            continue;
        };
        let nodes = body.get("nodes").and_then(Value::as_array)?;
        let node = nodes
            .iter()
            .find(|n| n.get("hostname").and_then(Value::as_str) == Some(hostname.as_str()))?;
        let text = |k: &str| node.get(k).and_then(Value::as_str).map(str::to_string);
        return Some((text("clusterMembership")?, text("otpNode")?));
    }
    None
}
