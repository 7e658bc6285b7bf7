//! order-svc: owns orders and drives their status through the saga.
//!
//! It validates PlaceOrder against its own projections of users and products
//! (built from `user.events` and `product.events`, never a synchronous call),
//! prices the lines, stores the order PENDING and emits OrderPlaced. Then it
//! follows the other services' facts to a terminal status:
//!
//! ```text
//! PENDING ──StockReservationFailed──▶ REJECTED
//! PENDING ──PaymentDeferred─────────▶ PAYMENT_DEFERRED (still pending)
//! PENDING ──PaymentAuthorized───────▶ CONFIRMED ──CancelOrder──▶ CANCELLING
//! PENDING ──StockReleased (declined)▶ CANCELLED
//! CANCELLING ──StockReleased (refunded)▶ CANCELLED (refunded)
//! ```
//!
//! Every transition is a compare-and-set on the row's version, so two events
//! about one order arriving on different partitions cannot overwrite each other.

mod orders;

use events::{topics, Envelope, Message};
use platform::{App, Handler, HandlerError, PlatformConfig, Tx};

pub const SERVICE: &str = "order-svc";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "order-svc", about = "Owns orders and their saga status")]
pub struct Config {
    #[command(flatten)]
    pub platform: PlatformConfig,
}

pub async fn build(config: Config) -> Result<App, platform::Error> {
    let app = App::build(SERVICE, config.platform, &MIGRATIONS).await?;
    let inputs = [
        topics::ORDER_COMMANDS,
        topics::USER_EVENTS,
        topics::PRODUCT_EVENTS,
        topics::INVENTORY_EVENTS,
        topics::PAYMENT_EVENTS,
    ];
    let db = app.db().clone();
    Ok(app.consume(&inputs, Orders).on_scrape(move || orders::export_outcomes(db.clone())))
}

struct Orders;

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
        )
    }

    async fn handle(&self, event: &Envelope, tx: &mut Tx) -> Result<(), HandlerError> {
        use Message as M;
        match &event.message {
            M::PlaceOrder(command) => orders::place_order(command, tx).await,
            M::CancelOrder(command) => orders::cancel_order(command, tx).await,
            M::UserRegistered(user) => orders::project_user(user, tx).await,
            M::ProductCreated(product) => {
                orders::project_price(&product.sku, &product.name, product.price_minor, tx).await
            }
            M::PriceChanged(change) => orders::change_price(&change.sku, change.price_minor, tx).await,
            M::StockReservationFailed(failed) => orders::out_of_stock(failed, tx).await,
            M::PaymentAuthorized(paid) => orders::payment_authorized(&paid.order_id, tx).await,
            M::PaymentDeferred(deferred) => orders::payment_deferred(&deferred.order_id, tx).await,
            M::StockReleased(released) => orders::stock_released(released, tx).await,
            _ => Ok(()),
        }
    }
}
