//! notification-svc: tells customers how their orders ended (confirmed,
//! rejected, cancelled) and when a payment is delayed, addressed from its own
//! projection of user contacts (built from `user.events`).
//!
//! A notification is recorded once per order and kind (a unique key), so a
//! redelivered or replayed event never notifies twice; each one is announced as
//! NotificationSent. It consumes in its own group, so a slow or failing channel
//! never holds up the saga.
//!
//! A notification for someone this service has no contact for (a user whose
//! registration has not arrived, or never will; an order it has not seen) is
//! recorded UNDELIVERABLE at once, so the partition never waits on it, and is
//! sent if the contact turns up later.

use events::{Envelope, Message, NotificationSent};
use platform::db::now_ms;
use platform::{App, Handler, HandlerError, PlatformConfig, Tx};
use sqlx::Row;

pub const SERVICE: &str = events::access::NOTIFICATION_SVC.service;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "notification-svc", about = "Tells customers about their orders")]
pub struct Config {
    #[command(flatten)]
    pub platform: PlatformConfig,
}

pub async fn build(config: Config) -> Result<App, platform::Error> {
    let app = App::build(SERVICE, config.platform, &MIGRATIONS).await?;
    Ok(app.consume(events::access::NOTIFICATION_SVC.consumes, Notifications))
}

struct Notifications;

impl Handler for Notifications {
    fn wants(&self, message: &Message) -> bool {
        use Message as M;
        matches!(
            message,
            M::UserRegistered(_)
                | M::OrderPlaced(_)
                | M::OrderConfirmed(_)
                | M::OrderRejected(_)
                | M::OrderCancelled(_)
                | M::PaymentDeferred(_)
        )
    }

    async fn handle(&self, event: &Envelope, tx: &mut Tx) -> Result<(), HandlerError> {
        use Message as M;
        match &event.message {
            M::UserRegistered(user) => {
                sqlx::query(
                    "INSERT INTO contacts (user_id, email, name) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id) DO UPDATE SET email = $2, name = $3",
                )
                .bind(&user.user_id)
                .bind(&user.email)
                .bind(&user.name)
                .execute(tx.conn())
                .await?;
                send_held(tx, "user_id = $1", &user.user_id).await
            }
            M::OrderPlaced(order) => {
                remember_customer(&order.order_id, &order.user_id, tx).await?;
                // Held for want of this order (a PaymentDeferred that came first):
                // rare, so the usual OrderPlaced costs this one update.
                let held = sqlx::query(
                    "UPDATE notifications SET user_id = $2 WHERE order_id = $1 AND user_id = '' AND status = $3",
                )
                .bind(&order.order_id)
                .bind(&order.user_id)
                .bind(UNDELIVERABLE)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if held == 0 {
                    return Ok(());
                }
                send_held(tx, "order_id = $1", &order.order_id).await
            }
            M::OrderConfirmed(order) => {
                let text = format!("Your order {} is confirmed: {} charged.", order.order_id, money(order.total_minor));
                notify(&order.order_id, &order.user_id, "confirmed", text, tx).await
            }
            M::OrderRejected(order) => {
                let text = format!("We could not take your order {}: {}.", order.order_id, order.reason);
                notify(&order.order_id, &order.user_id, "rejected", text, tx).await
            }
            M::OrderCancelled(order) => {
                let refund = if order.refunded { " Your payment has been refunded." } else { "" };
                let text = format!("Your order {} was cancelled: {}.{refund}", order.order_id, order.reason);
                notify(&order.order_id, &order.user_id, "cancelled", text, tx).await
            }
            M::PaymentDeferred(deferred) => {
                let user_id: Option<String> =
                    sqlx::query_scalar("SELECT user_id FROM order_customers WHERE order_id = $1")
                        .bind(&deferred.order_id)
                        .fetch_optional(tx.conn())
                        .await?;
                let text = format!(
                    "Payment for your order {} is delayed; we will keep trying and let you know.",
                    deferred.order_id
                );
                // An order not seen yet is held with no user, until its OrderPlaced.
                notify(&deferred.order_id, user_id.as_deref().unwrap_or_default(), "delayed", text, tx).await
            }
            _ => Ok(()),
        }
    }
}

async fn remember_customer(order_id: &str, user_id: &str, tx: &mut Tx) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO order_customers (order_id, user_id) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING")
        .bind(order_id)
        .bind(user_id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

fn money(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

const SENT: &str = "SENT";
const UNDELIVERABLE: &str = "UNDELIVERABLE";

/// Records and sends one notification per (order, kind); without a contact for
/// the user, records it UNDELIVERABLE (see the crate doc).
async fn notify(order_id: &str, user_id: &str, kind: &str, text: String, tx: &mut Tx) -> Result<(), HandlerError> {
    let recipient: Option<String> = sqlx::query_scalar("SELECT email FROM contacts WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(tx.conn())
        .await?;
    let (status, undeliverable_reason) = match &recipient {
        Some(_) => (SENT, None),
        None if user_id.is_empty() => (UNDELIVERABLE, Some(format!("order {order_id} not seen yet"))),
        None => (UNDELIVERABLE, Some(format!("no contact for user {user_id}"))),
    };
    let notification_id = uuid::Uuid::now_v7().to_string();
    let inserted = sqlx::query(
        "INSERT INTO notifications (notification_id, order_id, kind, user_id, channel, recipient, text, created_at,
                                    status, undeliverable_reason)
         VALUES ($1, $2, $3, $4, 'email', $5, $6, $7, $8, $9)
         ON CONFLICT (order_id, kind) DO NOTHING",
    )
    .bind(&notification_id)
    .bind(order_id)
    .bind(kind)
    .bind(user_id)
    .bind(recipient.as_deref().unwrap_or_default())
    .bind(&text)
    .bind(now_ms())
    .bind(status)
    .bind(undeliverable_reason.as_deref())
    .execute(tx.conn())
    .await?
    .rows_affected();
    match (inserted, recipient, undeliverable_reason) {
        (1, Some(recipient), _) => sent(tx, notification_id, order_id, user_id, kind, recipient, text),
        (1, None, Some(reason)) => {
            tracing::warn!(order_id, kind, %reason, "notification undeliverable for now");
            metrics::counter!("notifications_undeliverable_total", "service" => SERVICE).increment(1);
        }
        _ => {}
    }
    Ok(())
}

/// Sends the UNDELIVERABLE notifications matching `filter` (on `$1`) whose
/// user now has a contact.
async fn send_held(tx: &mut Tx, filter: &str, value: &str) -> Result<(), HandlerError> {
    let sql = format!(
        "SELECT n.notification_id, n.order_id, n.user_id, n.kind, n.text, c.email
         FROM notifications n JOIN contacts c ON c.user_id = n.user_id
         WHERE n.{filter} AND n.status = '{UNDELIVERABLE}'"
    );
    let held = sqlx::query(&sql).bind(value).fetch_all(tx.conn()).await?;
    for row in held {
        let id: String = row.try_get("notification_id")?;
        let email: String = row.try_get("email")?;
        sqlx::query("UPDATE notifications SET status = $2, recipient = $3, undeliverable_reason = NULL WHERE notification_id = $1")
            .bind(&id)
            .bind(SENT)
            .bind(&email)
            .execute(tx.conn())
            .await?;
        let (order_id, user_id, kind, text): (String, String, String, String) =
            (row.try_get("order_id")?, row.try_get("user_id")?, row.try_get("kind")?, row.try_get("text")?);
        sent(tx, id, &order_id, &user_id, &kind, email, text);
    }
    Ok(())
}

fn sent(
    tx: &mut Tx,
    notification_id: String,
    order_id: &str,
    user_id: &str,
    kind: &str,
    recipient: String,
    text: String,
) {
    tracing::info!(order_id, kind, %recipient, %text, "notification");
    tx.emit(NotificationSent {
        notification_id,
        order_id: order_id.to_owned(),
        user_id: user_id.to_owned(),
        channel: "email".into(),
        recipient,
        kind: kind.to_owned(),
        text,
    });
}
