//! A payment gateway simulator, so the saga can be run and tested without a
//! payment provider. It is a real HTTP server with the API [`crate::gateway`]
//! speaks, idempotent by key, and it can be switched at run time:
//!
//! - `PUT /control` with `{"mode": "healthy" | "outage" | "slow" | "failing", "latency_ms": N}`;
//!   outage answers 503 and does nothing; slow does the work and answers after
//!   `latency_ms`; failing does the work and answers 500. Slow and failing are
//!   the ambiguous cases: money moved, and the caller cannot tell.
//!   `refusing_refunds` takes charges as usual and declines every new refund.
//! - `GET /v1/charges?idempotency_key=K`: the charge made under K (404 if none),
//!   how a caller settles an ambiguous call.
//! - `GET /ledger`: every charge and refund, with how many calls each key got.
//!
//! Declines: tokens starting with `tok_decline` ("card declined"), and amounts
//! above `decline_over_minor` ("amount over limit").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::gateway::{ChargeRequest, GatewayReply, RefundRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Healthy,
    Outage,
    Slow,
    Failing,
    RefusingRefunds,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Control {
    pub mode: Mode,
    #[serde(default)]
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: Option<String>,
    pub amount_minor: i64,
    pub approved: bool,
    pub reason: Option<String>,
    /// Calls received with this idempotency key (money moved at most once).
    pub calls: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ledger {
    pub charges: BTreeMap<String, LedgerEntry>,
    pub refunds: BTreeMap<String, LedgerEntry>,
}

struct Sim {
    control: Control,
    decline_over_minor: i64,
    ledger: Ledger,
    next_id: u64,
}

type Shared = Arc<Mutex<Sim>>;

fn lock(sim: &Shared) -> std::sync::MutexGuard<'_, Sim> {
    sim.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves the simulator on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, decline_over_minor: i64, shutdown: CancellationToken) -> std::io::Result<()> {
    let sim: Shared = Arc::new(Mutex::new(Sim {
        control: Control { mode: Mode::Healthy, latency_ms: 0 },
        decline_over_minor,
        ledger: Ledger::default(),
        next_id: 1,
    }));
    let app = Router::new()
        .route("/v1/charges", post(charge).get(find_charge))
        .route("/v1/refunds", post(refund))
        .route("/control", put(set_control).get(get_control))
        .route("/ledger", get(ledger))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(sim);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Applies the current mode: an outage refuses the call; a slow gateway does
/// the work at once but answers late, so a caller that times out cannot know
/// whether money moved (the case idempotency keys exist for).
async fn behave(
    sim: &Shared,
    work: impl FnOnce(&mut Sim) -> (StatusCode, Json<GatewayReply>),
) -> (StatusCode, Json<GatewayReply>) {
    let control = lock(sim).control.clone();
    if control.mode == Mode::Outage {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(GatewayReply { status: "error".into(), id: None, reason: Some("simulated outage".into()) }),
        );
    }
    let answer = work(&mut lock(sim));
    match control.mode {
        Mode::Slow => tokio::time::sleep(Duration::from_millis(control.latency_ms)).await,
        Mode::Failing => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(GatewayReply { status: "error".into(), id: None, reason: Some("simulated failure".into()) }),
            )
        }
        Mode::Healthy | Mode::Outage | Mode::RefusingRefunds => {}
    }
    answer
}

#[derive(Debug, Deserialize)]
struct ChargeKey {
    idempotency_key: String,
}

async fn find_charge(State(sim): State<Shared>, Query(key): Query<ChargeKey>) -> (StatusCode, Json<GatewayReply>) {
    behave(&sim, |sim| match sim.ledger.charges.get(&key.idempotency_key) {
        Some(entry) => reply(entry),
        None => (
            StatusCode::NOT_FOUND,
            Json(GatewayReply {
                status: "not_found".into(),
                id: None,
                reason: Some("no charge under this key".into()),
            }),
        ),
    })
    .await
}

fn reply(entry: &LedgerEntry) -> (StatusCode, Json<GatewayReply>) {
    if entry.approved {
        (StatusCode::OK, Json(GatewayReply { status: "approved".into(), id: entry.id.clone(), reason: None }))
    } else {
        (
            StatusCode::PAYMENT_REQUIRED,
            Json(GatewayReply { status: "declined".into(), id: None, reason: entry.reason.clone() }),
        )
    }
}

async fn charge(State(sim): State<Shared>, Json(request): Json<ChargeRequest>) -> (StatusCode, Json<GatewayReply>) {
    behave(&sim, |sim| record_charge(sim, request)).await
}

fn record_charge(sim: &mut Sim, request: ChargeRequest) -> (StatusCode, Json<GatewayReply>) {
    if let Some(entry) = sim.ledger.charges.get_mut(&request.idempotency_key) {
        entry.calls += 1;
        return reply(entry);
    }
    let decline = if request.payment_token.starts_with("tok_decline") {
        Some("card declined".to_owned())
    } else if request.amount_minor > sim.decline_over_minor {
        Some(format!("amount over limit of {}", sim.decline_over_minor))
    } else {
        None
    };
    let id = decline.is_none().then(|| {
        sim.next_id += 1;
        format!("ch_{:06}", sim.next_id)
    });
    let entry =
        LedgerEntry { id, amount_minor: request.amount_minor, approved: decline.is_none(), reason: decline, calls: 1 };
    let answer = reply(&entry);
    sim.ledger.charges.insert(request.idempotency_key, entry);
    answer
}

async fn refund(State(sim): State<Shared>, Json(request): Json<RefundRequest>) -> (StatusCode, Json<GatewayReply>) {
    behave(&sim, |sim| record_refund(sim, request)).await
}

fn record_refund(sim: &mut Sim, request: RefundRequest) -> (StatusCode, Json<GatewayReply>) {
    if let Some(entry) = sim.ledger.refunds.get_mut(&request.idempotency_key) {
        entry.calls += 1;
        return reply(entry);
    }
    let charged = sim.ledger.charges.values().any(|c| c.approved && c.id.as_deref() == Some(&request.charge_id));
    let refused = sim.control.mode == Mode::RefusingRefunds;
    let reason = if !charged {
        Some(format!("no charge {}", request.charge_id))
    } else {
        refused.then(|| "refunds refused (simulated)".to_owned())
    };
    let charged = charged && !refused;
    let id = charged.then(|| {
        sim.next_id += 1;
        format!("re_{:06}", sim.next_id)
    });
    let entry = LedgerEntry { id, amount_minor: request.amount_minor, approved: charged, reason, calls: 1 };
    let answer = reply(&entry);
    sim.ledger.refunds.insert(request.idempotency_key, entry);
    answer
}

async fn set_control(State(sim): State<Shared>, Json(control): Json<Control>) -> Json<Control> {
    tracing::info!(?control, "gateway simulator mode");
    lock(&sim).control = control.clone();
    Json(control)
}

async fn get_control(State(sim): State<Shared>) -> Json<Control> {
    Json(lock(&sim).control.clone())
}

async fn ledger(State(sim): State<Shared>) -> Json<Ledger> {
    Json(lock(&sim).ledger.clone())
}
