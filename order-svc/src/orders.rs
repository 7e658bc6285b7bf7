//! The order aggregate: placement, pricing and status transitions.

use events::{
    CancelOrder, OrderCancellationRequested, OrderCancelled, OrderConfirmed, OrderPlaced, OrderRejected, OrderStatus,
    PaymentDeferred, PaymentRefundFailed, PlaceOrder, PricedLine, StockReleased, StockReservationFailed,
    UserRegistered,
};
use platform::db::now_ms;
use platform::{HandlerError, Tx};
use sqlx::Row;

use crate::deadlines::Deadlines;

pub(crate) struct Order {
    order_id: String,
    user_id: String,
    pub(crate) status: OrderStatus,
    total_minor: i64,
    cancel_reason: String,
    version: i64,
}

pub(crate) async fn load(order_id: &str, tx: &mut Tx) -> Result<Option<Order>, HandlerError> {
    let row = sqlx::query(
        "SELECT order_id, user_id, status, total_minor, cancel_reason, version FROM orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let status: String = row.try_get("status")?;
    Ok(Some(Order {
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        status: OrderStatus::parse(&status)
            .ok_or_else(|| HandlerError::permanent(format!("order {order_id} has unknown status {status}")))?,
        total_minor: row.try_get("total_minor")?,
        cancel_reason: row.try_get("cancel_reason")?,
        version: row.try_get("version")?,
    }))
}

/// Loads an order that a saga event refers to. A missing order means the event
/// is not about anything this service created: an invariant violation.
async fn load_existing(order_id: &str, tx: &mut Tx) -> Result<Order, HandlerError> {
    load(order_id, tx).await?.ok_or_else(|| HandlerError::permanent(format!("unknown order {order_id}")))
}

/// Compare-and-set on the version: a concurrent change makes this a transient
/// conflict, retried against the new state. `deadline_at` is when the new
/// status is overdue (none for a status the saga rests in).
pub(crate) async fn update(
    order: &Order,
    status: OrderStatus,
    reason: Option<&str>,
    deadline_at: Option<i64>,
    tx: &mut Tx,
) -> Result<(), HandlerError> {
    let updated = sqlx::query(
        "UPDATE orders SET status = $2, reason = COALESCE($3, reason), cancel_reason = $4, deadline_at = $5,
                attention = CASE WHEN $6 = 1 THEN NULL ELSE attention END, version = version + 1, updated_at = $7
         WHERE order_id = $1 AND version = $8",
    )
    .bind(&order.order_id)
    .bind(status.as_str())
    .bind(reason)
    .bind(&order.cancel_reason)
    .bind(deadline_at)
    .bind(i64::from(status.is_terminal()))
    .bind(now_ms())
    .bind(order.version)
    .execute(tx.conn())
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(HandlerError::transient(format!("order {} changed concurrently", order.order_id)));
    }
    tracing::debug!(order_id = %order.order_id, from = order.status.as_str(), to = status.as_str(), "order status");
    Ok(())
}

pub async fn place_order(command: &PlaceOrder, deadlines: &Deadlines, tx: &mut Tx) -> Result<(), HandlerError> {
    if load(&command.order_id, tx).await?.is_some() {
        tracing::debug!(order_id = %command.order_id, "PlaceOrder repeated; order already exists");
        return Ok(());
    }
    let user_known = sqlx::query("SELECT user_id FROM users WHERE user_id = $1")
        .bind(&command.user_id)
        .fetch_optional(tx.conn())
        .await?
        .is_some();
    let (lines, mut problems) = price_lines(command, tx).await?;
    if !user_known {
        problems.insert(0, format!("unknown user {}", command.user_id));
    }
    if !problems.is_empty() {
        // A user or product registered just before this order may still be on
        // its way to our projection: wait a bounded while for it.
        tx.wait_for_projection(&problems.join(", "))?;
    }
    let total_minor = match order_total(&lines) {
        Some(total) => total,
        None => {
            problems.push("order total is beyond what the shop can charge".to_owned());
            0
        }
    };
    let (status, reason) = if problems.is_empty() {
        (OrderStatus::Pending, None)
    } else {
        (OrderStatus::Rejected, Some(problems.join("; ")))
    };
    let now = now_ms();
    let deadline_at = reason.is_none().then(|| deadlines.pending_from(now));
    sqlx::query(
        "INSERT INTO orders (order_id, user_id, status, total_minor, payment_token, reason,
                             cancel_reason, version, created_at, updated_at, deadline_at)
         VALUES ($1, $2, $3, $4, $5, $6, '', 0, $7, $7, $8)",
    )
    .bind(&command.order_id)
    .bind(&command.user_id)
    .bind(status.as_str())
    .bind(total_minor)
    .bind(&command.payment_token)
    .bind(reason.as_deref())
    .bind(now)
    .bind(deadline_at)
    .execute(tx.conn())
    .await?;
    for line in &lines {
        sqlx::query("INSERT INTO order_lines (order_id, sku, quantity, unit_price_minor) VALUES ($1, $2, $3, $4)")
            .bind(&command.order_id)
            .bind(&line.sku)
            .bind(line.quantity)
            .bind(line.unit_price_minor)
            .execute(tx.conn())
            .await?;
    }
    match reason {
        Some(reason) => {
            tracing::info!(order_id = %command.order_id, %reason, "order rejected at placement");
            tx.emit(OrderRejected { order_id: command.order_id.clone(), user_id: command.user_id.clone(), reason });
        }
        None => tx.emit(OrderPlaced {
            order_id: command.order_id.clone(),
            user_id: command.user_id.clone(),
            lines,
            total_minor,
            payment_token: command.payment_token.clone(),
        }),
    }
    Ok(())
}

/// The sum of the lines, or `None` if it does not fit: amounts are checked,
/// never wrapped.
fn order_total(lines: &[PricedLine]) -> Option<i64> {
    lines.iter().try_fold(0i64, |total, line| total.checked_add(line.unit_price_minor.checked_mul(line.quantity)?))
}

/// Prices each line from the product projection; unknown SKUs are reported.
async fn price_lines(command: &PlaceOrder, tx: &mut Tx) -> Result<(Vec<PricedLine>, Vec<String>), HandlerError> {
    let mut lines = Vec::with_capacity(command.lines.len());
    let mut problems = Vec::new();
    for line in &command.lines {
        let price: Option<i64> = sqlx::query_scalar("SELECT price_minor FROM products WHERE sku = $1")
            .bind(&line.sku)
            .fetch_optional(tx.conn())
            .await?;
        match price {
            Some(unit_price_minor) => {
                lines.push(PricedLine { sku: line.sku.clone(), quantity: line.quantity, unit_price_minor })
            }
            None => problems.push(format!("unknown product {}", line.sku)),
        }
    }
    Ok((lines, problems))
}

/// A cancellation, from the customer or from a saga deadline. A paid order is
/// refunded; an unpaid one is stopped (payment-svc decides, since only it knows
/// whether a charge is in flight, and refunds if the charge won the race).
/// Either way the order is CANCELLING until the stock is back.
pub async fn cancel_order(command: &CancelOrder, deadlines: &Deadlines, tx: &mut Tx) -> Result<(), HandlerError> {
    let Some(order) = load(&command.order_id, tx).await? else {
        tracing::warn!(order_id = %command.order_id, "CancelOrder for an unknown order ignored");
        return Ok(());
    };
    let reason = if command.reason.is_empty() { "cancelled by customer".to_owned() } else { command.reason.clone() };
    request_cancellation(order, reason, deadlines, tx).await
}

pub(crate) async fn request_cancellation(
    mut order: Order,
    reason: String,
    deadlines: &Deadlines,
    tx: &mut Tx,
) -> Result<(), HandlerError> {
    if !(order.status == OrderStatus::Confirmed || order.status.awaiting_payment()) {
        tracing::info!(order_id = %order.order_id, status = order.status.as_str(), "cancellation has nothing to do");
        return Ok(());
    }
    order.cancel_reason = reason.clone();
    update(&order, OrderStatus::Cancelling, None, Some(deadlines.cancelling_from(now_ms())), tx).await?;
    tx.emit(OrderCancellationRequested { order_id: order.order_id, user_id: order.user_id, reason });
    Ok(())
}

pub async fn out_of_stock(failed: &StockReservationFailed, tx: &mut Tx) -> Result<(), HandlerError> {
    let order = load_existing(&failed.order_id, tx).await?;
    let short: Vec<String> = failed
        .short_lines
        .iter()
        .map(|l| format!("{} (requested {}, available {})", l.sku, l.requested, l.available))
        .collect();
    let reason = format!("out of stock: {}", short.join(", "));
    match order.status {
        status if status.awaiting_payment() => {
            update(&order, OrderStatus::Rejected, Some(&reason), None, tx).await?;
            tx.emit(OrderRejected { order_id: order.order_id, user_id: order.user_id, reason });
        }
        // Cancelled before the reservation failed: nothing was taken or charged,
        // and no StockReleased will come, so this ends it.
        OrderStatus::Cancelling => finish_cancelled(order, false, tx).await?,
        _ => {}
    }
    Ok(())
}

pub async fn payment_authorized(order_id: &str, tx: &mut Tx) -> Result<(), HandlerError> {
    let order = load_existing(order_id, tx).await?;
    // CANCELLING: payment-svc saw the cancellation too, and refunds this charge.
    if !order.status.awaiting_payment() {
        return Ok(());
    }
    update(&order, OrderStatus::Confirmed, None, None, tx).await?;
    tx.emit(OrderConfirmed { order_id: order.order_id, user_id: order.user_id, total_minor: order.total_minor });
    Ok(())
}

pub async fn payment_deferred(
    deferred: &PaymentDeferred,
    deadlines: &Deadlines,
    tx: &mut Tx,
) -> Result<(), HandlerError> {
    let order = load_existing(&deferred.order_id, tx).await?;
    if order.status == OrderStatus::Pending {
        update(&order, OrderStatus::PaymentDeferred, None, Some(deadlines.deferred_until(deferred.deadline_ms)), tx)
            .await?;
    }
    Ok(())
}

/// The gateway refused a refund owed to the customer: an operator's case.
pub async fn refund_failed(failed: &PaymentRefundFailed, tx: &mut Tx) -> Result<(), HandlerError> {
    let reason = format!("refund of charge {} refused by the gateway: {}", failed.charge_id, failed.reason);
    crate::deadlines::hand_to_operator(&failed.order_id, &reason, tx).await
}

/// The last compensation: stock is back, so the order is cancelled (refunded
/// if it had been paid).
pub async fn stock_released(released: &StockReleased, tx: &mut Tx) -> Result<(), HandlerError> {
    let mut order = load_existing(&released.order_id, tx).await?;
    match order.status {
        OrderStatus::Cancelling => finish_cancelled(order, released.refunded, tx).await,
        // Declined, or not through by the payment deadline (refunded if a call
        // that looked failed had charged).
        status if status.awaiting_payment() => {
            order.cancel_reason = released.reason.clone();
            finish_cancelled(order, released.refunded, tx).await
        }
        _ => Ok(()),
    }
}

async fn finish_cancelled(order: Order, refunded: bool, tx: &mut Tx) -> Result<(), HandlerError> {
    let reason = order.cancel_reason.clone();
    update(&order, OrderStatus::Cancelled, Some(&reason), None, tx).await?;
    sqlx::query("UPDATE orders SET refunded = $2 WHERE order_id = $1")
        .bind(&order.order_id)
        .bind(i64::from(refunded))
        .execute(tx.conn())
        .await?;
    tx.emit(OrderCancelled { order_id: order.order_id, user_id: order.user_id, reason, refunded });
    Ok(())
}

pub async fn project_user(user: &UserRegistered, tx: &mut Tx) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO users (user_id, name) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING")
        .bind(&user.user_id)
        .bind(&user.name)
        .execute(tx.conn())
        .await?;
    Ok(())
}

pub async fn project_price(sku: &str, name: &str, price_minor: i64, tx: &mut Tx) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO products (sku, name, price_minor) VALUES ($1, $2, $3)
         ON CONFLICT (sku) DO UPDATE SET name = $2, price_minor = $3",
    )
    .bind(sku)
    .bind(name)
    .bind(price_minor)
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub async fn change_price(sku: &str, price_minor: i64, tx: &mut Tx) -> Result<(), HandlerError> {
    let updated = sqlx::query("UPDATE products SET price_minor = $2 WHERE sku = $1")
        .bind(sku)
        .bind(price_minor)
        .execute(tx.conn())
        .await?
        .rows_affected();
    if updated == 0 {
        // product.events is keyed by SKU, so ProductCreated always comes first.
        return Err(HandlerError::permanent(format!("PriceChanged for unknown product {sku}")));
    }
    Ok(())
}

/// Saga outcomes for /metrics: orders by status, read from the table so the
/// figure is exact across restarts and replicas.
pub async fn export_outcomes(db: platform::Db) {
    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status").fetch_all(db.pool()).await;
    let Ok(rows) = rows else { return };
    for row in rows {
        if let (Ok(status), Ok(n)) = (row.try_get::<String, _>("status"), row.try_get::<i64, _>("n")) {
            metrics::gauge!("orders_by_status", "service" => crate::SERVICE, "status" => status).set(n as f64);
        }
    }
    let attention = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM orders WHERE attention IS NOT NULL")
        .fetch_one(db.pool())
        .await;
    if let Ok(n) = attention {
        metrics::gauge!("orders_needing_operator", "service" => crate::SERVICE).set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(quantity: i64, unit_price_minor: i64) -> PricedLine {
        PricedLine { sku: "S".into(), quantity, unit_price_minor }
    }

    #[test]
    fn totals_are_checked_not_wrapped() {
        assert_eq!(order_total(&[line(2, 1250), line(1, 100)]), Some(2600));
        // 4611686018427387904 units at 4000.00 wrapped to 0.00 before.
        assert_eq!(order_total(&[line(4_611_686_018_427_387_904, 400_000)]), None);
        assert_eq!(order_total(&[line(1, i64::MAX), line(1, 1)]), None);
    }
}
