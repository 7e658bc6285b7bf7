//! inventory-svc: owns stock. Every SKU keeps `available + reserved + sold =
//! received`, and no statement ever lets `available` go below zero, whatever the
//! concurrency: a reservation is a conditional update (`WHERE available >= n`).
//!
//! Reacts to ProductCreated/ProductRestocked (stock in), OrderPlaced (reserve every
//! line or none), OrderConfirmed (reserved → sold), PaymentDeclined and
//! PaymentRefunded (compensation: back to available).

pub mod stock;

use events::{Envelope, Message};
use platform::{App, Handler, HandlerError, PlatformConfig, Tx};

pub const SERVICE: &str = events::access::INVENTORY_SVC.service;

/// The service's tables (after the platform's: see [`platform::Db::migrate`]).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "inventory-svc", about = "Owns stock and reservations")]
pub struct Config {
    #[command(flatten)]
    pub platform: PlatformConfig,
}

pub async fn build(config: Config) -> Result<App, platform::Error> {
    let app = App::build(SERVICE, config.platform, &MIGRATIONS).await?;
    Ok(app.consume(events::access::INVENTORY_SVC.consumes, Inventory))
}

struct Inventory;

impl Handler for Inventory {
    fn wants(&self, message: &Message) -> bool {
        use Message as M;
        matches!(
            message,
            M::ProductCreated(_)
                | M::ProductRestocked(_)
                | M::OrderPlaced(_)
                | M::OrderConfirmed(_)
                | M::PaymentDeclined(_)
                | M::PaymentRefunded(_)
        )
    }

    async fn handle(&self, event: &Envelope, tx: &mut Tx) -> Result<(), HandlerError> {
        use Message as M;
        match &event.message {
            M::ProductCreated(p) => stock::receive(&p.sku, p.initial_stock, true, tx).await,
            M::ProductRestocked(p) => stock::receive(&p.sku, p.quantity, false, tx).await,
            M::OrderPlaced(order) => stock::reserve(order, tx).await,
            M::OrderConfirmed(order) => stock::commit(&order.order_id, tx).await,
            M::PaymentDeclined(declined) => {
                stock::release(&declined.order_id, &format!("payment declined: {}", declined.reason), false, tx).await
            }
            M::PaymentRefunded(refund) => stock::release(&refund.order_id, "refunded", true, tx).await,
            _ => Ok(()),
        }
    }
}
