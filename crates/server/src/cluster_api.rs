//! The cluster services: the public `ClusterService` (status, nodes, removal, drains, shard
//! placement and moves) and the internal `NodeService` that nodes call on each other (join,
//! status, replica changes, fences, the meta read index, the shard map for routers).
//! Requests that only the meta leader may answer are forwarded to it.

use std::collections::BTreeMap;

use shoal_proto::internal::v1 as internal;
use shoal_proto::internal::v1::node_service_client::NodeServiceClient;
use shoal_proto::internal::v1::node_service_server::NodeService;
use shoal_proto::status_from_error;
use shoal_proto::v1::cluster_service_client::ClusterServiceClient;
use shoal_proto::v1::cluster_service_server::ClusterService;
use shoal_proto::v1::{self};
use shoal_raft::META_GROUP;
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::grpc::hops;

#[derive(Clone)]
pub struct ClusterApi {
    cluster: Cluster,
}

impl ClusterApi {
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }

    /// Every node with its meta role, and whether it answered in `statuses`.
    fn nodes(
        &self,
        statuses: &BTreeMap<u64, Option<internal::NodeStatusResponse>>,
    ) -> Vec<v1::NodeInfo> {
        let meta = self.cluster.meta_view();
        let layout = self.cluster.layout();
        let load = layout.load();
        layout
            .nodes
            .iter()
            .map(|(id, node)| {
                let role = if meta.voters.contains(id) {
                    "voter"
                } else if meta.learners.contains(id) {
                    "learner"
                } else {
                    "none"
                };
                v1::NodeInfo {
                    id: *id,
                    address: node.address.clone(),
                    meta_role: role.to_owned(),
                    reachable: statuses.get(id).is_some_and(Option::is_some),
                    draining: node.draining,
                    replicas: load.get(id).copied().unwrap_or(0) as u64,
                }
            })
            .collect()
    }
}

/// A group's status from every replica's report: the leader is the replica that says it
/// leads in the highest term; lag is measured from the leader's last log index.
fn group_status(
    group: u64,
    collection: String,
    shard: u32,
    members: &[u64],
    statuses: &BTreeMap<u64, Option<internal::NodeStatusResponse>>,
) -> v1::GroupStatus {
    let reports: BTreeMap<u64, &internal::LocalGroup> = members
        .iter()
        .filter_map(|node| {
            let status = statuses.get(node)?.as_ref()?;
            let local = status.groups.iter().find(|g| g.group == group)?;
            Some((*node, local))
        })
        .collect();
    let leader = reports
        .iter()
        .filter(|(_, g)| g.state == "leader")
        .max_by_key(|(_, g)| g.term)
        .map(|(node, g)| (*node, *g));
    let head = leader.map_or(0, |(_, g)| g.last_log_index);
    let replicas = members
        .iter()
        .map(|node| match reports.get(node) {
            Some(g) => v1::ReplicaStatus {
                node_id: *node,
                state: g.state.clone(),
                term: g.term,
                last_log_index: g.last_log_index,
                committed_index: g.committed_index,
                applied_index: g.applied_index,
                lag: head.saturating_sub(g.applied_index),
            },
            None => v1::ReplicaStatus {
                node_id: *node,
                state: "unreachable".to_owned(),
                ..Default::default()
            },
        })
        .collect();
    v1::GroupStatus {
        group,
        collection,
        shard,
        leader: leader.map_or(0, |(node, _)| node),
        term: leader.map_or_else(
            || reports.values().map(|g| g.term).max().unwrap_or(0),
            |(_, g)| g.term,
        ),
        replicas,
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn cluster_status(
        &self,
        _request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        let layout = self.cluster.layout();
        let nodes: Vec<u64> = layout.nodes.keys().copied().collect();
        let statuses = self.cluster.node_statuses(&nodes).await;
        let meta = self.cluster.meta_view();
        let meta_members: Vec<u64> = meta.voters.union(&meta.learners).copied().collect();
        let mut groups = vec![group_status(
            META_GROUP,
            String::new(),
            0,
            &meta_members,
            &statuses,
        )];
        groups.extend(layout.groups().map(|g| {
            let members: Vec<u64> = g
                .placement
                .replicas
                .iter()
                .chain(&g.placement.leaving)
                .copied()
                .collect();
            group_status(
                g.placement.group,
                g.collection.spec.name.clone(),
                g.shard,
                &members,
                &statuses,
            )
        }));
        Ok(Response::new(v1::ClusterStatusResponse {
            node_id: self.cluster.id(),
            nodes: self.nodes(&statuses),
            groups,
        }))
    }

    async fn list_nodes(
        &self,
        _request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let layout = self.cluster.layout();
        let nodes: Vec<u64> = layout.nodes.keys().copied().collect();
        let statuses = self.cluster.node_statuses(&nodes).await;
        Ok(Response::new(v1::ListNodesResponse {
            nodes: self.nodes(&statuses),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let forwarded = self
            .cluster
            .forward_to_meta_leader(hops, &req, |ch, r| async move {
                ClusterServiceClient::new(ch).remove_node(r).await
            });
        if let Some(answer) = forwarded.await {
            return answer;
        }
        let collections = self
            .cluster
            .remove_node(req.id, req.force)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(v1::RemoveNodeResponse { collections }))
    }

    async fn drain_node(
        &self,
        request: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let forwarded = self
            .cluster
            .forward_to_meta_leader(hops, &req, |ch, r| async move {
                ClusterServiceClient::new(ch).drain_node(r).await
            });
        if let Some(answer) = forwarded.await {
            return answer;
        }
        let replicas = self
            .cluster
            .drain_node(req.id, !req.cancel)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(v1::DrainNodeResponse { replicas }))
    }

    async fn list_shards(
        &self,
        request: Request<v1::ListShardsRequest>,
    ) -> Result<Response<v1::ListShardsResponse>, Status> {
        let name = request.into_inner().collection;
        let placement = self
            .cluster
            .placement(&name)
            .await
            .map_err(status_from_error)?;
        let mut nodes: Vec<u64> = placement
            .shards
            .iter()
            .flat_map(|s| s.replicas.iter().chain(&s.leaving).copied())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let statuses = self.cluster.node_statuses(&nodes).await;
        let shards = placement
            .shards
            .iter()
            .enumerate()
            .map(|(shard, s)| {
                let members: Vec<u64> = s.replicas.iter().chain(&s.leaving).copied().collect();
                v1::ShardStatus {
                    shard: Some(v1::ShardInfo {
                        shard: shard as u32,
                        group: s.group,
                        replicas: s.replicas.clone(),
                        leaving: s.leaving.clone(),
                        ..Default::default()
                    }),
                    group: Some(group_status(
                        s.group,
                        name.clone(),
                        shard as u32,
                        &members,
                        &statuses,
                    )),
                }
            })
            .collect();
        Ok(Response::new(v1::ListShardsResponse { shards }))
    }

    async fn move_shard(
        &self,
        request: Request<v1::MoveShardRequest>,
    ) -> Result<Response<v1::MoveShardResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let forwarded = self
            .cluster
            .forward_to_meta_leader(hops, &req, |ch, r| async move {
                ClusterServiceClient::new(ch).move_shard(r).await
            });
        if let Some(answer) = forwarded.await {
            return answer;
        }
        self.cluster
            .move_shard(req.collection, req.shard, req.from, req.to)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(v1::MoveShardResponse {}))
    }
}

#[tonic::async_trait]
impl NodeService for ClusterApi {
    async fn join(
        &self,
        request: Request<internal::JoinRequest>,
    ) -> Result<Response<internal::JoinResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let forwarded = self
            .cluster
            .forward_to_meta_leader(hops, &req, |ch, r| async move {
                NodeServiceClient::new(ch).join(r).await
            });
        if let Some(answer) = forwarded.await {
            return answer;
        }
        self.cluster
            .join(req.node_id, req.address)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(internal::JoinResponse {
            leader: self.cluster.id(),
        }))
    }

    async fn node_status(
        &self,
        _request: Request<internal::NodeStatusRequest>,
    ) -> Result<Response<internal::NodeStatusResponse>, Status> {
        Ok(Response::new(self.cluster.node_status()))
    }

    async fn change_replicas(
        &self,
        request: Request<internal::ChangeReplicasRequest>,
    ) -> Result<Response<internal::ChangeReplicasResponse>, Status> {
        let req = request.into_inner();
        if (req.add_node == 0) == (req.remove_node == 0) {
            return Err(Status::invalid_argument(
                "exactly one of add_node and remove_node must be set",
            ));
        }
        self.cluster
            .change_replicas(req)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(internal::ChangeReplicasResponse {}))
    }

    async fn fence_group(
        &self,
        request: Request<internal::FenceGroupRequest>,
    ) -> Result<Response<internal::FenceGroupResponse>, Status> {
        let req = request.into_inner();
        self.cluster
            .fence_group(req.group, req.hops)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(internal::FenceGroupResponse {}))
    }

    async fn campaign(
        &self,
        request: Request<internal::CampaignRequest>,
    ) -> Result<Response<internal::CampaignResponse>, Status> {
        let req = request.into_inner();
        self.cluster
            .campaign(req.group, req.from)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(internal::CampaignResponse {}))
    }

    async fn shard_map(
        &self,
        _request: Request<internal::ShardMapRequest>,
    ) -> Result<Response<internal::ShardMapResponse>, Status> {
        Ok(Response::new(self.cluster.shard_map()))
    }

    async fn meta_read_index(
        &self,
        _request: Request<internal::MetaReadIndexRequest>,
    ) -> Result<Response<internal::MetaReadIndexResponse>, Status> {
        let index = self
            .cluster
            .meta_read_index()
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(internal::MetaReadIndexResponse { index }))
    }
}
