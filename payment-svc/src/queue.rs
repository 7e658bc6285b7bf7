//! The payment queue: every charge and refund is a row in `payments`, written by
//! the consumer in the transaction that applied the triggering event, and worked
//! off by [`run`]. This is also the durable fallback queue: a payment the gateway
//! could not take (breaker open, timeout, 5xx) stays DEFERRED with a next attempt
//! time and is retried with back-off until its deadline, after which it is
//! declined so the saga compensates. Refunds have no deadline: money owed back is
//! retried until the gateway takes it.
//!
//! Because the queue is a table, it survives restarts; because calls carry an
//! idempotency key, a call repeated after a crash moves no money twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::{Envelope, Message, PaymentAuthorized, PaymentDeclined, PaymentDeferred, PaymentRefunded};
use platform::db::now_ms;
use platform::{Db, Tx};
use sqlx::Row;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::gateway::{ChargeRequest, Gateway, Outcome, RefundRequest};
use crate::SERVICE;

pub const PENDING: &str = "PENDING";
pub const DEFERRED: &str = "DEFERRED";
pub const AUTHORIZED: &str = "AUTHORIZED";
pub const DECLINED: &str = "DECLINED";
pub const REFUND_PENDING: &str = "REFUND_PENDING";
pub const REFUNDED: &str = "REFUNDED";

/// How the worker paces retries of deferred payments.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub poll: Duration,
}

#[derive(Debug, Clone)]
struct Job {
    order_id: String,
    status: String,
    amount_minor: i64,
    payment_token: String,
    charge_id: Option<String>,
    attempts: i64,
    deadline_at: i64,
    cause_event_id: String,
}

impl Job {
    fn is_refund(&self) -> bool {
        self.status == REFUND_PENDING
    }
}

async fn due_jobs(db: &Db, limit: i64) -> Result<Vec<Job>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT order_id, status, amount_minor, payment_token, charge_id, attempts, deadline_at, cause_event_id
         FROM payments
         WHERE status IN ('PENDING', 'DEFERRED', 'REFUND_PENDING') AND next_attempt_at <= $1
         ORDER BY next_attempt_at LIMIT $2",
    )
    .bind(now_ms())
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Job {
                order_id: r.try_get("order_id")?,
                status: r.try_get("status")?,
                amount_minor: r.try_get("amount_minor")?,
                payment_token: r.try_get("payment_token")?,
                charge_id: r.try_get("charge_id")?,
                attempts: r.try_get("attempts")?,
                deadline_at: r.try_get("deadline_at")?,
                cause_event_id: r.try_get("cause_event_id")?,
            })
        })
        .collect()
}

/// Rows waiting for the gateway (the fallback queue's depth).
pub async fn depth(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM payments WHERE status IN ('PENDING', 'DEFERRED', 'REFUND_PENDING')")
        .fetch_one(db.pool())
        .await
}

/// Works the queue until `stop`: takes due jobs as bulkhead slots allow, calls
/// the gateway, records outcomes. Wakes on `wake` (a new job committed), when a
/// call finishes, and on a poll interval (deferred jobs coming due).
pub async fn run(
    db: Db,
    gateway: Arc<Gateway>,
    relay: Arc<Notify>,
    wake: Arc<Notify>,
    settings: QueueSettings,
    stop: CancellationToken,
) -> Result<(), platform::Error> {
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let bulkhead = gateway.bulkhead();
    let mut calls = JoinSet::new();
    loop {
        let free = bulkhead.available_permits();
        if free > 0 {
            match due_jobs(&db, (free + in_flight_len(&in_flight)) as i64).await {
                Ok(jobs) => {
                    for job in jobs {
                        if !lock(&in_flight).insert(job.order_id.clone()) {
                            continue;
                        }
                        let Ok(permit) = bulkhead.clone().try_acquire_owned() else {
                            lock(&in_flight).remove(&job.order_id);
                            break;
                        };
                        let (db, gateway, relay, in_flight) =
                            (db.clone(), gateway.clone(), relay.clone(), in_flight.clone());
                        calls.spawn(async move {
                            attempt(&db, &gateway, &relay, &job, settings).await;
                            lock(&in_flight).remove(&job.order_id);
                            drop(permit);
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "reading the payment queue"),
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            Some(_) = calls.join_next() => {}
            _ = tokio::time::sleep(settings.poll) => {}
            _ = stop.cancelled() => break,
        }
    }
    // Let calls in flight finish and record their outcome: abandoning one would
    // only mean repeating it (safely) after the restart, but finishing is cheaper.
    while calls.join_next().await.is_some() {}
    Ok(())
}

fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

fn in_flight_len(set: &Mutex<HashSet<String>>) -> usize {
    lock(set).len()
}

async fn attempt(db: &Db, gateway: &Gateway, relay: &Notify, job: &Job, settings: QueueSettings) {
    let outcome = if job.is_refund() {
        let charge_id = job.charge_id.clone().unwrap_or_default();
        let request = RefundRequest {
            idempotency_key: format!("refund:{}", job.order_id),
            charge_id,
            amount_minor: job.amount_minor,
        };
        gateway.refund(&request).await
    } else {
        let request = ChargeRequest {
            idempotency_key: job.order_id.clone(),
            amount_minor: job.amount_minor,
            payment_token: job.payment_token.clone(),
        };
        gateway.charge(&request).await
    };
    tracing::info!(order_id = %job.order_id, refund = job.is_refund(), ?outcome, "gateway call");
    let retry_after = gateway.breaker().retry_after();
    // A failure to record is retried by the next poll: the row is still due, and
    // the idempotency key makes the repeated call harmless.
    let mut tries = 0;
    while let Err(error) = record(db, relay, job, &outcome, retry_after, settings).await {
        tries += 1;
        tracing::warn!(order_id = %job.order_id, %error, tries, "recording payment outcome");
        if tries >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 * tries)).await;
    }
}

/// Applies a gateway outcome to the row and emits the matching event, in one
/// transaction; the status guard makes a stale or repeated outcome a no-op.
async fn record(
    db: &Db,
    relay: &Notify,
    job: &Job,
    outcome: &Outcome,
    retry_after: Duration,
    settings: QueueSettings,
) -> Result<(), sqlx::Error> {
    let mut tx = Tx::begin(db, SERVICE).await?;
    let now = now_ms();
    let (status, message): (&str, Option<Message>) = match (outcome, job.is_refund()) {
        (Outcome::Approved { id }, false) => {
            set_field(&mut tx, job, "charge_id", id).await?;
            let paid = PaymentAuthorized {
                order_id: job.order_id.clone(),
                charge_id: id.clone(),
                amount_minor: job.amount_minor,
            };
            (AUTHORIZED, Some(paid.into()))
        }
        (Outcome::Approved { id }, true) => {
            set_field(&mut tx, job, "refund_id", id).await?;
            let refunded = PaymentRefunded {
                order_id: job.order_id.clone(),
                charge_id: job.charge_id.clone().unwrap_or_default(),
                refund_id: id.clone(),
                amount_minor: job.amount_minor,
            };
            (REFUNDED, Some(refunded.into()))
        }
        (Outcome::Declined { reason }, false) => {
            set_field(&mut tx, job, "reason", reason).await?;
            (DECLINED, Some(PaymentDeclined { order_id: job.order_id.clone(), reason: reason.clone() }.into()))
        }
        (Outcome::Declined { reason }, true) => {
            // The gateway refuses the refund: nothing automatic can fix that.
            tracing::error!(order_id = %job.order_id, %reason, "refund refused by the gateway; needs a human");
            set_field(&mut tx, job, "reason", reason).await?;
            ("REFUND_REFUSED", None)
        }
        (Outcome::Unavailable { reason }, refund) => {
            if !refund && now >= job.deadline_at {
                let reason = format!("payment not through by its deadline ({reason})");
                set_field(&mut tx, job, "reason", &reason).await?;
                (DECLINED, Some(PaymentDeclined { order_id: job.order_id.clone(), reason }.into()))
            } else {
                let delay = backoff(job.attempts, settings).max(retry_after);
                let next = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                let updated = sqlx::query(
                    "UPDATE payments SET attempts = attempts + 1, next_attempt_at = $3, reason = $4,
                            status = CASE WHEN status = $5 THEN $6 ELSE status END, updated_at = $7
                     WHERE order_id = $1 AND status = $2",
                )
                .bind(&job.order_id)
                .bind(&job.status)
                .bind(next)
                .bind(reason)
                .bind(PENDING)
                .bind(DEFERRED)
                .bind(now)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if updated == 1 && job.status == PENDING {
                    let deferred = PaymentDeferred {
                        order_id: job.order_id.clone(),
                        reason: reason.clone(),
                        deadline_ms: job.deadline_at,
                    };
                    emit(&mut tx, job, deferred.into());
                }
                return tx.commit(relay).await;
            }
        }
    };
    let updated = sqlx::query(
        "UPDATE payments SET status = $3, attempts = attempts + 1, updated_at = $4 WHERE order_id = $1 AND status = $2",
    )
    .bind(&job.order_id)
    .bind(&job.status)
    .bind(status)
    .bind(now)
    .execute(tx.conn())
    .await?
    .rows_affected();
    if updated == 1 {
        if let Some(message) = message {
            emit(&mut tx, job, message);
        }
    }
    tx.commit(relay).await
}

async fn set_field(tx: &mut Tx, job: &Job, column: &str, value: &str) -> Result<(), sqlx::Error> {
    let sql = format!("UPDATE payments SET {column} = $2 WHERE order_id = $1 AND status = $3");
    sqlx::query(&sql).bind(&job.order_id).bind(value).bind(&job.status).execute(tx.conn()).await?;
    Ok(())
}

/// Events from the worker continue the saga of the event that queued the job.
fn emit(tx: &mut Tx, job: &Job, message: Message) {
    let mut envelope = Envelope::new(message, SERVICE);
    envelope.causation_id = job.cause_event_id.parse().ok();
    tx.emit_envelope(envelope);
}

/// Exponential back-off with full jitter over [min/2, delay].
fn backoff(attempts: i64, settings: QueueSettings) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    let delay = settings.retry_min.saturating_mul(2u32.saturating_pow(exponent)).min(settings.retry_max);
    let floor = delay / 2;
    floor + delay.saturating_sub(floor).mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let settings = QueueSettings {
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            poll: Duration::from_millis(100),
        };
        for _ in 0..50 {
            let first = backoff(0, settings);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
            let third = backoff(2, settings);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400), "{third:?}");
            let late = backoff(40, settings);
            assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2), "{late:?}");
        }
    }
}
