//! Bounds on command payloads, defined once: the `Validate` impls check them and
//! the `#[schemars(...)]` attributes put the same numbers into the exported JSON
//! Schemas, so a producer that validates against the schema and a service that
//! validates the decoded command refuse exactly the same values.
//!
//! Commands come from outside (a customer, an operator, a producer in another
//! language), so every number and string in them is bounded: a quantity of
//! 4611686018427387904 is refused here, not wrapped somewhere downstream.
//! Events are facts our own services computed from validated commands, so they
//! carry no bounds of their own (a type shared with a command, such as
//! [`OrderLine`](crate::OrderLine), carries the command's bounds in both schemas).
//!
//! Order totals cannot overflow: `MAX_LINES * MAX_QUANTITY * MAX_PRICE_MINOR`
//! = 100 * 10^6 * 10^10 = 10^18, below `i64::MAX` (about 9.22 * 10^18); the
//! assertion at the bottom keeps that true if a bound is raised. order-svc still
//! uses checked arithmetic, since a price comes from its projection, not from
//! the command.
//!
//! String lengths count Unicode scalar values (`chars()`), which is what JSON
//! Schema's `minLength`/`maxLength` count, not bytes.

/// Units of one SKU on one order line.
pub const MIN_QUANTITY: i64 = 1;
pub const MAX_QUANTITY: i64 = 1_000_000;

/// Lines of one order (each SKU at most once).
pub const MIN_LINES: usize = 1;
pub const MAX_LINES: usize = 100;

/// A unit price in minor units: up to 100 million in major units.
pub const MIN_PRICE_MINOR: i64 = 0;
pub const MAX_PRICE_MINOR: i64 = 10_000_000_000;

/// Units added by one RestockProduct.
pub const MIN_RESTOCK_QUANTITY: i64 = 1;
pub const MAX_RESTOCK_QUANTITY: i64 = 1_000_000;

/// Units a product starts with (CreateProduct).
pub const MIN_INITIAL_STOCK: i64 = 0;
pub const MAX_INITIAL_STOCK: i64 = 1_000_000_000;

/// A required string: ids, names, tokens (whitespace alone is refused too).
pub const MIN_REQUIRED_CHARS: usize = 1;
/// Ids chosen by clients: user_id, order_id, sku.
pub const MAX_ID_CHARS: usize = 128;
/// A user's or a product's display name.
pub const MAX_NAME_CHARS: usize = 200;
/// RFC 5321's limit on a forward path.
pub const MAX_EMAIL_CHARS: usize = 254;
/// The opaque card token handed to the payment gateway.
pub const MAX_PAYMENT_TOKEN_CHARS: usize = 128;
/// A free-text reason (e.g. why an order is cancelled).
pub const MAX_REASON_CHARS: usize = 1000;

// Widened to i128 so the check itself cannot overflow.
const _: () = assert!(
    MAX_LINES as i128 * MAX_QUANTITY as i128 * MAX_PRICE_MINOR as i128 <= i64::MAX as i128,
    "an order total at the bounds must fit in i64"
);
