//! [`PeerClient`]: HTTP from this node to other nodes' admin ports,
//! authenticated as the cluster (Basic, [`CLUSTER_USER`] and the secret's
//! hex form), so the `/internal/*` endpoints of a peer accept it. The
//! secret is read on every request: it changes when the node joins a
//! cluster. Peers are reached through the node's [`Transport`]: over
//! HTTPS to their TLS admin ports with cluster TLS on.

use std::time::Duration;

use shoal_auth::secret::CLUSTER_USER;

use crate::access::ClusterSecret;
use crate::transport::Transport;

/// A client for peers' admin ports.
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: ClusterSecret,
    transport: Transport,
}

impl PeerClient {
    /// A client with its own connection pool, proving `secret`, reaching
    /// peers by `transport`.
    pub fn new(secret: ClusterSecret, transport: Transport) -> PeerClient {
        PeerClient {
            http: transport
                .http_client()
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            secret,
            transport,
        }
    }

    /// `GET <path>` on the peer whose (plain) admin address is
    /// `admin_addr`, as the cluster.
    pub fn get(&self, admin_addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.internal(self.http.get(self.transport.admin_url(admin_addr, path)))
    }

    /// `POST <path>` on the peer whose admin address is `admin_addr`, as
    /// the cluster.
    pub fn post(&self, admin_addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.internal(self.http.post(self.transport.admin_url(admin_addr, path)))
    }

    /// How this node reaches its peers.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The plain client, for requests that must not carry the secret (to a
    /// node that is not yet a member, to a URL an operator named).
    pub fn anonymous(&self) -> &reqwest::Client {
        &self.http
    }

    /// `request` with the cluster's credentials.
    pub fn internal(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.basic_auth(CLUSTER_USER, Some(self.secret.current().to_hex()))
    }

    /// The node's copy of the cluster secret.
    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }
}
