//! Every payload of the catalogue. Amounts are integer minor units (cents) of the
//! shop's single currency; quantities are whole units; ids are strings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits;
use crate::ValidationError;

/// Field-level checks beyond what the types already enforce.
pub trait Validate {
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

/// A string of `min..=max` characters (Unicode scalar values, as JSON Schema
/// counts them); a required one (`min` > 0) must not be whitespace alone either.
fn text(field: &str, value: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    if min > 0 && value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let chars = value.chars().count();
    if chars < min {
        return Err(ValidationError::new(field, format!("must be at least {min} characters, got {chars}")));
    }
    if chars > max {
        return Err(ValidationError::new(field, format!("must be at most {max} characters, got {chars}")));
    }
    Ok(())
}

/// A whole number in `min..=max`.
fn number(field: &str, value: i64, min: i64, max: i64) -> Result<(), ValidationError> {
    if value < min {
        let reason = match min {
            0 => format!("must not be negative, got {value}"),
            1 => format!("must be positive, got {value}"),
            _ => format!("must be at least {min}, got {value}"),
        };
        return Err(ValidationError::new(field, reason));
    }
    if value > max {
        return Err(ValidationError::new(field, format!("must be at most {max}, got {value}")));
    }
    Ok(())
}

fn id(field: &str, value: &str) -> Result<(), ValidationError> {
    text(field, value, limits::MIN_REQUIRED_CHARS, limits::MAX_ID_CHARS)
}

// ---- user-svc ----------------------------------------------------------------

/// Command: create a user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterUser {
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_ID_CHARS"))]
    pub user_id: String,
    #[schemars(email, length(max = "limits::MAX_EMAIL_CHARS"))]
    pub email: String,
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_NAME_CHARS"))]
    pub name: String,
}

impl Validate for RegisterUser {
    fn validate(&self) -> Result<(), ValidationError> {
        id("user_id", &self.user_id)?;
        text("name", &self.name, limits::MIN_REQUIRED_CHARS, limits::MAX_NAME_CHARS)?;
        text("email", &self.email, 0, limits::MAX_EMAIL_CHARS)?;
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
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_ID_CHARS"))]
    pub sku: String,
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_NAME_CHARS"))]
    pub name: String,
    #[schemars(range(min = "limits::MIN_PRICE_MINOR", max = "limits::MAX_PRICE_MINOR"))]
    pub price_minor: i64,
    #[serde(default)]
    #[schemars(range(min = "limits::MIN_INITIAL_STOCK", max = "limits::MAX_INITIAL_STOCK"))]
    pub initial_stock: i64,
}

impl Validate for CreateProduct {
    fn validate(&self) -> Result<(), ValidationError> {
        id("sku", &self.sku)?;
        text("name", &self.name, limits::MIN_REQUIRED_CHARS, limits::MAX_NAME_CHARS)?;
        number("price_minor", self.price_minor, limits::MIN_PRICE_MINOR, limits::MAX_PRICE_MINOR)?;
        number("initial_stock", self.initial_stock, limits::MIN_INITIAL_STOCK, limits::MAX_INITIAL_STOCK)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePrice {
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_ID_CHARS"))]
    pub sku: String,
    #[schemars(range(min = "limits::MIN_PRICE_MINOR", max = "limits::MAX_PRICE_MINOR"))]
    pub price_minor: i64,
}

impl Validate for ChangePrice {
    fn validate(&self) -> Result<(), ValidationError> {
        id("sku", &self.sku)?;
        number("price_minor", self.price_minor, limits::MIN_PRICE_MINOR, limits::MAX_PRICE_MINOR)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockProduct {
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_ID_CHARS"))]
    pub sku: String,
    #[schemars(range(min = "limits::MIN_RESTOCK_QUANTITY", max = "limits::MAX_RESTOCK_QUANTITY"))]
    pub quantity: i64,
}

impl Validate for RestockProduct {
    fn validate(&self) -> Result<(), ValidationError> {
        id("sku", &self.sku)?;
        number("quantity", self.quantity, limits::MIN_RESTOCK_QUANTITY, limits::MAX_RESTOCK_QUANTITY)
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

/// One line of an order as the customer asked for it. Its bounds are checked by
/// PlaceOrder's validation; StockReserved and StockReleased carry lines of
/// validated orders, so their schemas show the same bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_ID_CHARS"))]
    pub sku: String,
    #[schemars(range(min = "limits::MIN_QUANTITY", max = "limits::MAX_QUANTITY"))]
    pub quantity: i64,
}

/// Command: place an order. The order id is chosen by the client, so a retried
/// command is recognised as the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_ID_CHARS"))]
    pub order_id: String,
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_ID_CHARS"))]
    pub user_id: String,
    #[schemars(length(min = "limits::MIN_LINES", max = "limits::MAX_LINES"))]
    pub lines: Vec<OrderLine>,
    /// Opaque card token handed to the payment gateway.
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_PAYMENT_TOKEN_CHARS"))]
    pub payment_token: String,
}

impl Validate for PlaceOrder {
    fn validate(&self) -> Result<(), ValidationError> {
        id("order_id", &self.order_id)?;
        id("user_id", &self.user_id)?;
        text("payment_token", &self.payment_token, limits::MIN_REQUIRED_CHARS, limits::MAX_PAYMENT_TOKEN_CHARS)?;
        if self.lines.len() < limits::MIN_LINES {
            return Err(ValidationError::new("lines", "an order needs at least one line"));
        }
        if self.lines.len() > limits::MAX_LINES {
            return Err(ValidationError::new(
                "lines",
                format!("must have at most {} lines, got {}", limits::MAX_LINES, self.lines.len()),
            ));
        }
        for (i, line) in self.lines.iter().enumerate() {
            id(&format!("lines[{i}].sku"), &line.sku)?;
            number(&format!("lines[{i}].quantity"), line.quantity, limits::MIN_QUANTITY, limits::MAX_QUANTITY)?;
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
    #[schemars(length(min = "limits::MIN_REQUIRED_CHARS", max = "limits::MAX_ID_CHARS"))]
    pub order_id: String,
    #[serde(default)]
    #[schemars(length(max = "limits::MAX_REASON_CHARS"))]
    pub reason: String,
}

impl Validate for CancelOrder {
    fn validate(&self) -> Result<(), ValidationError> {
        id("order_id", &self.order_id)?;
        text("reason", &self.reason, 0, limits::MAX_REASON_CHARS)
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

/// Compensation: reserved or sold units went back to available. `lines` is
/// empty when the release came before any reservation (the order was cancelled
/// before inventory saw it): nothing was taken, and nothing will be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReleased {
    pub order_id: String,
    pub lines: Vec<OrderLine>,
    pub reason: String,
    /// Released because the payment was refunded (PaymentRefunded), rather than
    /// never taken (PaymentDeclined). Version 2; version 1 said "refunded" in `reason`.
    pub refunded: bool,
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

/// The gateway refused a refund that is owed: no automatic step can fix that,
/// so order-svc hands the order to an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefundFailed {
    pub order_id: String,
    pub charge_id: String,
    pub reason: String,
}
impl Validate for PaymentRefundFailed {}

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
