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
    // The reservation row first: it claims the order id, so a release racing
    // in on another topic either finds it or leaves its tombstone, never both.
    let claimed = sqlx::query(
        "INSERT INTO reservations (order_id, status, created_at, updated_at) VALUES ($1, $2, $3, $3)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&order.order_id)
    .bind(RESERVED)
    .bind(now_ms())
    .execute(tx.conn())
    .await?
    .rows_affected();
    if claimed == 0 {
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
            // order-svc knew this product, so its ProductCreated is on its way
            // to us on another topic: wait a while for it, then say it is short.
            None => {
                tx.wait_for_projection(&format!("SKU {}", line.sku))?;
                short.push(ShortLine { sku: line.sku.clone(), requested: line.quantity, available: 0 });
            }
        }
    }
    if !short.is_empty() {
        // All or nothing: hand back what this order took, in this transaction.
        for line in taken {
            move_units(&line.sku, line.quantity, "reserved", "available", tx).await?;
        }
        sqlx::query("UPDATE reservations SET status = $2 WHERE order_id = $1")
            .bind(&order.order_id)
            .bind(FAILED)
            .execute(tx.conn())
            .await?;
    }
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
    let Some((_, lines)) = transition(order_id, &[RESERVED], COMMITTED, tx).await? else { return Ok(()) };
    for line in &lines {
        move_units(&line.sku, line.quantity, "reserved", "sold", tx).await?;
    }
    tx.emit(StockCommitted { order_id: order_id.to_owned() });
    Ok(())
}

/// Compensation: reserved (payment declined, or refunded before we saw the
/// confirmation) or sold (refund after confirmation) units go back to available.
///
/// A release can overtake the reservation it undoes (payment.events is read
/// beside order.events): then nothing was taken, and the tombstone this leaves
/// makes the late OrderPlaced a no-op. A FAILED reservation took nothing and
/// order-svc ends that order on StockReservationFailed, so nothing is emitted.
pub async fn release(order_id: &str, reason: &str, refunded: bool, tx: &mut Tx) -> Result<(), HandlerError> {
    let released = |lines| StockReleased { order_id: order_id.to_owned(), lines, reason: reason.to_owned(), refunded };
    let tombstone = sqlx::query(
        "INSERT INTO reservations (order_id, status, created_at, updated_at) VALUES ($1, $2, $3, $3)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(RELEASED)
    .bind(now_ms())
    .execute(tx.conn())
    .await?
    .rows_affected();
    if tombstone == 1 {
        tracing::info!(order_id, "released before it was reserved: nothing to hand back");
        tx.emit(released(Vec::new()));
        return Ok(());
    }
    let Some((prior, lines)) = transition(order_id, &[RESERVED, COMMITTED], RELEASED, tx).await? else {
        return Ok(());
    };
    let from = if prior == COMMITTED { "sold" } else { "reserved" };
    for line in &lines {
        move_units(&line.sku, line.quantity, from, "available", tx).await?;
    }
    tx.emit(released(lines));
    Ok(())
}

/// Moves a reservation from one of `from` to `to`, returning the status it had
/// and its lines, or `None` when it is in another state (a repeated or late
/// event: nothing to do). The status returned is the one the update matched,
/// so a concurrent transition (a confirmation committed meanwhile) can never be
/// acted on as the state before it.
async fn transition(
    order_id: &str,
    from: &[&str],
    to: &str,
    tx: &mut Tx,
) -> Result<Option<(String, Vec<OrderLine>)>, HandlerError> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(tx.conn())
        .await?;
    let Some(status) = status else {
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
    Ok(Some((status, lines)))
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
