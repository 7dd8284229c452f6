//! [`NodeConfig`]: everything a storage node needs to start, validated once.
//! Plain data at the bottom of the node's layers: imports nothing of this
//! crate.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use shoal_net::deadline::Deadlines;
use shoal_net::http::HttpLimits;
pub use shoal_net::TlsFiles;
use shoal_persist::FsyncPolicy;

/// How a node is configured (the `shoal node` flags map onto it 1:1).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the node keeps its data; created if missing.
    pub data_dir: PathBuf,
    /// Address to bind (loopback by default).
    pub host: IpAddr,
    /// memcached data port; 0 lets the OS choose (tests).
    pub port: u16,
    /// REST admin port; 0 lets the OS choose.
    pub admin_port: u16,
    /// The RAM quota of bucket `default`, MiB (`ep_max_data_size`); it
    /// also sizes the store's caches.
    pub ram_quota_mb: usize,
    /// vbuckets in bucket `default` (a power of two).
    pub num_vbuckets: usize,
    /// Standalone: one bucket `default` whose vbuckets are all active here.
    pub standalone: bool,
    /// When written batches are made durable.
    pub fsync: FsyncPolicy,
    /// Largest value accepted, bytes (memcached's `-I`).
    pub max_value_len: usize,
    /// Most client connections at once (memcached's `-c`); beyond it only
    /// the cluster's own connections are let in.
    pub max_connections: usize,
    /// Connections reserved for the cluster's own traffic (replication,
    /// durable-write acknowledgements) beyond `max_connections`, so a
    /// client flood never starves it (Couchbase's system connections).
    pub max_system_connections: usize,
    /// Deadlines for half-sent requests, unread replies and idle
    /// connections on the data ports.
    pub deadlines: Deadlines,
    /// The admin ports' connection cap and header deadline.
    pub admin_limits: HttpLimits,
    /// TLS certificate and key: needed by the TLS ports.
    pub tls: Option<TlsFiles>,
    /// TLS data port (Couchbase's 11207); `None`: no TLS data port.
    pub tls_port: Option<u16>,
    /// HTTPS admin port (Couchbase's 18091); `None`: none.
    pub admin_tls_port: Option<u16>,
    /// Talk to other nodes over TLS only — replication streams, Raft, the
    /// internal calls — checking their certificates against this CA (PEM)
    /// (Couchbase's node-to-node encryption). Needs both TLS ports, which
    /// is where the other nodes reach this one.
    pub cluster_ca: Option<PathBuf>,
    /// Create bucket `default` (membase, with `ram_quota_mb` and
    /// `num_vbuckets`) at start, as a standalone node or a plain
    /// `shoal node` does. A cluster member starts with no bucket and gets
    /// its buckets from the cluster manager.
    pub default_bucket: bool,
    /// Start a new cluster with this node as its first member (a no-op
    /// once the data dir belongs to one).
    pub init_cluster: bool,
    /// Join the cluster one of whose nodes has this admin URL (a no-op
    /// once a member).
    pub join: Option<String>,
    /// Address the admin (REST) port binds, when it is not `host`: keep
    /// the admin port on a private network while the data port serves
    /// clients.
    pub admin_host: Option<IpAddr>,
    /// The host the node gives the cluster as its address (in maps and
    /// node lists); `None` means `host`, which then must be a real address,
    /// not `0.0.0.0` or `::`.
    pub advertise_host: Option<String>,
    /// Admin credentials: the first admin user of a cluster this node
    /// initialises, and what it asks to join a cluster with.
    pub credentials: Option<Credentials>,
    /// The RAM this node may use, MiB, when less than the host's (or its
    /// control group's): other processes share the host. The cluster's
    /// memory quota must fit in 80 % of it.
    pub memory_limit_mb: Option<u64>,
    /// The memory quota per node of a cluster this node initialises, MiB
    /// (`None`: half of the node's RAM); later changed with
    /// `POST /pools/default memoryQuota=`.
    pub memory_quota_mb: Option<u64>,
}

/// A user name and password, as given on the command line, in a file or
/// in the environment. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("shoal-data"),
            host: IpAddr::from([127, 0, 0, 1]),
            port: 11210,
            admin_port: 8091,
            ram_quota_mb: 256,
            num_vbuckets: 1024,
            standalone: false,
            fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            max_value_len: 1024 * 1024,
            max_connections: 10_000,
            max_system_connections: 1_000,
            deadlines: Deadlines::default(),
            admin_limits: HttpLimits::default(),
            tls: None,
            tls_port: None,
            admin_tls_port: None,
            cluster_ca: None,
            default_bucket: true,
            init_cluster: false,
            join: None,
            admin_host: None,
            advertise_host: None,
            credentials: None,
            memory_limit_mb: None,
            memory_quota_mb: None,
        }
    }
}

/// A [`NodeConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeConfigError {
    /// `ram_quota_mb` is 0.
    #[error("--ram-quota-mb must be at least 1")]
    Quota,
    /// vbucket count not a power of two in 1..=65536.
    #[error("--vbuckets must be a power of two from 1 to 65536 (got {0})")]
    Vbuckets(usize),
    /// A value limit of 0 or above 20 MiB (Couchbase's document limit).
    #[error("--max-value-bytes must be from 1 to 20971520 (got {0})")]
    MaxValue(usize),
    /// No connections allowed.
    #[error("--max-connections must be at least 1")]
    Connections,
    /// Bound to every address with nothing to tell the cluster.
    #[error("--host {0} binds every address: give the address others reach this node at with --advertise")]
    Unadvertised(IpAddr),
    /// An advertised address that names no host in particular.
    #[error("--advertise {0} is a wildcard address: give the address others reach this node at")]
    WildcardAdvertised(String),
    /// A TLS port without a certificate and key.
    #[error("--tls-port and --admin-tls-port need --tls-cert and --tls-key")]
    NoCertificate,
    /// Cluster TLS without the TLS ports peers reach this node at.
    #[error("--cluster-tls needs --tls-port and --admin-tls-port")]
    ClusterTls,
    /// Forming or joining a cluster without admin credentials.
    #[error("--init-cluster and --join need admin credentials (--username with --password, --password-file or SHOAL_PASSWORD)")]
    NoCredentials,
}

impl NodeConfig {
    /// Checks every field.
    pub fn validate(self) -> Result<NodeConfig, NodeConfigError> {
        if self.ram_quota_mb == 0 {
            return Err(NodeConfigError::Quota);
        }
        if !self.num_vbuckets.is_power_of_two() || self.num_vbuckets > 1 << 16 {
            return Err(NodeConfigError::Vbuckets(self.num_vbuckets));
        }
        if self.max_value_len == 0 || self.max_value_len > 20 * 1024 * 1024 {
            return Err(NodeConfigError::MaxValue(self.max_value_len));
        }
        if self.max_connections == 0 {
            return Err(NodeConfigError::Connections);
        }
        let tls_ports = self.tls_port.is_some() || self.admin_tls_port.is_some();
        if tls_ports && self.tls.is_none() {
            return Err(NodeConfigError::NoCertificate);
        }
        if self.cluster_ca.is_some() && (self.tls_port.is_none() || self.admin_tls_port.is_none()) {
            return Err(NodeConfigError::ClusterTls);
        }
        if self.host.is_unspecified() && self.advertise_host.is_none() {
            return Err(NodeConfigError::Unadvertised(self.host));
        }
        if let Some(advertised) = &self.advertise_host {
            let bare = advertised.trim_start_matches('[').trim_end_matches(']');
            if bare.is_empty() || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
                return Err(NodeConfigError::WildcardAdvertised(advertised.clone()));
            }
        }
        if (self.init_cluster || self.join.is_some()) && self.credentials.is_none() {
            return Err(NodeConfigError::NoCredentials);
        }
        Ok(self)
    }

    /// The host the node gives the cluster as its address.
    pub fn advertised_host(&self) -> String {
        self.advertise_host
            .clone()
            .unwrap_or_else(|| self.host.to_string())
    }

    /// Whether `data_dir` holds the metadata of a cluster this node
    /// belongs to (it has applied the cluster's log before).
    pub fn is_cluster_member(data_dir: &std::path::Path) -> bool {
        data_dir.join("raft").join("state.json").exists()
    }

    /// The quota in bytes.
    pub fn quota_bytes(&self) -> usize {
        self.ram_quota_mb.saturating_mul(1024 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_values() {
        let ok = NodeConfig::default();
        assert!(ok.clone().validate().is_ok());
        let bad = |f: fn(&mut NodeConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(bad(|c| c.ram_quota_mb = 0), NodeConfigError::Quota);
        assert_eq!(
            bad(|c| c.num_vbuckets = 1000),
            NodeConfigError::Vbuckets(1000)
        );
        assert_eq!(bad(|c| c.max_value_len = 0), NodeConfigError::MaxValue(0));
        assert_eq!(bad(|c| c.max_connections = 0), NodeConfigError::Connections);
        assert_eq!(
            bad(|c| c.tls_port = Some(11207)),
            NodeConfigError::NoCertificate
        );
        assert_eq!(
            bad(|c| c.cluster_ca = Some("ca.pem".into())),
            NodeConfigError::ClusterTls
        );
        assert!(NodeConfig {
            tls: Some(TlsFiles {
                cert: "node.pem".into(),
                key: "node-key.pem".into(),
            }),
            tls_port: Some(0),
            ..ok.clone()
        }
        .validate()
        .is_ok());
        let any = IpAddr::from([0, 0, 0, 0]);
        assert_eq!(
            bad(|c| c.host = IpAddr::from([0, 0, 0, 0])),
            NodeConfigError::Unadvertised(any)
        );
        for wild in ["0.0.0.0", "::", "[::]", ""] {
            let config = NodeConfig {
                advertise_host: Some(wild.into()),
                ..NodeConfig::default()
            };
            assert_eq!(
                config.validate().unwrap_err(),
                NodeConfigError::WildcardAdvertised(wild.into())
            );
        }
        assert_eq!(
            bad(|c| c.init_cluster = true),
            NodeConfigError::NoCredentials
        );
        assert_eq!(
            bad(|c| c.join = Some("http://10.0.0.1:8091".into())),
            NodeConfigError::NoCredentials
        );
    }

    #[test]
    fn a_node_on_every_address_advertises_the_one_given() {
        let config = NodeConfig {
            host: IpAddr::from([0, 0, 0, 0]),
            advertise_host: Some("10.0.0.7".into()),
            ..NodeConfig::default()
        }
        .validate()
        .unwrap();
        assert_eq!(config.advertised_host(), "10.0.0.7");
        assert_eq!(NodeConfig::default().advertised_host(), "127.0.0.1");
        let credentials = Credentials {
            username: "a".into(),
            password: "secret-pw".into(),
        };
        assert!(!format!("{credentials:?}").contains("secret-pw"));
    }
}
