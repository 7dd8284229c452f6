//! The cluster manager: the cluster metadata — one [`ClusterState`] kept
//! identical on every node by Raft (openraft) — with the Raft leader as the
//! orchestrator that admits nodes, plans maps, fails nodes over and runs
//! rebalances, and the loop that drives this node's buckets to match the
//! metadata.
//!
//! Modules: [`state`] (the state and the commands that change it — pure,
//! deterministic), `store` (the durable Raft log and applied state),
//! `network` (Raft over the admin port's HTTP, sending side),
//! [`reconcile`] (drives the node's own buckets, vbuckets and replication
//! streams to match the state), [`autofailover`], [`rebalance`]. Every
//! metadata change goes through [`Manager::write`] on the leader after the
//! leader has confirmed a majority, so with no majority nothing changes
//! anywhere: no split brain, and callers get a clear error instead of a
//! hang.
//!
//! Layer: above the bucket runtime, replication and the cluster view; below
//! the admin REST API, which serves its endpoints (the receiving side of
//! the Raft transport included). Must not import: `server`, `admin`,
//! `node`.

pub mod autofailover;
pub mod fence;
mod graceful;
mod hosted;
mod network;
pub mod peers;
pub mod rebalance;
pub mod reconcile;
pub mod state;
mod store;
mod takeover;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, Raft, ServerState};
use shoal_auth::{PasswordHash, Secret};
use tokio::sync::watch;

pub use state::{
    AutoFailover, BucketRecord, ClusterState, Command, Membership, NodeId, NodeRecord, Rejection,
};
use store::{LogStore, StateMachine};

use crate::access::{ClusterSecret, Directory, Role, UserRecord};
use crate::transport::{PeerPorts, Transport};
use peers::PeerClient;

openraft::declare_raft_types!(
    /// Raft's types for the metadata: commands in, `Result`s out.
    pub TypeConfig:
        D = Command,
        R = Result<(), Rejection>,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// Most voters; further nodes follow as learners (Couchbase-sized clusters
/// gain nothing from a bigger quorum, and every write waits for it).
pub const MAX_VOTERS: usize = 5;

/// How long a metadata change may wait for a majority.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the leader waits to confirm it still has a majority.
const QUORUM_CHECK: Duration = Duration::from_secs(3);

/// Why a metadata operation failed; the REST layer maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The state refused the change (unknown, duplicate, not allowed).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// This node is not the leader; the leader's admin address if known.
    #[error("not the leader")]
    NotLeader(Option<String>),
    /// No majority answered: the change was not made.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (disk, Raft internals, a peer's bad answer).
    #[error("{0}")]
    Internal(String),
}

/// What a node tells the leader about itself when it is added.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Raft id.
    pub id: NodeId,
    /// Host its ports listen on.
    pub host: String,
    /// memcached port.
    pub data_port: u16,
    /// REST port.
    pub admin_port: u16,
    /// TLS memcached port, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_data_port: Option<u16>,
    /// HTTPS REST port, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_admin_port: Option<u16>,
    /// The RAM it may use, MiB, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
}

impl NodeInfo {
    /// Its addresses, plain and TLS, for the transport's address book.
    pub fn peer_ports(&self) -> PeerPorts {
        self.ports().at(&self.host)
    }

    /// The node's ports.
    pub fn ports(&self) -> NodePorts {
        NodePorts {
            data: self.data_port,
            admin: self.admin_port,
            tls_data: self.tls_data_port,
            tls_admin: self.tls_admin_port,
        }
    }
}

/// The ports a node listens on, as the wiring bound them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePorts {
    /// memcached port.
    pub data: u16,
    /// REST port.
    pub admin: u16,
    /// TLS memcached port, if any.
    pub tls_data: Option<u16>,
    /// HTTPS REST port, if any.
    pub tls_admin: Option<u16>,
}

impl NodePorts {
    /// These ports on `host`, as the transport's address book takes them.
    pub fn at(self, host: &str) -> PeerPorts {
        PeerPorts {
            host: host.to_owned(),
            data: self.data,
            admin: self.admin,
            tls_data: self.tls_data,
            tls_admin: self.tls_admin,
        }
    }
}

/// The metadata service of one node.
pub struct Manager {
    /// `data_dir/raft`.
    dir: std::path::PathBuf,
    raft: Raft<TypeConfig>,
    sm: StateMachine,
    me: NodeInfo,
    /// HTTP to other nodes, as the cluster.
    peers: PeerClient,
    /// The join this node asked for and waits to be handed the cluster
    /// secret for: the token it sent with its `addNode` (see
    /// [`Manager::accept_handoff`]).
    pending_join: std::sync::Mutex<Option<String>>,
    /// The rebalance this node runs as leader, if any.
    pub rebalancer: rebalance::Rebalancer,
    /// Whether this node fences its active vbuckets (cut off from the
    /// majority, or not caught up since).
    pub fence: Arc<fence::Fence>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("me", &self.me).finish()
    }
}

/// The node's Raft id: read from `raft/node-id`, or chosen now and kept.
fn node_id(dir: &Path) -> std::io::Result<NodeId> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| std::io::Error::other(format!("{} is corrupt", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            // Small positive ids read better in `ns_<id>@host`.
            let id = h.finish() % 1_000_000_000 + 1;
            std::fs::write(&path, id.to_string())?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

impl Manager {
    /// Opens the Raft state under `data_dir/raft` and starts this node's
    /// Raft member (uninitialised until it starts or joins a cluster).
    pub async fn start(
        data_dir: &Path,
        host: String,
        ports: NodePorts,
        memory_mb: Option<u64>,
        secret: ClusterSecret,
        transport: Transport,
    ) -> Result<Arc<Manager>, ManagerError> {
        let dir = data_dir.join("raft");
        std::fs::create_dir_all(&dir).map_err(internal)?;
        let id = node_id(&dir).map_err(|e| unreadable(&dir.join("node-id"), e, LOST_IDENTITY))?;
        let log = LogStore::open(&dir.join("log"))
            .map_err(|e| unreadable(&dir.join("log"), e, LOST_IDENTITY))?;
        let sm: StateMachine = StateMachine::open(&dir).map_err(|e| {
            unreadable(
                &dir.join("state.json"),
                e,
                "it is this node's copy of the cluster metadata, rebuilt from the Raft log \
                 and the cluster's leader: move it aside and start the node again",
            )
        })?;
        let config = Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: 250,
            election_timeout_min: 1500,
            election_timeout_max: 3000,
            ..Config::default()
        }
        .validate()
        .map_err(internal)?;
        let raft = Raft::new(
            id,
            Arc::new(config),
            network::Network::new(secret.clone(), transport.clone()),
            log,
            sm.clone(),
        )
        .await
        .map_err(internal)?;
        let me = NodeInfo {
            id,
            host,
            data_port: ports.data,
            admin_port: ports.admin,
            tls_data_port: ports.tls_data,
            tls_admin_port: ports.tls_admin,
            memory_mb,
        };
        tracing::info!(id, "metadata service started");
        // A member of a cluster of several restarts fenced: its last state
        // may be stale until it hears from the others.
        let several = sm.current().nodes.len() > 1;
        let manager = Arc::new(Manager {
            dir,
            raft,
            sm,
            me,
            peers: PeerClient::new(secret, transport),
            pending_join: std::sync::Mutex::new(None),
            rebalancer: rebalance::Rebalancer::default(),
            fence: Arc::new(fence::Fence::new(several)),
        });
        manager.learn_peers();
        Ok(manager)
    }

    /// Refreshes the transport's address book from the nodes the metadata
    /// lists (and this node): with cluster TLS, where each one's TLS ports
    /// are. The reconcile loop calls it on every change.
    pub fn learn_peers(&self) {
        let state = self.state();
        let listed = state.nodes.values().map(NodeRecord::peer_ports);
        let peers = listed.chain(std::iter::once(self.me.peer_ports()));
        self.peers.transport().learn(peers);
    }

    /// HTTP to other nodes' admin ports, authenticated as the cluster.
    pub fn peers(&self) -> &PeerClient {
        &self.peers
    }

    /// This node as it introduces itself.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// Where the metadata lives (`data_dir/raft`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Raft handle (for the RPC endpoints).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The applied metadata.
    pub fn state(&self) -> Arc<ClusterState> {
        self.sm.current()
    }

    /// Every applied change, starting with the current state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.sm.subscribe()
    }

    /// Whether this node is a member of a cluster (in the applied state).
    pub fn is_member(&self) -> bool {
        self.state().nodes.contains_key(&self.me.id)
    }

    /// This node's record for the state, with `membership`.
    fn record(&self, membership: Membership) -> NodeRecord {
        NodeRecord {
            id: self.me.id,
            host: self.me.host.clone(),
            data_port: self.me.data_port,
            admin_port: self.me.admin_port,
            tls_data_port: self.me.tls_data_port,
            tls_admin_port: self.me.tls_admin_port,
            membership,
            recovery: None,
            memory_mb: self.me.memory_mb,
        }
    }

    /// `(leader id, its admin address)` as this node last heard.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&id)?
            .addr
            .clone();
        Some((id, addr))
    }

    /// Whether this node believes it leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// `voter`, `learner` or `leader` for each node in the Raft membership.
    pub fn raft_roles(&self) -> BTreeMap<NodeId, &'static str> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let mut roles: BTreeMap<NodeId, &'static str> =
            membership.learner_ids().map(|id| (id, "learner")).collect();
        for id in membership.voter_ids() {
            roles.insert(id, "voter");
        }
        if let Some(leader) = metrics.current_leader {
            roles.insert(leader, "leader");
        }
        roles
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Starts a new cluster with this node as its only member (a no-op on a
    /// node that already belongs to one), records it as active and, while
    /// the cluster has no user yet, `admin` as its first admin user. The
    /// node's own secret becomes the cluster's.
    pub async fn init_cluster(
        &self,
        admin: Option<(String, PasswordHash)>,
        memory_quota_mb: u64,
    ) -> Result<(), ManagerError> {
        let initialized = self.raft.is_initialized().await.map_err(internal)?;
        if !initialized {
            let members = BTreeMap::from([(
                self.me.id,
                BasicNode {
                    addr: self.admin_address(),
                },
            )]);
            self.raft.initialize(members).await.map_err(internal)?;
        }
        // Wait for a leader, then make sure the state lists this node.
        for _ in 0..100 {
            if self.leader().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !self.is_member() && self.is_leader() {
            self.write(Command::AddNode(self.record(Membership::Active)))
                .await?;
        }
        // A cluster formed before the quota existed gets it here too.
        if self.state().memory_quota_mb.is_none() && self.is_leader() {
            self.write(Command::SetMemoryQuota(memory_quota_mb)).await?;
        }
        match admin {
            Some((name, password)) if self.state().users.is_empty() && self.is_leader() => {
                let record = UserRecord {
                    role: Role::Admin,
                    password,
                };
                self.write(Command::SetUser { name, record }).await?;
            }
            None if self.state().users.is_empty() => {
                tracing::warn!(
                    "the cluster has no admin user: start it with --username and --password"
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Asks the cluster at `url` (an admin URL) to add this node, as the
    /// admin `user` with `password`, retrying until it answers; a no-op
    /// once this node is a member. The request carries a one-time token
    /// that the leader must hand back with the cluster secret, so this node
    /// takes a secret only from the cluster it asked.
    pub async fn join(&self, url: &str, user: &str, password: &str) -> Result<(), ManagerError> {
        let url = format!("{}/controller/addNode", url.trim_end_matches('/'));
        let token = shoal_auth::scram::new_nonce().map_err(internal)?;
        *lock(&self.pending_join) = Some(token.clone());
        let mut last = String::new();
        for _ in 0..120 {
            if self.is_member() {
                return Ok(());
            }
            let form = [
                ("hostname", self.join_hostname()),
                ("joinToken", token.clone()),
            ];
            let request = self
                .peers
                .anonymous()
                .post(&url)
                .basic_auth(user, Some(password));
            match request.form(&form).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    last = format!("HTTP {status}: {}", r.text().await.unwrap_or_default());
                    // 401: the cluster may not have its first user yet
                    // (it is being formed alongside): ask again.
                    let retry = status == reqwest::StatusCode::UNAUTHORIZED;
                    if status.is_client_error() && !retry {
                        return Err(ManagerError::Internal(format!("join refused: {last}")));
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(ManagerError::Unavailable(format!(
            "could not join via {url}: {last}"
        )))
    }

    /// The address this node asks to be added by: its admin address, or
    /// with cluster TLS its HTTPS one, which the leader then reaches it on.
    fn join_hostname(&self) -> String {
        match self.me.tls_admin_port {
            Some(port) if self.peers.transport().is_tls() => {
                format!("https://{}", state::join_host_port(&self.me.host, port))
            }
            _ => self.admin_address(),
        }
    }

    /// `POST /internal/join` on a node being added: the leader hands over
    /// the cluster secret. Taken only by a node that is not a member of a
    /// cluster, and — when it asked to join itself — only with the token it
    /// sent. (A node started without `--join` takes the first cluster that
    /// adds it: an unowned node is anyone's until then.)
    pub fn accept_handoff(&self, secret: Secret, token: Option<&str>) -> Result<(), ManagerError> {
        if self.is_member() {
            return Err(
                Rejection::Conflict("this node already belongs to a cluster".into()).into(),
            );
        }
        if let Some(expected) = lock(&self.pending_join).as_deref() {
            if token != Some(expected) {
                return Err(Rejection::Invalid(
                    "this node asked to join another way (join token mismatch)".into(),
                )
                .into());
            }
        }
        self.peers.secret().replace(secret).map_err(internal)
    }

    fn admin_address(&self) -> String {
        state::join_host_port(&self.me.host, self.me.admin_port)
    }

    /// Applies `command` through the log, on the leader, after confirming
    /// a majority; returns the state's verdict.
    pub async fn write(&self, command: Command) -> Result<(), ManagerError> {
        self.confirm_quorum().await?;
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(command)).await {
            Ok(Ok(response)) => response.data.map_err(ManagerError::Rejected),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ManagerError::NotLeader(f.leader_node.map(|n| n.addr)))
            }
            Ok(Err(e)) => Err(internal(e)),
            Err(_) => Err(ManagerError::Unavailable(format!(
                "no majority acknowledged the change within {} s; it may still apply once \
                 nodes return",
                WRITE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Fails unless this node leads and a majority still follows it.
    async fn confirm_quorum(&self) -> Result<(), ManagerError> {
        if !self.is_leader() {
            return Err(ManagerError::NotLeader(self.leader().map(|(_, a)| a)));
        }
        match tokio::time::timeout(QUORUM_CHECK, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                f,
            )))) => Err(ManagerError::NotLeader(f.leader_node.map(|n| n.addr))),
            Ok(Err(e)) => Err(ManagerError::Unavailable(format!(
                "no majority of the cluster's voters is reachable ({e}); metadata changes are \
                 refused"
            ))),
            Err(_) => Err(ManagerError::Unavailable(
                "no majority of the cluster's voters is reachable; metadata changes are refused"
                    .into(),
            )),
        }
    }

    /// Leader side of `/controller/addNode`: asks the node at `hostname`
    /// (its admin address, `https://` first for its HTTPS port) who it is,
    /// makes it a Raft learner, records it, and promotes it to voter while
    /// there are fewer than [`MAX_VOTERS`]. Idempotent for a node already
    /// added. With cluster TLS only an HTTPS address is taken: the cluster
    /// never talks to a node in plaintext.
    pub async fn add_node(
        &self,
        hostname: &str,
        token: Option<&str>,
    ) -> Result<NodeRecord, ManagerError> {
        self.confirm_quorum().await?;
        let base = match hostname.strip_prefix("https://") {
            Some(_) => hostname.to_string(),
            None if self.peers.transport().is_tls() => {
                return Err(Rejection::Invalid(format!(
                    "this cluster's nodes talk over TLS: add {hostname} by its HTTPS admin \
                     address (https://host:port)"
                ))
                .into())
            }
            None => format!("http://{hostname}"),
        };
        let info: NodeInfo = self
            .peers
            .anonymous()
            .get(format!("{base}/internal/nodeInfo"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| {
                ManagerError::Rejected(Rejection::Invalid(format!(
                    "cannot reach a Shoal node at {hostname}: {e}"
                )))
            })?
            .json()
            .await
            .map_err(|e| {
                ManagerError::Rejected(Rejection::Invalid(format!(
                    "{hostname} did not answer as a Shoal node: {e}"
                )))
            })?;
        let state = self.state();
        if let Some(existing) = state.nodes.get(&info.id) {
            if existing.ports() == info.ports() {
                return Ok(existing.clone());
            }
        }
        check_reachable_host(&state, &info.host)?;
        // Where its TLS ports are, before the cluster's calls to it.
        self.peers.transport().add(&info.peer_ports());
        self.hand_over_secret(&base, token).await?;
        self.confirm_joiner(&info).await?;
        let membership = if state.buckets.is_empty() {
            Membership::Active
        } else {
            Membership::InactiveAdded
        };
        let record = NodeRecord {
            id: info.id,
            host: info.host.clone(),
            data_port: info.data_port,
            admin_port: info.admin_port,
            tls_data_port: info.tls_data_port,
            tls_admin_port: info.tls_admin_port,
            membership: state
                .nodes
                .get(&info.id)
                .map_or(membership, |n| n.membership),
            recovery: state.nodes.get(&info.id).and_then(|n| n.recovery),
            memory_mb: info.memory_mb,
        };
        let node = BasicNode {
            addr: record.admin_address(),
        };
        self.raft
            .add_learner(info.id, node, true)
            .await
            .map_err(raft_write_error)?;
        self.write(Command::AddNode(record.clone())).await?;
        self.balance_voters().await?;
        Ok(record)
    }

    /// Gives the node at `base` (its admin URL; not yet a member) the
    /// cluster secret, with the join token it sent if it asked to join
    /// itself.
    async fn hand_over_secret(&self, base: &str, token: Option<&str>) -> Result<(), ManagerError> {
        let body = serde_json::json!({
            "secret": self.peers.secret().current().to_hex(),
            "joinToken": token,
        });
        let reply = self
            .peers
            .anonymous()
            .post(format!("{base}/internal/join"))
            .json(&body)
            .send()
            .await
            .map_err(|e| Rejection::Invalid(format!("cannot reach {base}: {e}")))?;
        if !reply.status().is_success() {
            let status = reply.status();
            let text = reply.text().await.unwrap_or_default();
            return Err(
                Rejection::Invalid(format!("{base} refused to join ({status}): {text}")).into(),
            );
        }
        Ok(())
    }

    /// Checks that the node being added answers, as `info` says, at the
    /// admin address it gives the cluster, and proves the cluster secret
    /// there: something that only looked like a node is refused before it
    /// becomes a Raft member.
    async fn confirm_joiner(&self, info: &NodeInfo) -> Result<(), ManagerError> {
        let address = state::join_host_port(&info.host, info.admin_port);
        let refused = |why: String| {
            ManagerError::Rejected(Rejection::Invalid(format!(
                "the node at {address} did not prove it holds the cluster secret ({why})"
            )))
        };
        let reply = self
            .peers
            .get(&address, "/internal/whoami")
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| refused(e.to_string()))?;
        if !reply.status().is_success() {
            return Err(refused(format!("HTTP {}", reply.status())));
        }
        let said: NodeInfo = reply.json().await.map_err(|e| refused(e.to_string()))?;
        if said != *info {
            return Err(refused("it answers as another node".into()));
        }
        Ok(())
    }

    /// Leader side of `/controller/ejectNode`: drops the node from the
    /// state (refused while it holds vbuckets) and from Raft.
    pub async fn eject_node(&self, id: NodeId) -> Result<(), ManagerError> {
        self.write(Command::RemoveNode { id }).await?;
        let voters: BTreeSet<NodeId> = self.voters();
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(raft_write_error)?;
        if voters.contains(&id) && id != self.me.id {
            self.balance_voters().await?;
        }
        Ok(())
    }

    /// Leader side of `/controller/failOver`: takes node `id` out of every
    /// membase bucket's map (promoting, per vbucket, a surviving replica)
    /// — the one with the highest seqno among those that answer — and marks
    /// it failed, in one log entry. Refused when a vbucket would
    /// lose its last copy, unless `allow_unsafe`.
    pub async fn fail_over(&self, id: NodeId, allow_unsafe: bool) -> Result<(), ManagerError> {
        let state = self.state();
        let node = state.nodes.get(&id).ok_or_else(|| {
            ManagerError::Rejected(Rejection::NotFound(format!("no node with id {id}")))
        })?;
        if node.membership == Membership::InactiveFailed {
            return Err(
                Rejection::Conflict(format!("{} is already failed over", node.otp_node())).into(),
            );
        }
        if !state.active_nodes().iter().any(|n| *n != id) {
            return Err(Rejection::Conflict(format!(
                "{} is the last active node; failing it over would leave no one to serve",
                node.otp_node()
            ))
            .into());
        }
        let mut maps = BTreeMap::new();
        for bucket in state.buckets.values() {
            let (Some(map), Some(idx)) =
                (bucket.map(), bucket.servers.iter().position(|s| *s == id))
            else {
                continue;
            };
            let Ok(idx) = u16::try_from(idx) else {
                continue;
            };
            let seqnos = self.replica_seqnos(&state, bucket, id).await;
            let outcome = shoal_vbmap::planner::fail_over(&map, idx, Some(&seqnos));
            if !outcome.lost_vbuckets.is_empty() && !allow_unsafe {
                return Err(Rejection::Conflict(format!(
                    "failing over {} would lose every copy of {} vbuckets of bucket {:?} \
                     (e.g. vbucket {}); pass allowUnsafe=true to do it anyway",
                    node.otp_node(),
                    outcome.lost_vbuckets.len(),
                    bucket.spec.name,
                    outcome.lost_vbuckets[0]
                ))
                .into());
            }
            maps.insert(bucket.spec.name.clone(), outcome.map.to_chains());
        }
        self.write(Command::FailOver { id, maps }).await
    }

    /// The high seqnos of `bucket`'s vbuckets on every server of its map
    /// but `failed` that answers within a second, so failover
    /// promotes the most up-to-date replica. A server that does not answer
    /// ranks below every reported seqno.
    async fn replica_seqnos(
        &self,
        state: &ClusterState,
        bucket: &BucketRecord,
        failed: NodeId,
    ) -> shoal_vbmap::planner::ReplicaSeqnos {
        let survivors = bucket
            .servers
            .iter()
            .enumerate()
            .filter(|(_, id)| **id != failed);
        let asks = survivors.map(|(idx, id)| {
            let request = state.nodes.get(id).map(|n| {
                let path = format!("/internal/seqnos/{}", bucket.spec.name);
                self.peers.get(&n.admin_address(), &path)
            });
            async move {
                let reply = request?.timeout(Duration::from_secs(1)).send().await.ok()?;
                let pairs: Vec<(u16, u64)> = reply.error_for_status().ok()?.json().await.ok()?;
                Some((u16::try_from(idx).ok()?, pairs))
            }
        });
        let mut seqnos = shoal_vbmap::planner::ReplicaSeqnos::new();
        for (server, pairs) in futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
        {
            for (vb, seqno) in pairs {
                seqnos.insert((vb, server), seqno);
            }
        }
        seqnos
    }

    /// The index of the last log entry applied here (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.sm.applied_index()
    }

    /// The Raft voters, as this node last heard.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Promotes learners until there are [`MAX_VOTERS`] voters (or none
    /// left to promote).
    async fn balance_voters(&self) -> Result<(), ManagerError> {
        let voters = self.voters();
        let learners: Vec<NodeId> = {
            let metrics = self.raft.metrics().borrow().clone();
            metrics
                .membership_config
                .membership()
                .learner_ids()
                .collect()
        };
        let wanted = MAX_VOTERS.saturating_sub(voters.len());
        let promote: BTreeSet<NodeId> = learners.into_iter().take(wanted).collect();
        if promote.is_empty() {
            return Ok(());
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(promote), false)
            .await
            .map_err(raft_write_error)?;
        Ok(())
    }

    /// Stops Raft (node shutdown).
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

impl Directory for Manager {
    fn user(&self, name: &str) -> Option<UserRecord> {
        self.state().users.get(name).cloned()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Refuses a node whose advertised host cannot be reached by the others:
/// a loopback address (or `localhost`) joining nodes on other hosts, or a
/// real address joining a cluster that only loopback reaches.
fn check_reachable_host(state: &ClusterState, host: &str) -> Result<(), ManagerError> {
    let joining = is_loopback_host(host);
    let Some(other) = state
        .nodes
        .values()
        .find(|n| is_loopback_host(&n.host) != joining)
    else {
        return Ok(());
    };
    let why = if joining {
        format!(
            "it advertises {host}, which the other nodes (e.g. {}) cannot reach: start it \
             with --advertise <an address they reach>",
            other.host
        )
    } else {
        format!(
            "the cluster's nodes advertise loopback addresses (e.g. {}), which {host} cannot \
             reach: start them with --advertise <an address other hosts reach>",
            other.host
        )
    };
    Err(Rejection::Invalid(format!("cannot add a node at {host}: {why}")).into())
}

/// Whether `host` names this machine only: a loopback address or
/// `localhost`.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost") || bare.ends_with(".localhost"),
    }
}

/// What to do when the node's identity or Raft log cannot be read.
const LOST_IDENTITY: &str = "it holds this node's place in the cluster: restore it from a \
    backup; or, if the other nodes still form a majority, fail this node over, move its \
    data dir aside, start it empty and add it to the cluster again (then rebalance)";

/// A metadata file that cannot be read at start-up, named with what to do.
fn unreadable(path: &Path, e: impl std::fmt::Display, remedy: &str) -> ManagerError {
    ManagerError::Internal(format!(
        "cannot read {}, which is corrupt or torn ({e}): {remedy}",
        path.display()
    ))
}

fn internal(e: impl std::fmt::Display) -> ManagerError {
    ManagerError::Internal(e.to_string())
}

fn raft_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ManagerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ManagerError::NotLeader(f.leader_node.map(|n| n.addr))
        }
        other => internal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_apart() {
        for host in [
            "127.0.0.1",
            "127.8.0.3",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST",
            "a.localhost",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["10.1.77.2", "node1.example", "::ffff:10.0.0.1", "[fd00::2]"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn loopback_and_other_hosts_do_not_mix() {
        let mut state = ClusterState::default();
        assert!(
            check_reachable_host(&state, "127.0.0.1").is_ok(),
            "an empty cluster takes any"
        );
        let node = |id, host: &str| NodeRecord {
            id,
            host: host.into(),
            data_port: 11210,
            admin_port: 8091,
            tls_data_port: None,
            tls_admin_port: None,
            membership: Membership::Active,
            recovery: None,
            memory_mb: None,
        };
        state.nodes.insert(1, node(1, "10.1.77.10"));
        let err = check_reachable_host(&state, "127.0.0.1").unwrap_err();
        assert!(err.to_string().contains("--advertise"), "{err}");
        assert!(check_reachable_host(&state, "10.1.77.11").is_ok());
        assert!(check_reachable_host(&state, "node2.example").is_ok());
        state.nodes.clear();
        state.nodes.insert(1, node(1, "127.0.0.1"));
        assert!(check_reachable_host(&state, "10.1.77.11").is_err());
        assert!(check_reachable_host(&state, "localhost").is_ok());
    }
}
