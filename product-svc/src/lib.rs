//! product-svc: owns the catalogue. Takes CreateProduct, ChangePrice and
//! RestockProduct from `product.commands` and announces the changes on
//! `product.events`; inventory-svc turns them into stock, order-svc into prices.

use events::{
    ChangePrice, CreateProduct, Envelope, Message, PriceChanged, ProductCommandRejected, ProductCreated,
    ProductRestocked, RestockProduct,
};
use platform::{App, Handler, HandlerError, PlatformConfig, Tx};

pub const SERVICE: &str = events::access::PRODUCT_SVC.service;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "product-svc", about = "Owns the product catalogue")]
pub struct Config {
    #[command(flatten)]
    pub platform: PlatformConfig,
}

pub async fn build(config: Config) -> Result<App, platform::Error> {
    let app = App::build(SERVICE, config.platform, &MIGRATIONS).await?;
    Ok(app.consume(events::access::PRODUCT_SVC.consumes, Products))
}

struct Products;

impl Handler for Products {
    fn wants(&self, message: &Message) -> bool {
        matches!(message, Message::CreateProduct(_) | Message::ChangePrice(_) | Message::RestockProduct(_))
    }

    async fn handle(&self, event: &Envelope, tx: &mut Tx) -> Result<(), HandlerError> {
        match &event.message {
            Message::CreateProduct(command) => create_product(command, tx).await,
            Message::ChangePrice(command) => change_price(command, tx).await,
            Message::RestockProduct(command) => restock(command, tx).await,
            _ => Ok(()),
        }
    }
}

fn reject(tx: &mut Tx, sku: &str, command: &str, reason: String) {
    tracing::warn!(sku, command, %reason, "product command rejected");
    tx.emit(ProductCommandRejected { sku: sku.to_owned(), command: command.to_owned(), reason });
}

async fn create_product(command: &CreateProduct, tx: &mut Tx) -> Result<(), HandlerError> {
    let inserted = sqlx::query(
        "INSERT INTO products (sku, name, price_minor, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (sku) DO NOTHING",
    )
    .bind(&command.sku)
    .bind(&command.name)
    .bind(command.price_minor)
    .bind(platform::db::now_ms())
    .execute(tx.conn())
    .await?
    .rows_affected();
    if inserted == 0 {
        reject(tx, &command.sku, "CreateProduct", format!("SKU {} already exists", command.sku));
        return Ok(());
    }
    tx.emit(ProductCreated {
        sku: command.sku.clone(),
        name: command.name.clone(),
        price_minor: command.price_minor,
        initial_stock: command.initial_stock,
    });
    Ok(())
}

async fn change_price(command: &ChangePrice, tx: &mut Tx) -> Result<(), HandlerError> {
    let old: Option<i64> = sqlx::query_scalar("SELECT price_minor FROM products WHERE sku = $1")
        .bind(&command.sku)
        .fetch_optional(tx.conn())
        .await?;
    let Some(old_price_minor) = old else {
        reject(tx, &command.sku, "ChangePrice", format!("unknown SKU {}", command.sku));
        return Ok(());
    };
    sqlx::query("UPDATE products SET price_minor = $2 WHERE sku = $1")
        .bind(&command.sku)
        .bind(command.price_minor)
        .execute(tx.conn())
        .await?;
    tx.emit(PriceChanged { sku: command.sku.clone(), old_price_minor, price_minor: command.price_minor });
    Ok(())
}

async fn restock(command: &RestockProduct, tx: &mut Tx) -> Result<(), HandlerError> {
    let known: Option<i64> = sqlx::query_scalar("SELECT price_minor FROM products WHERE sku = $1")
        .bind(&command.sku)
        .fetch_optional(tx.conn())
        .await?;
    if known.is_none() {
        reject(tx, &command.sku, "RestockProduct", format!("unknown SKU {}", command.sku));
        return Ok(());
    }
    tx.emit(ProductRestocked { sku: command.sku.clone(), quantity: command.quantity });
    Ok(())
}
