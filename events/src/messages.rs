//! Every payload of the catalogue. Amounts are integer minor units (cents) of the
//! shop's single currency; quantities are whole units; ids are strings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Field-level checks beyond what the types already enforce.
pub trait Validate {
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    Ok(())
}

fn positive(field: &'static str, value: i64) -> Result<(), ValidationError> {
    if value <= 0 {
        return Err(ValidationError::new(field, format!("must be positive, got {value}")));
    }
    Ok(())
}

fn not_negative(field: &'static str, value: i64) -> Result<(), ValidationError> {
    if value < 0 {
        return Err(ValidationError::new(field, format!("must not be negative, got {value}")));
    }
    Ok(())
}

// ---- user-svc ----------------------------------------------------------------

/// Command: create a user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterUser {
    pub user_id: String,
    pub email: String,
    pub name: String,
}

impl Validate for RegisterUser {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("user_id", &self.user_id)?;
        non_empty("name", &self.name)?;
        match self.email.split_once('@') {
            Some((local, domain)) if !local.is_empty() && domain.contains('.') => Ok(()),
            _ => Err(ValidationError::new("email", format!("`{}` is not an email address", self.email))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserRegistered {
    pub user_id: String,
    pub email: String,
    pub name: String,
}
impl Validate for UserRegistered {}

/// A RegisterUser that could not be applied (e.g. the email belongs to another user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserRegistrationRejected {
    pub user_id: String,
    pub reason: String,
}
impl Validate for UserRegistrationRejected {}

// ---- product-svc -------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    pub sku: String,
    pub name: String,
    pub price_minor: i64,
    #[serde(default)]
    pub initial_stock: i64,
}

impl Validate for CreateProduct {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("sku", &self.sku)?;
        non_empty("name", &self.name)?;
        not_negative("price_minor", self.price_minor)?;
        not_negative("initial_stock", self.initial_stock)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePrice {
    pub sku: String,
    pub price_minor: i64,
}

impl Validate for ChangePrice {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("sku", &self.sku)?;
        not_negative("price_minor", self.price_minor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockProduct {
    pub sku: String,
    pub quantity: i64,
}

impl Validate for RestockProduct {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("sku", &self.sku)?;
        positive("quantity", self.quantity)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductCreated {
    pub sku: String,
    pub name: String,
    pub price_minor: i64,
    pub initial_stock: i64,
}
impl Validate for ProductCreated {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PriceChanged {
    pub sku: String,
    pub old_price_minor: i64,
    pub price_minor: i64,
}
impl Validate for PriceChanged {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRestocked {
    pub sku: String,
    pub quantity: i64,
}
impl Validate for ProductRestocked {}

/// A product command that could not be applied (unknown SKU, SKU already exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductCommandRejected {
    pub sku: String,
    pub command: String,
    pub reason: String,
}
impl Validate for ProductCommandRejected {}

// ---- order-svc ---------------------------------------------------------------

/// One line of an order as the customer asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: i64,
}

/// Command: place an order. The order id is chosen by the client, so a retried
/// command is recognised as the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub order_id: String,
    pub user_id: String,
    pub lines: Vec<OrderLine>,
    /// Opaque card token handed to the payment gateway.
    pub payment_token: String,
}

impl Validate for PlaceOrder {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("order_id", &self.order_id)?;
        non_empty("user_id", &self.user_id)?;
        non_empty("payment_token", &self.payment_token)?;
        if self.lines.is_empty() {
            return Err(ValidationError::new("lines", "an order needs at least one line"));
        }
        for (i, line) in self.lines.iter().enumerate() {
            if line.sku.trim().is_empty() {
                return Err(ValidationError::new(format!("lines[{i}].sku"), "must not be empty"));
            }
            if line.quantity <= 0 {
                return Err(ValidationError::new(
                    format!("lines[{i}].quantity"),
                    format!("must be positive, got {}", line.quantity),
                ));
            }
        }
        let mut skus: Vec<&str> = self.lines.iter().map(|l| l.sku.as_str()).collect();
        skus.sort_unstable();
        if let Some(dup) = skus.windows(2).find(|w| w[0] == w[1]) {
            return Err(ValidationError::new("lines", format!("SKU `{}` appears twice", dup[0])));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrder {
    pub order_id: String,
    #[serde(default)]
    pub reason: String,
}

impl Validate for CancelOrder {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("order_id", &self.order_id)
    }
}

/// An order line priced from order-svc's product projection at placement time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PricedLine {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    pub order_id: String,
    pub user_id: String,
    pub lines: Vec<PricedLine>,
    pub total_minor: i64,
    pub payment_token: String,
}
impl Validate for OrderPlaced {}

/// Terminal: the order was refused (unknown user or product, or out of stock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRejected {
    pub order_id: String,
    pub user_id: String,
    pub reason: String,
}
impl Validate for OrderRejected {}

/// Terminal: paid, stock sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    pub order_id: String,
    pub user_id: String,
    pub total_minor: i64,
}
impl Validate for OrderConfirmed {}

/// The customer cancelled an order that had been paid: payment-svc refunds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancellationRequested {
    pub order_id: String,
    pub user_id: String,
    pub reason: String,
}
impl Validate for OrderCancellationRequested {}

/// Terminal: every compensation is done (stock released, and refunded if it was paid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub order_id: String,
    pub user_id: String,
    pub reason: String,
    pub refunded: bool,
}
impl Validate for OrderCancelled {}

// ---- inventory-svc -----------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub order_id: String,
    pub lines: Vec<OrderLine>,
    /// Carried from OrderPlaced so payment-svc can charge without a projection.
    pub total_minor: i64,
    pub payment_token: String,
}
impl Validate for StockReserved {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShortLine {
    pub sku: String,
    pub requested: i64,
    pub available: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReservationFailed {
    pub order_id: String,
    pub short_lines: Vec<ShortLine>,
}
impl Validate for StockReservationFailed {}

/// The reservation was committed: reserved units became sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockCommitted {
    pub order_id: String,
}
impl Validate for StockCommitted {}

/// Compensation: reserved or sold units went back to available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReleased {
    pub order_id: String,
    pub lines: Vec<OrderLine>,
    pub reason: String,
}
impl Validate for StockReleased {}

/// Stock of a SKU changed outside the saga (product created or restocked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReceived {
    pub sku: String,
    pub quantity: i64,
    pub available: i64,
}
impl Validate for StockReceived {}

// ---- payment-svc -------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentAuthorized {
    pub order_id: String,
    pub charge_id: String,
    pub amount_minor: i64,
}
impl Validate for PaymentAuthorized {}

/// A business "no" from the gateway (card declined, limit exceeded), or a payment
/// that could not go through before its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDeclined {
    pub order_id: String,
    pub reason: String,
}
impl Validate for PaymentDeclined {}

/// The gateway is unavailable: the payment waits in the durable fallback queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDeferred {
    pub order_id: String,
    pub reason: String,
    /// Unix milliseconds after which the payment is given up and compensated.
    pub deadline_ms: i64,
}
impl Validate for PaymentDeferred {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    pub order_id: String,
    pub charge_id: String,
    pub refund_id: String,
    pub amount_minor: i64,
}
impl Validate for PaymentRefunded {}

// ---- notification-svc --------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationSent {
    pub notification_id: String,
    pub order_id: String,
    pub user_id: String,
    pub channel: String,
    pub recipient: String,
    /// confirmed, rejected, cancelled or delayed.
    pub kind: String,
    pub text: String,
}
impl Validate for NotificationSent {}
