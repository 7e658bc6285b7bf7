//! Topic names. Each topic has exactly one producing service; commands arrive on
//! `*.commands` topics, facts leave on `*.events` topics.

pub const USER_COMMANDS: &str = "user.commands";
pub const USER_EVENTS: &str = "user.events";
pub const PRODUCT_COMMANDS: &str = "product.commands";
pub const PRODUCT_EVENTS: &str = "product.events";
pub const ORDER_COMMANDS: &str = "order.commands";
pub const ORDER_EVENTS: &str = "order.events";
pub const INVENTORY_EVENTS: &str = "inventory.events";
pub const PAYMENT_EVENTS: &str = "payment.events";
pub const NOTIFICATION_EVENTS: &str = "notification.events";

/// Every catalogue topic, in the order the saga touches them.
pub const ALL: &[&str] = &[
    USER_COMMANDS,
    USER_EVENTS,
    PRODUCT_COMMANDS,
    PRODUCT_EVENTS,
    ORDER_COMMANDS,
    ORDER_EVENTS,
    INVENTORY_EVENTS,
    PAYMENT_EVENTS,
    NOTIFICATION_EVENTS,
];

/// The dead-letter topic of a service (its consumer group), e.g. `order-svc.dlq`.
/// One per service, so a replay reaches only the service that failed the record.
pub fn dead_letter(service: &str) -> String {
    format!("{service}.dlq")
}

/// The replay topic of a service: dead letters replayed by `shopctl dlq replay`
/// go here, so they reach only the service that failed them.
pub fn replay(service: &str) -> String {
    format!("{service}.replay")
}
