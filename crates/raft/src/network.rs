//! The Raft network: openraft's RPCs to other nodes over the internal gRPC service
//! (`shoal.internal.v1.RaftService`).
//!
//! Every group on a node reaches a peer through the same [`Peers`] pool: one lazily connected
//! tonic [`Channel`] (one HTTP/2 connection) per peer node, whatever the number of groups.
//! Requests and replies are openraft's serde types encoded with postcard, as the `.proto`
//! describes.
//!
//! Failures are classified for openraft's replication loop: a peer that cannot be reached, or
//! that does not run the group (yet), is [`Unreachable`], so openraft backs off before retrying;
//! a call past its deadline is a [`Timeout`]; an `AppendEntries` too large for the transport is
//! [`PayloadTooLarge`], so openraft retries at once with fewer entries; anything else is a
//! [`NetworkError`]. An error the remote Raft returned (a higher vote, say) is a
//! [`RemoteError`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::auth::{self, ApiKeys, AuthChannel};
use shoal_proto::internal::v1 as pb;
use shoal_proto::internal::v1::raft_service_client::RaftServiceClient;
use tonic::transport::Endpoint;
use tonic::Code;

use crate::{BasicNode, GroupId, NodeId, TypeConfig};

/// The largest Raft message sent or accepted, in bytes: above any single entry (a command is
/// at most `limits.max_message_bytes`, 64 MiB by default).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// An `AppendEntries` of several entries above this size is split (see [`PayloadTooLarge`]):
/// openraft gives each one a deadline of one heartbeat interval, which a large batch of
/// vectors would miss on every try.
pub const APPEND_BUDGET_BYTES: usize = 4 << 20;

/// A node's connections to its peers, shared by all its groups.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    connect_timeout: Duration,
    /// Local address connections are made from; the OS chooses when `None`.
    source_ip: Option<IpAddr>,
    /// Sent with every call: peers serve Raft on their public, key-checked port.
    keys: ApiKeys,
    /// The channel to each peer and the address it was made for.
    channels: Mutex<HashMap<NodeId, (String, AuthChannel)>>,
}

impl Peers {
    pub fn new(connect_timeout: Duration, source_ip: Option<IpAddr>, keys: ApiKeys) -> Self {
        Self {
            inner: Arc::new(PeersInner {
                connect_timeout,
                source_ip,
                keys,
                channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The channel to node `target` at `addr` (`host:port`), created on first use. It connects
    /// on the first call and reconnects by itself after a failure. A node that moved gets a
    /// new channel.
    fn channel(&self, target: NodeId, addr: &str) -> Result<AuthChannel, tonic::transport::Error> {
        let mut channels = self.inner.channels.lock();
        if let Some((known, channel)) = channels.get(&target) {
            if known == addr {
                return Ok(channel.clone());
            }
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(self.inner.connect_timeout)
            .local_address(self.inner.source_ip)
            .tcp_nodelay(true)
            .connect_lazy();
        let channel = auth::authed(channel, &self.inner.keys);
        channels.insert(target, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }

    /// openraft's network factory for group `group` on node `local`.
    pub fn factory(&self, local: NodeId, group: GroupId) -> NetworkFactory {
        NetworkFactory {
            peers: self.clone(),
            local,
            group,
        }
    }
}

/// Makes one group's clients to its peers.
pub struct NetworkFactory {
    peers: Peers,
    local: NodeId,
    group: GroupId,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = self
            .peers
            .channel(target, &node.addr)
            .map(|channel| {
                RaftServiceClient::new(channel)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
            })
            .map_err(|e| format!("bad address {:?} for node {target}: {e}", node.addr));
        PeerClient {
            client,
            local: self.local,
            target,
            group: self.group,
        }
    }
}

/// One group's client to one peer.
pub struct PeerClient {
    /// Or why the peer's address is unusable.
    client: Result<RaftServiceClient<AuthChannel>, String>,
    local: NodeId,
    target: NodeId,
    group: GroupId,
}

/// Why a call did not produce a reply from the remote Raft.
enum CallError {
    Unreachable(Unreachable),
    Timeout(Duration),
    TooLarge,
    Network(NetworkError),
}

impl PeerClient {
    /// Sends one request and decodes the reply into the remote Raft's `Result`.
    async fn call<Req, Resp, E, Fut>(
        &self,
        request: &Req,
        option: &RPCOption,
        max_bytes: usize,
        send: impl FnOnce(RaftServiceClient<AuthChannel>, tonic::Request<Vec<u8>>) -> Fut,
    ) -> Result<Result<Resp, E>, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned,
        Fut: std::future::Future<Output = Result<tonic::Response<pb::RaftReply>, tonic::Status>>,
    {
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(why) => {
                return Err(CallError::Unreachable(Unreachable::new(&AnyError::error(
                    why,
                ))))
            }
        };
        let payload = postcard::to_allocvec(request)
            .map_err(|e| CallError::Network(NetworkError::new(&e)))?;
        if payload.len() > max_bytes {
            return Err(CallError::TooLarge);
        }
        let mut wire = tonic::Request::new(payload);
        wire.set_timeout(option.hard_ttl());
        let reply = send(client, wire)
            .await
            .map_err(|status| classify(status, option.hard_ttl()))?
            .into_inner();
        let decoded = match reply.result {
            Some(pb::raft_reply::Result::Response(bytes)) => postcard::from_bytes(&bytes).map(Ok),
            Some(pb::raft_reply::Result::RaftError(bytes)) => postcard::from_bytes(&bytes).map(Err),
            None => {
                let why = AnyError::error(format!("node {} sent an empty Raft reply", self.target));
                return Err(CallError::Network(NetworkError::new(&why)));
            }
        };
        decoded.map_err(|e| CallError::Network(NetworkError::new(&e)))
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        error: CallError,
        too_large: impl FnOnce() -> Option<PayloadTooLarge>,
    ) -> RPCError<NodeId, BasicNode, E> {
        match error {
            CallError::Unreachable(e) => RPCError::Unreachable(e),
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.local,
                target: self.target,
                timeout,
            }),
            CallError::TooLarge => match too_large() {
                Some(hint) => RPCError::PayloadTooLarge(hint),
                None => RPCError::Network(NetworkError::new(&AnyError::error(format!(
                    "{action} to node {} is larger than {MAX_MESSAGE_BYTES} bytes",
                    self.target
                )))),
            },
            CallError::Network(e) => RPCError::Network(e),
        }
    }

    fn remote<E: std::error::Error>(&self, error: E) -> RemoteError<NodeId, BasicNode, E> {
        RemoteError::new(self.target, error)
    }
}

/// Classifies a gRPC status: which failures openraft should back off from.
fn classify(status: tonic::Status, deadline: Duration) -> CallError {
    match status.code() {
        // The peer is down or not listening, or does not run this group (yet).
        Code::Unavailable | Code::NotFound => CallError::Unreachable(Unreachable::new(&status)),
        Code::DeadlineExceeded => CallError::Timeout(deadline),
        // tonic's codec: an encoded or decoded message above the size limit.
        Code::OutOfRange | Code::ResourceExhausted => CallError::TooLarge,
        _ => CallError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let group = self.group;
        let entries = rpc.entries.len() as u64;
        let budget = if entries > 1 {
            APPEND_BUDGET_BYTES
        } else {
            MAX_MESSAGE_BYTES
        };
        let reply = self
            .call(&rpc, &option, budget, |mut client, wire| async move {
                let request = wire.map(|payload| pb::AppendEntriesRequest { group, payload });
                client.append_entries(request).await
            })
            .await;
        match reply {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(RPCError::RemoteError(self.remote(e))),
            Err(e) => Err(self.rpc_error(RPCTypes::AppendEntries, e, || {
                (entries > 1).then(|| PayloadTooLarge::new_entries_hint(entries / 2))
            })),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let group = self.group;
        let reply = self
            .call(
                &rpc,
                &option,
                MAX_MESSAGE_BYTES,
                |mut client, wire| async move {
                    let request = wire.map(|payload| pb::InstallSnapshotRequest { group, payload });
                    client.install_snapshot(request).await
                },
            )
            .await;
        match reply {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(RPCError::RemoteError(self.remote(e))),
            Err(e) => Err(self.rpc_error(RPCTypes::InstallSnapshot, e, || None)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let group = self.group;
        let reply = self
            .call(
                &rpc,
                &option,
                MAX_MESSAGE_BYTES,
                |mut client, wire| async move {
                    let request = wire.map(|payload| pb::VoteRequest { group, payload });
                    client.vote(request).await
                },
            )
            .await;
        match reply {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(RPCError::RemoteError(self.remote(e))),
            Err(e) => Err(self.rpc_error(RPCTypes::Vote, e, || None)),
        }
    }
}
