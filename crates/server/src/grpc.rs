//! The public gRPC services over one node's [`Shard`].

use std::sync::Arc;
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, Registry};
use shoal_index::SegmentState;
use shoal_proto::v1::collection_service_server::CollectionService;
use shoal_proto::v1::point_service_server::PointService;
use shoal_proto::v1::{self};
use shoal_proto::{ids_from_wire, metric_to_wire, search_params_from_wire, status_from_error};
use shoal_raft::Proposer;
use shoal_shard::{CollectionDescription, CpuPool, Shard};
use shoal_types::{CollectionSpec, Command, Error, Point};
use tonic::{Request, Response, Status};

/// Shared by both services.
#[derive(Clone)]
pub struct Api {
    proposer: Proposer,
    search_pool: CpuPool,
    latency: HistogramVec,
}

impl Api {
    pub fn new(
        proposer: Proposer,
        search_pool: CpuPool,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "shoal_grpc_request_seconds",
                "gRPC request latency by method and code",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 20)?),
            &["method", "code"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            proposer,
            search_pool,
            latency,
        })
    }

    fn shard(&self) -> &Arc<Shard> {
        self.proposer.shard()
    }

    /// Runs a handler and records its latency by method and status code.
    async fn timed<T>(
        &self,
        method: &str,
        handler: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = handler.await;
        let code = match &result {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.latency
            .with_label_values(&[method, &code])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Runs RocksDB reads off the async workers.
    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Shard) -> shoal_types::Result<R> + Send + 'static,
    ) -> Result<R, Status> {
        let shard = self.shard().clone();
        tokio::task::spawn_blocking(move || work(&shard))
            .await
            .map_err(|e| Status::internal(format!("request task failed: {e}")))?
            .map_err(status_from_error)
    }
}

fn collection_info(d: CollectionDescription) -> v1::CollectionInfo {
    v1::CollectionInfo {
        name: d.spec.name,
        dimension: d.spec.dimension,
        metric: metric_to_wire(d.spec.metric) as i32,
        index: d.spec.index,
        index_params: d.spec.params.to_map().into_iter().collect(),
        points: d.points,
        segments: d
            .segments
            .into_iter()
            .map(|s| v1::SegmentInfo {
                id: s.id,
                state: match s.state {
                    SegmentState::Growing => v1::SegmentState::Growing,
                    SegmentState::Sealing => v1::SegmentState::Sealing,
                    SegmentState::Sealed => v1::SegmentState::Sealed,
                } as i32,
                points: s.points,
                deleted: s.deleted,
                bytes: s.bytes,
                index: s.index,
                origin: s.origin.map(|o| o.as_str().to_owned()).unwrap_or_default(),
            })
            .collect(),
        index_state: d.index_state.as_str().to_owned(),
        disk_bytes: d.disk_bytes,
        memory_bytes: d.memory_bytes,
        ..Default::default()
    }
}

fn bad(err: Error) -> Status {
    status_from_error(err)
}

#[tonic::async_trait]
impl CollectionService for Api {
    #[tracing::instrument(skip_all, fields(collection = %request.get_ref().name))]
    async fn create_collection(
        &self,
        request: Request<v1::CreateCollectionRequest>,
    ) -> Result<Response<v1::CreateCollectionResponse>, Status> {
        self.timed("CreateCollection", async {
            let spec = CollectionSpec::try_from(request.into_inner()).map_err(bad)?;
            self.proposer
                .submit(Command::CreateCollection(spec))
                .await
                .map_err(bad)?;
            Ok(Response::new(v1::CreateCollectionResponse {}))
        })
        .await
    }

    async fn describe_collection(
        &self,
        request: Request<v1::DescribeCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let name = request.into_inner().name;
        self.timed("DescribeCollection", async {
            self.blocking(move |shard| shard.describe(&name))
                .await
                .map(|d| Response::new(collection_info(d)))
        })
        .await
    }

    async fn list_collections(
        &self,
        _request: Request<v1::ListCollectionsRequest>,
    ) -> Result<Response<v1::ListCollectionsResponse>, Status> {
        self.timed("ListCollections", async {
            self.blocking(|shard| Ok(shard.list())).await.map(|list| {
                Response::new(v1::ListCollectionsResponse {
                    collections: list.into_iter().map(collection_info).collect(),
                })
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(collection = %request.get_ref().name))]
    async fn drop_collection(
        &self,
        request: Request<v1::DropCollectionRequest>,
    ) -> Result<Response<v1::DropCollectionResponse>, Status> {
        let name = request.into_inner().name;
        self.timed("DropCollection", async {
            self.proposer
                .submit(Command::DropCollection { name })
                .await
                .map(|_| Response::new(v1::DropCollectionResponse {}))
                .map_err(bad)
        })
        .await
    }
}

#[tonic::async_trait]
impl PointService for Api {
    #[tracing::instrument(skip_all, fields(collection = %request.get_ref().collection, points = request.get_ref().points.len()))]
    async fn upsert(
        &self,
        request: Request<v1::UpsertRequest>,
    ) -> Result<Response<v1::UpsertResponse>, Status> {
        self.timed("Upsert", async {
            let req = request.into_inner();
            let points = req
                .points
                .into_iter()
                .map(Point::try_from)
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            let outcome = self
                .proposer
                .submit(Command::Upsert {
                    collection: req.collection,
                    points,
                })
                .await
                .map_err(bad)?;
            Ok(Response::new(v1::UpsertResponse {
                upserted: outcome.affected,
                sequence: outcome.sequence,
            }))
        })
        .await
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        let req = request.into_inner();
        self.timed("Get", async {
            let ids = ids_from_wire(req.ids).map_err(bad)?;
            let (points, missing) = self
                .blocking(move |shard| shard.get(&req.collection, &ids, req.with_vectors))
                .await?;
            Ok(Response::new(v1::GetResponse {
                points: points.into_iter().map(Into::into).collect(),
                missing: missing.into_iter().map(Into::into).collect(),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(collection = %request.get_ref().collection, ids = request.get_ref().ids.len()))]
    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        self.timed("Delete", async {
            let req = request.into_inner();
            let ids = ids_from_wire(req.ids).map_err(bad)?;
            let outcome = self
                .proposer
                .submit(Command::Delete {
                    collection: req.collection,
                    ids,
                })
                .await
                .map_err(bad)?;
            Ok(Response::new(v1::DeleteResponse {
                deleted: outcome.affected,
                sequence: outcome.sequence,
            }))
        })
        .await
    }

    async fn count(
        &self,
        request: Request<v1::CountRequest>,
    ) -> Result<Response<v1::CountResponse>, Status> {
        let name = request.into_inner().collection;
        self.timed("Count", async {
            self.blocking(move |shard| shard.count(&name))
                .await
                .map(|count| Response::new(v1::CountResponse { count }))
        })
        .await
    }

    async fn search(
        &self,
        request: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        let req = request.into_inner();
        let shard = self.shard().clone();
        self.timed("Search", async {
            let params = search_params_from_wire(req.params);
            let queries: Vec<Vec<f32>> = req.queries.into_iter().map(|q| q.values).collect();
            let results = self
                .search_pool
                .run(move || {
                    shard.search(&req.collection, &queries, req.k, &params, req.with_vectors)
                })
                .await
                .map_err(bad)?
                .map_err(bad)?;
            Ok(Response::new(v1::SearchResponse {
                results: results
                    .into_iter()
                    .map(|hits| v1::QueryResult {
                        hits: hits
                            .into_iter()
                            .map(|h| v1::ScoredPoint {
                                id: Some(h.id.into()),
                                score: h.score,
                                vector: h.vector.unwrap_or_default(),
                            })
                            .collect(),
                    })
                    .collect(),
            }))
        })
        .await
    }
}
