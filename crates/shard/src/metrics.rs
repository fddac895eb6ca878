use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use shoal_types::{Error, Result};

/// Counters of the state machine and its background work, exported on `/metrics`.
#[derive(Clone)]
pub struct ShardMetrics {
    pub applied_sequence: IntGauge,
    pub commands_applied: IntCounterVec,
    pub wal_syncs: IntCounter,
    pub group_commit_size: Histogram,
    /// Sealed segments by origin: `built` in this process or `loaded` from disk.
    pub segments: IntCounterVec,
    pub segment_build_seconds: Histogram,
}

impl ShardMetrics {
    pub fn new(registry: &Registry) -> Result<Self> {
        let err = |e: prometheus::Error| Error::internal(format!("registering metrics: {e}"));
        let applied_sequence = IntGauge::new(
            "shoal_applied_sequence",
            "Sequence number of the last command applied",
        )
        .map_err(err)?;
        let commands_applied = IntCounterVec::new(
            Opts::new(
                "shoal_commands_applied_total",
                "Commands applied, by kind and result",
            ),
            &["kind", "result"],
        )
        .map_err(err)?;
        let wal_syncs =
            IntCounter::new("shoal_wal_syncs_total", "Write-ahead log fsyncs").map_err(err)?;
        let group_commit_size = Histogram::with_opts(
            HistogramOpts::new("shoal_group_commit_commands", "Commands per WAL fsync")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )
        .map_err(err)?;
        let segments = IntCounterVec::new(
            Opts::new(
                "shoal_sealed_segments_total",
                "Sealed segments made resident, by origin (built, loaded)",
            ),
            &["origin"],
        )
        .map_err(err)?;
        let segment_build_seconds = Histogram::with_opts(
            HistogramOpts::new("shoal_segment_build_seconds", "Seal and merge build times")
                .buckets(prometheus::exponential_buckets(0.01, 2.0, 16).map_err(err)?),
        )
        .map_err(err)?;
        registry
            .register(Box::new(applied_sequence.clone()))
            .map_err(err)?;
        registry
            .register(Box::new(commands_applied.clone()))
            .map_err(err)?;
        registry
            .register(Box::new(wal_syncs.clone()))
            .map_err(err)?;
        registry
            .register(Box::new(group_commit_size.clone()))
            .map_err(err)?;
        registry.register(Box::new(segments.clone())).map_err(err)?;
        registry
            .register(Box::new(segment_build_seconds.clone()))
            .map_err(err)?;
        Ok(Self {
            applied_sequence,
            commands_applied,
            wal_syncs,
            group_commit_size,
            segments,
            segment_build_seconds,
        })
    }
}
