//! Raft's transport: JSON over HTTP on the nodes' admin ports
//! (`POST /internal/raft/{append,vote,snapshot}`), so the cluster needs no
//! port beyond the two a node already has. The receiving side is the admin
//! API's Raft endpoints; it answers with the serialized `Result` of the local
//! Raft call, which this side turns back into a remote error. Every call
//! proves the cluster secret (Basic, as the cluster's own user).

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use shoal_auth::secret::CLUSTER_USER;

use super::{NodeId, TypeConfig};
use crate::access::ClusterSecret;
use crate::transport::Transport;

/// Makes one [`Peer`] per target node, all sharing one HTTP client and
/// proving the cluster secret on every call.
#[derive(Clone, Debug)]
pub struct Network {
    client: reqwest::Client,
    secret: ClusterSecret,
    transport: Transport,
}

impl Network {
    /// A network with its own connection pool, reaching peers by
    /// `transport`.
    pub fn new(secret: ClusterSecret, transport: Transport) -> Network {
        Network {
            client: transport
                .http_client()
                .connect_timeout(Duration::from_millis(500))
                .build()
                .unwrap_or_default(),
            secret,
            transport,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            client: self.client.clone(),
            secret: self.secret.clone(),
            target,
            transport: self.transport.clone(),
            addr: node.addr.clone(),
        }
    }
}

/// The transport to one node.
#[derive(Debug)]
pub struct Peer {
    client: reqwest::Client,
    secret: ClusterSecret,
    target: NodeId,
    /// How to reach it: the URL is made per call, as the transport learns
    /// a peer's TLS port only once the metadata lists it.
    transport: Transport,
    /// Its (plain) admin address, as Raft membership knows it.
    addr: String,
}

/// Why a call failed before the remote Raft answered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let response = self
            .client
            .post(
                self.transport
                    .admin_url(&self.addr, &format!("/internal/raft/{path}")),
            )
            .basic_auth(CLUSTER_USER, Some(self.secret.current().to_hex()))
            .header("content-type", "application/json")
            .timeout(option.hard_ttl())
            .body(body)
            .send()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(RPCError::Network(NetworkError::new(&TransportError(
                format!("HTTP {status}: {text}"),
            ))));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let result: Result<Resp, E> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
