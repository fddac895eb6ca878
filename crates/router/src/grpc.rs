//! Shard calls over gRPC: the public `PointService`/`CollectionService` requests with the
//! `x-shoal-shard` metadata, which makes the receiving node run them on that one shard.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use shoal_proto::auth::{self, ApiKeys, AuthChannel};
use shoal_proto::internal::v1 as internal;
use shoal_proto::internal::v1::node_service_client::NodeServiceClient;
use shoal_proto::v1::collection_service_client::CollectionServiceClient;
use shoal_proto::v1::feature_service_client::FeatureServiceClient;
use shoal_proto::v1::point_service_client::PointServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;
use tonic::{Request, Status};

use crate::map::{NodeId, ShardMap};
use crate::router::{ShardCall, ShardReply, Transport};

/// The metadata key that restricts a request to one shard.
pub const SHARD_HEADER: &str = "x-shoal-shard";
/// The metadata key with the Raft group the sender's map gives that shard: a node whose
/// layout disagrees answers ABORTED, so a router with a stale map (a collection dropped and
/// created again) refreshes it instead of reading the wrong shards.
pub const GROUP_HEADER: &str = "x-shoal-group";

/// One shard of a collection, as a request names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRef {
    pub shard: u32,
    /// The shard's group in the sender's map, when it sent one.
    pub group: Option<u64>,
}

fn number<T: std::str::FromStr, R>(request: &Request<R>, key: &str) -> Result<Option<T>, Status> {
    let Some(value) = request.metadata().get(key) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| Status::invalid_argument(format!("{key} must be a number")))
}

/// The shard a request is restricted to, if any.
pub fn requested_shard<T>(request: &Request<T>) -> Result<Option<ShardRef>, Status> {
    let Some(shard) = number(request, SHARD_HEADER)? else {
        return Ok(None);
    };
    Ok(Some(ShardRef {
        shard,
        group: number(request, GROUP_HEADER)?,
    }))
}

/// `request` restricted to shard `target`.
pub fn for_shard<T>(mut request: Request<T>, target: ShardRef) -> Request<T> {
    let metadata = request.metadata_mut();
    metadata.insert(SHARD_HEADER, MetadataValue::from(target.shard));
    if let Some(group) = target.group {
        metadata.insert(GROUP_HEADER, MetadataValue::from(group));
    }
    request
}

/// Runs `call` on shard `shard` of the node behind `channel`.
pub async fn call(
    channel: AuthChannel,
    shard: ShardRef,
    call: ShardCall,
    timeout: Duration,
    max_message: usize,
) -> Result<ShardReply, Status> {
    fn wire<T>(message: T, shard: ShardRef, timeout: Duration) -> Request<T> {
        let mut request = for_shard(Request::new(message), shard);
        request.set_timeout(timeout);
        request
    }
    let points = || {
        PointServiceClient::new(channel.clone())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message)
    };
    let features = || {
        FeatureServiceClient::new(channel.clone())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message)
    };
    let reply = match call {
        ShardCall::Search(r) => {
            ShardReply::Search(points().search(wire(r, shard, timeout)).await?.into_inner())
        }
        ShardCall::Upsert(r) => {
            ShardReply::Upsert(points().upsert(wire(r, shard, timeout)).await?.into_inner())
        }
        ShardCall::Delete(r) => {
            ShardReply::Delete(points().delete(wire(r, shard, timeout)).await?.into_inner())
        }
        ShardCall::Get(r) => {
            ShardReply::Get(points().get(wire(r, shard, timeout)).await?.into_inner())
        }
        ShardCall::Count(r) => {
            ShardReply::Count(points().count(wire(r, shard, timeout)).await?.into_inner())
        }
        ShardCall::Push(r) => ShardReply::Push(
            features()
                .push_features(wire(r, shard, timeout))
                .await?
                .into_inner(),
        ),
        ShardCall::Features(r) => ShardReply::Features(
            features()
                .get_online_features(wire(r, shard, timeout))
                .await?
                .into_inner(),
        ),
        ShardCall::Describe(r) => ShardReply::Describe(
            CollectionServiceClient::new(channel.clone())
                .max_decoding_message_size(max_message)
                .describe_collection(wire(r, shard, timeout))
                .await?
                .into_inner(),
        ),
    };
    Ok(reply)
}

/// Lazily connected channels, one per address, each sending this process's API key.
#[derive(Debug)]
pub struct Channels {
    keys: ApiKeys,
    channels: Mutex<HashMap<String, AuthChannel>>,
}

impl Channels {
    pub fn new(keys: ApiKeys) -> Self {
        Self {
            keys,
            channels: Mutex::default(),
        }
    }

    pub fn get(&self, address: &str) -> Result<AuthChannel, Status> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Status::invalid_argument(format!("bad address {address:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        let channel = auth::authed(channel, &self.keys);
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Asks the node at `address` for its shard map.
pub async fn fetch_map(channel: AuthChannel, timeout: Duration) -> Result<ShardMap, Status> {
    let mut request = Request::new(internal::ShardMapRequest {});
    request.set_timeout(timeout);
    let wire = NodeServiceClient::new(channel)
        .shard_map(request)
        .await?
        .into_inner();
    ShardMap::try_from(wire).map_err(shoal_proto::status_from_error)
}

/// Reaches every shard over gRPC: what `shoal router` uses.
#[derive(Debug)]
pub struct GrpcTransport {
    channels: Channels,
    /// Addresses to ask for the shard map, besides the nodes of the last map.
    seeds: Vec<String>,
    known: Mutex<Vec<String>>,
    max_message: usize,
    timeout: Duration,
}

impl GrpcTransport {
    pub fn new(seeds: Vec<String>, max_message: usize, timeout: Duration, keys: ApiKeys) -> Self {
        Self {
            channels: Channels::new(keys),
            seeds,
            known: Mutex::new(Vec::new()),
            max_message,
            timeout,
        }
    }

    /// A channel to the node at `address`.
    pub fn channel(&self, address: &str) -> Result<AuthChannel, Status> {
        self.channels.get(address)
    }

    /// Nodes to talk to: the seeds, then the nodes of the last shard map.
    pub fn addresses(&self) -> Vec<String> {
        let mut addresses = self.seeds.clone();
        for known in self.known.lock().iter() {
            if !addresses.contains(known) {
                addresses.push(known.clone());
            }
        }
        addresses
    }

    /// The shard map of the first node that answers: a seed, or a node of the last map.
    pub async fn fetch(&self) -> Result<ShardMap, Status> {
        let addresses = self.addresses();
        let mut last = Status::unavailable("no node to ask for the shard map");
        for address in addresses {
            match fetch_map(self.channels.get(&address)?, self.timeout).await {
                Ok(map) => {
                    *self.known.lock() = map.nodes.values().cloned().collect();
                    return Ok(map);
                }
                Err(status) => {
                    tracing::debug!(%address, error = %status.message(), "no shard map from this node");
                    last = auth::from_peer(&address, status);
                }
            }
        }
        Err(last)
    }
}

#[tonic::async_trait]
impl Transport for GrpcTransport {
    async fn call(
        &self,
        _node: NodeId,
        address: &str,
        shard: ShardRef,
        shard_call: ShardCall,
        timeout: Duration,
    ) -> Result<ShardReply, Status> {
        let channel = self.channels.get(address)?;
        call(channel, shard, shard_call, timeout, self.max_message)
            .await
            .map_err(|status| auth::from_peer(address, status))
    }

    async fn refresh(&self) -> Option<ShardMap> {
        self.fetch().await.ok()
    }
}
