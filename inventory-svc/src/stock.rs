//! Stock levels and reservations.

use events::{
    OrderLine, OrderPlaced, ShortLine, StockCommitted, StockReceived, StockReleased, StockReservationFailed,
    StockReserved,
};
use platform::db::now_ms;
use platform::{HandlerError, Tx};
use sqlx::Row;

const RESERVED: &str = "RESERVED";
const COMMITTED: &str = "COMMITTED";
const RELEASED: &str = "RELEASED";
const FAILED: &str = "FAILED";

/// Stock in: a new product's initial stock, or a restock.
pub async fn receive(sku: &str, quantity: i64, new_product: bool, tx: &mut Tx) -> Result<(), HandlerError> {
    let changed = if new_product {
        sqlx::query(
            "INSERT INTO stock (sku, available, reserved, sold, received) VALUES ($1, $2, 0, 0, $2)
             ON CONFLICT (sku) DO NOTHING",
        )
        .bind(sku)
        .bind(quantity)
        .execute(tx.conn())
        .await?
        .rows_affected()
    } else {
        sqlx::query("UPDATE stock SET available = available + $2, received = received + $2 WHERE sku = $1")
            .bind(sku)
            .bind(quantity)
            .execute(tx.conn())
            .await?
            .rows_affected()
    };
    if changed == 0 {
        // product.events is keyed by SKU, so creation always precedes restocks.
        let what = if new_product { "ProductCreated for an existing SKU" } else { "restock of an unknown SKU" };
        return Err(HandlerError::permanent(format!("{what}: {sku}")));
    }
    let available: i64 =
        sqlx::query_scalar("SELECT available FROM stock WHERE sku = $1").bind(sku).fetch_one(tx.conn()).await?;
    tx.emit(StockReceived { sku: sku.to_owned(), quantity, available });
    Ok(())
}

/// Reserves every line or none. Lines are taken in SKU order so that two
/// reservations on PostgreSQL lock rows in the same order and cannot deadlock.
pub async fn reserve(order: &OrderPlaced, tx: &mut Tx) -> Result<(), HandlerError> {
    let exists = sqlx::query("SELECT status FROM reservations WHERE order_id = $1")
        .bind(&order.order_id)
        .fetch_optional(tx.conn())
        .await?;
    if exists.is_some() {
        return Ok(());
    }
    let mut lines: Vec<OrderLine> =
        order.lines.iter().map(|l| OrderLine { sku: l.sku.clone(), quantity: l.quantity }).collect();
    lines.sort_by(|a, b| a.sku.cmp(&b.sku));

    let mut taken: Vec<&OrderLine> = Vec::new();
    let mut short: Vec<ShortLine> = Vec::new();
    for line in &lines {
        let reserved = sqlx::query(
            "UPDATE stock SET available = available - $2, reserved = reserved + $2
             WHERE sku = $1 AND available >= $2",
        )
        .bind(&line.sku)
        .bind(line.quantity)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if reserved == 1 {
            taken.push(line);
            continue;
        }
        let available: Option<i64> = sqlx::query_scalar("SELECT available FROM stock WHERE sku = $1")
            .bind(&line.sku)
            .fetch_optional(tx.conn())
            .await?;
        match available {
            Some(available) => short.push(ShortLine { sku: line.sku.clone(), requested: line.quantity, available }),
            // order-svc knew this product, so its ProductCreated is on its way to
            // us on another topic: wait for it rather than reject the order.
            None => return Err(HandlerError::transient(format!("SKU {} not yet known to inventory", line.sku))),
        }
    }
    let status = if short.is_empty() { RESERVED } else { FAILED };
    if !short.is_empty() {
        // All or nothing: hand back what this order took, in this transaction.
        for line in taken {
            move_units(&line.sku, line.quantity, "reserved", "available", tx).await?;
        }
    }
    let now = now_ms();
    sqlx::query("INSERT INTO reservations (order_id, status, created_at, updated_at) VALUES ($1, $2, $3, $3)")
        .bind(&order.order_id)
        .bind(status)
        .bind(now)
        .execute(tx.conn())
        .await?;
    for line in &lines {
        sqlx::query("INSERT INTO reservation_lines (order_id, sku, quantity) VALUES ($1, $2, $3)")
            .bind(&order.order_id)
            .bind(&line.sku)
            .bind(line.quantity)
            .execute(tx.conn())
            .await?;
    }
    if short.is_empty() {
        tx.emit(StockReserved {
            order_id: order.order_id.clone(),
            lines,
            total_minor: order.total_minor,
            payment_token: order.payment_token.clone(),
        });
    } else {
        tx.emit(StockReservationFailed { order_id: order.order_id.clone(), short_lines: short });
    }
    Ok(())
}

/// Payment went through: reserved units become sold.
pub async fn commit(order_id: &str, tx: &mut Tx) -> Result<(), HandlerError> {
    let Some(lines) = transition(order_id, &[RESERVED], COMMITTED, tx).await? else { return Ok(()) };
    for line in &lines {
        move_units(&line.sku, line.quantity, "reserved", "sold", tx).await?;
    }
    tx.emit(StockCommitted { order_id: order_id.to_owned() });
    Ok(())
}

/// Compensation: reserved (payment declined, or refunded before we saw the
/// confirmation) or sold (refund after confirmation) units go back to available.
pub async fn release(order_id: &str, reason: &str, tx: &mut Tx) -> Result<(), HandlerError> {
    let status = reservation_status(order_id, tx).await?;
    let Some(lines) = transition(order_id, &[RESERVED, COMMITTED], RELEASED, tx).await? else { return Ok(()) };
    let from = if status.as_deref() == Some(COMMITTED) { "sold" } else { "reserved" };
    for line in &lines {
        move_units(&line.sku, line.quantity, from, "available", tx).await?;
    }
    tx.emit(StockReleased { order_id: order_id.to_owned(), lines, reason: reason.to_owned() });
    Ok(())
}

async fn reservation_status(order_id: &str, tx: &mut Tx) -> Result<Option<String>, HandlerError> {
    Ok(sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(tx.conn())
        .await?)
}

/// Moves a reservation from one of `from` to `to`, returning its lines, or
/// `None` when it is in another state (a repeated or late event: nothing to do).
async fn transition(
    order_id: &str,
    from: &[&str],
    to: &str,
    tx: &mut Tx,
) -> Result<Option<Vec<OrderLine>>, HandlerError> {
    let Some(status) = reservation_status(order_id, tx).await? else {
        return Err(HandlerError::permanent(format!("no reservation for order {order_id}")));
    };
    if !from.contains(&status.as_str()) {
        tracing::debug!(order_id, status, to, "reservation transition skipped");
        return Ok(None);
    }
    let updated =
        sqlx::query("UPDATE reservations SET status = $3, updated_at = $4 WHERE order_id = $1 AND status = $2")
            .bind(order_id)
            .bind(&status)
            .bind(to)
            .bind(now_ms())
            .execute(tx.conn())
            .await?
            .rows_affected();
    if updated == 0 {
        return Err(HandlerError::transient(format!("reservation {order_id} changed concurrently")));
    }
    let rows = sqlx::query("SELECT sku, quantity FROM reservation_lines WHERE order_id = $1 ORDER BY sku")
        .bind(order_id)
        .fetch_all(tx.conn())
        .await?;
    let lines = rows
        .iter()
        .map(|r| Ok(OrderLine { sku: r.try_get("sku")?, quantity: r.try_get("quantity")? }))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(lines))
}

/// Moves `quantity` units of `sku` between two of the stock columns; refuses to
/// take a column below zero (which would mean the books are already wrong).
async fn move_units(sku: &str, quantity: i64, from: &str, to: &str, tx: &mut Tx) -> Result<(), HandlerError> {
    let sql = format!("UPDATE stock SET {from} = {from} - $2, {to} = {to} + $2 WHERE sku = $1 AND {from} >= $2");
    let moved = sqlx::query(&sql).bind(sku).bind(quantity).execute(tx.conn()).await?.rows_affected();
    if moved == 0 {
        return Err(HandlerError::permanent(format!("stock of {sku}: cannot move {quantity} from {from} to {to}")));
    }
    Ok(())
}
