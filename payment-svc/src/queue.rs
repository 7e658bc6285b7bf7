//! The payment queue: every charge and refund is a row in `payments`, written by
//! the consumer in the transaction that applied the triggering event, and worked
//! off by [`run`]. This is also the durable fallback queue: a payment the gateway
//! could not take (breaker open, timeout, 5xx) stays DEFERRED with a next attempt
//! time and is retried with back-off until its deadline. Refunds have no
//! deadline: money owed back is retried until the gateway takes it.
//!
//! A charge is compensated (PaymentDeclined, so the stock is released) when its
//! deadline passes or the order was cancelled while it was queued. If an earlier
//! call may have charged (it timed out, or got a 5xx), the charge is first looked
//! up by its idempotency key: charged means refunded, never kept. A cancellation
//! and a charge in flight race on the row: the charge is recorded only if no stop
//! was requested meanwhile, and otherwise refunded.
//!
//! Because the queue is a table, it survives restarts; because calls carry an
//! idempotency key, a call repeated after a crash moves no money twice. Replicas
//! on one PostgreSQL database share the queue: a worker claims the rows it takes
//! (`claim_due_jobs`), so each attempt is made by one of them, once.

use std::sync::Arc;
use std::time::Duration;

use events::{
    Envelope, Message, PaymentAuthorized, PaymentDeclined, PaymentDeferred, PaymentRefundFailed, PaymentRefunded,
};
use platform::db::{millis, now_ms};
use platform::{Db, Tx};
use sqlx::Row;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::gateway::{ChargeRequest, Gateway, Lookup, Outcome, RefundRequest};
use crate::status::{PaymentStatus, QUEUED_SQL};
use crate::SERVICE;

/// How the worker paces retries of deferred payments.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub poll: Duration,
    /// How long a taken job stays claimed if its outcome is never recorded (the
    /// replica died): longer than one turn can take, so a live claim never
    /// lapses into a second call.
    pub claim_lease: Duration,
}

#[derive(Debug, Clone)]
struct Job {
    order_id: String,
    status: PaymentStatus,
    amount_minor: i64,
    payment_token: String,
    charge_id: Option<String>,
    attempts: i64,
    deadline_at: i64,
    cause_event_id: String,
    ambiguous: bool,
    stop_reason: Option<String>,
}

/// What one turn of a job came to, to be recorded.
#[derive(Debug)]
enum Step {
    Authorized {
        charge_id: String,
    },
    Declined {
        reason: String,
    },
    /// No money moved and none will: a cancellation (CANCELLED) or the deadline (DECLINED).
    Stopped {
        status: PaymentStatus,
        reason: String,
    },
    /// A stop was requested, but the charge had gone through: refund it.
    RefundCharge {
        charge_id: String,
    },
    Refunded {
        refund_id: String,
    },
    RefundRefused {
        reason: String,
    },
    /// The gateway gave no usable answer: try again after a back-off.
    Retry {
        reason: String,
        ambiguous: bool,
    },
}

/// Takes up to `limit` due jobs, claiming them for `lease`. On PostgreSQL the
/// candidates are locked as they are chosen and rows another worker is claiming
/// at that moment are skipped (`FOR UPDATE SKIP LOCKED`); a row it claimed a
/// moment ago is no longer due to us, since the claim is re-checked on the
/// locked row. SQLite has one writer, and one replica.
///
/// Recording an outcome ends a claim (`claimed_until = 0`), so a claim still
/// standing when it is taken again was left by a worker that died during its
/// turn, and whether that turn's call moved money is unknown: the job is then
/// ambiguous, and settled by key before it can be stopped.
async fn claim_due_jobs(db: &Db, limit: i64, lease: Duration) -> Result<Vec<Job>, sqlx::Error> {
    let skip_locked = if db.is_sqlite() { "" } else { "FOR UPDATE SKIP LOCKED" };
    let sql = format!(
        "UPDATE payments SET claimed_until = $2, ambiguous = CASE WHEN claimed_until > 0 THEN 1 ELSE ambiguous END
         WHERE order_id IN (
             SELECT order_id FROM payments
             WHERE status IN {QUEUED_SQL} AND next_attempt_at <= $1 AND claimed_until <= $1
             ORDER BY next_attempt_at LIMIT $3 {skip_locked})
         RETURNING order_id, status, amount_minor, payment_token, charge_id, attempts, deadline_at, cause_event_id,
                   ambiguous, stop_reason"
    );
    let now = now_ms();
    let rows =
        sqlx::query(&sql).bind(now).bind(now.saturating_add(millis(lease))).bind(limit).fetch_all(db.writer()).await?;
    rows.iter()
        .map(|r| {
            let status: String = r.try_get("status")?;
            Ok(Job {
                order_id: r.try_get("order_id")?,
                status: PaymentStatus::parse(&status)
                    .ok_or_else(|| sqlx::Error::Decode(format!("unknown payment status {status}").into()))?,
                amount_minor: r.try_get("amount_minor")?,
                payment_token: r.try_get("payment_token")?,
                charge_id: r.try_get("charge_id")?,
                attempts: r.try_get("attempts")?,
                deadline_at: r.try_get("deadline_at")?,
                cause_event_id: r.try_get("cause_event_id")?,
                ambiguous: r.try_get::<i64, _>("ambiguous")? != 0,
                stop_reason: r.try_get("stop_reason")?,
            })
        })
        .collect()
}

/// Rows waiting for the gateway (the fallback queue's depth).
pub async fn depth(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM payments WHERE status IN {QUEUED_SQL}"))
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
    let bulkhead = gateway.bulkhead();
    let mut calls = JoinSet::new();
    loop {
        // Only this loop takes slots, so every job claimed here gets one at once.
        let free = bulkhead.available_permits();
        if free > 0 {
            match claim_due_jobs(&db, free as i64, settings.claim_lease).await {
                Ok(jobs) => {
                    for job in jobs {
                        let Ok(permit) = bulkhead.clone().acquire_owned().await else { break };
                        let (db, gateway, relay) = (db.clone(), gateway.clone(), relay.clone());
                        calls.spawn(async move {
                            let step = turn(&gateway, &job).await;
                            tracing::info!(order_id = %job.order_id, status = %job.status, ?step, "payment step");
                            record_with_retries(&db, &relay, &job, step, gateway.breaker().retry_after(), settings)
                                .await;
                            drop(permit);
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "claiming due payments"),
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
    // only mean repeating it (safely) after its claim expires, but finishing is
    // cheaper.
    while calls.join_next().await.is_some() {}
    Ok(())
}

/// One turn of a job: a refund, a charge, or, for a charge that is to be
/// stopped (cancelled, or past its deadline), settling whether money moved.
async fn turn(gateway: &Gateway, job: &Job) -> Step {
    if job.status == PaymentStatus::RefundPending {
        let request = RefundRequest {
            idempotency_key: format!("refund:{}", job.order_id),
            charge_id: job.charge_id.clone().unwrap_or_default(),
            amount_minor: job.amount_minor,
        };
        return match gateway.refund(&request).await {
            Outcome::Approved { id } => Step::Refunded { refund_id: id },
            Outcome::Declined { reason } => Step::RefundRefused { reason },
            Outcome::Unavailable { reason, ambiguous } => Step::Retry { reason, ambiguous },
            Outcome::NotFound => not_found(),
        };
    }
    let stop = match &job.stop_reason {
        Some(reason) => Some((PaymentStatus::Cancelled, reason.clone())),
        None if now_ms() >= job.deadline_at => {
            Some((PaymentStatus::Declined, "payment not through by its deadline".to_owned()))
        }
        None => None,
    };
    if let Some((status, reason)) = stop {
        if !job.ambiguous {
            return Step::Stopped { status, reason };
        }
        return match gateway.find_charge(&job.order_id).await {
            Lookup::Charged { id } => Step::RefundCharge { charge_id: id },
            Lookup::NotCharged => Step::Stopped { status, reason },
            // Still unknown: the payment cannot be compensated until it is known.
            Lookup::Unavailable { reason } => {
                Step::Retry { reason: format!("settling the charge: {reason}"), ambiguous: true }
            }
        };
    }
    let request = ChargeRequest {
        idempotency_key: job.order_id.clone(),
        amount_minor: job.amount_minor,
        payment_token: job.payment_token.clone(),
    };
    match gateway.charge(&request).await {
        Outcome::Approved { id } => Step::Authorized { charge_id: id },
        Outcome::Declined { reason } => Step::Declined { reason },
        Outcome::Unavailable { reason, ambiguous } => Step::Retry { reason, ambiguous },
        Outcome::NotFound => not_found(),
    }
}

/// A charge or refund endpoint that answers 404 is misconfigured: nothing was
/// done, so it is tried again later.
fn not_found() -> Step {
    Step::Retry { reason: "gateway answered 404 Not Found".to_owned(), ambiguous: false }
}

async fn record_with_retries(
    db: &Db,
    relay: &Notify,
    job: &Job,
    step: Step,
    retry_after: Duration,
    settings: QueueSettings,
) {
    // A failure to record is retried by the next poll: the row is still due, and
    // the idempotency key makes the repeated call harmless.
    let mut tries = 0;
    while let Err(error) = record(db, relay, job, &step, retry_after, settings).await {
        tries += 1;
        tracing::warn!(order_id = %job.order_id, %error, tries, "recording payment outcome");
        if tries >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 * tries)).await;
    }
}

/// Applies a step to the row and emits the matching event, in one transaction.
/// Every update is guarded by the status the job was read in, so a stale or
/// repeated step is a no-op; a charge is recorded only if no stop was requested
/// since, and otherwise becomes a refund.
async fn record(
    db: &Db,
    relay: &Notify,
    job: &Job,
    step: &Step,
    retry_after: Duration,
    settings: QueueSettings,
) -> Result<(), sqlx::Error> {
    use PaymentStatus as S;
    let mut tx = Tx::begin(db, SERVICE).await?;
    let now = now_ms();
    let order_id = job.order_id.clone();
    match step {
        Step::Authorized { charge_id } => {
            let authorized =
                set(&mut tx, job, S::Authorized, "charge_id", charge_id, "AND stop_reason IS NULL").await?;
            if authorized {
                let paid = PaymentAuthorized { order_id, charge_id: charge_id.clone(), amount_minor: job.amount_minor };
                emit(&mut tx, job, paid.into());
            } else if set(&mut tx, job, S::RefundPending, "charge_id", charge_id, "").await? {
                tracing::info!(%order_id, "cancelled while the charge was in flight: refunding it");
            }
        }
        Step::RefundCharge { charge_id } => {
            if set(&mut tx, job, S::RefundPending, "charge_id", charge_id, "").await? {
                tracing::warn!(%order_id, %charge_id, "a call that looked failed had charged: refunding it");
            }
        }
        Step::Declined { reason } => {
            if set(&mut tx, job, S::Declined, "reason", reason, "").await? {
                emit(&mut tx, job, PaymentDeclined { order_id, reason: reason.clone() }.into());
            }
        }
        Step::Stopped { status, reason } => {
            if set(&mut tx, job, *status, "reason", reason, "").await? {
                emit(&mut tx, job, PaymentDeclined { order_id, reason: reason.clone() }.into());
            }
        }
        Step::Refunded { refund_id } => {
            if set(&mut tx, job, S::Refunded, "refund_id", refund_id, "").await? {
                let refunded = PaymentRefunded {
                    order_id,
                    charge_id: job.charge_id.clone().unwrap_or_default(),
                    refund_id: refund_id.clone(),
                    amount_minor: job.amount_minor,
                };
                emit(&mut tx, job, refunded.into());
            }
        }
        Step::RefundRefused { reason } => {
            if set(&mut tx, job, S::RefundRefused, "reason", reason, "").await? {
                tracing::error!(%order_id, %reason, "refund refused by the gateway; needs a human");
                let charge_id = job.charge_id.clone().unwrap_or_default();
                emit(&mut tx, job, PaymentRefundFailed { order_id, charge_id, reason: reason.clone() }.into());
            }
        }
        Step::Retry { reason, ambiguous } => {
            let delay = backoff(job.attempts, settings).max(retry_after);
            let next = now.saturating_add(millis(delay));
            let status = if job.status == S::Pending { S::Deferred } else { job.status };
            // A stop requested since the job was read is acted on at once, not
            // after the back-off; a stop that this turn already tried to settle
            // backs off like any other call.
            let updated = sqlx::query(
                "UPDATE payments SET attempts = attempts + 1, reason = $3, status = $4, updated_at = $5, claimed_until = 0,
                        ambiguous = CASE WHEN $6 = 1 THEN 1 ELSE ambiguous END,
                        next_attempt_at = CASE WHEN stop_reason IS NULL OR $8 = 1 THEN $7 ELSE $5 END
                 WHERE order_id = $1 AND status = $2",
            )
            .bind(&job.order_id)
            .bind(job.status.as_str())
            .bind(reason)
            .bind(status.as_str())
            .bind(now)
            .bind(i64::from(*ambiguous))
            .bind(next)
            .bind(i64::from(job.stop_reason.is_some()))
            .execute(tx.conn())
            .await?
            .rows_affected();
            if updated == 1 && job.status == S::Pending {
                let deferred = PaymentDeferred { order_id, reason: reason.clone(), deadline_ms: job.deadline_at };
                emit(&mut tx, job, deferred.into());
            }
        }
    }
    tx.commit(relay).await
}

/// Moves the job's row from the status it was read in to `to`, setting one
/// more column; `extra` adds to the guard. Whether the row was still there to move.
async fn set(
    tx: &mut Tx,
    job: &Job,
    to: PaymentStatus,
    column: &str,
    value: &str,
    extra: &str,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "UPDATE payments SET status = $3, {column} = $4, attempts = attempts + 1, next_attempt_at = $5, updated_at = $5,
                             claimed_until = 0
         WHERE order_id = $1 AND status = $2 {extra}"
    );
    let updated = sqlx::query(&sql)
        .bind(&job.order_id)
        .bind(job.status.as_str())
        .bind(to.as_str())
        .bind(value)
        .bind(now_ms())
        .execute(tx.conn())
        .await?
        .rows_affected();
    Ok(updated == 1)
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
            claim_lease: Duration::from_secs(30),
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
