//! [`ClusterState`]: the cluster metadata every node holds a replica of —
//! nodes and their membership, buckets, each bucket's vbucket map and `rev`
//! — and the [`Command`]s that change it.
//!
//! `apply` is pure and deterministic: every node applies the same commands
//! in the same (Raft log) order and reaches the same state, and a command
//! that does not fit the state is rejected the same way everywhere, so the
//! leader never has to pre-check under a lock. A bucket's `rev` is the log
//! index of the last command that changed its config, which makes revs
//! monotonic across leaders and restarts without any counter of its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_vbmap::config::{BucketConfig, NodeAddress};
use shoal_vbmap::VbucketMap;

use crate::access::{Role, UserRecord};
use crate::bucket::{BucketKind, BucketSpec, Durability};
use crate::transport::PeerPorts;
use shoal_auth::PasswordHash;

/// A node's Raft id (random, chosen once and kept in its data dir).
pub type NodeId = u64;

/// Where a node stands in the cluster (Couchbase's `clusterMembership`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Membership {
    /// Serves data for the buckets whose maps name it.
    Active,
    /// Added, waiting for a rebalance to be given vbuckets.
    InactiveAdded,
    /// Failed over: its vbuckets were promoted elsewhere.
    InactiveFailed,
}

/// One node as the metadata knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Raft id.
    pub id: NodeId,
    /// Host both ports listen on.
    pub host: String,
    /// memcached data port.
    pub data_port: u16,
    /// REST admin port.
    pub admin_port: u16,
    /// TLS memcached port, if the node has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_data_port: Option<u16>,
    /// HTTPS admin port, if the node has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_admin_port: Option<u16>,
    /// Active, added or failed.
    pub membership: Membership,
    /// How a failed-over node comes back, once an admin chose
    /// (`setRecoveryType`); cleared when the rebalance that takes it back
    /// in finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// The RAM this node may use, MiB (what the memory quota is checked
    /// against); unknown for nodes recorded before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
}

/// How a failed-over node is taken back (Couchbase's `recoveryType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Recovery {
    /// Keeps its data; the rebalance gives it back the vbuckets it held
    /// and streams only what it missed.
    Delta,
    /// Empties it first; the rebalance fills it like a new node.
    Full,
}

impl Recovery {
    /// Couchbase's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Recovery::Delta => "delta",
            Recovery::Full => "full",
        }
    }
}

/// The share of a node's RAM the cluster's memory quota may take.
pub const MAX_QUOTA_PERCENT_OF_RAM: u64 = 80;

/// The smallest cluster memory quota accepted, MiB.
pub const MIN_MEMORY_QUOTA_MB: u64 = 256;

impl NodeRecord {
    /// Couchbase's node name, `ns_<id>@<host>`, which `ejectNode` takes.
    pub fn otp_node(&self) -> String {
        format!("ns_{}@{}", self.id, self.host)
    }

    /// `host:admin_port`, the `hostname` of Couchbase's node lists.
    pub fn admin_address(&self) -> String {
        join_host_port(&self.host, self.admin_port)
    }

    /// `host:data_port`, the node's entry in a `serverList`.
    pub fn data_address(&self) -> String {
        join_host_port(&self.host, self.data_port)
    }

    /// The node's ports.
    pub fn ports(&self) -> super::NodePorts {
        super::NodePorts {
            data: self.data_port,
            admin: self.admin_port,
            tls_data: self.tls_data_port,
            tls_admin: self.tls_admin_port,
        }
    }

    /// Its addresses, plain and TLS, for the transport's address book.
    pub fn peer_ports(&self) -> PeerPorts {
        self.ports().at(&self.host)
    }

    /// The addresses a bucket config lists.
    pub fn address(&self) -> NodeAddress {
        NodeAddress::new(self.host.clone(), self.data_port, self.admin_port)
            .with_tls(self.tls_data_port, self.tls_admin_port)
    }
}

pub use crate::transport::join_host_port;

/// One bucket: its settings and where its data lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    /// Its settings (name, kind, quota, replicas, durability, vbuckets),
    /// flattened into the record's JSON.
    #[serde(flatten)]
    pub spec: BucketSpec,
    /// Changes when a bucket is deleted and created again under one name.
    pub uuid: String,
    /// Node ids by server index: `servers[i]` is index `i` in the map.
    pub servers: Vec<NodeId>,
    /// The vbucket map's chains (`-1` = none); empty for memcached buckets.
    pub chains: Vec<Vec<i64>>,
    /// Where vbuckets move during a rebalance.
    pub forward: Option<Vec<Vec<i64>>>,
    /// Log index of the last change to this bucket's config.
    pub rev: u64,
}

impl BucketRecord {
    /// The vbucket map, for membase buckets.
    pub fn map(&self) -> Option<VbucketMap> {
        if self.spec.kind != BucketKind::Membase {
            return None;
        }
        VbucketMap::from_chains(
            &self.chains,
            self.spec.replicas as usize,
            self.servers.len(),
        )
        .ok()
    }
}

/// A change to the metadata, as written to the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node joins (or re-joins with new ports).
    AddNode(NodeRecord),
    /// A node's membership changes.
    SetMembership {
        /// The node.
        id: NodeId,
        /// Its new membership.
        membership: Membership,
    },
    /// A node leaves the cluster.
    RemoveNode {
        /// The node.
        id: NodeId,
    },
    /// A bucket is created with the map the leader planned.
    CreateBucket(BucketRecord),
    /// A bucket and its data are deleted.
    DeleteBucket {
        /// Bucket name.
        name: String,
    },
    /// A node is failed over: marked failed, and every membase bucket gets
    /// the map the leader computed without it (memcached buckets drop it
    /// by themselves), all in one step.
    FailOver {
        /// The failed node.
        id: NodeId,
        /// New chains per membase bucket that named it.
        maps: BTreeMap<String, Vec<Vec<i64>>>,
    },
    /// Automatic failover is switched on or off, or its timeout changes.
    SetAutoFailover(AutoFailover),
    /// An admin chose how failed-over node `id` comes back (it becomes
    /// `inactiveAdded`, waiting for a rebalance), or (`None`) the
    /// rebalance that took it back finished.
    SetRecovery {
        /// The node.
        id: NodeId,
        /// Delta or full; `None` clears it.
        recovery: Option<Recovery>,
    },
    /// The cluster's memory quota per node, MiB: what the buckets' RAM
    /// quotas together may take on each node.
    SetMemoryQuota(u64),
    /// A bucket's map changes (rebalance).
    SetBucketMap {
        /// Bucket name.
        name: String,
        /// Node ids by server index.
        servers: Vec<NodeId>,
        /// New chains.
        chains: Vec<Vec<i64>>,
        /// Forward chains during a rebalance.
        forward: Option<Vec<Vec<i64>>>,
    },
    /// An admin user is created, or its password or role replaced.
    SetUser {
        /// The user's name.
        name: String,
        /// Its role and password hash.
        record: UserRecord,
    },
    /// An admin user is deleted (refused for the last full admin).
    DeleteUser {
        /// The user's name.
        name: String,
    },
    /// Settings of a bucket that can change while it runs.
    EditBucket(BucketEdit),
    /// A rebalance ended early: the bucket's forward chains go, and so do
    /// the servers its map no longer names. Worked out from the state the
    /// entry applies to, so a leader whose view lags cannot put an older
    /// map back. A no-op for a bucket without forward chains.
    ClearForward {
        /// Bucket name.
        name: String,
    },
}

/// What an edit of a bucket changes; `None` keeps a setting as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketEdit {
    /// The bucket.
    pub name: String,
    /// A new password (`Some(None)` removes it: the bucket opens).
    pub password: Option<Option<PasswordHash>>,
    /// Whether flush is allowed.
    pub flush_enabled: Option<bool>,
    /// A new minimum durability.
    pub durability: Option<Durability>,
}

/// Why a command was refused; the REST layer maps it to a status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The named node or bucket does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It exists already, or the state forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// The command's contents are invalid.
    #[error("{0}")]
    Invalid(String),
}

/// Automatic failover settings (Couchbase's `/settings/autoFailover`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoFailover {
    /// Whether the leader fails over unresponsive nodes by itself.
    pub enabled: bool,
    /// Seconds a node must be unresponsive first.
    pub timeout_s: u32,
}

impl Default for AutoFailover {
    fn default() -> Self {
        // Off until replicas hold data (failing over to empty replicas
        // would lose what the failed node had); 5 s once enabled.
        AutoFailover {
            enabled: false,
            timeout_s: 5,
        }
    }
}

/// The shortest auto-failover timeout accepted, seconds.
pub const MIN_AUTO_FAILOVER_S: u32 = 1;

/// The longest auto-failover timeout accepted, seconds.
pub const MAX_AUTO_FAILOVER_S: u32 = 3600;

/// The replicated metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Every node, by id.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Every bucket, by name.
    pub buckets: BTreeMap<String, BucketRecord>,
    /// Automatic failover settings.
    #[serde(default)]
    pub auto_failover: AutoFailover,
    /// The admin users, by name (their passwords hashed).
    #[serde(default)]
    pub users: BTreeMap<String, UserRecord>,
    /// The memory quota per node, MiB (unset only in clusters formed
    /// before it existed: nothing is checked against it then).
    #[serde(default)]
    pub memory_quota_mb: Option<u64>,
}

impl ClusterState {
    /// Applies `command`, logged at `index`. A rejected command changes
    /// nothing.
    pub fn apply(&mut self, index: u64, command: Command) -> Result<(), Rejection> {
        match command {
            Command::AddNode(node) => self.add_node(index, node),
            Command::SetMembership { id, membership } => self.set_membership(index, id, membership),
            Command::RemoveNode { id } => self.remove_node(index, id),
            Command::CreateBucket(bucket) => self.create_bucket(index, bucket),
            Command::DeleteBucket { name } => match self.buckets.remove(&name) {
                Some(_) => Ok(()),
                None => Err(no_bucket(&name)),
            },
            Command::FailOver { id, maps } => self.fail_over(index, id, maps),
            Command::SetAutoFailover(settings) => self.set_auto_failover(settings),
            Command::SetRecovery { id, recovery } => self.set_recovery(id, recovery),
            Command::SetMemoryQuota(quota) => self.set_memory_quota(quota),
            Command::SetBucketMap {
                name,
                servers,
                chains,
                forward,
            } => self.set_bucket_map(index, &name, servers, chains, forward),
            Command::ClearForward { name } => self.clear_forward(index, &name),
            Command::SetUser { name, record } => self.set_user(name, record),
            Command::DeleteUser { name } => self.delete_user(&name),
            Command::EditBucket(edit) => self.edit_bucket(index, edit),
        }
    }

    fn set_user(&mut self, name: String, record: UserRecord) -> Result<(), Rejection> {
        check_user_name(&name)?;
        if record.role != Role::Admin && self.is_last_admin(&name) {
            return Err(Rejection::Conflict(format!(
                "{name:?} is the last admin user; it keeps the admin role"
            )));
        }
        self.users.insert(name, record);
        Ok(())
    }

    fn delete_user(&mut self, name: &str) -> Result<(), Rejection> {
        if !self.users.contains_key(name) {
            return Err(Rejection::NotFound(format!("no user named {name:?}")));
        }
        if self.is_last_admin(name) {
            return Err(Rejection::Conflict(format!(
                "{name:?} is the last admin user; create another one first"
            )));
        }
        self.users.remove(name);
        Ok(())
    }

    /// Whether `name` is the only user with the admin role.
    fn is_last_admin(&self, name: &str) -> bool {
        let admins: Vec<&String> = self
            .users
            .iter()
            .filter(|(_, u)| u.role == Role::Admin)
            .map(|(n, _)| n)
            .collect();
        admins == [name]
    }

    fn edit_bucket(&mut self, index: u64, edit: BucketEdit) -> Result<(), Rejection> {
        let bucket = self
            .buckets
            .get_mut(&edit.name)
            .ok_or_else(|| no_bucket(&edit.name))?;
        if edit.durability.is_some_and(|d| d != Durability::None)
            && bucket.spec.kind == BucketKind::Memcached
        {
            return Err(Rejection::Invalid(
                "memcached buckets have no durability".into(),
            ));
        }
        let spec = &mut bucket.spec;
        if let Some(password) = edit.password {
            spec.password = password;
        }
        if let Some(flush) = edit.flush_enabled {
            spec.flush_enabled = flush;
        }
        if let Some(durability) = edit.durability {
            spec.durability = durability;
        }
        // The served config says whether the bucket wants a password.
        bucket.rev = index;
        Ok(())
    }

    fn add_node(&mut self, index: u64, node: NodeRecord) -> Result<(), Rejection> {
        if let Some(other) = self
            .nodes
            .values()
            .find(|n| n.id != node.id && n.admin_address() == node.admin_address())
        {
            return Err(Rejection::Conflict(format!(
                "{} is already node {}",
                node.admin_address(),
                other.otp_node()
            )));
        }
        if let (Some(quota), Some(memory)) = (self.memory_quota_mb, node.memory_mb) {
            check_quota_fits(quota, &node, memory)?;
        }
        let became_active = node.membership == Membership::Active;
        self.nodes.insert(node.id, node);
        if became_active {
            self.refresh_memcached_buckets(index);
        }
        Ok(())
    }

    fn set_membership(
        &mut self,
        index: u64,
        id: NodeId,
        membership: Membership,
    ) -> Result<(), Rejection> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| no_node(id))?;
        node.membership = membership;
        self.refresh_memcached_buckets(index);
        Ok(())
    }

    fn remove_node(&mut self, index: u64, id: NodeId) -> Result<(), Rejection> {
        let node = self.nodes.get(&id).ok_or_else(|| no_node(id))?;
        if let Some(b) = self
            .buckets
            .values()
            .find(|b| b.spec.kind == BucketKind::Membase && holds_vbuckets(b, id))
        {
            return Err(Rejection::Conflict(format!(
                "{} holds vbuckets of bucket {:?}; rebalance it out or fail it over first",
                node.otp_node(),
                b.spec.name
            )));
        }
        self.nodes.remove(&id);
        self.refresh_memcached_buckets(index);
        Ok(())
    }

    fn create_bucket(&mut self, index: u64, mut bucket: BucketRecord) -> Result<(), Rejection> {
        if self.buckets.contains_key(&bucket.spec.name) {
            return Err(Rejection::Conflict(format!(
                "bucket {:?} already exists",
                bucket.spec.name
            )));
        }
        if let Some(id) = bucket
            .servers
            .iter()
            .find(|id| !self.nodes.contains_key(id))
        {
            return Err(no_node(*id));
        }
        if bucket.spec.kind == BucketKind::Membase && bucket.map().is_none() {
            return Err(Rejection::Invalid(format!(
                "bucket {:?}: the vbucket map does not fit its servers",
                bucket.spec.name
            )));
        }
        if let Some(quota) = self.memory_quota_mb {
            let taken = self.buckets_quota_mb();
            let wanted = bucket.spec.ram_quota_mb;
            if taken.saturating_add(wanted) > quota {
                return Err(Rejection::Invalid(format!(
                    "ramQuotaMB {wanted} MB is more than the cluster's memory quota has left: \
                     {quota} MB per node, {taken} MB of it taken by the other buckets, \
                     {} MB free",
                    quota.saturating_sub(taken)
                )));
            }
        }
        bucket.rev = index;
        if bucket.spec.kind == BucketKind::Memcached {
            bucket.servers = self.active_nodes();
        }
        self.buckets.insert(bucket.spec.name.clone(), bucket);
        Ok(())
    }

    /// Marks node `id` failed and gives every membase bucket in `maps` its
    /// new chains, all or nothing.
    fn fail_over(
        &mut self,
        index: u64,
        id: NodeId,
        maps: BTreeMap<String, Vec<Vec<i64>>>,
    ) -> Result<(), Rejection> {
        if !self.nodes.contains_key(&id) {
            return Err(no_node(id));
        }
        let mut next = self.buckets.clone();
        for (name, chains) in maps {
            let bucket = next.get_mut(&name).ok_or_else(|| no_bucket(&name))?;
            let candidate = BucketRecord {
                chains,
                forward: None,
                rev: index,
                ..bucket.clone()
            };
            if candidate.map().is_none() {
                return Err(Rejection::Invalid(format!(
                    "bucket {name:?}: the failover map does not fit its servers"
                )));
            }
            *bucket = candidate;
        }
        if let Some(b) = next
            .values()
            .find(|b| b.spec.kind == BucketKind::Membase && holds_vbuckets(b, id))
        {
            return Err(Rejection::Invalid(format!(
                "the failover map of bucket {:?} still names the failed node",
                b.spec.name
            )));
        }
        self.buckets = next;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.membership = Membership::InactiveFailed;
            node.recovery = None;
        }
        self.refresh_memcached_buckets(index);
        Ok(())
    }

    fn set_auto_failover(&mut self, settings: AutoFailover) -> Result<(), Rejection> {
        if !(MIN_AUTO_FAILOVER_S..=MAX_AUTO_FAILOVER_S).contains(&settings.timeout_s) {
            return Err(Rejection::Invalid(format!(
                "timeout must be {MIN_AUTO_FAILOVER_S} to {MAX_AUTO_FAILOVER_S} seconds"
            )));
        }
        self.auto_failover = settings;
        Ok(())
    }

    fn set_recovery(&mut self, id: NodeId, recovery: Option<Recovery>) -> Result<(), Rejection> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| no_node(id))?;
        let Some(kind) = recovery else {
            node.recovery = None;
            return Ok(());
        };
        // A node whose recovery was chosen may have it changed until the
        // rebalance takes it in.
        let waiting = node.membership == Membership::InactiveAdded && node.recovery.is_some();
        if node.membership != Membership::InactiveFailed && !waiting {
            return Err(Rejection::Conflict(format!(
                "{} is not failed over: only a failed-over node can be recovered",
                node.otp_node()
            )));
        }
        node.membership = Membership::InactiveAdded;
        node.recovery = Some(kind);
        Ok(())
    }

    fn set_memory_quota(&mut self, quota: u64) -> Result<(), Rejection> {
        if quota < MIN_MEMORY_QUOTA_MB {
            return Err(Rejection::Invalid(format!(
                "memoryQuota {quota} MB is less than the smallest accepted, \
                 {MIN_MEMORY_QUOTA_MB} MB"
            )));
        }
        let taken = self.buckets_quota_mb();
        if quota < taken {
            return Err(Rejection::Invalid(format!(
                "memoryQuota {quota} MB is less than the buckets' RAM quotas take together: \
                 {taken} MB"
            )));
        }
        for node in self.nodes.values() {
            if let Some(memory) = node.memory_mb {
                check_quota_fits(quota, node, memory)?;
            }
        }
        self.memory_quota_mb = Some(quota);
        Ok(())
    }

    /// What every bucket's RAM quota adds up to, MiB per node.
    pub fn buckets_quota_mb(&self) -> u64 {
        self.buckets
            .values()
            .map(|b| b.spec.ram_quota_mb)
            .fold(0, u64::saturating_add)
    }

    fn set_bucket_map(
        &mut self,
        index: u64,
        name: &str,
        servers: Vec<NodeId>,
        chains: Vec<Vec<i64>>,
        forward: Option<Vec<Vec<i64>>>,
    ) -> Result<(), Rejection> {
        if let Some(id) = servers.iter().find(|id| !self.nodes.contains_key(id)) {
            return Err(no_node(*id));
        }
        let bucket = self.buckets.get_mut(name).ok_or_else(|| no_bucket(name))?;
        let candidate = BucketRecord {
            servers,
            chains,
            forward,
            rev: index,
            ..bucket.clone()
        };
        if candidate.spec.kind != BucketKind::Membase || candidate.map().is_none() {
            return Err(Rejection::Invalid(format!(
                "bucket {name:?}: the vbucket map does not fit its servers"
            )));
        }
        *bucket = candidate;
        Ok(())
    }

    fn clear_forward(&mut self, index: u64, name: &str) -> Result<(), Rejection> {
        let bucket = self.buckets.get_mut(name).ok_or_else(|| no_bucket(name))?;
        if bucket.forward.is_some() {
            let (servers, chains) = compact(&bucket.servers, &bucket.chains);
            bucket.servers = servers;
            bucket.chains = chains;
            bucket.forward = None;
            bucket.rev = index;
        }
        Ok(())
    }

    /// Ids of the active nodes, ascending.
    pub fn active_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.membership == Membership::Active)
            .map(|n| n.id)
            .collect()
    }

    /// The bucket config clients and proxies are served for `bucket`.
    pub fn bucket_config(&self, bucket: &BucketRecord) -> Option<BucketConfig> {
        let servers: Vec<NodeAddress> = bucket
            .servers
            .iter()
            .map(|id| self.nodes.get(id).map(NodeRecord::address))
            .collect::<Option<_>>()?;
        let rev = i64::try_from(bucket.rev).ok()?;
        let mut config = match bucket.spec.kind {
            BucketKind::Membase => {
                let map = bucket.map()?;
                let forward = bucket.forward.as_ref().and_then(|f| {
                    VbucketMap::from_chains(f, bucket.spec.replicas as usize, servers.len()).ok()
                });
                BucketConfig::for_vbucket_map(
                    &bucket.spec.name,
                    rev,
                    &servers,
                    &map,
                    forward.as_ref(),
                )
                .ok()?
            }
            BucketKind::Memcached => {
                if servers.is_empty() {
                    return None;
                }
                BucketConfig::for_ketama(&bucket.spec.name, rev, &servers).ok()?
            }
        };
        config.uuid = Some(bucket.uuid.clone());
        let quota = bucket.spec.ram_quota_mb.saturating_mul(1024 * 1024);
        let extra = &mut config.extra;
        extra.insert("replicaNumber".into(), bucket.spec.replicas.into());
        let auth = if bucket.spec.password.is_some() {
            "sasl"
        } else {
            "none"
        };
        extra.insert("authType".into(), auth.into());
        extra.insert(
            "durabilityMinLevel".into(),
            bucket.spec.durability.as_str().into(),
        );
        extra.insert(
            "quota".into(),
            serde_json::json!({ "ram": quota, "rawRAM": quota }),
        );
        Some(config)
    }

    /// Memcached buckets span every active node: their server list follows
    /// membership, and their rev moves with it.
    fn refresh_memcached_buckets(&mut self, index: u64) {
        let active = self.active_nodes();
        for bucket in self.buckets.values_mut() {
            if bucket.spec.kind == BucketKind::Memcached && bucket.servers != active {
                bucket.servers = active.clone();
                bucket.rev = index;
            }
        }
    }
}

/// Whether node `id` holds any copy of a vbucket in `bucket`'s map.
fn holds_vbuckets(bucket: &BucketRecord, id: NodeId) -> bool {
    let Some(idx) = bucket.servers.iter().position(|s| *s == id) else {
        return false;
    };
    let idx = idx as i64;
    bucket
        .chains
        .iter()
        .chain(bucket.forward.iter().flatten())
        .any(|chain| chain.contains(&idx))
}

/// User names: 1 to 128 characters, none of them a control character,
/// `:` (Basic credentials split there) or a leading `@` (kept for the
/// cluster's own user).
fn check_user_name(name: &str) -> Result<(), Rejection> {
    let ok = !name.is_empty()
        && name.chars().count() <= 128
        && !name.starts_with('@')
        && !name.chars().any(|c| c.is_control() || c == ':');
    if ok {
        Ok(())
    } else {
        Err(Rejection::Invalid(format!(
            "user name {name:?} is invalid: 1 to 128 characters, no ':' or control \
             characters, not starting with '@'"
        )))
    }
}

/// Refuses a memory quota over [`MAX_QUOTA_PERCENT_OF_RAM`] of `node`'s
/// `memory` (MiB), naming the numbers.
fn check_quota_fits(quota: u64, node: &NodeRecord, memory: u64) -> Result<(), Rejection> {
    let most = max_quota_for(memory);
    if quota > most {
        return Err(Rejection::Invalid(format!(
            "memory quota {quota} MB is more than {MAX_QUOTA_PERCENT_OF_RAM}% of the RAM of \
             {} ({memory} MB): at most {most} MB",
            node.otp_node()
        )));
    }
    Ok(())
}

/// The largest memory quota a node with `memory` MiB of RAM takes.
pub fn max_quota_for(memory: u64) -> u64 {
    memory.saturating_mul(MAX_QUOTA_PERCENT_OF_RAM) / 100
}

fn no_node(id: NodeId) -> Rejection {
    Rejection::NotFound(format!("no node with id {id}"))
}

/// Drops the servers no chain names and renumbers the chains.
pub(super) fn compact(servers: &[NodeId], chains: &[Vec<i64>]) -> (Vec<NodeId>, Vec<Vec<i64>>) {
    let mut used = vec![false; servers.len()];
    for idx in chains.iter().flatten() {
        if let Some(u) = usize::try_from(*idx).ok().and_then(|i| used.get_mut(i)) {
            *u = true;
        }
    }
    let mut renumber = BTreeMap::new();
    let mut kept = Vec::new();
    for (i, id) in servers.iter().enumerate() {
        if used[i] {
            renumber.insert(i as i64, kept.len() as i64);
            kept.push(*id);
        }
    }
    let chains = chains
        .iter()
        .map(|c| c.iter().map(|s| *renumber.get(s).unwrap_or(&-1)).collect())
        .collect();
    (kept, chains)
}

fn no_bucket(name: &str) -> Rejection {
    Rejection::NotFound(format!("no bucket named {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shoal_vbmap::planner::fresh_map;

    fn node(id: NodeId, membership: Membership) -> NodeRecord {
        NodeRecord {
            id,
            host: "127.0.0.1".into(),
            data_port: 12000 + id as u16,
            admin_port: 9000 + id as u16,
            tls_data_port: None,
            tls_admin_port: None,
            membership,
            recovery: None,
            memory_mb: Some(4096),
        }
    }

    fn membase(name: &str, servers: Vec<NodeId>, replicas: u8) -> BucketRecord {
        let idx: Vec<u16> = (0..servers.len() as u16).collect();
        let map = fresh_map(16, &idx, replicas as usize).unwrap();
        BucketRecord {
            spec: BucketSpec {
                name: name.into(),
                kind: BucketKind::Membase,
                ram_quota_mb: 100,
                replicas,
                durability: crate::bucket::Durability::None,
                num_vbuckets: 16,
                password: None,
                flush_enabled: false,
            },
            uuid: "u".into(),
            servers,
            chains: map.to_chains(),
            forward: None,
            rev: 0,
        }
    }

    #[test]
    fn bucket_rev_is_the_log_index() {
        let mut s = ClusterState::default();
        s.apply(1, Command::AddNode(node(1, Membership::Active)))
            .unwrap();
        s.apply(2, Command::AddNode(node(2, Membership::Active)))
            .unwrap();
        s.apply(5, Command::CreateBucket(membase("b", vec![1, 2], 1)))
            .unwrap();
        assert_eq!(s.buckets["b"].rev, 5);
        let config = s.bucket_config(&s.buckets["b"]).unwrap();
        assert_eq!(config.rev, Some(5));
        let map = config.validate().unwrap();
        assert_eq!(map.servers().len(), 2);
        assert_eq!(config.extra["replicaNumber"], 1);
        assert_eq!(config.extra["quota"]["ram"], 100 * 1024 * 1024);
    }

    #[test]
    fn rejections_change_nothing() {
        let mut s = ClusterState::default();
        s.apply(1, Command::AddNode(node(1, Membership::Active)))
            .unwrap();
        s.apply(2, Command::CreateBucket(membase("b", vec![1], 0)))
            .unwrap();
        let before = s.clone();
        assert!(matches!(
            s.apply(3, Command::CreateBucket(membase("b", vec![1], 0))),
            Err(Rejection::Conflict(_))
        ));
        assert!(matches!(
            s.apply(4, Command::CreateBucket(membase("c", vec![7], 0))),
            Err(Rejection::NotFound(_))
        ));
        assert!(matches!(
            s.apply(5, Command::DeleteBucket { name: "x".into() }),
            Err(Rejection::NotFound(_))
        ));
        // A node holding vbuckets cannot simply leave.
        assert!(matches!(
            s.apply(6, Command::RemoveNode { id: 1 }),
            Err(Rejection::Conflict(_))
        ));
        let mut dup = node(9, Membership::InactiveAdded);
        dup.admin_port = 9001;
        assert!(matches!(
            s.apply(7, Command::AddNode(dup)),
            Err(Rejection::Conflict(_))
        ));
        assert_eq!(s, before);
    }

    #[test]
    fn memcached_buckets_follow_active_nodes() {
        let mut s = ClusterState::default();
        s.apply(1, Command::AddNode(node(1, Membership::Active)))
            .unwrap();
        let mut mc = membase("m", vec![], 0);
        mc.spec.kind = BucketKind::Memcached;
        mc.chains.clear();
        s.apply(2, Command::CreateBucket(mc)).unwrap();
        assert_eq!(s.buckets["m"].servers, vec![1]);
        s.apply(3, Command::AddNode(node(2, Membership::Active)))
            .unwrap();
        assert_eq!(s.buckets["m"].servers, vec![1, 2]);
        assert_eq!(s.buckets["m"].rev, 3);
        s.apply(4, Command::RemoveNode { id: 1 }).unwrap();
        assert_eq!(s.buckets["m"].servers, vec![2]);
        let config = s.bucket_config(&s.buckets["m"]).unwrap();
        assert!(config.validate().is_ok());
        assert!(config.vbucket_server_map.is_none());
    }

    #[test]
    fn failover_marks_the_node_and_swaps_maps_in_one_step() {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(id, Command::AddNode(node(id, Membership::Active)))
                .unwrap();
        }
        s.apply(4, Command::CreateBucket(membase("b", vec![1, 2, 3], 1)))
            .unwrap();
        let map = s.buckets["b"].map().unwrap();
        let outcome = shoal_vbmap::planner::fail_over(&map, 1, None);
        assert!(outcome.lost_vbuckets.is_empty());
        // A map that still names the node is refused, and nothing changes.
        let before = s.clone();
        let stale = BTreeMap::from([("b".to_string(), s.buckets["b"].chains.clone())]);
        assert!(s
            .apply(5, Command::FailOver { id: 2, maps: stale })
            .is_err());
        assert_eq!(s, before);
        let maps = BTreeMap::from([("b".to_string(), outcome.map.to_chains())]);
        s.apply(6, Command::FailOver { id: 2, maps }).unwrap();
        assert_eq!(s.nodes[&2].membership, Membership::InactiveFailed);
        assert_eq!(s.buckets["b"].rev, 6);
        let after = s.buckets["b"].map().unwrap();
        assert!(after
            .chains()
            .all(|(_, c)| c[0].is_some() && !c.contains(&Some(1))));
    }

    #[test]
    fn only_a_failed_over_node_is_recovered_and_its_choice_can_change() {
        let mut s = ClusterState::default();
        for id in 1..=2 {
            s.apply(id, Command::AddNode(node(id, Membership::Active)))
                .unwrap();
        }
        let recover = |id, r| Command::SetRecovery {
            id,
            recovery: Some(r),
        };
        assert!(matches!(
            s.apply(3, recover(2, Recovery::Delta)),
            Err(Rejection::Conflict(_))
        ));
        s.apply(
            4,
            Command::SetMembership {
                id: 2,
                membership: Membership::InactiveFailed,
            },
        )
        .unwrap();
        s.apply(5, recover(2, Recovery::Delta)).unwrap();
        assert_eq!(s.nodes[&2].membership, Membership::InactiveAdded);
        assert_eq!(s.nodes[&2].recovery, Some(Recovery::Delta));
        s.apply(6, recover(2, Recovery::Full)).unwrap();
        assert_eq!(s.nodes[&2].recovery, Some(Recovery::Full));
        s.apply(
            7,
            Command::SetRecovery {
                id: 2,
                recovery: None,
            },
        )
        .unwrap();
        assert_eq!(s.nodes[&2].recovery, None);
        assert!(
            matches!(
                s.apply(8, recover(2, Recovery::Full)),
                Err(Rejection::Conflict(_))
            ),
            "an added node without a recovery choice is not failed over"
        );
        assert!(matches!(
            s.apply(9, recover(7, Recovery::Full)),
            Err(Rejection::NotFound(_))
        ));
    }

    #[test]
    fn the_memory_quota_bounds_buckets_and_nodes_and_names_the_numbers() {
        let mut s = ClusterState::default();
        s.apply(1, Command::AddNode(node(1, Membership::Active)))
            .unwrap();
        // Node 1 has 4096 MB: at most 3276 MB.
        let err = s.apply(2, Command::SetMemoryQuota(4000)).unwrap_err();
        assert!(
            err.to_string().contains("4000 MB") && err.to_string().contains("3276 MB"),
            "{err}"
        );
        assert!(
            s.apply(2, Command::SetMemoryQuota(100)).is_err(),
            "below the minimum"
        );
        s.apply(3, Command::SetMemoryQuota(1000)).unwrap();
        let mut big = membase("a", vec![1], 0);
        big.spec.ram_quota_mb = 900;
        s.apply(4, Command::CreateBucket(big)).unwrap();
        let mut more = membase("b", vec![1], 0);
        more.spec.ram_quota_mb = 200;
        let err = s.apply(5, Command::CreateBucket(more)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("200 MB") && text.contains("1000 MB") && text.contains("100 MB free"),
            "{text}"
        );
        let err = s.apply(6, Command::SetMemoryQuota(800)).unwrap_err();
        assert!(err.to_string().contains("900 MB"), "{err}");
        // A node with too little RAM for the quota cannot join.
        let mut small = node(2, Membership::InactiveAdded);
        small.memory_mb = Some(1024);
        let err = s.apply(7, Command::AddNode(small)).unwrap_err();
        assert!(
            err.to_string().contains("1024 MB") && err.to_string().contains("819 MB"),
            "{err}"
        );
        assert!(!s.nodes.contains_key(&2));
    }

    #[test]
    fn compact_drops_unused_servers_and_renumbers() {
        let (servers, chains) = compact(&[10, 20, 30], &[vec![2, 0], vec![0, -1]]);
        assert_eq!(servers, vec![10, 30]);
        assert_eq!(chains, vec![vec![1, 0], vec![0, -1]]);
        let (servers, chains) = compact(&[10, 20], &[vec![1, 0]]);
        assert_eq!((servers, chains), (vec![10, 20], vec![vec![1, 0]]));
    }

    #[test]
    fn clear_forward_compacts_the_map_it_applies_to() {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(id, Command::AddNode(node(id, Membership::Active)))
                .unwrap();
        }
        s.apply(4, Command::CreateBucket(membase("b", vec![1, 2], 1)))
            .unwrap();
        let chains = s.buckets["b"].chains.clone();
        let forward: Vec<Vec<i64>> = chains.iter().map(|c| vec![2, c[0]]).collect();
        s.apply(
            5,
            Command::SetBucketMap {
                name: "b".into(),
                servers: vec![1, 2, 3],
                chains: chains.clone(),
                forward: Some(forward),
            },
        )
        .unwrap();
        s.apply(6, Command::ClearForward { name: "b".into() })
            .unwrap();
        let b = &s.buckets["b"];
        assert_eq!(
            (&b.servers, &b.chains, &b.forward, b.rev),
            (&vec![1, 2], &chains, &None, 6),
            "node 3 held nothing yet: it leaves the server list"
        );
        s.apply(7, Command::ClearForward { name: "b".into() })
            .unwrap();
        assert_eq!(s.buckets["b"].rev, 6, "nothing to clear: no new rev");
        assert_eq!(
            s.apply(8, Command::ClearForward { name: "x".into() }),
            Err(no_bucket("x"))
        );
    }

    fn command() -> impl Strategy<Value = Command> {
        let id = 1u64..5;
        prop_oneof![
            (id.clone(), any::<bool>()).prop_map(|(id, active)| Command::AddNode(node(
                id,
                if active {
                    Membership::Active
                } else {
                    Membership::InactiveAdded
                }
            ))),
            id.clone().prop_map(|id| Command::RemoveNode { id }),
            (
                prop::sample::select(vec!["a", "b"]),
                prop::collection::vec(1u64..5, 1..3)
            )
                .prop_map(|(name, mut servers)| {
                    servers.dedup();
                    Command::CreateBucket(membase(name, servers, 0))
                }),
            prop::sample::select(vec!["a", "b"])
                .prop_map(|n| Command::DeleteBucket { name: n.into() }),
            prop::sample::select(vec!["a", "b"])
                .prop_map(|n| Command::ClearForward { name: n.into() }),
        ]
    }

    proptest! {
        /// Every replica applying one log reaches one state, every bucket
        /// it holds has a config that validates, and revs never go back.
        #[test]
        fn replicas_agree_and_configs_validate(commands in prop::collection::vec(command(), 0..40)) {
            let mut a = ClusterState::default();
            let mut b = ClusterState::default();
            let mut revs: BTreeMap<String, u64> = BTreeMap::new();
            for (i, c) in commands.into_iter().enumerate() {
                let index = i as u64 + 1;
                let ra = a.apply(index, c.clone());
                let rb = b.apply(index, c);
                prop_assert_eq!(&ra, &rb);
                for bucket in a.buckets.values() {
                    if let Some(held) = revs.get(&bucket.spec.name) {
                        prop_assert!(bucket.rev >= *held);
                    }
                    revs.insert(bucket.spec.name.clone(), bucket.rev);
                    if bucket.spec.kind == BucketKind::Membase {
                        let config = a.bucket_config(bucket);
                        prop_assert!(config.is_some_and(|c| c.validate().is_ok()));
                    }
                }
                revs.retain(|name, _| a.buckets.contains_key(name));
            }
            prop_assert_eq!(a, b);
        }
    }
}
