//! notification-svc: tells customers how their orders ended (confirmed,
//! rejected, cancelled) and when a payment is delayed, addressed from its own
//! projection of user contacts (built from `user.events`).
//!
//! A notification is recorded once per order and kind (a unique key), so a
//! redelivered or replayed event never notifies twice; each one is announced as
//! NotificationSent. It consumes in its own group, so a slow or failing channel
//! never holds up the saga.

use events::{topics, Envelope, Message, NotificationSent};
use platform::db::now_ms;
use platform::{App, Handler, HandlerError, PlatformConfig, Tx};
use sqlx::Row;

pub const SERVICE: &str = "notification-svc";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "notification-svc", about = "Tells customers about their orders")]
pub struct Config {
    #[command(flatten)]
    pub platform: PlatformConfig,
}

pub async fn build(config: Config) -> Result<App, platform::Error> {
    let app = App::build(SERVICE, config.platform, &MIGRATIONS).await?;
    Ok(app.consume(&[topics::USER_EVENTS, topics::ORDER_EVENTS, topics::PAYMENT_EVENTS], Notifications))
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
                Ok(())
            }
            M::OrderPlaced(order) => remember_customer(&order.order_id, &order.user_id, tx).await,
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
                let Some(user_id) = user_id else {
                    return Err(HandlerError::transient(format!("order {} not yet seen", deferred.order_id)));
                };
                let text = format!(
                    "Payment for your order {} is delayed; we will keep trying and let you know.",
                    deferred.order_id
                );
                notify(&deferred.order_id, &user_id, "delayed", text, tx).await
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

/// Records and sends one notification per (order, kind).
async fn notify(order_id: &str, user_id: &str, kind: &str, text: String, tx: &mut Tx) -> Result<(), HandlerError> {
    let contact =
        sqlx::query("SELECT email FROM contacts WHERE user_id = $1").bind(user_id).fetch_optional(tx.conn()).await?;
    let Some(contact) = contact else {
        // user.events is another topic; the registration is on its way.
        return Err(HandlerError::transient(format!("no contact for user {user_id} yet")));
    };
    let recipient: String = contact.try_get("email")?;
    let notification_id = uuid::Uuid::now_v7().to_string();
    let inserted = sqlx::query(
        "INSERT INTO notifications (notification_id, order_id, kind, user_id, channel, recipient, text, created_at)
         VALUES ($1, $2, $3, $4, 'email', $5, $6, $7)
         ON CONFLICT (order_id, kind) DO NOTHING",
    )
    .bind(&notification_id)
    .bind(order_id)
    .bind(kind)
    .bind(user_id)
    .bind(&recipient)
    .bind(&text)
    .bind(now_ms())
    .execute(tx.conn())
    .await?
    .rows_affected();
    if inserted == 1 {
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
    Ok(())
}
