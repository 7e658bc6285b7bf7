//! The order aggregate: placement, pricing and status transitions.

use events::{
    CancelOrder, OrderCancellationRequested, OrderCancelled, OrderConfirmed, OrderPlaced, OrderRejected, OrderStatus,
    PlaceOrder, PricedLine, StockReleased, StockReservationFailed, UserRegistered,
};
use platform::db::now_ms;
use platform::{HandlerError, Tx};
use sqlx::Row;

struct Order {
    order_id: String,
    user_id: String,
    status: OrderStatus,
    total_minor: i64,
    cancel_requested: bool,
    cancel_reason: String,
    version: i64,
}

async fn load(order_id: &str, tx: &mut Tx) -> Result<Option<Order>, HandlerError> {
    let row = sqlx::query(
        "SELECT order_id, user_id, status, total_minor, cancel_requested, cancel_reason, version
         FROM orders WHERE order_id = $1",
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
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
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
/// conflict, retried against the new state.
async fn update(order: &Order, status: OrderStatus, reason: Option<&str>, tx: &mut Tx) -> Result<(), HandlerError> {
    let updated = sqlx::query(
        "UPDATE orders SET status = $2, reason = COALESCE($3, reason), cancel_requested = $4,
                cancel_reason = $5, version = version + 1, updated_at = $6
         WHERE order_id = $1 AND version = $7",
    )
    .bind(&order.order_id)
    .bind(status.as_str())
    .bind(reason)
    .bind(i64::from(order.cancel_requested))
    .bind(&order.cancel_reason)
    .bind(now_ms())
    .bind(order.version)
    .execute(tx.conn())
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(HandlerError::transient(format!("order {} changed concurrently", order.order_id)));
    }
    tracing::info!(order_id = %order.order_id, from = order.status.as_str(), to = status.as_str(), "order status");
    Ok(())
}

pub async fn place_order(command: &PlaceOrder, tx: &mut Tx) -> Result<(), HandlerError> {
    if load(&command.order_id, tx).await?.is_some() {
        tracing::info!(order_id = %command.order_id, "PlaceOrder repeated; order already exists");
        return Ok(());
    }
    let (lines, problems) = price_lines(command, tx).await?;
    let user_known = sqlx::query("SELECT user_id FROM users WHERE user_id = $1")
        .bind(&command.user_id)
        .fetch_optional(tx.conn())
        .await?
        .is_some();
    let mut problems = problems;
    if !user_known {
        problems.insert(0, format!("unknown user {}", command.user_id));
    }
    let total_minor: i64 = lines.iter().map(|l| l.unit_price_minor * l.quantity).sum();
    let (status, reason) = if problems.is_empty() {
        (OrderStatus::Pending, None)
    } else {
        (OrderStatus::Rejected, Some(problems.join("; ")))
    };
    let now = now_ms();
    sqlx::query(
        "INSERT INTO orders (order_id, user_id, status, total_minor, payment_token, reason,
                             cancel_requested, cancel_reason, version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 0, '', 0, $7, $7)",
    )
    .bind(&command.order_id)
    .bind(&command.user_id)
    .bind(status.as_str())
    .bind(total_minor)
    .bind(&command.payment_token)
    .bind(reason.as_deref())
    .bind(now)
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

pub async fn cancel_order(command: &CancelOrder, tx: &mut Tx) -> Result<(), HandlerError> {
    let Some(mut order) = load(&command.order_id, tx).await? else {
        tracing::warn!(order_id = %command.order_id, "CancelOrder for an unknown order ignored");
        return Ok(());
    };
    let reason = if command.reason.is_empty() { "cancelled by customer".to_owned() } else { command.reason.clone() };
    match order.status {
        OrderStatus::Confirmed => {
            order.cancel_reason = reason.clone();
            update(&order, OrderStatus::Cancelling, None, tx).await?;
            tx.emit(OrderCancellationRequested { order_id: order.order_id, user_id: order.user_id, reason });
        }
        // Not paid yet: remember the wish, act on it when the payment settles.
        status if status.awaiting_payment() && !order.cancel_requested => {
            order.cancel_requested = true;
            order.cancel_reason = reason;
            update(&order, status, None, tx).await?;
        }
        status => {
            tracing::info!(order_id = %order.order_id, status = status.as_str(), "CancelOrder has nothing to do");
        }
    }
    Ok(())
}

pub async fn out_of_stock(failed: &StockReservationFailed, tx: &mut Tx) -> Result<(), HandlerError> {
    let order = load_existing(&failed.order_id, tx).await?;
    if !order.status.awaiting_payment() {
        return Ok(());
    }
    let short: Vec<String> = failed
        .short_lines
        .iter()
        .map(|l| format!("{} (requested {}, available {})", l.sku, l.requested, l.available))
        .collect();
    let reason = format!("out of stock: {}", short.join(", "));
    update(&order, OrderStatus::Rejected, Some(&reason), tx).await?;
    tx.emit(OrderRejected { order_id: order.order_id, user_id: order.user_id, reason });
    Ok(())
}

pub async fn payment_authorized(order_id: &str, tx: &mut Tx) -> Result<(), HandlerError> {
    let order = load_existing(order_id, tx).await?;
    if !order.status.awaiting_payment() {
        return Ok(());
    }
    if order.cancel_requested {
        // Cancelled while the payment was in flight: refund instead of confirming.
        update(&order, OrderStatus::Cancelling, None, tx).await?;
        tx.emit(OrderCancellationRequested {
            order_id: order.order_id,
            user_id: order.user_id,
            reason: order.cancel_reason,
        });
        return Ok(());
    }
    update(&order, OrderStatus::Confirmed, None, tx).await?;
    tx.emit(OrderConfirmed { order_id: order.order_id, user_id: order.user_id, total_minor: order.total_minor });
    Ok(())
}

pub async fn payment_deferred(order_id: &str, tx: &mut Tx) -> Result<(), HandlerError> {
    let order = load_existing(order_id, tx).await?;
    if order.status == OrderStatus::Pending {
        update(&order, OrderStatus::PaymentDeferred, None, tx).await?;
    }
    Ok(())
}

/// The last compensation: stock is back, so the order is cancelled (refunded
/// if it had been paid).
pub async fn stock_released(released: &StockReleased, tx: &mut Tx) -> Result<(), HandlerError> {
    let order = load_existing(&released.order_id, tx).await?;
    let refunded = match order.status {
        OrderStatus::Cancelling => true,
        status if status.awaiting_payment() => false,
        _ => return Ok(()),
    };
    let reason = if refunded { order.cancel_reason.clone() } else { released.reason.clone() };
    update(&order, OrderStatus::Cancelled, Some(&reason), tx).await?;
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
}
