//! Publish input: turns a JSON document, NDJSON lines or a `--payload` flag into
//! validated catalogue messages, with problems that point at the line (and
//! column, for malformed JSON) and the field at fault. Pure: no I/O.
//!
//! Each input value is either a bare payload (its type comes from `--type`) or a
//! wrapped message `{"event_type": T, "payload": {...}, "schema_version": N}`
//! (schema_version optional). A top-level JSON array is a list of such values.

use std::fmt;

use events::{DecodeError, Message};
use serde_json::{Map, Value};

/// Where an input value starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line of the value (or of its array).
    pub line: usize,
    /// 1-based position inside a top-level array.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.item {
            Some(item) => write!(f, "item {item} of the array at line {}", self.line),
            None => write!(f, "line {}", self.line),
        }
    }
}

/// A valid message and where it came from.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub at: Location,
    pub message: Message,
}

/// Why one input value cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Location,
    /// 1-based column, for malformed JSON.
    pub column: Option<usize>,
    pub text: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(column) => write!(f, "{}, column {column}: {}", self.at, self.text),
            None => write!(f, "{}: {}", self.at, self.text),
        }
    }
}

/// Defaults for bare payloads, from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Defaults<'a> {
    pub event_type: Option<&'a str>,
    pub schema_version: Option<u32>,
}

/// Parses every value of `text`. NDJSON (the first non-blank line is a whole
/// JSON value) is read line by line, so malformed JSON on one line does not hide
/// problems on the others; anything else is read as a stream of JSON values
/// (one document, pretty-printed or not), up to the first syntax error.
pub fn parse_document(text: &str, defaults: Defaults<'_>) -> (Vec<Parsed>, Vec<Problem>) {
    let mut out = Collected { defaults, parsed: Vec::new(), problems: Vec::new() };
    let first = text.lines().find(|line| !line.trim().is_empty());
    if first.is_some_and(|line| serde_json::from_str::<Value>(line).is_ok()) {
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(value) => out.accept(index + 1, value),
                Err(error) => out.problems.push(Problem {
                    at: Location { line: index + 1, item: None },
                    column: Some(error.column()),
                    text: malformed(&error),
                }),
            }
        }
    } else {
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        loop {
            let before = stream.byte_offset();
            let start_line = line_of(text, before + leading_whitespace(&text[before..]));
            match stream.next() {
                None => break,
                Some(Ok(value)) => out.accept(start_line, value),
                Some(Err(error)) => {
                    out.problems.push(Problem {
                        at: Location { line: error.line(), item: None },
                        column: Some(error.column()),
                        text: malformed(&error),
                    });
                    break;
                }
            }
        }
    }
    (out.parsed, out.problems)
}

struct Collected<'a> {
    defaults: Defaults<'a>,
    parsed: Vec<Parsed>,
    problems: Vec<Problem>,
}

impl Collected<'_> {
    /// One top-level value (an array is a list of inputs) starting at `line`.
    fn accept(&mut self, line: usize, value: Value) {
        let items: Vec<(Option<usize>, Value)> = match value {
            Value::Array(items) => items.into_iter().enumerate().map(|(i, item)| (Some(i + 1), item)).collect(),
            value => vec![(None, value)],
        };
        for (item, value) in items {
            let at = Location { line, item };
            match interpret(value, self.defaults) {
                Ok(message) => self.parsed.push(Parsed { at, message }),
                Err(text) => self.problems.push(Problem { at, column: None, text }),
            }
        }
    }
}

fn leading_whitespace(text: &str) -> usize {
    text.len() - text.trim_start().len()
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes().iter().take(offset).filter(|b| **b == b'\n').count() + 1
}

/// serde_json's message without its " at line X column Y" suffix.
fn malformed(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    format!("malformed JSON: {}", message.strip_suffix(&suffix).unwrap_or(&message))
}

/// The keys a wrapped message may have.
const WRAPPED_KEYS: [&str; 3] = ["event_type", "payload", "schema_version"];

/// One input value → a valid message, or what is wrong with it.
pub fn interpret(value: Value, defaults: Defaults<'_>) -> Result<Message, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "expected a JSON object (a payload, or {{\"event_type\": ..., \"payload\": {{...}}}}), got {}",
            kind(&value)
        ));
    };
    let (event_type, version, payload) = if object.contains_key("event_type") {
        unwrap_message(object)?
    } else {
        let event_type = defaults.event_type.ok_or_else(|| {
            "a bare payload needs --type (or wrap it: {\"event_type\": \"...\", \"payload\": {...}})".to_owned()
        })?;
        (event_type.to_owned(), defaults.schema_version, Value::Object(object))
    };
    decode(&event_type, version, payload)
}

fn unwrap_message(mut object: Map<String, Value>) -> Result<(String, Option<u32>, Value), String> {
    if let Some(extra) = object.keys().find(|k| !WRAPPED_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unexpected key `{extra}`: a wrapped message has only event_type, payload and schema_version"
        ));
    }
    let event_type = match object.remove("event_type") {
        Some(Value::String(t)) => t,
        Some(other) => return Err(format!("field `event_type` must be a string, got {}", kind(&other))),
        None => return Err("field `event_type` is missing".to_owned()),
    };
    let version = match object.remove("schema_version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(v) => Some(v),
            None => return Err(format!("field `schema_version` must be a positive whole number, got {n}")),
        },
        Some(other) => {
            return Err(format!("field `schema_version` must be a positive whole number, got {}", kind(&other)))
        }
    };
    let payload = object.remove("payload").ok_or_else(|| "field `payload` is missing".to_owned())?;
    Ok((event_type, version, payload))
}

/// A catalogue name check, decode (with upcast) and validation.
pub fn decode(event_type: &str, version: Option<u32>, payload: Value) -> Result<Message, String> {
    let Some(spec) = events::spec(event_type) else {
        return Err(unknown_type(event_type));
    };
    let version = version.unwrap_or(spec.schema_version);
    let message = Message::decode(event_type, version, payload.clone()).map_err(|error| match error {
        DecodeError::InvalidPayload { reason, .. } => describe_payload_error(event_type, &payload, &reason),
        DecodeError::UnknownEventType(t) => unknown_type(&t),
        other => other.to_string(),
    })?;
    message.validate().map_err(|e| format!("{event_type} field `{}`: {}", e.field, e.reason))?;
    Ok(message)
}

/// The message for an event type that is not in the catalogue.
pub fn unknown_type(event_type: &str) -> String {
    format!("unknown event type `{event_type}`; known types: {}", events::known_event_types().join(", "))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde's reason, with the field it is about: found by walking the payload
/// along the message's JSON Schema, or taken from serde's own wording.
fn describe_payload_error(event_type: &str, payload: &Value, reason: &str) -> String {
    let field = Message::payload_schemas()
        .into_iter()
        .find(|(spec, _)| spec.event_type == event_type)
        .and_then(|(_, schema)| serde_json::to_value(schema).ok())
        .and_then(|schema| first_mismatch(&schema, &schema, payload, ""))
        .or_else(|| quoted_field(reason));
    match field {
        Some(field) => format!("{event_type} field `{field}`: {reason}"),
        None => format!("{event_type}: {reason}"),
    }
}

/// serde names the field in "missing field `x`" and "unknown field `x`, ...".
fn quoted_field(reason: &str) -> Option<String> {
    let rest = reason.strip_prefix("missing field `").or_else(|| reason.strip_prefix("unknown field `"))?;
    rest.split('`').next().map(str::to_owned)
}

/// The path of the first place where `value` breaks `schema`: a missing
/// required field, an unknown field, or a value of the wrong JSON type.
fn first_mismatch(root: &Value, schema: &Value, value: &Value, path: &str) -> Option<String> {
    let schema = resolve(root, schema);
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !allowed.is_empty() && !allowed.iter().any(|t| type_matches(t, value)) {
            return Some(if path.is_empty() { "payload".to_owned() } else { path.to_owned() });
        }
    }
    let join = |name: &str| if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                if let Some(missing) = required.iter().filter_map(Value::as_str).find(|r| !fields.contains_key(*r)) {
                    return Some(join(missing));
                }
            }
            for (name, field) in fields {
                match properties.and_then(|p| p.get(name)) {
                    Some(field_schema) => {
                        if let Some(found) = first_mismatch(root, field_schema, field, &join(name)) {
                            return Some(found);
                        }
                    }
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => return Some(join(name)),
                    None => {}
                }
            }
            None
        }
        Value::Array(items) => {
            let item_schema = schema.get("items")?;
            items
                .iter()
                .enumerate()
                .find_map(|(i, item)| first_mismatch(root, item_schema, item, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

/// Follows a local `$ref` (`#/definitions/X`).
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let Some(reference) = schema.get("$ref").and_then(Value::as_str) else { return schema };
    reference
        .strip_prefix("#/")
        .and_then(|pointer| root.pointer(&format!("/{pointer}")))
        .map(|target| resolve(root, target))
        .unwrap_or(schema)
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(event_type: &str) -> Defaults<'_> {
        Defaults { event_type: Some(event_type), schema_version: None }
    }

    #[test]
    fn ndjson_lines_with_wrapped_and_bare_messages() {
        let text = concat!(
            r#"{"event_type":"RegisterUser","payload":{"user_id":"u1","email":"a@b.io","name":"A"}}"#,
            "\n\n",
            r#"{"user_id":"u2","email":"c@d.io","name":"C"}"#,
            "\n"
        );
        let (parsed, problems) = parse_document(text, typed("RegisterUser"));
        assert!(problems.is_empty(), "{problems:?}");
        let lines: Vec<usize> = parsed.iter().map(|p| p.at.line).collect();
        assert_eq!(lines, vec![1, 3]);
        assert_eq!(parsed[1].message.key(), "u2");
    }

    #[test]
    fn every_bad_line_is_reported_with_its_field() {
        let text = concat!(
            r#"{"event_type":"RegisterUser","payload":{"user_id":"u1","email":"a@b.io","name":"A"}}"#,
            "\n",
            r#"{"event_type":"RegisterUser","payload":{"user_id":"u2","email":"nope","name":"B"}}"#,
            "\n",
            r#"{"event_type":"PlaceOrder","payload":{"order_id":"o","user_id":"u","payment_token":"t","lines":[{"sku":"A","quantity":"x"}]}}"#,
            "\n",
            r#"{"event_type": "RegisterUser", "payload": {"#,
            "\n",
            r#"{"event_type":"CreateProduct","payload":{"sku":"S","name":"N","price_minor":-1}}"#,
            "\n"
        );
        let (parsed, problems) = parse_document(text, Defaults::default());
        assert_eq!(parsed.len(), 1);
        let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), 4, "{texts:#?}");
        assert!(texts[0].starts_with("line 2: RegisterUser field `email`:"), "{}", texts[0]);
        assert!(texts[1].starts_with("line 3: PlaceOrder field `lines[0].quantity`: invalid type"), "{}", texts[1]);
        assert!(texts[2].starts_with("line 4, column "), "{}", texts[2]);
        assert!(texts[2].contains("malformed JSON"), "{}", texts[2]);
        assert!(
            texts[3].starts_with("line 5: CreateProduct field `price_minor`: must not be negative"),
            "{}",
            texts[3]
        );
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let (_, problems) = parse_document(r#"{"user_id":"u","name":"A"}"#, typed("RegisterUser"));
        assert_eq!(problems[0].text, "RegisterUser field `email`: missing field `email`");
        let (_, problems) =
            parse_document(r#"{"user_id":"u","name":"A","email":"a@b.c","age":3}"#, typed("RegisterUser"));
        assert!(problems[0].text.starts_with("RegisterUser field `age`: unknown field `age`"), "{}", problems[0].text);
    }

    #[test]
    fn unknown_types_list_the_known_ones() {
        let (_, problems) = parse_document(r#"{"event_type":"Nope","payload":{}}"#, Defaults::default());
        assert!(problems[0].text.starts_with("unknown event type `Nope`; known types: RegisterUser,"));
    }

    #[test]
    fn bare_payload_without_type_is_refused() {
        let (_, problems) = parse_document(r#"{"user_id":"u"}"#, Defaults::default());
        assert!(problems[0].text.contains("needs --type"));
    }

    #[test]
    fn arrays_and_pretty_json() {
        let text = "[\n  {\"sku\": \"A\", \"quantity\": 2},\n  {\"sku\": \"B\", \"quantity\": 0}\n]\n";
        let (parsed, problems) = parse_document(text, typed("RestockProduct"));
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "item 2 of the array at line 1: RestockProduct field `quantity`: must be positive, got 0"
        );
    }

    #[test]
    fn older_versions_are_upcast() {
        let text = r#"{"event_type":"PlaceOrder","schema_version":1,"payload":{"order_id":"o","user_id":"u","card_token":"t","items":[{"sku":"A","qty":1}]}}"#;
        let (parsed, problems) = parse_document(text, Defaults::default());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(parsed[0].message.event_type(), "PlaceOrder");
    }

    #[test]
    fn multi_line_malformed_json_stops_at_the_first_error() {
        let text = "{\n  \"user_id\": \"u\",\n  \"email\" \"x\"\n}\n";
        let (_, problems) = parse_document(text, typed("RegisterUser"));
        assert_eq!(problems.len(), 1);
        assert_eq!((problems[0].at.line, problems[0].column), (3, Some(11)));
    }
}
