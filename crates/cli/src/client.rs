//! The gRPC connection to a node, shared by the clients of every public service.

use std::time::Duration;

use anyhow::{Context, Result};
use shoal_proto::auth::{self, ApiKeys, AuthChannel};
use shoal_proto::v1::cluster_service_client::ClusterServiceClient;
use shoal_proto::v1::collection_service_client::CollectionServiceClient;
use shoal_proto::v1::feature_service_client::FeatureServiceClient;
use shoal_proto::v1::point_service_client::PointServiceClient;
use shoal_types::Limits;
use tonic::transport::Endpoint;

#[derive(Clone)]
pub struct Clients {
    pub collections: CollectionServiceClient<AuthChannel>,
    pub points: PointServiceClient<AuthChannel>,
    pub cluster: ClusterServiceClient<AuthChannel>,
    pub features: FeatureServiceClient<AuthChannel>,
    /// The API key sent with every call (none in the open mode).
    pub key: Option<String>,
}

/// Clients for the node at `addr` (`HOST:PORT`, or a full `http://` URI) that send `key`. The
/// connection is made on the first request, so local input is checked before the node is
/// needed.
pub fn connect(addr: &str, key: Option<&str>) -> Result<Clients> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let channel = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("invalid address {addr:?}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect_lazy();
    let keys = match key {
        Some(key) => ApiKeys::client(key).map_err(anyhow::Error::msg)?,
        None => ApiKeys::open(),
    };
    let channel = auth::authed(channel, &keys);
    // The node's default message limit; large upserts and searches stay under it.
    let max = Limits::default().max_message_bytes;
    Ok(Clients {
        collections: CollectionServiceClient::new(channel.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        points: PointServiceClient::new(channel.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        features: FeatureServiceClient::new(channel.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        cluster: ClusterServiceClient::new(channel).max_decoding_message_size(max),
        key: key.map(str::to_owned),
    })
}

/// How many items of `item_bytes` each fit in one request: at most `max_items`, at least one,
/// and together under three quarters of the message limit (the rest is headroom for framing).
pub fn items_per_request(item_bytes: usize, max_items: usize) -> usize {
    let budget = Limits::default().max_message_bytes / 4 * 3;
    (budget / item_bytes.max(1)).clamp(1, max_items.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_under_the_message_limit() {
        assert_eq!(items_per_request(512, 1000), 1000);
        assert_eq!(items_per_request(4 * 65_536, 1000), 192);
        assert_eq!(items_per_request(usize::MAX, 1000), 1);
        assert_eq!(items_per_request(0, 0), 1);
    }
}
