//! API keys in the server processes (the keys themselves: `shoal_proto::auth`): the check on
//! the Feast HTTP routes, the task that reads the keys file again so a rotated Kubernetes
//! Secret takes effect without a restart, and the checks' counts on `/metrics`.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};
use serde_json::json;
use shoal_proto::auth::{ApiKeys, Rejected};
use tokio::sync::watch;

/// axum middleware: refuses a request without an accepted `authorization: Bearer` key with 401
/// and Feast's error body.
pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    // Of the Feast routes only the online read changes nothing.
    let read = request.uri().path() == "/get-online-features";
    match keys.check(request.headers(), read) {
        Ok(()) => next.run(request).await,
        Err(rejected) => (
            if rejected == Rejected::ReadOnly {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            },
            [
                (header::WWW_AUTHENTICATE, "Bearer"),
                (header::CONTENT_TYPE, "application/json"),
            ],
            json!({ "detail": rejected.message() }).to_string(),
        )
            .into_response(),
    }
}

/// Reads the keys file every `every` until `stop`; logs changes and errors (on an error the
/// keys in use stay).
pub fn spawn_reloader(keys: ApiKeys, every: Duration, mut stop: watch::Receiver<bool>) {
    if !keys.required() {
        tracing::warn!(
            "no security.api_keys_file: every client that reaches this process can read and \
             write; set one outside a private network"
        );
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // A small file, but still file I/O: off the async workers.
            let reloaded = {
                let keys = keys.clone();
                tokio::task::spawn_blocking(move || keys.reload()).await
            };
            match reloaded {
                Ok(Ok(true)) => tracing::info!("API keys file changed; new keys in use"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot reload API keys; keeping the old ones")
                }
                Err(e) => tracing::error!(error = %e, "API key reload task failed"),
            }
        }
    });
}

/// `shoal_auth_requests_total{result}` on `/metrics`, read from the keys' tally when
/// Prometheus scrapes: `accepted_first_key`, `accepted_other_key` (during a rotation: calls
/// that still carry a key other than the file's first; the old key can go once this stops
/// growing on every process), `missing`, `malformed`, `wrong`, `read_only_refused` (a write
/// with a read-only key).
pub struct AuthMetrics {
    keys: ApiKeys,
    requests: IntCounterVec,
}

impl AuthMetrics {
    pub fn new(keys: ApiKeys) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "shoal_auth_requests_total",
                "Requests checked for an API key, by result",
            ),
            &["result"],
        )?;
        Ok(Self { keys, requests })
    }
}

impl Collector for AuthMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.requests.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let tally = self.keys.tally();
        self.requests.reset();
        for (result, count) in [
            ("accepted_first_key", tally.accepted_first),
            ("accepted_other_key", tally.accepted_other),
            ("missing", tally.missing),
            ("malformed", tally.malformed),
            ("wrong", tally.wrong),
            ("read_only_refused", tally.read_only),
        ] {
            self.requests.with_label_values(&[result]).inc_by(count);
        }
        self.requests.collect()
    }
}
