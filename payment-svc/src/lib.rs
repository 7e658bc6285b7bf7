//! payment-svc: charges and refunds through the payment gateway.
//!
//! On StockReserved it queues a charge; on OrderCancellationRequested it stops
//! a charge still queued, or queues a refund of one made (both in the consumer's
//! transaction, so a queued payment is never lost). The [`queue`] worker talks
//! to the gateway through a timeout, a circuit breaker and a bulkhead, and emits
//! PaymentAuthorized, PaymentDeclined, PaymentDeferred, PaymentRefunded or
//! PaymentRefundFailed. The crate also ships the gateway [`simulator`].

pub mod gateway;
pub mod queue;
pub mod simulator;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use events::{Envelope, Message, OrderCancellationRequested, PaymentDeclined, StockReserved};
use platform::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use platform::db::{millis, now_ms};
use platform::{App, Handler, HandlerError, PlatformConfig, Tx};
use tokio::sync::Notify;

use crate::status::PaymentStatus;

pub const SERVICE: &str = events::access::PAYMENT_SVC.service;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!();

fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "payment-svc", about = "Charges and refunds through the payment gateway")]
pub struct Config {
    #[command(flatten)]
    pub platform: PlatformConfig,

    /// Base URL of the payment gateway.
    #[arg(long, env = "PAYMENT_GATEWAY_URL", default_value = "http://127.0.0.1:8090")]
    pub gateway_url: String,

    /// Timeout of one gateway call.
    #[arg(long, env = "GATEWAY_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub gateway_timeout: Duration,

    /// Bulkhead: most gateway calls in flight at once.
    #[arg(long, env = "GATEWAY_MAX_CONCURRENT", default_value_t = 16)]
    pub gateway_max_concurrent: usize,

    /// A payment not through by this long after it was queued is declined and the
    /// order compensated.
    #[arg(long, env = "PAYMENT_DEADLINE", default_value = "5m", value_parser = duration)]
    pub payment_deadline: Duration,

    /// First retry delay of a deferred payment; doubles per attempt.
    #[arg(long, env = "PAYMENT_RETRY_MIN", default_value = "500ms", value_parser = duration)]
    pub payment_retry_min: Duration,

    /// Longest retry delay of a deferred payment.
    #[arg(long, env = "PAYMENT_RETRY_MAX", default_value = "10s", value_parser = duration)]
    pub payment_retry_max: Duration,

    /// How long a payment taken by a worker stays claimed if the worker dies
    /// before recording its outcome; then another replica (or this one, started
    /// again) takes it. Must exceed GATEWAY_TIMEOUT by 10s, the most one turn and
    /// its recording can take.
    #[arg(long, env = "PAYMENT_CLAIM_LEASE", default_value = "15s", value_parser = duration)]
    pub payment_claim_lease: Duration,

    /// Breaker: calls in the sliding window.
    #[arg(long, env = "BREAKER_WINDOW", default_value_t = 20)]
    pub breaker_window: usize,

    /// Breaker: fewest calls in the window before it may open.
    #[arg(long, env = "BREAKER_MIN_CALLS", default_value_t = 5)]
    pub breaker_min_calls: usize,

    /// Breaker: failure rate (0..1) that opens it.
    #[arg(long, env = "BREAKER_FAILURE_RATE", default_value_t = 0.5)]
    pub breaker_failure_rate: f64,

    /// Breaker: slow-call rate (0..1) that opens it.
    #[arg(long, env = "BREAKER_SLOW_CALL_RATE", default_value_t = 0.8)]
    pub breaker_slow_call_rate: f64,

    /// Breaker: a call at least this long counts as slow.
    #[arg(long, env = "BREAKER_SLOW_CALL", default_value = "1s", value_parser = duration)]
    pub breaker_slow_call: Duration,

    /// Breaker: how long it stays open before probing.
    #[arg(long, env = "BREAKER_OPEN_FOR", default_value = "2s", value_parser = duration)]
    pub breaker_open_for: Duration,

    /// Breaker: probe calls allowed while half-open.
    #[arg(long, env = "BREAKER_HALF_OPEN_PROBES", default_value_t = 2)]
    pub breaker_half_open_probes: usize,
}

impl Config {
    /// Defaults, as with no flags and an empty environment, against `brokers` and
    /// the gateway at `gateway_url`.
    pub fn local(brokers: &str, gateway_url: &str) -> Config {
        use clap::Parser;
        let mut config = Config::parse_from(["payment-svc", "--brokers", brokers, "--gateway-url", gateway_url]);
        config.platform = PlatformConfig::local(brokers);
        config
    }

    fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            window: self.breaker_window,
            min_calls: self.breaker_min_calls,
            failure_rate: self.breaker_failure_rate,
            slow_call_rate: self.breaker_slow_call_rate,
            slow_call: self.breaker_slow_call,
            open_for: self.breaker_open_for,
            half_open_probes: self.breaker_half_open_probes,
        }
    }
}

/// Room a claim leaves beyond the gateway timeout, for recording the outcome.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);

pub async fn build(config: Config) -> Result<App, platform::Error> {
    if config.payment_claim_lease < config.gateway_timeout + CLAIM_MARGIN {
        return Err(platform::Error::Config(format!(
            "PAYMENT_CLAIM_LEASE ({:?}) must exceed GATEWAY_TIMEOUT ({:?}) by at least {CLAIM_MARGIN:?}, or a \
             payment still in flight could be claimed and attempted by a second worker",
            config.payment_claim_lease, config.gateway_timeout
        )));
    }
    let app = App::build(SERVICE, config.platform.clone(), &MIGRATIONS).await?;
    let breaker = Arc::new(CircuitBreaker::new(config.breaker()));
    let (scrape_db, scrape_breaker) = (app.db().clone(), breaker.clone());
    let gateway = Arc::new(gateway::Gateway::new(
        &config.gateway_url,
        config.gateway_timeout,
        config.gateway_max_concurrent,
        breaker,
    ));
    let wake = Arc::new(Notify::new());
    let settings = queue::QueueSettings {
        retry_min: config.payment_retry_min,
        retry_max: config.payment_retry_max,
        poll: Duration::from_millis(200),
        claim_lease: config.payment_claim_lease,
    };
    let (db, relay, queue_wake) = (app.db().clone(), app.relay(), wake.clone());
    let payments = Payments { wake, deadline: config.payment_deadline };
    Ok(app
        .consume(events::access::PAYMENT_SVC.consumes, payments)
        .spawn("payment queue", move |stop| queue::run(db, gateway, relay, queue_wake, settings, stop))
        .on_scrape(move || {
            let (db, breaker) = (scrape_db.clone(), scrape_breaker.clone());
            async move {
                // 0 closed, 1 half-open, 2 open.
                let state = match breaker.state() {
                    BreakerState::Closed => 0.0,
                    BreakerState::HalfOpen => 1.0,
                    BreakerState::Open => 2.0,
                };
                metrics::gauge!("circuit_breaker_state", "service" => SERVICE).set(state);
                if let Ok(depth) = queue::depth(&db).await {
                    metrics::gauge!("payment_queue_depth", "service" => SERVICE).set(depth as f64);
                }
            }
        }))
}

struct Payments {
    wake: Arc<Notify>,
    deadline: Duration,
}

impl Handler for Payments {
    fn wants(&self, message: &Message) -> bool {
        matches!(message, Message::StockReserved(_) | Message::OrderCancellationRequested(_))
    }

    async fn handle(&self, event: &Envelope, tx: &mut Tx) -> Result<(), HandlerError> {
        match &event.message {
            Message::StockReserved(reserved) => self.queue_charge(event, reserved, tx).await,
            Message::OrderCancellationRequested(cancel) => self.stop_or_refund(event, cancel, tx).await,
            _ => Ok(()),
        }
    }
}

impl Payments {
    async fn queue_charge(&self, event: &Envelope, reserved: &StockReserved, tx: &mut Tx) -> Result<(), HandlerError> {
        let now = now_ms();
        let deadline = now.saturating_add(millis(self.deadline));
        sqlx::query(
            "INSERT INTO payments (order_id, status, amount_minor, payment_token, attempts, next_attempt_at,
                                   deadline_at, cause_event_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $5, $5)
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&reserved.order_id)
        .bind(PaymentStatus::Pending.as_str())
        .bind(reserved.total_minor)
        .bind(&reserved.payment_token)
        .bind(now)
        .bind(deadline)
        .bind(event.event_id.to_string())
        .execute(tx.conn())
        .await?;
        tx.wake_after_commit(self.wake.clone());
        Ok(())
    }

    /// The order is being cancelled. A charge still queued is stopped (the
    /// worker settles it: if a call in flight or an ambiguous earlier one did
    /// charge, it is refunded); a charge made is refunded; a cancellation that
    /// overtook StockReserved leaves a tombstone so the charge is never queued,
    /// and declines at once so inventory releases the stock.
    async fn stop_or_refund(
        &self,
        event: &Envelope,
        cancel: &OrderCancellationRequested,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        use PaymentStatus as S;
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, stop_reason FROM payments WHERE order_id = $1")
                .bind(&cancel.order_id)
                .fetch_optional(tx.conn())
                .await?;
        let now = now_ms();
        let Some((status, stop_reason)) = row else {
            let reason = format!("cancelled before payment: {}", cancel.reason);
            let tombstone = sqlx::query(
                "INSERT INTO payments (order_id, status, amount_minor, payment_token, attempts, next_attempt_at,
                                       deadline_at, cause_event_id, created_at, updated_at, reason, stop_reason)
                 VALUES ($1, $2, 0, '', 0, $3, $3, $4, $3, $3, $5, $5)
                 ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(&cancel.order_id)
            .bind(S::Cancelled.as_str())
            .bind(now)
            .bind(event.event_id.to_string())
            .bind(&reason)
            .execute(tx.conn())
            .await?
            .rows_affected();
            if tombstone == 0 {
                // StockReserved queued the charge meanwhile (on PostgreSQL, on
                // another partition): look again, and stop that.
                return Err(HandlerError::transient(format!(
                    "payment of order {} queued concurrently",
                    cancel.order_id
                )));
            }
            tx.emit(PaymentDeclined { order_id: cancel.order_id.clone(), reason });
            return Ok(());
        };
        let status = S::parse(&status).ok_or_else(|| {
            HandlerError::permanent(format!("payment of order {} has unknown status {status}", cancel.order_id))
        })?;
        let updated = match status {
            // Already being stopped (the saga deadline, say, then the customer).
            S::Pending | S::Deferred if stop_reason.is_some() => return Ok(()),
            S::Pending | S::Deferred => sqlx::query(
                "UPDATE payments SET stop_reason = $3, next_attempt_at = $4, updated_at = $4
                 WHERE order_id = $1 AND status = $2 AND stop_reason IS NULL",
            )
            .bind(&cancel.order_id)
            .bind(status.as_str())
            .bind(&cancel.reason)
            .bind(now)
            .execute(tx.conn())
            .await?
            .rows_affected(),
            S::Authorized => sqlx::query(
                "UPDATE payments SET status = $3, next_attempt_at = $4, updated_at = $4
                 WHERE order_id = $1 AND status = $2",
            )
            .bind(&cancel.order_id)
            .bind(status.as_str())
            .bind(S::RefundPending.as_str())
            .bind(now)
            .execute(tx.conn())
            .await?
            .rows_affected(),
            // Declined or cancelled: no money moved. Refunding or refunded: under way.
            S::Declined | S::Cancelled | S::RefundPending | S::Refunded | S::RefundRefused => return Ok(()),
        };
        if updated == 0 {
            // The worker recorded an outcome since we read the row: look again.
            return Err(HandlerError::transient(format!("payment of order {} changed concurrently", cancel.order_id)));
        }
        tx.wake_after_commit(self.wake.clone());
        Ok(())
    }
}
