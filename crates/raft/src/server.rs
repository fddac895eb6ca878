//! The receiving side of the Raft network: the internal `RaftService`, which hands each request
//! to the running group it names.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::internal::v1 as pb;
use shoal_proto::internal::v1::raft_service_server::{RaftService, RaftServiceServer};
use tokio::runtime::Handle;
use tonic::{Request, Response, Status};

use crate::network::MAX_MESSAGE_BYTES;
use crate::{GroupId, Raft};

/// The Raft groups running on a node, by group id. Clones share the registry.
#[derive(Clone)]
pub struct Groups {
    running: Arc<RwLock<HashMap<GroupId, Raft>>>,
    /// The runtime the groups run on; peers' requests are handled there too.
    runtime: Handle,
}

impl Groups {
    pub(crate) fn new(runtime: Handle) -> Self {
        Self {
            running: Arc::default(),
            runtime,
        }
    }

    pub fn get(&self, group: GroupId) -> Option<Raft> {
        self.running.read().get(&group).cloned()
    }

    pub(crate) fn insert(&self, group: GroupId, raft: Raft) {
        self.running.write().insert(group, raft);
    }

    pub(crate) fn remove(&self, group: GroupId) -> Option<Raft> {
        self.running.write().remove(&group)
    }

    pub fn ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> = self.running.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// The internal `RaftService` over a node's [`Groups`].
pub struct RaftServer {
    groups: Groups,
}

impl RaftServer {
    /// The tonic service, with message limits that match the sending side's.
    pub fn service(groups: Groups) -> RaftServiceServer<RaftServer> {
        RaftServiceServer::new(RaftServer { groups })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Handles a peer's request on the Raft runtime, so a busy client runtime delays no
    /// heartbeat.
    async fn on_raft_runtime<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
    ) -> Result<T, Status> {
        self.groups
            .runtime
            .spawn(work)
            .await
            .map_err(|e| Status::internal(format!("raft request task failed: {e}")))?
    }

    fn group(&self, group: GroupId) -> Result<Raft, Status> {
        self.groups
            .get(group)
            .ok_or_else(|| Status::not_found(format!("raft group {group} is not running here")))
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

/// The remote Raft's answer, encoded as the `.proto` describes.
fn reply<T: Serialize, E: Serialize>(
    result: Result<T, E>,
) -> Result<Response<pb::RaftReply>, Status> {
    let encoded = match &result {
        Ok(response) => postcard::to_allocvec(response).map(pb::raft_reply::Result::Response),
        Err(error) => postcard::to_allocvec(error).map(pb::raft_reply::Result::RaftError),
    };
    let result =
        encoded.map_err(|e| Status::internal(format!("encoding a raft reply failed: {e}")))?;
    Ok(Response::new(pb::RaftReply {
        result: Some(result),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(request.group)?;
        let message = decode(&request.payload)?;
        self.on_raft_runtime(async move { reply(raft.append_entries(message).await) })
            .await
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(request.group)?;
        let message = decode(&request.payload)?;
        self.on_raft_runtime(async move { reply(raft.vote(message).await) })
            .await
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(request.group)?;
        let message = decode(&request.payload)?;
        self.on_raft_runtime(async move { reply(raft.install_snapshot(message).await) })
            .await
    }
}
