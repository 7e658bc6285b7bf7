//! Saga deadlines: every open state of an order (PENDING, PAYMENT_DEFERRED,
//! CANCELLING) carries a durable `deadline_at`, written with the transition, so
//! a saga event that was dead-lettered (or a service that never answers) cannot
//! leave an order open forever. [`run`] looks for overdue orders: a PENDING or
//! PAYMENT_DEFERRED one is cancelled (the usual compensation: payment-svc stops
//! or refunds, inventory releases); a CANCELLING one is handed to an operator,
//! with the reason in `attention`, logged and counted (`orders_needing_operator`).

use std::sync::Arc;
use std::time::Duration;

use events::OrderStatus;
use platform::db::{millis, now_ms};
use platform::{Db, HandlerError, Tx};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::orders::{load, request_cancellation};
use crate::SERVICE;

/// How long each open state may last.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// PENDING: from placement to a payment outcome (or a deferral).
    pub pending: Duration,
    /// PAYMENT_DEFERRED: this long past the payment's own deadline, by which
    /// payment-svc must have settled it.
    pub deferred_grace: Duration,
    /// CANCELLING: from the cancellation to the stock being back.
    pub cancelling: Duration,
    /// How often overdue orders are looked for.
    pub poll: Duration,
}

impl Deadlines {
    pub fn pending_from(&self, now: i64) -> i64 {
        now.saturating_add(millis(self.pending))
    }

    pub fn deferred_until(&self, payment_deadline_ms: i64) -> i64 {
        payment_deadline_ms.saturating_add(millis(self.deferred_grace))
    }

    pub fn cancelling_from(&self, now: i64) -> i64 {
        now.saturating_add(millis(self.cancelling))
    }
}

/// Orders looked at per round.
const BATCH: i64 = 100;

/// Acts on overdue orders until `stop`.
pub async fn run(
    db: Db,
    relay: Arc<Notify>,
    deadlines: Deadlines,
    stop: CancellationToken,
) -> Result<(), platform::Error> {
    loop {
        match overdue(&db).await {
            Ok(orders) => {
                for order_id in orders {
                    if let Err(error) = expire(&db, &relay, &order_id, &deadlines).await {
                        tracing::warn!(%order_id, %error, "acting on an overdue order; will try again");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "looking for overdue orders"),
        }
        tokio::select! {
            _ = tokio::time::sleep(deadlines.poll) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

async fn overdue(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT order_id FROM orders WHERE deadline_at <= $1 ORDER BY deadline_at LIMIT $2")
        .bind(now_ms())
        .bind(BATCH)
        .fetch_all(db.pool())
        .await
}

async fn expire(db: &Db, relay: &Notify, order_id: &str, deadlines: &Deadlines) -> Result<(), HandlerError> {
    let mut tx = Tx::begin(db, SERVICE).await?;
    let Some(order) = load(order_id, &mut tx).await? else { return Ok(()) };
    let state = order.status;
    metrics::counter!("saga_deadlines_expired_total", "service" => SERVICE, "status" => state.as_str()).increment(1);
    match state {
        OrderStatus::Pending | OrderStatus::PaymentDeferred => {
            let reason = format!("no payment outcome in time (still {state} at its saga deadline)");
            tracing::warn!(order_id, %reason, "saga deadline: compensating");
            request_cancellation(order, reason, deadlines, &mut tx).await?;
        }
        OrderStatus::Cancelling => {
            let reason = "compensation not finished by its saga deadline (still CANCELLING)";
            hand_to_operator(order_id, reason, &mut tx).await?;
        }
        // A transition raced the watchdog and cleared the deadline already.
        _ => return Ok(()),
    }
    tx.commit(relay).await?;
    Ok(())
}

/// Marks an order for an operator: no automatic step can finish it. Its
/// deadline is cleared, so it is reported once; a late event that does finish
/// it clears the mark.
pub async fn hand_to_operator(order_id: &str, reason: &str, tx: &mut Tx) -> Result<(), HandlerError> {
    sqlx::query("UPDATE orders SET attention = $2, deadline_at = NULL, updated_at = $3 WHERE order_id = $1")
        .bind(order_id)
        .bind(reason)
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
    tracing::error!(order_id, reason, "order handed to an operator");
    metrics::counter!("orders_handed_to_operator_total", "service" => SERVICE).increment(1);
    Ok(())
}
