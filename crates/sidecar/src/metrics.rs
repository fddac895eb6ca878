//! Prometheus metrics of the sidecar, served at `GET /metrics` on its HTTP port.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The sidecar's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    batch_texts: HistogramVec,
    batch_seconds: HistogramVec,
    queued_texts: IntGaugeVec,
    truncated_texts: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("shoal_sidecar".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Inference requests by model, protocol and result code",
            ),
            &["model", "protocol", "code"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "request_seconds",
                "Inference request latency, queueing included",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            &["model", "protocol"],
        )?;
        let batch_texts = HistogramVec::new(
            HistogramOpts::new("batch_texts", "Texts per model run (dynamic batching)")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 10)?),
            &["model"],
        )?;
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new("batch_seconds", "Time of one model run")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            &["model"],
        )?;
        let queued_texts = IntGaugeVec::new(
            Opts::new("queued_texts", "Texts waiting for the model"),
            &["model"],
        )?;
        let truncated_texts = IntCounterVec::new(
            Opts::new(
                "truncated_texts_total",
                "Texts cut to the model's max_tokens",
            ),
            &["model"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(batch_texts.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        registry.register(Box::new(queued_texts.clone()))?;
        registry.register(Box::new(truncated_texts.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_seconds,
            batch_texts,
            batch_seconds,
            queued_texts,
            truncated_texts,
        })
    }

    pub fn request(&self, model: &str, protocol: &str, code: &str, took: Duration) {
        self.requests
            .with_label_values(&[model, protocol, code])
            .inc();
        self.request_seconds
            .with_label_values(&[model, protocol])
            .observe(took.as_secs_f64());
    }

    pub fn batch(&self, model: &str, texts: usize, took: Duration) {
        self.batch_texts
            .with_label_values(&[model])
            .observe(texts as f64);
        self.batch_seconds
            .with_label_values(&[model])
            .observe(took.as_secs_f64());
    }

    pub fn queued(&self, model: &str, texts: usize) {
        self.queued_texts
            .with_label_values(&[model])
            .set(i64::try_from(texts).unwrap_or(i64::MAX));
    }

    pub fn truncated(&self, model: &str, texts: usize) {
        self.truncated_texts
            .with_label_values(&[model])
            .inc_by(texts as u64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
