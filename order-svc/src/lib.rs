//! order-svc: owns orders and drives their status through the saga.
//!
//! It validates PlaceOrder against its own projections of users and products
//! (built from `user.events` and `product.events`, never a synchronous call),
//! prices the lines, stores the order PENDING and emits OrderPlaced. Then it
//! follows the other services' facts to a terminal status:
//!
//! ```text
//! PENDING ──StockReservationFailed──▶ REJECTED
//! PENDING ──PaymentDeferred─────────▶ PAYMENT_DEFERRED (still awaiting payment)
//! PENDING ──PaymentAuthorized───────▶ CONFIRMED
//! PENDING ──StockReleased (declined, or refunded past the payment deadline)──▶ CANCELLED
//! PENDING, PAYMENT_DEFERRED, CONFIRMED ──CancelOrder or saga deadline──▶ CANCELLING
//! CANCELLING ──StockReleased──▶ CANCELLED (refunded if it had been charged)
//! CANCELLING ──StockReservationFailed──▶ CANCELLED
//! ```
//!
//! Every transition is a compare-and-set on the row's version, so two events
//! about one order arriving on different partitions cannot overwrite each other.
//! Every open state has a durable deadline ([`deadlines`]).

pub mod deadlines;
mod orders;

use std::time::Duration;

use deadlines::Deadlines;

use events::{Envelope, Message};
use platform::{App, Handler, HandlerError, PlatformConfig, Tx};

pub const SERVICE: &str = events::access::ORDER_SVC.service;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "order-svc", about = "Owns orders and their saga status")]
pub struct Config {
    #[command(flatten)]
    pub platform: PlatformConfig,

    /// Saga deadline of PENDING: an order with no payment outcome this long after
    /// placement is cancelled. Longer than a payment normally takes, shorter than
    /// anyone would wait.
    #[arg(long, env = "ORDER_PENDING_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub order_pending_timeout: Duration,

    /// Saga deadline of PAYMENT_DEFERRED: this long past the payment's own
    /// deadline (PAYMENT_DEADLINE in payment-svc), the order is cancelled.
    #[arg(long, env = "ORDER_DEFERRED_GRACE", default_value = "2m", value_parser = humantime::parse_duration)]
    pub order_deferred_grace: Duration,

    /// Saga deadline of CANCELLING: a compensation not finished this long after
    /// the cancellation is handed to an operator (`orders_needing_operator`).
    #[arg(long, env = "ORDER_CANCELLING_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    pub order_cancelling_timeout: Duration,
}

impl Config {
    /// Defaults, as with no flags and an empty environment, against `brokers`.
    pub fn local(brokers: &str) -> Config {
        use clap::Parser;
        let mut config = Config::parse_from(["order-svc", "--brokers", brokers]);
        config.platform = PlatformConfig::local(brokers);
        config
    }

    fn deadlines(&self) -> Deadlines {
        Deadlines {
            pending: self.order_pending_timeout,
            deferred_grace: self.order_deferred_grace,
            cancelling: self.order_cancelling_timeout,
            poll: Duration::from_secs(1),
        }
    }
}

pub async fn build(config: Config) -> Result<App, platform::Error> {
    let deadlines = config.deadlines();
    let app = App::build(SERVICE, config.platform, &MIGRATIONS).await?;
    let (db, scrape_db, relay) = (app.db().clone(), app.db().clone(), app.relay());
    Ok(app
        .consume(events::access::ORDER_SVC.consumes, Orders { deadlines })
        .spawn("saga deadlines", move |stop| deadlines::run(db, relay, deadlines, stop))
        .on_scrape(move || orders::export_outcomes(scrape_db.clone())))
}

struct Orders {
    deadlines: Deadlines,
}

impl Handler for Orders {
    fn wants(&self, message: &Message) -> bool {
        use Message as M;
        matches!(
            message,
            M::PlaceOrder(_)
                | M::CancelOrder(_)
                | M::UserRegistered(_)
                | M::ProductCreated(_)
                | M::PriceChanged(_)
                | M::StockReservationFailed(_)
                | M::PaymentAuthorized(_)
                | M::PaymentDeferred(_)
                | M::StockReleased(_)
                | M::PaymentRefundFailed(_)
        )
    }

    async fn handle(&self, event: &Envelope, tx: &mut Tx) -> Result<(), HandlerError> {
        use Message as M;
        match &event.message {
            M::PlaceOrder(command) => orders::place_order(command, &self.deadlines, tx).await,
            M::CancelOrder(command) => orders::cancel_order(command, &self.deadlines, tx).await,
            M::UserRegistered(user) => orders::project_user(user, tx).await,
            M::ProductCreated(product) => {
                orders::project_price(&product.sku, &product.name, product.price_minor, tx).await
            }
            M::PriceChanged(change) => orders::change_price(&change.sku, change.price_minor, tx).await,
            M::StockReservationFailed(failed) => orders::out_of_stock(failed, tx).await,
            M::PaymentAuthorized(paid) => orders::payment_authorized(&paid.order_id, tx).await,
            M::PaymentDeferred(deferred) => orders::payment_deferred(deferred, &self.deadlines, tx).await,
            M::StockReleased(released) => orders::stock_released(released, tx).await,
            M::PaymentRefundFailed(failed) => orders::refund_failed(failed, tx).await,
            _ => Ok(()),
        }
    }
}
