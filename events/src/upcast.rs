//! Upcasting: turns a payload written at an older schema version into the shape of
//! the current one, one version step at a time, so consumers only ever see current
//! types. Each step is a pure JSON rewrite with a test.

use serde_json::Value;

use crate::DecodeError;

pub(crate) fn to_current(event_type: &str, mut version: u32, mut payload: Value) -> Result<Value, DecodeError> {
    let current = crate::spec(event_type).map_or(version, |s| s.schema_version);
    while version < current {
        payload = step(event_type, version, payload)?;
        version += 1;
    }
    Ok(payload)
}

fn step(event_type: &str, from: u32, payload: Value) -> Result<Value, DecodeError> {
    match (event_type, from) {
        ("PlaceOrder", 1) => place_order_v1_to_v2(payload),
        ("StockReleased", 1) => stock_released_v1_to_v2(payload),
        _ => Err(DecodeError::InvalidPayload {
            event_type: event_type.to_owned(),
            reason: format!("no upcast from version {from}"),
        }),
    }
}

/// PlaceOrder v1 had `items: [{sku, qty}]` and `card_token`; v2 renamed them to
/// `lines: [{sku, quantity}]` and `payment_token`.
fn place_order_v1_to_v2(mut payload: Value) -> Result<Value, DecodeError> {
    let invalid = |reason: &str| DecodeError::InvalidPayload {
        event_type: "PlaceOrder".to_owned(),
        reason: format!("version 1: {reason}"),
    };
    let object = payload.as_object_mut().ok_or_else(|| invalid("payload is not an object"))?;
    let items = object.remove("items").ok_or_else(|| invalid("missing field `items`"))?;
    let Value::Array(items) = items else {
        return Err(invalid("`items` is not an array"));
    };
    let mut lines = Vec::with_capacity(items.len());
    for mut item in items {
        let line = item.as_object_mut().ok_or_else(|| invalid("an item is not an object"))?;
        if let Some(qty) = line.remove("qty") {
            line.insert("quantity".to_owned(), qty);
        }
        lines.push(item);
    }
    object.insert("lines".to_owned(), Value::Array(lines));
    if let Some(token) = object.remove("card_token") {
        object.insert("payment_token".to_owned(), token);
    }
    Ok(payload)
}

/// StockReleased v1 told a refund apart from a declined payment only by its
/// reason text, "refunded"; v2 says it in `refunded`.
fn stock_released_v1_to_v2(mut payload: Value) -> Result<Value, DecodeError> {
    let object = payload.as_object_mut().ok_or_else(|| DecodeError::InvalidPayload {
        event_type: "StockReleased".to_owned(),
        reason: "version 1: payload is not an object".to_owned(),
    })?;
    let refunded = object.get("reason").and_then(Value::as_str) == Some("refunded");
    object.insert("refunded".to_owned(), Value::Bool(refunded));
    Ok(payload)
}
