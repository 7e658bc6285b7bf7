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

/// A newer producer may add envelope fields; older consumers must read the
/// record as before instead of dead-lettering it.
#[test]
fn unknown_envelope_fields_are_ignored() {
    let payload = json!({"order_id": "o1", "reason": "changed my mind"});
    let plain = Envelope::from_json(&wire("CancelOrder", 1, payload.clone())).expect("plain envelope");
    let mut newer: serde_json::Value = serde_json::from_slice(&wire("CancelOrder", 1, payload)).expect("json");
    newer["tenant"] = json!("x");
    newer["trace_flags"] = json!(1);
    let newer = Envelope::from_json(&serde_json::to_vec(&newer).expect("json")).expect("newer envelope decodes");
    assert_eq!(newer, plain);
    assert_eq!(newer.message, CancelOrder { order_id: "o1".into(), reason: "changed my mind".into() }.into());

    // Payload rules stay as they were: a command payload still denies unknown fields.
    let extra = json!({"order_id": "o1", "tenant": "x"});
    let error = Envelope::from_json(&wire("CancelOrder", 1, extra)).expect_err("unknown payload field");
    assert!(error.to_string().contains("unknown field `tenant`"), "{error}");
}

/// Issue 12 item 6: 4611686018427387904 units at 4000.00 wrapped to a total of
/// 0.00 downstream; the command is now refused at the edge, naming the field.
#[test]
fn commands_out_of_bounds_are_refused_naming_field_and_bound() {
    let huge = json!({
        "order_id": "o1", "user_id": "u1",
        "lines": [{"sku": "S", "quantity": 4_611_686_018_427_387_904_i64}],
        "payment_token": "tok",
    });
    let error = Envelope::from_json(&wire("PlaceOrder", 2, huge)).expect_err("too many units");
    let DecodeError::Invalid { source, .. } = error else { panic!("not a validation error: {error}") };
    assert_eq!(source.field, "lines[0].quantity");
    assert_eq!(source.reason, "must be at most 1000000, got 4611686018427387904");
    let product = CreateProduct { sku: "S".into(), name: "N".into(), price_minor: 400_000, initial_stock: 0 };
    assert_eq!(product.validate(), Ok(()), "4000.00 is a fine price");

    let line = |i: usize, quantity: i64| OrderLine { sku: format!("S{i}"), quantity };
    let order = |lines: Vec<OrderLine>| PlaceOrder {
        order_id: "o1".into(),
        user_id: "u1".into(),
        lines,
        payment_token: "tok".into(),
    };
    let at_bounds = order((0..limits::MAX_LINES).map(|i| line(i, limits::MAX_QUANTITY)).collect());
    assert_eq!(at_bounds.validate(), Ok(()));
    let too_many = order((0..=limits::MAX_LINES).map(|i| line(i, 1)).collect());
    assert_eq!(too_many.validate(), Err(ValidationError::new("lines", "must have at most 100 lines, got 101")));

    // Lengths count characters, as JSON Schema does: 128 two-byte characters fit.
    let id = "é".repeat(limits::MAX_ID_CHARS);
    let mut long = order(vec![line(0, 1)]);
    long.user_id = id.clone();
    assert_eq!(long.validate(), Ok(()));
    long.user_id.push('x');
    assert_eq!(long.validate(), Err(ValidationError::new("user_id", "must be at most 128 characters, got 129")));

    let cases: Vec<(Message, &str, &str)> = vec![
        (
            CreateProduct {
                sku: "S".into(),
                name: "N".into(),
                price_minor: limits::MAX_PRICE_MINOR + 1,
                initial_stock: 0,
            }
            .into(),
            "price_minor",
            "must be at most 10000000000, got 10000000001",
        ),
        (
            CreateProduct { sku: "S".into(), name: "N".into(), price_minor: 1, initial_stock: 1_000_000_001 }.into(),
            "initial_stock",
            "must be at most 1000000000, got 1000000001",
        ),
        (ChangePrice { sku: "S".into(), price_minor: -1 }.into(), "price_minor", "must not be negative, got -1"),
        (
            RestockProduct { sku: "S".into(), quantity: 1_000_001 }.into(),
            "quantity",
            "must be at most 1000000, got 1000001",
        ),
        (
            RegisterUser { user_id: "u".into(), email: format!("{}@example.com", "a".repeat(250)), name: "N".into() }
                .into(),
            "email",
            "must be at most 254 characters, got 262",
        ),
        (
            RegisterUser { user_id: "u".into(), email: "u@example.com".into(), name: "n".repeat(201) }.into(),
            "name",
            "must be at most 200 characters, got 201",
        ),
        (
            CancelOrder { order_id: "o".into(), reason: "r".repeat(1001) }.into(),
            "reason",
            "must be at most 1000 characters, got 1001",
        ),
        (
            PlaceOrder { payment_token: "t".repeat(129), ..order(vec![line(0, 1)]) }.into(),
            "payment_token",
            "must be at most 128 characters, got 129",
        ),
        (order(vec![line(0, 1), line(1, 0)]).into(), "lines[1].quantity", "must be positive, got 0"),
    ];
    for (message, field, reason) in cases {
        assert_eq!(message.validate(), Err(ValidationError::new(field, reason)), "{}", message.event_type());
    }
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

#[test]
fn stock_released_v1_is_upcast_with_the_refund_from_its_reason() {
    for (reason, refunded) in [("refunded", true), ("payment declined: card declined", false)] {
        let v1 = json!({"order_id": "o1", "lines": [{"sku": "S", "quantity": 1}], "reason": reason});
        let envelope = Envelope::from_json(&wire("StockReleased", 1, v1)).expect("v1 decodes");
        assert_eq!(envelope.schema_version, 2);
        let Message::StockReleased(released) = envelope.message else { panic!("not a StockReleased") };
        assert_eq!((released.reason.as_str(), released.refunded), (reason, refunded));
    }
}
