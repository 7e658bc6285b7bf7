//! The exported JSON Schemas, checked by a validator from another ecosystem:
//! Python's `jsonschema` (Draft 7, format checking on), the way an outside
//! producer would use them.
//!
//! For every message of the catalogue, a real envelope and mutations of it
//! (a field removed, a field of the wrong type, an unknown field, bounds met and
//! broken, extreme values) are validated by one python3 process running
//! `validate_schemas.py`. The verdict each case expects is the Rust reader's own
//! (`Envelope::from_json`), so the schema and the reader must agree; and each
//! kind of case also pins what that verdict has to be (a sample passes, a wrong
//! type fails, a broken bound fails naming its field, ...), so agreeing on the
//! wrong answer fails too.
//!
//! Needs python3 with the jsonschema package (`.ci/run` installs it): without
//! them the test fails saying so, it does not skip.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use events::*;
use serde_json::{json, Value};

/// One sample per message type, every field set (a missing field could not be
/// tested as missing).
fn samples() -> Vec<Message> {
    let (o, u, s) = ("o1".to_owned(), "u1".to_owned(), "MUG".to_owned());
    let line = OrderLine { sku: s.clone(), quantity: 2 };
    let text = |t: &str| t.to_owned();
    vec![
        RegisterUser { user_id: u.clone(), email: text("u1@example.com"), name: text("Ada") }.into(),
        UserRegistered { user_id: u.clone(), email: text("u1@example.com"), name: text("Ada") }.into(),
        UserRegistrationRejected { user_id: u.clone(), reason: text("email taken") }.into(),
        CreateProduct { sku: s.clone(), name: text("Mug"), price_minor: 1250, initial_stock: 10 }.into(),
        ChangePrice { sku: s.clone(), price_minor: 1300 }.into(),
        RestockProduct { sku: s.clone(), quantity: 5 }.into(),
        ProductCreated { sku: s.clone(), name: text("Mug"), price_minor: 1250, initial_stock: 10 }.into(),
        PriceChanged { sku: s.clone(), old_price_minor: 1250, price_minor: 1300 }.into(),
        ProductRestocked { sku: s.clone(), quantity: 5 }.into(),
        ProductCommandRejected { sku: s.clone(), command: text("ChangePrice"), reason: text("unknown SKU") }.into(),
        PlaceOrder {
            order_id: o.clone(),
            user_id: u.clone(),
            lines: vec![line.clone()],
            payment_token: text("tok_visa"),
        }
        .into(),
        CancelOrder { order_id: o.clone(), reason: text("changed my mind") }.into(),
        OrderPlaced {
            order_id: o.clone(),
            user_id: u.clone(),
            lines: vec![PricedLine { sku: s.clone(), quantity: 2, unit_price_minor: 1250 }],
            total_minor: 2500,
            payment_token: text("tok_visa"),
        }
        .into(),
        OrderRejected { order_id: o.clone(), user_id: u.clone(), reason: text("unknown user") }.into(),
        OrderConfirmed { order_id: o.clone(), user_id: u.clone(), total_minor: 2500 }.into(),
        OrderCancellationRequested { order_id: o.clone(), user_id: u.clone(), reason: text("r") }.into(),
        OrderCancelled { order_id: o.clone(), user_id: u.clone(), reason: text("r"), refunded: true }.into(),
        StockReserved {
            order_id: o.clone(),
            lines: vec![line.clone()],
            total_minor: 2500,
            payment_token: text("tok_visa"),
        }
        .into(),
        StockReservationFailed {
            order_id: o.clone(),
            short_lines: vec![ShortLine { sku: s.clone(), requested: 2, available: 1 }],
        }
        .into(),
        StockCommitted { order_id: o.clone() }.into(),
        StockReleased { order_id: o.clone(), lines: vec![line], reason: text("refunded"), refunded: true }.into(),
        StockReceived { sku: s, quantity: 5, available: 15 }.into(),
        PaymentAuthorized { order_id: o.clone(), charge_id: text("ch_1"), amount_minor: 2500 }.into(),
        PaymentDeclined { order_id: o.clone(), reason: text("card declined") }.into(),
        PaymentDeferred { order_id: o.clone(), reason: text("breaker open"), deadline_ms: 1_764_600_000_000 }.into(),
        PaymentRefundFailed { order_id: o.clone(), charge_id: text("ch_1"), reason: text("gateway said no") }.into(),
        PaymentRefunded { order_id: o.clone(), charge_id: text("ch_1"), refund_id: text("re_1"), amount_minor: 2500 }
            .into(),
        NotificationSent {
            notification_id: text("n1"),
            order_id: o,
            user_id: u,
            channel: text("email"),
            recipient: text("u1@example.com"),
            kind: text("confirmed"),
            text: text("Your order o1 is confirmed."),
        }
        .into(),
    ]
}

/// What a case does to the sample, and so what its verdict must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The sample itself: valid.
    Sample,
    /// A field removed: invalid, unless the Rust type defaults it.
    Missing,
    /// A field of the wrong JSON type: invalid.
    WrongType,
    /// An unknown field inside the payload: invalid where the type denies them
    /// (every command payload does), valid elsewhere.
    UnknownField,
    /// An unknown envelope field: readers ignore it, the producer schema refuses it.
    EnvelopeExtra,
    /// A command field exactly at a bound of its schema: valid.
    AtBound,
    /// A command field one past a bound of its schema: invalid, and the Rust
    /// validation names that field.
    OutOfBounds,
    /// A command field at an extreme (huge, empty, i64::MIN/MAX): schema and
    /// reader agree, whatever they say.
    Extreme,
}

struct Case {
    event_type: &'static str,
    kind: Kind,
    /// The mutated place, e.g. `payload.lines[0].quantity`.
    at: String,
    instance: Value,
    /// `Err(reason)` if the Rust reader refuses the bytes.
    rust: Result<(), DecodeError>,
}

impl Case {
    fn python_should_accept(&self) -> bool {
        self.kind != Kind::EnvelopeExtra && self.rust.is_ok()
    }

    /// The reader's verdict where the kind fixes it, as a problem if it differs.
    fn rust_problem(&self, command: bool) -> Option<String> {
        let field = self.at.strip_prefix("payload.").unwrap_or(&self.at);
        let fine = match (self.kind, &self.rust) {
            (Kind::Sample | Kind::AtBound | Kind::EnvelopeExtra, rust) => rust.is_ok(),
            (Kind::WrongType, rust) => rust.is_err(),
            (Kind::UnknownField, rust) => !command || rust.is_err(),
            (Kind::OutOfBounds, Err(DecodeError::Invalid { source, .. })) => source.field == field,
            (Kind::OutOfBounds, _) => false,
            (Kind::Missing | Kind::Extreme, _) => true,
        };
        (!fine)
            .then(|| format!("{} {:?} {}: the Rust reader says {:?}", self.event_type, self.kind, self.at, self.rust))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn pointer(path: &[Seg]) -> String {
    path.iter()
        .map(|seg| match seg {
            Seg::Key(key) => format!("/{}", key.replace('~', "~0").replace('/', "~1")),
            Seg::Index(i) => format!("/{i}"),
        })
        .collect()
}

fn display(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) if out.is_empty() => out.push_str(key),
            Seg::Key(key) => out.push_str(&format!(".{key}")),
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        "(envelope)".to_owned()
    } else {
        out
    }
}

/// A keyed member of some object in the envelope, with its schema.
struct Field {
    path: Vec<Seg>,
    value: Value,
    schema: Value,
}

/// Follows a local `$ref` against the document root, as a validator would; one
/// that resolves nowhere gives an empty schema (Python reports the error).
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
            .map_or(&Value::Null, |target| resolve(root, target)),
        None => schema,
    }
}

/// Every object (for unknown fields) and keyed field (for the rest) of `value`,
/// walking arrays through their first item.
fn walk(
    root: &Value,
    value: &Value,
    schema: &Value,
    path: Vec<Seg>,
    objects: &mut Vec<Vec<Seg>>,
    fields: &mut Vec<Field>,
) {
    let schema = resolve(root, schema);
    match value {
        Value::Object(members) => {
            objects.push(path.clone());
            for (key, member) in members {
                let member_schema =
                    schema.pointer(&format!("/properties/{key}")).map_or(&Value::Null, |s| resolve(root, s));
                let mut member_path = path.clone();
                member_path.push(Seg::Key(key.clone()));
                fields.push(Field { path: member_path.clone(), value: member.clone(), schema: member_schema.clone() });
                walk(root, member, member_schema, member_path, objects, fields);
            }
        }
        Value::Array(items) => {
            if let (Some(first), Some(item_schema)) = (items.first(), schema.get("items")) {
                let mut item_path = path;
                item_path.push(Seg::Index(0));
                walk(root, first, item_schema, item_path, objects, fields);
            }
        }
        _ => {}
    }
}

fn with(envelope: &Value, path: &[Seg], change: impl FnOnce(&mut Value)) -> Value {
    let mut copy = envelope.clone();
    if let Some(target) = copy.pointer_mut(&pointer(path)) {
        change(target);
    }
    copy
}

fn without(envelope: &Value, path: &[Seg]) -> Value {
    let (Some(Seg::Key(key)), parent) = (path.last(), &path[..path.len().saturating_sub(1)]) else {
        return envelope.clone();
    };
    with(envelope, parent, |object| {
        if let Some(object) = object.as_object_mut() {
            object.remove(key);
        }
    })
}

/// `value` padded (at the front, so an email stays an email) to `chars`
/// characters with a two-byte character: lengths count characters, not bytes.
fn string_of(value: &str, chars: usize) -> Value {
    let have = value.chars().count();
    if chars <= have {
        return Value::from(value.chars().take(chars).collect::<String>());
    }
    Value::from("é".repeat(chars - have) + value)
}

fn wrong_type(value: &Value) -> Value {
    match value {
        Value::String(_) => json!(12345),
        Value::Null | Value::Bool(_) | Value::Array(_) | Value::Object(_) => json!("x"),
        Value::Number(_) => json!("12"),
    }
}

fn bound(schema: &Value, key: &str) -> Option<i64> {
    // Integral bounds are written as integers; a float one is still a bound.
    schema.get(key).and_then(|b| b.as_i64().or_else(|| b.as_f64().map(|f| f as i64)))
}

/// (kind, replacement) for a command field: at and one past each bound of its
/// schema, then extremes.
fn bound_values(field: &Field) -> Vec<(Kind, Value)> {
    let schema = &field.schema;
    let numeric = field.value.is_number();
    let mut out = Vec::new();
    let mut push_bounds = |make: &dyn Fn(i64) -> Value, min: Option<i64>, max: Option<i64>, at_bounds: bool| {
        if let Some(min) = min {
            if at_bounds {
                out.push((Kind::AtBound, make(min)));
            }
            // A length cannot go below zero.
            if numeric || min > 0 {
                out.push((Kind::OutOfBounds, make(min - 1)));
            }
        }
        if let Some(max) = max {
            if at_bounds {
                out.push((Kind::AtBound, make(max)));
            }
            out.push((Kind::OutOfBounds, make(max + 1)));
        }
    };
    match &field.value {
        Value::Number(_) => {
            push_bounds(&|n| json!(n), bound(schema, "minimum"), bound(schema, "maximum"), true);
            out.extend([(Kind::Extreme, json!(i64::MIN)), (Kind::Extreme, json!(i64::MAX))]);
        }
        Value::String(s) => {
            let make = |n: i64| string_of(s, usize::try_from(n).unwrap_or(0));
            push_bounds(&make, bound(schema, "minLength"), bound(schema, "maxLength"), true);
            out.extend([(Kind::Extreme, json!("")), (Kind::Extreme, string_of(s, 5000))]);
        }
        Value::Array(items) => {
            let first = items.first().cloned().unwrap_or(Value::Null);
            let make = |n: i64| Value::Array(vec![first.clone(); usize::try_from(n).unwrap_or(0)]);
            // At the maximum the repeated item would be a duplicate SKU, which only
            // the Rust validation refuses; catalogue.rs tests 100 distinct lines.
            push_bounds(&make, bound(schema, "minItems"), bound(schema, "maxItems"), false);
            out.push((Kind::Extreme, make(1000)));
        }
        _ => {}
    }
    out
}

fn cases_of(message: &Message, schema: &Value) -> Vec<Case> {
    let event_type = message.event_type();
    let command = message.topic().ends_with(".commands");
    let envelope: Value = serde_json::from_slice(&Envelope::new(message.clone(), "test").to_json()).expect("json");
    let (mut objects, mut fields) = (Vec::new(), Vec::new());
    walk(schema, &envelope, schema, Vec::new(), &mut objects, &mut fields);

    let mut variants: Vec<(Kind, String, Value)> = vec![(Kind::Sample, "(sample)".to_owned(), envelope.clone())];
    for field in &fields {
        let at = display(&field.path);
        variants.push((Kind::Missing, at.clone(), without(&envelope, &field.path)));
        variants.push((Kind::WrongType, at.clone(), with(&envelope, &field.path, |v| *v = wrong_type(v))));
        if command && field.path.first() == Some(&Seg::Key("payload".to_owned())) {
            for (kind, value) in bound_values(field) {
                variants.push((kind, at.clone(), with(&envelope, &field.path, |v| *v = value)));
            }
        }
    }
    for object in &objects {
        let kind = if object.is_empty() { Kind::EnvelopeExtra } else { Kind::UnknownField };
        let instance = with(&envelope, object, |v| {
            if let Some(v) = v.as_object_mut() {
                v.insert("zz_unknown".to_owned(), json!(1));
            }
        });
        variants.push((kind, display(object), instance));
    }
    variants
        .into_iter()
        .map(|(kind, at, instance)| {
            let bytes = serde_json::to_vec(&instance).expect("json");
            Case { event_type, kind, at, instance, rust: Envelope::from_json(&bytes).map(|_| ()) }
        })
        .collect()
}

/// Runs the Python validator over every case; one verdict line per case.
fn python_verdicts(dir: &Path, cases: &[Case]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate_schemas.py");
    let listed: Vec<Value> =
        cases.iter().map(|c| json!({"schema": format!("{}.json", c.event_type), "instance": c.instance})).collect();
    std::fs::write(dir.join("cases.json"), serde_json::to_vec(&listed).expect("json")).expect("write cases");
    let output = match Command::new("python3").arg("-B").arg(&script).arg(dir).output() {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run python3 ({e}): this test validates the exported schemas with Python's jsonschema; \
             install python3 and `python3 -m pip install jsonschema` (.ci/run does both)"
        ),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(3) => panic!("{stderr}\nthis test needs Python's jsonschema package (.ci/run installs it)"),
        _ => panic!("{} failed ({}):\n{stderr}", script.display(), output.status),
    }
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

/// `index verdict rest...` lines by index.
fn by_index(lines: &[String]) -> HashMap<usize, (&str, &str)> {
    lines
        .iter()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let index = parts.next()?.parse().ok()?;
            Some((index, (parts.next()?, parts.next().unwrap_or(""))))
        })
        .collect()
}

#[test]
fn exported_schemas_validate_in_python_jsonschema() {
    let samples = samples();
    let missing: Vec<&str> = CATALOGUE
        .iter()
        .map(|spec| spec.event_type)
        .filter(|event_type| !samples.iter().any(|m| m.event_type() == *event_type))
        .collect();
    assert!(missing.is_empty(), "no sample for {missing:?}: add one to samples()");

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemas-python-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut cases = Vec::new();
    for (spec, payload) in Message::payload_schemas() {
        let schema = envelope_schema(spec, &payload);
        let text = serde_json::to_string_pretty(&schema).expect("schema json");
        std::fs::write(dir.join(format!("{}.json", spec.event_type)), text).expect("write schema");
        let sample = samples.iter().find(|m| m.event_type() == spec.event_type).expect("checked above");
        cases.extend(cases_of(sample, &schema));
    }

    // Every message gets the negatives the schemas must catch.
    let mut problems: Vec<String> = Vec::new();
    for spec in CATALOGUE {
        let command = spec.topic.ends_with(".commands");
        let refused = |kind: Kind| {
            cases.iter().any(|c| {
                c.event_type == spec.event_type && c.kind == kind && c.at.starts_with("payload") && c.rust.is_err()
            })
        };
        let mut wanted = vec![Kind::Missing, Kind::WrongType];
        if command {
            wanted.extend([Kind::UnknownField, Kind::OutOfBounds]);
        }
        for kind in wanted.into_iter().filter(|kind| !refused(*kind)) {
            problems.push(format!("{}: no {kind:?} case refused in the payload", spec.event_type));
        }
    }
    for case in &cases {
        let command = spec(case.event_type).is_some_and(|s| s.topic.ends_with(".commands"));
        problems.extend(case.rust_problem(command));
    }

    let lines = python_verdicts(&dir, &cases);
    let verdicts = by_index(&lines);
    for (index, case) in cases.iter().enumerate() {
        let (verdict, why) = verdicts.get(&index).copied().unwrap_or(("no answer", ""));
        let accepted = match verdict {
            "valid" => true,
            "invalid" => false,
            other => {
                problems
                    .push(format!("{} {:?} {}: jsonschema gave {other} {why}", case.event_type, case.kind, case.at));
                continue;
            }
        };
        if accepted != case.python_should_accept() {
            let rust = match &case.rust {
                Ok(()) => "accepts it".to_owned(),
                Err(e) => format!("refuses it: {e}"),
            };
            let python = match (accepted, why) {
                (true, _) => "accepts it".to_owned(),
                (false, why) => format!("refuses it ({why})"),
            };
            let producer = if case.kind == Kind::EnvelopeExtra { " (the producer schema must refuse it)" } else { "" };
            problems.push(format!(
                "{} {:?} {}: jsonschema {python}, the Rust reader {rust}{producer}",
                case.event_type, case.kind, case.at
            ));
        }
    }
    let positives = cases.iter().filter(|c| c.python_should_accept()).count();
    println!(
        "{} cases for {} messages: {positives} valid, {} invalid",
        cases.len(),
        CATALOGUE.len(),
        cases.len() - positives
    );
    let shown = problems.iter().take(40).cloned().collect::<Vec<_>>().join("\n");
    assert!(problems.is_empty(), "{} problems (first 40; cases in {}):\n{shown}", problems.len(), dir.display());
    let _ = std::fs::remove_dir_all(&dir);
}
