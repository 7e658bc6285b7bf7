//! The operational HTTP endpoints every service serves:
//! - `GET /healthz`: the process is alive (always 200 while it runs);
//! - `GET /readyz`: the broker answers, the producer has not failed fatally,
//!   no consumer is stalled, the database answers and migrations are applied;
//!   503 with the failing checks otherwise;
//! - `GET /metrics`: Prometheus text exposition, rendered by
//!   metrics-exporter-prometheus (counters recorded where things happen, gauges
//!   such as the outbox backlog sampled at scrape time).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{kafka, outbox, Db};

/// Refreshes gauges just before a scrape (e.g. queue depths read from the database).
pub type ScrapeHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The process-wide Prometheus recorder (installed on first use; services run
/// in-process in tests, so every series carries a `service` label).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            .expect("static bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

#[derive(Clone)]
pub(crate) struct Ops {
    pub service: &'static str,
    pub db: Db,
    pub producer: FutureProducer,
    pub consumers: Vec<crate::consumer::Health>,
    pub hooks: Vec<ScrapeHook>,
}

pub(crate) async fn serve(listener: TcpListener, ops: Ops, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .with_state(Arc::new(ops));
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(%error, "http endpoints stopped");
    }
}

async fn ready(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    let readiness = readiness(&ops.db, &ops.producer, &ops.consumers).await;
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body: serde_json::Map<String, serde_json::Value> = readiness
        .checks
        .into_iter()
        .map(|(name, result)| (name.to_owned(), result.err().map_or("ok".into(), serde_json::Value::String)))
        .collect();
    (status, Json(serde_json::json!({ "service": ops.service, "ready": readiness.ready, "checks": body })))
}

/// What /readyz reports: each check, and whether all passed.
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<(&'static str, Result<(), String>)>,
}

/// The checks of /readyz: the broker answers, the producer has not failed
/// fatally, no consumer is stalled, the database answers and its migrations
/// are applied.
pub async fn readiness(db: &Db, producer: &FutureProducer, consumers: &[crate::consumer::Health]) -> Readiness {
    let client = producer.clone();
    let broker = tokio::task::spawn_blocking(move || {
        client.client().fetch_metadata(None, Duration::from_secs(2)).map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let fatal = kafka::fatal_error(producer.client()).map_or(Ok(()), |reason| Err(format!("failed fatally: {reason}")));
    let database = sqlx::query("SELECT 1").execute(db.pool()).await.map(|_| ()).map_err(|e| e.to_string());
    // Migrations ran before the service started; their table proves they stuck.
    let migrations = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE")
        .fetch_one(db.pool())
        .await
        .map_err(|e| e.to_string())
        .and_then(|n| if n > 0 { Ok(()) } else { Err("no migrations applied".into()) });
    let consumer = consumers.iter().find_map(|health| health.stalled()).map_or(Ok(()), Err);
    let checks = vec![
        ("broker", broker),
        ("producer", fatal),
        ("consumer", consumer),
        ("database", database),
        ("migrations", migrations),
    ];
    Readiness { ready: checks.iter().all(|(_, r)| r.is_ok()), checks }
}

async fn scrape(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    let service = ops.service;
    if let Ok((backlog, oldest)) = outbox::backlog_and_oldest(&ops.db).await {
        metrics::gauge!("outbox_backlog", "service" => service).set(backlog as f64);
        let age = oldest.map_or(0.0, |created| (crate::db::now_ms() - created).max(0) as f64 / 1000.0);
        metrics::gauge!("outbox_oldest_age_seconds", "service" => service).set(age);
    }
    for hook in &ops.hooks {
        hook().await;
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus().render())
}
