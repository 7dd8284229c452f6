//! [`PeerClient`]: HTTP from this node to other nodes' admin ports,
//! authenticated as the cluster (Basic, [`CLUSTER_USER`] and the secret's
//! hex form), so the `/internal/*` endpoints of a peer accept it. The
//! secret is read on every request: it changes when the node joins a
//! cluster.

use std::time::Duration;

use shoal_auth::secret::CLUSTER_USER;

use crate::access::ClusterSecret;

/// A client for peers' admin ports.
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: ClusterSecret,
}

impl PeerClient {
    /// A client with its own connection pool, proving `secret`.
    pub fn new(secret: ClusterSecret) -> PeerClient {
        PeerClient {
            http: shoal_net::tls::http_client(None)
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            secret,
        }
    }

    /// `GET http://<admin_addr><path>`, as the cluster.
    pub fn get(&self, admin_addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.internal(self.http.get(format!("http://{admin_addr}{path}")))
    }

    /// `POST http://<admin_addr><path>`, as the cluster.
    pub fn post(&self, admin_addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.internal(self.http.post(format!("http://{admin_addr}{path}")))
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
