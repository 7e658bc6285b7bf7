//! The catalogue's contract: round trips, versioning, validation, routing, and
//! the exported JSON Schemas staying in step with the Rust types.

use events::*;
use serde_json::json;

fn wire(event_type: &str, version: u32, payload: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": "0192d4c6-4f3a-7cc0-9a7e-3f3c0c4e9b11",
        "event_type": event_type,
        "schema_version": version,
        "occurred_at": "2026-11-30T10:00:00.000Z",
        "correlation_id": "order-1",
        "causation_id": null,
        "producer": "test",
        "payload": payload,
    }))
    .expect("json")
}

fn samples() -> Vec<Message> {
    vec![
        RegisterUser { user_id: "u1".into(), email: "u1@example.com".into(), name: "U".into() }.into(),
        CreateProduct { sku: "S".into(), name: "N".into(), price_minor: 100, initial_stock: 5 }.into(),
        PlaceOrder {
            order_id: "o1".into(),
            user_id: "u1".into(),
            lines: vec![OrderLine { sku: "S".into(), quantity: 2 }],
            payment_token: "tok_visa".into(),
        }
        .into(),
        OrderPlaced {
            order_id: "o1".into(),
            user_id: "u1".into(),
            lines: vec![PricedLine { sku: "S".into(), quantity: 2, unit_price_minor: 100 }],
            total_minor: 200,
            payment_token: "tok_visa".into(),
        }
        .into(),
        StockReservationFailed {
            order_id: "o1".into(),
            short_lines: vec![ShortLine { sku: "S".into(), requested: 2, available: 1 }],
        }
        .into(),
        PaymentDeferred { order_id: "o1".into(), reason: "breaker open".into(), deadline_ms: 1 }.into(),
        OrderCancelled { order_id: "o1".into(), user_id: "u1".into(), reason: "r".into(), refunded: true }.into(),
    ]
}

#[test]
fn every_sample_round_trips_through_the_wire_format() {
    for message in samples() {
        let mut envelope = Envelope::new(message.clone(), "test");
        envelope.causation_id = Some(uuid::Uuid::now_v7());
        let decoded = Envelope::from_json(&envelope.to_json()).expect("decodes");
        assert_eq!(decoded, envelope, "{}", message.event_type());
    }
}

#[test]
fn envelope_carries_the_contract_fields() {
    let envelope = Envelope::new(CancelOrder { order_id: "o9".into(), reason: String::new() }, "shopctl");
    let value: serde_json::Value = serde_json::from_slice(&envelope.to_json()).expect("json");
    assert_eq!(value["event_type"], "CancelOrder");
    assert_eq!(value["schema_version"], 1);
    assert_eq!(value["correlation_id"], "o9");
    assert_eq!(value["producer"], "shopctl");
    assert_eq!(envelope.event_id.get_version_num(), 7, "event ids are UUID v7");
    assert!(envelope.occurred_at_ms().is_some());
    assert_eq!(envelope.topic(), topics::ORDER_COMMANDS);
    assert_eq!(envelope.key(), "o9");
}

#[test]
fn caused_events_continue_the_saga() {
    let cause = Envelope::new(CancelOrder { order_id: "o9".into(), reason: String::new() }, "shopctl");
    let effect = Envelope::caused_by(
        &cause,
        OrderCancellationRequested { order_id: "o9".into(), user_id: "u".into(), reason: "r".into() },
        "order-svc",
    );
    assert_eq!(effect.correlation_id, "o9");
    assert_eq!(effect.causation_id, Some(cause.event_id));
}

#[test]
fn unknown_event_types_are_refused() {
    let error = Envelope::from_json(&wire("OrderTeleported", 1, json!({}))).expect_err("unknown");
    assert_eq!(error, DecodeError::UnknownEventType("OrderTeleported".into()));
}

#[test]
fn newer_versions_are_refused_with_a_clear_message() {
    let error = Envelope::from_json(&wire("CancelOrder", 2, json!({"order_id": "o1"}))).expect_err("too new");
    assert_eq!(error.to_string(), "CancelOrder schema_version 2 is not supported (this build reads 1..=1)");
    let error = Envelope::from_json(&wire("CancelOrder", 0, json!({"order_id": "o1"}))).expect_err("zero");
    assert!(matches!(error, DecodeError::UnsupportedVersion { version: 0, .. }));
}

#[test]
fn place_order_v1_is_upcast_to_v2() {
    let v1 = json!({
        "order_id": "o1", "user_id": "u1",
        "items": [{"sku": "S", "qty": 3}],
        "card_token": "tok_visa",
    });
    let envelope = Envelope::from_json(&wire("PlaceOrder", 1, v1)).expect("v1 decodes");
    assert_eq!(envelope.schema_version, 2);
    let Message::PlaceOrder(order) = envelope.message else { panic!("not a PlaceOrder") };
    assert_eq!(order.lines, vec![OrderLine { sku: "S".into(), quantity: 3 }]);
    assert_eq!(order.payment_token, "tok_visa");
}

#[test]
fn malformed_envelopes_and_payloads_are_refused() {
    assert!(matches!(Envelope::from_json(b"not json"), Err(DecodeError::NotAnEnvelope(_))));
    assert!(matches!(Envelope::from_json(b"{\"event_type\": \"PlaceOrder\"}"), Err(DecodeError::NotAnEnvelope(_))));
    let error = Envelope::from_json(&wire("CancelOrder", 1, json!({"order": "o1"}))).expect_err("bad field");
    assert!(error.to_string().contains("unknown field `order`"), "{error}");
}

#[test]
fn validation_names_the_field_at_fault() {
    let bad = json!({
        "order_id": "o1", "user_id": "u1",
        "lines": [{"sku": "S", "quantity": 1}, {"sku": "T", "quantity": 0}],
        "payment_token": "tok",
    });
    let error = Envelope::from_json(&wire("PlaceOrder", 2, bad)).expect_err("quantity 0");
    let DecodeError::Invalid { source, .. } = error else { panic!("not a validation error: {error}") };
    assert_eq!(source.field, "lines[1].quantity");

    let email = RegisterUser { user_id: "u".into(), email: "nope".into(), name: "N".into() };
    assert_eq!(email.validate().expect_err("bad email").field, "email");
    let restock = RestockProduct { sku: "S".into(), quantity: -1 };
    assert_eq!(restock.validate().expect_err("negative").field, "quantity");
}

#[test]
fn each_topic_has_one_kind_of_producer() {
    for spec in CATALOGUE {
        let command = spec.topic.ends_with(".commands");
        let imperative = ["Register", "Create", "Change", "Restock", "Place", "Cancel"]
            .iter()
            .any(|verb| spec.event_type.starts_with(verb) && !spec.event_type.ends_with("ed"));
        assert_eq!(command, imperative, "{} on {}", spec.event_type, spec.topic);
        assert!(topics::ALL.contains(&spec.topic), "{} on an undeclared topic", spec.topic);
    }
    assert_eq!(known_event_types().len(), CATALOGUE.len());
}

/// The exported schemas are committed under `events/schemas/`; a change to a
/// payload type must show up there (regenerate with `UPDATE_SCHEMAS=1`), which
/// makes schema changes visible in review.
#[test]
fn exported_schemas_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let schemas = Message::payload_schemas();
    assert_eq!(schemas.len(), CATALOGUE.len());
    for (spec, payload) in schemas {
        let schema = envelope_schema(spec, &payload);
        let text = serde_json::to_string_pretty(&schema).expect("schema json") + "\n";
        let path = dir.join(format!("{}.json", spec.event_type));
        if update {
            std::fs::write(&path, &text).expect("write schema");
        } else {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(committed, text, "{} is stale: run UPDATE_SCHEMAS=1 cargo test -p events", path.display());
        }
    }
}
