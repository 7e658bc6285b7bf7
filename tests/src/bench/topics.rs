//! Reading topics back after a run, and the messages one order causes.

use events::{
    Envelope, Message, NotificationSent, OrderConfirmed, OrderLine, OrderPlaced, PaymentAuthorized, PlaceOrder,
    PricedLine, StockCommitted, StockReserved,
};
use platform::kafka::HeaderList;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};

/// The topics a placed order touches.
pub const SAGA_TOPICS: [&str; 5] = [
    events::topics::ORDER_COMMANDS,
    events::topics::ORDER_EVENTS,
    events::topics::INVENTORY_EVENTS,
    events::topics::PAYMENT_EVENTS,
    events::topics::NOTIFICATION_EVENTS,
];

/// One record as read back: where it was, how big, and its envelope.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub key: String,
    /// Key + value + header keys and values, in bytes.
    pub bytes: usize,
    pub value_bytes: usize,
    pub envelope: Option<Envelope>,
}

impl Record {
    pub fn from_kafka(message: &BorrowedMessage<'_>) -> Option<Record> {
        let value = message.payload()?;
        let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        let header_bytes: usize = message
            .headers()
            .map(|h| h.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len)).sum())
            .unwrap_or(0);
        Some(Record {
            topic: message.topic().to_owned(),
            bytes: key.len() + value.len() + header_bytes,
            value_bytes: value.len(),
            envelope: Envelope::from_json(value).ok(),
            key,
        })
    }
}

/// A record ready to produce: what one saga message looks like on the wire.
#[derive(Debug, Clone)]
pub struct Sample {
    pub event_type: &'static str,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: HeaderList,
}

impl Sample {
    pub fn bytes(&self) -> usize {
        self.key.len() + self.value.len() + self.headers.0.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// The messages one confirmed order causes, built the way the services build
/// them (same envelope, same headers): used for the broker baseline before the
/// system has run; the run itself then reports the measured count and size.
pub fn one_order(order_id: &str, user_id: &str, sku: &str) -> Vec<Sample> {
    let place = Envelope::new(
        PlaceOrder {
            order_id: order_id.into(),
            user_id: user_id.into(),
            lines: vec![OrderLine { sku: sku.into(), quantity: 1 }],
            payment_token: "tok_visa".into(),
        },
        "saga-bench",
    );
    let mut chain = vec![place.clone()];
    let mut next = |cause: &Envelope, message: Message, producer: &str| {
        let envelope = Envelope::caused_by(cause, message, producer);
        chain.push(envelope.clone());
        envelope
    };
    let placed = next(
        &place,
        OrderPlaced {
            order_id: order_id.into(),
            user_id: user_id.into(),
            lines: vec![PricedLine { sku: sku.into(), quantity: 1, unit_price_minor: 1000 }],
            total_minor: 1000,
            payment_token: "tok_visa".into(),
        }
        .into(),
        "order-svc",
    );
    let reserved = next(
        &placed,
        StockReserved {
            order_id: order_id.into(),
            lines: vec![OrderLine { sku: sku.into(), quantity: 1 }],
            total_minor: 1000,
            payment_token: "tok_visa".into(),
        }
        .into(),
        "inventory-svc",
    );
    let paid = next(
        &reserved,
        PaymentAuthorized { order_id: order_id.into(), charge_id: "ch_000001".into(), amount_minor: 1000 }.into(),
        "payment-svc",
    );
    let confirmed = next(
        &paid,
        OrderConfirmed { order_id: order_id.into(), user_id: user_id.into(), total_minor: 1000 }.into(),
        "order-svc",
    );
    next(&confirmed, StockCommitted { order_id: order_id.into() }.into(), "inventory-svc");
    next(
        &confirmed,
        NotificationSent {
            notification_id: uuid::Uuid::now_v7().to_string(),
            order_id: order_id.into(),
            user_id: user_id.into(),
            channel: "email".into(),
            recipient: format!("{user_id}@example.com"),
            kind: "confirmed".into(),
            text: format!("Your order {order_id} is confirmed: 10.00 charged."),
        }
        .into(),
        "notification-svc",
    );
    chain
        .into_iter()
        .map(|envelope| Sample {
            event_type: envelope.event_type(),
            key: envelope.key().to_owned(),
            value: envelope.to_json(),
            headers: HeaderList::for_envelope(&envelope, None),
        })
        .collect()
}
