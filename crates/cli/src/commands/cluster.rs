//! `shoalctl cluster status`, `shoalctl node ...` and `shoalctl shard ...`: the cluster's
//! nodes, Raft groups and shard placement, over `ClusterService`.

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use shoal_proto::v1;
use tonic::{Code, Status};

use crate::client::Clients;
use crate::output::{self, table, Format, Report};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the nodes and every Raft group: leader, term, and each replica's log, commit,
    /// applied index and lag.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the cluster's nodes.
    List,
    /// Remove a node from every collection's replicas, then from the cluster.
    Remove {
        /// Id of the node.
        id: u64,
        /// Remove it even if a group is left without a live majority or a collection without
        /// any replica.
        #[arg(long)]
        force: bool,
    },
    /// Move every replica off a node (one at a time, each caught up on its new node before
    /// the old one leaves), so that it can be removed without losing a replica. Waits until
    /// the node holds none, unless --no-wait.
    Drain {
        /// Id of the node.
        id: u64,
        /// Stop draining it (replicas already moved stay where they are).
        #[arg(long)]
        cancel: bool,
        /// Return once the drain is recorded.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the node to be empty.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// Show a collection's shards: placement, leader, and each replica's state and lag.
    List { collection: String },
    /// Move one replica of a shard from a node to another.
    Move {
        collection: String,
        shard: u32,
        /// Node that holds the replica now.
        #[arg(long)]
        from: u64,
        /// Node to move it to.
        #[arg(long)]
        to: u64,
    },
}

pub async fn run(mut clients: Clients, format: Format, command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status => output::print(format, &status(&mut clients).await?),
    }
}

pub async fn run_node(mut clients: Clients, format: Format, command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::List => output::print(format, &list_nodes(&mut clients).await?),
        NodeCommand::Remove { id, force } => {
            output::print(format, &remove_node(&mut clients, id, force).await?)
        }
        NodeCommand::Drain {
            id,
            cancel,
            no_wait,
            timeout_secs,
        } => {
            let request = v1::DrainNodeRequest { id, cancel };
            let mut replicas = clients
                .cluster
                .drain_node(request)
                .await
                .map_err(service_error)?
                .into_inner()
                .replicas;
            if !(cancel || no_wait) {
                let deadline =
                    std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
                while replicas > 0 {
                    anyhow::ensure!(
                        std::time::Instant::now() < deadline,
                        "node {id} still holds {replicas} replicas after {timeout_secs} s; the \
                         drain goes on in the background (shoalctl node list shows it)"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let nodes = list_nodes(&mut clients).await?;
                    replicas = nodes
                        .0
                        .iter()
                        .find(|n| n.id == id)
                        .and_then(|n| n.replicas)
                        .unwrap_or(0);
                }
            }
            output::print(
                format,
                &Drained {
                    node: id,
                    draining: !cancel,
                    replicas,
                },
            )
        }
    }
}

pub async fn run_shard(mut clients: Clients, format: Format, command: ShardCommand) -> Result<()> {
    match command {
        ShardCommand::List { collection } => {
            let response = clients
                .cluster
                .list_shards(v1::ListShardsRequest { collection })
                .await
                .map_err(service_error)?
                .into_inner();
            let shards = response
                .shards
                .into_iter()
                .map(|s| {
                    let info = s.shard.unwrap_or_default();
                    ShardReport {
                        shard: info.shard,
                        group: info.group,
                        replicas: info.replicas,
                        leaving: info.leaving,
                        status: s.group.map(GroupReport::from),
                    }
                })
                .collect();
            output::print(format, &ShardList(shards))
        }
        ShardCommand::Move {
            collection,
            shard,
            from,
            to,
        } => {
            let request = v1::MoveShardRequest {
                collection: collection.clone(),
                shard,
                from,
                to,
            };
            clients
                .cluster
                .move_shard(request)
                .await
                .map_err(service_error)?;
            output::print(
                format,
                &Moving {
                    collection,
                    shard,
                    from,
                    to,
                },
            )
        }
    }
}

async fn status(clients: &mut Clients) -> Result<ClusterReport> {
    let response = clients
        .cluster
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .map_err(service_error)?;
    Ok(response.into_inner().into())
}

async fn list_nodes(clients: &mut Clients) -> Result<NodeList> {
    let response = clients
        .cluster
        .list_nodes(v1::ListNodesRequest {})
        .await
        .map_err(service_error)?;
    let nodes = response.into_inner().nodes;
    Ok(NodeList(
        nodes.into_iter().map(NodeReport::listed).collect(),
    ))
}

async fn remove_node(clients: &mut Clients, id: u64, force: bool) -> Result<Removed> {
    let request = v1::RemoveNodeRequest { id, force };
    match clients.cluster.remove_node(request).await {
        Ok(response) => Ok(Removed {
            removed: id,
            collections: response.into_inner().collections,
        }),
        Err(status) if status.code() == Code::FailedPrecondition && !force => {
            Err(anyhow::Error::from(status)
                .context(format!("node {id} not removed (--force removes it anyway)")))
        }
        Err(status) => Err(service_error(status)),
    }
}

/// A status from `ClusterService`; a node without the service answers `UNIMPLEMENTED` with no
/// message, which alone would not say what is missing.
fn service_error(status: Status) -> anyhow::Error {
    if status.code() == Code::Unimplemented {
        anyhow::Error::from(status).context("the node does not serve shoal.v1.ClusterService")
    } else {
        status.into()
    }
}

#[derive(Debug, Serialize)]
struct ClusterReport {
    node_id: u64,
    nodes: Vec<NodeReport>,
    groups: Vec<GroupReport>,
}

#[derive(Debug, Serialize)]
struct NodeReport {
    id: u64,
    address: String,
    meta_role: String,
    draining: bool,
    /// Shard replicas it holds (`None` from servers that do not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<u64>,
    /// Only `cluster status` checks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    reachable: Option<bool>,
}

#[derive(Debug, Serialize)]
struct GroupReport {
    group: u64,
    /// `None` for the meta group.
    collection: Option<String>,
    shard: u32,
    /// `None` when no leader is known.
    leader: Option<u64>,
    term: u64,
    replicas: Vec<ReplicaReport>,
}

#[derive(Debug, Serialize)]
struct ReplicaReport {
    node_id: u64,
    state: String,
    term: u64,
    last_log_index: u64,
    committed_index: u64,
    applied_index: u64,
    lag: u64,
}

impl NodeReport {
    fn checked(node: v1::NodeInfo) -> Self {
        NodeReport {
            reachable: Some(node.reachable),
            ..NodeReport::listed(node)
        }
    }

    fn listed(node: v1::NodeInfo) -> Self {
        NodeReport {
            id: node.id,
            address: node.address,
            meta_role: node.meta_role,
            draining: node.draining,
            replicas: Some(node.replicas),
            reachable: None,
        }
    }
}

impl From<v1::GroupStatus> for GroupReport {
    fn from(g: v1::GroupStatus) -> Self {
        GroupReport {
            group: g.group,
            collection: (!g.collection.is_empty()).then_some(g.collection),
            shard: g.shard,
            leader: (g.leader != 0).then_some(g.leader),
            term: g.term,
            replicas: g
                .replicas
                .into_iter()
                .map(|r| ReplicaReport {
                    node_id: r.node_id,
                    state: r.state,
                    term: r.term,
                    last_log_index: r.last_log_index,
                    committed_index: r.committed_index,
                    applied_index: r.applied_index,
                    lag: r.lag,
                })
                .collect(),
        }
    }
}

impl From<v1::ClusterStatusResponse> for ClusterReport {
    fn from(response: v1::ClusterStatusResponse) -> Self {
        let groups = response.groups.into_iter().map(GroupReport::from).collect();
        ClusterReport {
            node_id: response.node_id,
            nodes: response
                .nodes
                .into_iter()
                .map(NodeReport::checked)
                .collect(),
            groups,
        }
    }
}

impl Report for ClusterReport {
    fn text(&self) -> String {
        let nodes: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|n| {
                let reachable = match n.reachable {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "",
                };
                vec![
                    n.id.to_string(),
                    n.address.clone(),
                    n.meta_role.clone(),
                    reachable.to_owned(),
                ]
            })
            .collect();
        let mut groups = Vec::new();
        for g in &self.groups {
            let group = [
                g.group.to_string(),
                // Collection names cannot contain parentheses.
                g.collection
                    .as_ref()
                    .map_or("(meta)".to_owned(), |c| format!("{c}/{}", g.shard)),
                g.leader.map_or("none".to_owned(), |l| l.to_string()),
                g.term.to_string(),
            ];
            if g.replicas.is_empty() {
                groups.push(group.to_vec());
            }
            // The group's columns on its first replica's row only.
            for (i, r) in g.replicas.iter().enumerate() {
                let mut row = if i == 0 {
                    group.to_vec()
                } else {
                    vec![String::new(); group.len()]
                };
                row.extend([
                    r.node_id.to_string(),
                    r.state.clone(),
                    r.last_log_index.to_string(),
                    r.committed_index.to_string(),
                    r.applied_index.to_string(),
                    r.lag.to_string(),
                ]);
                groups.push(row);
            }
        }
        let group_headers = [
            "GROUP",
            "COLLECTION/SHARD",
            "LEADER",
            "TERM",
            "NODE",
            "STATE",
            "LAST LOG",
            "COMMITTED",
            "APPLIED",
            "LAG",
        ];
        format!(
            "answered by node {}\n\n{}\n\n{}",
            self.node_id,
            table(&["ID", "ADDRESS", "META ROLE", "REACHABLE"], &nodes),
            table(&group_headers, &groups)
        )
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct NodeList(Vec<NodeReport>);

impl Report for NodeList {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no nodes".to_owned();
        }
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|n| {
                vec![
                    n.id.to_string(),
                    n.address.clone(),
                    n.meta_role.clone(),
                    n.replicas.map_or(String::new(), |r| r.to_string()),
                    if n.draining { "yes" } else { "" }.to_owned(),
                ]
            })
            .collect();
        table(
            &["ID", "ADDRESS", "META ROLE", "REPLICAS", "DRAINING"],
            &rows,
        )
    }
}

#[derive(Debug, Serialize)]
struct Drained {
    node: u64,
    draining: bool,
    /// Replicas it still holds.
    replicas: u64,
}

impl Report for Drained {
    fn text(&self) -> String {
        match (self.draining, self.replicas) {
            (false, n) => format!("node {} is no longer draining; it holds {n} replicas", self.node),
            (true, 0) => format!("node {} is drained: it holds no replica", self.node),
            (true, n) => format!(
                "node {} is draining; {n} replicas left to move (shoalctl node list shows progress)",
                self.node
            ),
        }
    }
}

#[derive(Debug, Serialize)]
struct ShardReport {
    shard: u32,
    group: u64,
    replicas: Vec<u64>,
    leaving: Vec<u64>,
    status: Option<GroupReport>,
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct ShardList(Vec<ShardReport>);

impl Report for ShardList {
    fn text(&self) -> String {
        let mut rows = Vec::new();
        for s in &self.0 {
            let status = s.status.as_ref();
            let head = [
                s.shard.to_string(),
                s.group.to_string(),
                status
                    .and_then(|g| g.leader)
                    .map_or("none".to_owned(), |l| l.to_string()),
            ];
            let replicas = status.map(|g| g.replicas.as_slice()).unwrap_or_default();
            for (i, r) in replicas.iter().enumerate() {
                let mut row = if i == 0 {
                    head.to_vec()
                } else {
                    vec![String::new(); head.len()]
                };
                let role = if s.leaving.contains(&r.node_id) {
                    format!("{} (leaving)", r.state)
                } else {
                    r.state.clone()
                };
                row.extend([
                    r.node_id.to_string(),
                    role,
                    r.applied_index.to_string(),
                    r.lag.to_string(),
                ]);
                rows.push(row);
            }
        }
        table(
            &[
                "SHARD", "GROUP", "LEADER", "NODE", "STATE", "APPLIED", "LAG",
            ],
            &rows,
        )
    }
}

#[derive(Debug, Serialize)]
struct Moving {
    collection: String,
    shard: u32,
    from: u64,
    to: u64,
}

impl Report for Moving {
    fn text(&self) -> String {
        format!(
            "moving shard {} of {} from node {} to node {} (shoalctl shard list {} shows progress)",
            self.shard, self.collection, self.from, self.to, self.collection
        )
    }
}

#[derive(Debug, Serialize)]
struct Removed {
    removed: u64,
    collections: Vec<String>,
}

impl Report for Removed {
    fn text(&self) -> String {
        if self.collections.is_empty() {
            format!(
                "removed node {}; it held no collection replicas",
                self.removed
            )
        } else {
            format!(
                "removed node {}; collections that lost its replica: {}",
                self.removed,
                self.collections.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use clap::Parser;
    use shoal_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
    use tokio::net::TcpListener;
    use tonic::transport::server::TcpIncoming;
    use tonic::transport::Server;
    use tonic::{Request, Response};

    use super::*;

    fn node(id: u64, meta_role: &str, reachable: bool) -> v1::NodeInfo {
        v1::NodeInfo {
            id,
            address: format!("10.0.0.{id}:7600"),
            meta_role: meta_role.into(),
            reachable,
            draining: false,
            replicas: id,
        }
    }

    fn replica(node_id: u64, state: &str, applied_index: u64, lag: u64) -> v1::ReplicaStatus {
        v1::ReplicaStatus {
            node_id,
            state: state.into(),
            term: 2,
            last_log_index: 12,
            committed_index: 12,
            applied_index,
            lag,
        }
    }

    /// A meta group with a leader and a collection group that has lost its leader.
    fn cluster() -> v1::ClusterStatusResponse {
        v1::ClusterStatusResponse {
            node_id: 1,
            nodes: vec![node(1, "voter", true), node(2, "learner", false)],
            groups: vec![
                v1::GroupStatus {
                    group: 0,
                    collection: String::new(),
                    shard: 0,
                    leader: 1,
                    term: 2,
                    replicas: vec![replica(1, "leader", 12, 0), replica(2, "unreachable", 9, 3)],
                },
                v1::GroupStatus {
                    group: 5,
                    collection: "glove".into(),
                    shard: 2,
                    leader: 0,
                    term: 4,
                    replicas: vec![],
                },
            ],
        }
    }

    #[test]
    fn status_json_has_the_documented_shape() {
        let json = serde_json::to_value(ClusterReport::from(cluster())).unwrap();
        let replica = |node_id, state, applied_index, lag| {
            serde_json::json!({"node_id": node_id, "state": state, "term": 2,
                "last_log_index": 12, "committed_index": 12, "applied_index": applied_index,
                "lag": lag})
        };
        assert_eq!(
            json,
            serde_json::json!({
                "node_id": 1,
                "nodes": [
                    {"id": 1, "address": "10.0.0.1:7600", "meta_role": "voter", "reachable": true,
                     "draining": false, "replicas": 1},
                    {"id": 2, "address": "10.0.0.2:7600", "meta_role": "learner",
                     "reachable": false, "draining": false, "replicas": 2},
                ],
                "groups": [
                    {"group": 0, "collection": null, "shard": 0, "leader": 1, "term": 2,
                     "replicas": [replica(1, "leader", 12, 0), replica(2, "unreachable", 9, 3)]},
                    {"group": 5, "collection": "glove", "shard": 2, "leader": null, "term": 4,
                     "replicas": []},
                ],
            })
        );
    }

    #[test]
    fn status_text_has_a_node_table_and_a_row_per_replica() {
        let expected = [
            "answered by node 1",
            "",
            "ID  ADDRESS        META ROLE  REACHABLE",
            "1   10.0.0.1:7600  voter      yes",
            "2   10.0.0.2:7600  learner    no",
            "",
            "GROUP  COLLECTION/SHARD  LEADER  TERM  NODE  STATE        LAST LOG  COMMITTED  APPLIED  LAG",
            "0      (meta)            1       2     1     leader       12        12         12       0",
            "                                       2     unreachable  12        12         9        3",
            "5      glove/2           none    4",
        ];
        assert_eq!(ClusterReport::from(cluster()).text(), expected.join("\n"));
    }

    #[test]
    fn node_list_json_leaves_out_reachability() {
        let list = NodeList(vec![NodeReport::listed(node(3, "voter", false))]);
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            serde_json::json!([{"id": 3, "address": "10.0.0.3:7600", "meta_role": "voter",
                                "draining": false, "replicas": 3}])
        );
        assert_eq!(
            list.text(),
            "ID  ADDRESS        META ROLE  REPLICAS  DRAINING\n3   10.0.0.3:7600  voter      3"
        );
    }

    #[test]
    fn node_remove_takes_an_id_and_force() {
        let parse = |args: &[&str]| {
            let argv = ["shoalctl", "node", "remove"]
                .into_iter()
                .chain(args.iter().copied());
            crate::Cli::try_parse_from(argv).map(|cli| cli.command)
        };
        assert!(matches!(
            parse(&["3", "--force"]).unwrap(),
            crate::Command::Node(NodeCommand::Remove { id: 3, force: true })
        ));
        assert!(matches!(
            parse(&["3"]).unwrap(),
            crate::Command::Node(NodeCommand::Remove {
                id: 3,
                force: false
            })
        ));
        assert!(parse(&[]).is_err());
        assert!(parse(&["node-3"]).is_err());
    }

    #[test]
    fn output_is_global_after_cluster_commands() {
        let cli = crate::Cli::try_parse_from(["shoalctl", "cluster", "status", "--output", "json"])
            .unwrap();
        assert_eq!(cli.output, Format::Json);
        assert!(matches!(
            cli.command,
            crate::Command::Cluster(ClusterCommand::Status)
        ));
    }

    /// Answers with `cluster()`, and refuses to remove a node unless forced.
    #[derive(Default)]
    struct FakeCluster {
        removes: Mutex<Vec<v1::RemoveNodeRequest>>,
    }

    #[tonic::async_trait]
    impl ClusterService for FakeCluster {
        async fn cluster_status(
            &self,
            _: Request<v1::ClusterStatusRequest>,
        ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
            Ok(Response::new(cluster()))
        }

        async fn list_nodes(
            &self,
            _: Request<v1::ListNodesRequest>,
        ) -> Result<Response<v1::ListNodesResponse>, Status> {
            Ok(Response::new(v1::ListNodesResponse {
                nodes: cluster().nodes,
            }))
        }

        async fn drain_node(
            &self,
            _: Request<v1::DrainNodeRequest>,
        ) -> Result<Response<v1::DrainNodeResponse>, Status> {
            Err(Status::unimplemented(""))
        }

        async fn list_shards(
            &self,
            _: Request<v1::ListShardsRequest>,
        ) -> Result<Response<v1::ListShardsResponse>, Status> {
            Err(Status::unimplemented(""))
        }

        async fn move_shard(
            &self,
            _: Request<v1::MoveShardRequest>,
        ) -> Result<Response<v1::MoveShardResponse>, Status> {
            Err(Status::unimplemented(""))
        }

        async fn remove_node(
            &self,
            request: Request<v1::RemoveNodeRequest>,
        ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
            let request = request.into_inner();
            self.removes.lock().unwrap().push(request);
            match (request.id, request.force) {
                (2, false) => Err(Status::failed_precondition(
                    "group 5 would be left without a live majority",
                )),
                (2, true) => Ok(Response::new(v1::RemoveNodeResponse {
                    collections: vec!["glove".into()],
                })),
                (id, _) => Err(Status::not_found(format!(
                    "node {id} is not in the cluster"
                ))),
            }
        }
    }

    /// Clients of a loopback server that runs `service` (or no ClusterService at all).
    async fn serve(service: Option<Arc<FakeCluster>>) -> Clients {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router =
            Server::builder().add_optional_service(service.map(ClusterServiceServer::from_arc));
        tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
        crate::client::connect(&addr.to_string(), None).unwrap()
    }

    #[tokio::test]
    async fn commands_call_the_cluster_service() {
        let fake = Arc::new(FakeCluster::default());
        let mut clients = serve(Some(Arc::clone(&fake))).await;

        let report = status(&mut clients).await.unwrap();
        assert_eq!(report.groups.len(), 2);
        assert_eq!(report.nodes[1].reachable, Some(false));
        assert_eq!(list_nodes(&mut clients).await.unwrap().0.len(), 2);

        let err = remove_node(&mut clients, 2, false).await.unwrap_err();
        assert_eq!(
            crate::error_text(&err),
            "node 2 not removed (--force removes it anyway): \
             group 5 would be left without a live majority (FailedPrecondition)"
        );
        let removed = remove_node(&mut clients, 2, true).await.unwrap();
        assert_eq!(removed.collections, ["glove"]);
        let err = remove_node(&mut clients, 9, true).await.unwrap_err();
        assert_eq!(
            crate::error_text(&err),
            "node 9 is not in the cluster (NotFound)"
        );
        let sent: Vec<_> = fake
            .removes
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.id, r.force))
            .collect();
        assert_eq!(sent, [(2, false), (2, true), (9, true)]);
    }

    #[tokio::test]
    async fn a_node_without_the_service_says_so() {
        let mut clients = serve(None).await;
        let err = status(&mut clients).await.unwrap_err();
        assert_eq!(
            crate::error_text(&err),
            "the node does not serve shoal.v1.ClusterService: \
             Operation is not implemented or not supported (Unimplemented)"
        );
    }
}
