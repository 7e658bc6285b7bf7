//! The shared event schema: the envelope every record carries, every command and
//! event of the catalogue, which topic and key each one uses, how versions are
//! handled, and a JSON Schema for each message so producers in any language can
//! validate before they publish.
//!
//! Decoding is strict and total: anything that is not a known, supported message
//! comes back as a [`DecodeError`], which the runtime treats as permanent. The
//! envelope is read tolerantly, though: fields a newer producer added to it are
//! ignored (payloads evolve by schema version instead).

pub mod access;
pub mod limits;
mod messages;
mod order_status;
pub mod topics;
mod upcast;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use messages::*;
pub use order_status::OrderStatus;

/// Declares the catalogue once: payload type, topic, Kafka key field and the
/// current schema version. Everything that dispatches on the message kind is
/// generated from this table, so a new message cannot be half-registered.
macro_rules! catalogue {
    ($( $name:ident => $topic:expr, key: $key:ident, version: $version:expr; )*) => {
        /// Any message of the catalogue.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(untagged)]
        pub enum Message {
            $( $name($name), )*
        }

        $(
            impl From<$name> for Message {
                fn from(message: $name) -> Self {
                    Message::$name(message)
                }
            }
        )*

        /// Static facts about one message type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct MessageSpec {
            pub event_type: &'static str,
            pub topic: &'static str,
            pub key_field: &'static str,
            pub schema_version: u32,
        }

        /// The whole catalogue, in declaration order.
        pub const CATALOGUE: &[MessageSpec] = &[
            $( MessageSpec {
                event_type: stringify!($name),
                topic: $topic,
                key_field: stringify!($key),
                schema_version: $version,
            }, )*
        ];

        impl Message {
            pub fn event_type(&self) -> &'static str {
                match self { $( Message::$name(_) => stringify!($name), )* }
            }

            /// The Kafka key: the id of the aggregate the message is about.
            pub fn key(&self) -> &str {
                match self { $( Message::$name(m) => &m.$key, )* }
            }

            pub fn validate(&self) -> Result<(), ValidationError> {
                match self { $( Message::$name(m) => m.validate(), )* }
            }

            fn from_payload(event_type: &str, payload: Value) -> Result<Message, DecodeError> {
                let invalid = |source: serde_json::Error| DecodeError::InvalidPayload {
                    event_type: event_type.to_owned(),
                    reason: source.to_string(),
                };
                match event_type {
                    $( stringify!($name) => serde_json::from_value::<$name>(payload)
                        .map(Message::$name)
                        .map_err(invalid), )*
                    other => Err(DecodeError::UnknownEventType(other.to_owned())),
                }
            }

            /// JSON Schema of every message payload, by event type.
            pub fn payload_schemas() -> Vec<(&'static MessageSpec, schemars::schema::RootSchema)> {
                vec![$((
                    spec(stringify!($name)).expect("declared in the catalogue"),
                    schemars::schema_for!($name),
                )),*]
            }
        }
    };
}

catalogue! {
    RegisterUser => topics::USER_COMMANDS, key: user_id, version: 1;
    UserRegistered => topics::USER_EVENTS, key: user_id, version: 1;
    UserRegistrationRejected => topics::USER_EVENTS, key: user_id, version: 1;

    CreateProduct => topics::PRODUCT_COMMANDS, key: sku, version: 1;
    ChangePrice => topics::PRODUCT_COMMANDS, key: sku, version: 1;
    RestockProduct => topics::PRODUCT_COMMANDS, key: sku, version: 1;
    ProductCreated => topics::PRODUCT_EVENTS, key: sku, version: 1;
    PriceChanged => topics::PRODUCT_EVENTS, key: sku, version: 1;
    ProductRestocked => topics::PRODUCT_EVENTS, key: sku, version: 1;
    ProductCommandRejected => topics::PRODUCT_EVENTS, key: sku, version: 1;

    PlaceOrder => topics::ORDER_COMMANDS, key: order_id, version: 2;
    CancelOrder => topics::ORDER_COMMANDS, key: order_id, version: 1;
    OrderPlaced => topics::ORDER_EVENTS, key: order_id, version: 1;
    OrderRejected => topics::ORDER_EVENTS, key: order_id, version: 1;
    OrderConfirmed => topics::ORDER_EVENTS, key: order_id, version: 1;
    OrderCancellationRequested => topics::ORDER_EVENTS, key: order_id, version: 1;
    OrderCancelled => topics::ORDER_EVENTS, key: order_id, version: 1;

    StockReserved => topics::INVENTORY_EVENTS, key: order_id, version: 1;
    StockReservationFailed => topics::INVENTORY_EVENTS, key: order_id, version: 1;
    StockCommitted => topics::INVENTORY_EVENTS, key: order_id, version: 1;
    StockReleased => topics::INVENTORY_EVENTS, key: order_id, version: 2;
    StockReceived => topics::INVENTORY_EVENTS, key: sku, version: 1;

    PaymentAuthorized => topics::PAYMENT_EVENTS, key: order_id, version: 1;
    PaymentDeclined => topics::PAYMENT_EVENTS, key: order_id, version: 1;
    PaymentDeferred => topics::PAYMENT_EVENTS, key: order_id, version: 1;
    PaymentRefunded => topics::PAYMENT_EVENTS, key: order_id, version: 1;
    PaymentRefundFailed => topics::PAYMENT_EVENTS, key: order_id, version: 1;

    NotificationSent => topics::NOTIFICATION_EVENTS, key: order_id, version: 1;
}

/// Looks up a message type by name.
pub fn spec(event_type: &str) -> Option<&'static MessageSpec> {
    CATALOGUE.iter().find(|s| s.event_type == event_type)
}

/// The names of every message type, for error messages.
pub fn known_event_types() -> Vec<&'static str> {
    CATALOGUE.iter().map(|s| s.event_type).collect()
}

impl Message {
    pub fn spec(&self) -> &'static MessageSpec {
        spec(self.event_type()).expect("every variant is in the catalogue")
    }

    pub fn topic(&self) -> &'static str {
        self.spec().topic
    }

    /// Decodes a payload of `event_type` written at `schema_version`, upcasting
    /// older versions. Newer versions than this build knows are refused: guessing
    /// at fields we have never seen could silently drop meaning.
    pub fn decode(event_type: &str, schema_version: u32, payload: Value) -> Result<Message, DecodeError> {
        let spec = spec(event_type).ok_or_else(|| DecodeError::UnknownEventType(event_type.to_owned()))?;
        if schema_version == 0 || schema_version > spec.schema_version {
            return Err(DecodeError::UnsupportedVersion {
                event_type: event_type.to_owned(),
                version: schema_version,
                supported: spec.schema_version,
            });
        }
        let payload = upcast::to_current(event_type, schema_version, payload)?;
        Message::from_payload(event_type, payload)
    }
}

/// A field that breaks a rule of its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// Why bytes could not become an [`Envelope`]. Always permanent: retrying the
/// same bytes gives the same answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a JSON envelope: {0}")]
    NotAnEnvelope(String),
    #[error("unknown event type `{0}`")]
    UnknownEventType(String),
    #[error("{event_type} schema_version {version} is not supported (this build reads 1..={supported})")]
    UnsupportedVersion { event_type: String, version: u32, supported: u32 },
    #[error("invalid {event_type} payload: {reason}")]
    InvalidPayload { event_type: String, reason: String },
    #[error("{event_type} is invalid: {source}")]
    Invalid { event_type: String, source: ValidationError },
}

/// The wire form of an envelope, payload not yet interpreted. Unknown fields
/// are ignored (tolerant reader): the envelope has no version of its own, so a
/// field added by a newer producer must not dead-letter every record in
/// consumers built before it. Payloads keep their own rules (command payloads
/// deny unknown fields; changes go through `schema_version` and upcasting).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireEnvelope {
    event_id: Uuid,
    event_type: String,
    schema_version: u32,
    occurred_at: String,
    correlation_id: String,
    #[serde(default)]
    causation_id: Option<Uuid>,
    producer: String,
    payload: Value,
}

/// A message with its metadata, exactly what travels on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// UUID v7: unique, and roughly ordered by creation time.
    pub event_id: Uuid,
    pub schema_version: u32,
    /// RFC 3339, UTC, millisecond precision.
    pub occurred_at: String,
    /// The order id for saga events; otherwise the aggregate id.
    pub correlation_id: String,
    /// The event that caused this one; none for commands from outside.
    pub causation_id: Option<Uuid>,
    /// The service (or tool) that wrote it.
    pub producer: String,
    pub message: Message,
}

impl Envelope {
    /// A new envelope at the current schema version. The correlation id is the
    /// message key unless the caller continues an existing saga.
    pub fn new(message: impl Into<Message>, producer: &str) -> Self {
        let message = message.into();
        Envelope {
            event_id: Uuid::now_v7(),
            schema_version: message.spec().schema_version,
            occurred_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            correlation_id: message.key().to_owned(),
            causation_id: None,
            producer: producer.to_owned(),
            message,
        }
    }

    /// A new envelope caused by `cause`: same correlation id, causation = cause.
    pub fn caused_by(cause: &Envelope, message: impl Into<Message>, producer: &str) -> Self {
        let mut envelope = Envelope::new(message, producer);
        envelope.correlation_id = cause.correlation_id.clone();
        envelope.causation_id = Some(cause.event_id);
        envelope
    }

    pub fn event_type(&self) -> &'static str {
        self.message.event_type()
    }

    pub fn topic(&self) -> &'static str {
        self.message.topic()
    }

    pub fn key(&self) -> &str {
        self.message.key()
    }

    /// Milliseconds since the Unix epoch of `occurred_at`.
    pub fn occurred_at_ms(&self) -> Option<i64> {
        let at = humantime::parse_rfc3339_weak(&self.occurred_at).ok()?;
        let ms = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis();
        i64::try_from(ms).ok()
    }

    pub fn to_json(&self) -> Vec<u8> {
        let wire = WireEnvelope {
            event_id: self.event_id,
            event_type: self.event_type().to_owned(),
            schema_version: self.schema_version,
            occurred_at: self.occurred_at.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id,
            producer: self.producer.clone(),
            payload: serde_json::to_value(&self.message).expect("payloads serialise"),
        };
        serde_json::to_vec(&wire).expect("envelopes serialise")
    }

    /// Decodes and validates. After an upcast, the envelope reports the current
    /// schema version, since that is the shape its message now has.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let wire: WireEnvelope =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::NotAnEnvelope(e.to_string()))?;
        let message = Message::decode(&wire.event_type, wire.schema_version, wire.payload)?;
        message.validate().map_err(|source| DecodeError::Invalid { event_type: wire.event_type.clone(), source })?;
        Ok(Envelope {
            event_id: wire.event_id,
            schema_version: message.spec().schema_version,
            occurred_at: wire.occurred_at,
            correlation_id: wire.correlation_id,
            causation_id: wire.causation_id,
            producer: wire.producer,
            message,
        })
    }
}

/// JSON Schema (draft 7) of the envelope around a given payload schema, as
/// exported for non-Rust producers (one file per message type).
///
/// Self-contained: the payload's `definitions` move to the document root and its
/// nested `$schema` is dropped, so every `$ref: "#/definitions/X"` in the payload
/// resolves against this document, as any conforming validator resolves it.
///
/// The envelope is strict (`additionalProperties: false`) because the schema is
/// what producers validate against: a misspelt `causation_id` should fail there,
/// not travel unnoticed. Readers are more lenient than this schema: consumers
/// ignore unknown envelope fields, so a field added later reaches old consumers
/// harmlessly (tolerant reader), while this schema tells producers what the
/// current contract is.
pub fn envelope_schema(spec: &MessageSpec, payload: &schemars::schema::RootSchema) -> Value {
    let mut payload = serde_json::to_value(payload).expect("schemas serialise");
    let definitions = payload.as_object_mut().and_then(|p| {
        p.remove("$schema");
        p.remove("definitions")
    });
    let mut schema = serde_json::json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": spec.event_type,
        "description": format!(
            "{} on topic `{}`, Kafka key = payload.{}, schema_version {}",
            spec.event_type, spec.topic, spec.key_field, spec.schema_version
        ),
        "type": "object",
        "additionalProperties": false,
        "required": ["event_id", "event_type", "schema_version", "occurred_at", "correlation_id", "producer", "payload"],
        "properties": {
            "event_id": { "type": "string", "format": "uuid" },
            "event_type": { "const": spec.event_type },
            "schema_version": { "type": "integer", "minimum": 1, "maximum": spec.schema_version },
            "occurred_at": { "type": "string", "format": "date-time" },
            "correlation_id": { "type": "string" },
            "causation_id": { "type": ["string", "null"], "format": "uuid" },
            "producer": { "type": "string" },
            "payload": payload,
        }
    });
    if let (Some(definitions), Some(root)) = (definitions, schema.as_object_mut()) {
        root.insert("definitions".to_owned(), definitions);
    }
    whole_number_bounds(&mut schema);
    schema
}

/// schemars keeps `minimum`/`maximum` as f64 (`1000000.0`); the bounds of our
/// integer fields are whole numbers well below 2^53, so they are written as
/// integers, the way a reader of the schema expects them.
fn whole_number_bounds(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                let bound = matches!(key.as_str(), "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum");
                match value.as_f64() {
                    Some(f) if bound && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                        // Exact: |f| < 2^53 and has no fraction.
                        *value = Value::from(f as i64);
                    }
                    _ => whole_number_bounds(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_number_bounds),
        _ => {}
    }
}
