//! Dead letters: the header layout that explains why a record was set aside, and
//! its parsing for the replay tooling. The record itself (key, value, original
//! headers) is never changed.

use rdkafka::message::{Message as _, OwnedMessage};

use crate::consumer::Failure;
use crate::kafka::HeaderList;

pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";
pub const ORIGINAL_TIMESTAMP: &str = "dlq.original.timestamp";
pub const CONSUMER_GROUP: &str = "dlq.consumer.group";
pub const ERROR_CLASS: &str = "dlq.error.class";
pub const ERROR_MESSAGE: &str = "dlq.error.message";
pub const ATTEMPTS: &str = "dlq.attempts";
pub const FIRST_FAILURE: &str = "dlq.first.failure";
pub const DEAD_LETTERED_AT: &str = "dlq.dead.lettered.at";

/// Headers added to a replayed record, so it can be told apart and traced back
/// to the dead letter (`topic/partition/offset`) and the original record.
pub const REPLAYED_FROM: &str = "replay.from";
pub const REPLAYED_AT: &str = "replay.at";
pub const REPLAY_ORIGINAL_TOPIC: &str = "replay.original.topic";
pub const REPLAY_ORIGINAL_PARTITION: &str = "replay.original.partition";
pub const REPLAY_ORIGINAL_OFFSET: &str = "replay.original.offset";

/// Error messages are cut here so one pathological error cannot bloat the topic.
const MAX_MESSAGE: usize = 2000;

pub(crate) fn annotate(headers: &mut HeaderList, record: &OwnedMessage, group: &str, failure: &Failure) {
    let timestamp = record.timestamp().to_millis().map(|t| t.to_string()).unwrap_or_default();
    let mut message = failure.message.clone();
    if message.len() > MAX_MESSAGE {
        let cut = (0..=MAX_MESSAGE).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
        message.truncate(cut);
    }
    // A replayed record that fails again is described by where it first came from.
    let original = |replayed: &str, own: String| headers.get(replayed).map(str::to_owned).unwrap_or(own);
    let topic = original(REPLAY_ORIGINAL_TOPIC, record.topic().to_owned());
    let partition = original(REPLAY_ORIGINAL_PARTITION, record.partition().to_string());
    let offset = original(REPLAY_ORIGINAL_OFFSET, record.offset().to_string());
    headers.0.retain(|(name, _)| !is_bookkeeping_header(name));
    headers.push(ORIGINAL_TOPIC, topic);
    headers.push(ORIGINAL_PARTITION, partition);
    headers.push(ORIGINAL_OFFSET, offset);
    headers.push(ORIGINAL_TIMESTAMP, timestamp);
    headers.push(CONSUMER_GROUP, group);
    headers.push(ERROR_CLASS, failure.class.as_str());
    headers.push(ERROR_MESSAGE, message);
    headers.push(ATTEMPTS, failure.attempts.to_string());
    headers.push(FIRST_FAILURE, failure.first_failure_ms.to_string());
    headers.push(DEAD_LETTERED_AT, crate::db::now_ms().to_string());
}

/// Whether a header was added by dead-lettering or replay (and so is stripped
/// again when the record is replayed to its original topic).
pub fn is_bookkeeping_header(name: &str) -> bool {
    name.starts_with("dlq.") || name.starts_with("replay.")
}

/// The headers of a dead letter turned into those of its replay: the original
/// headers unchanged, the dead-letter bookkeeping removed, and replay headers
/// that say where it came from. `dead_letter` names the DLQ record
/// (`topic/partition/offset`).
pub fn replay_headers(dead: &HeaderList, dead_letter: &str, now_ms: i64) -> HeaderList {
    let mut headers = HeaderList(dead.0.iter().filter(|(name, _)| !is_bookkeeping_header(name)).cloned().collect());
    for (from, to) in [
        (ORIGINAL_TOPIC, REPLAY_ORIGINAL_TOPIC),
        (ORIGINAL_PARTITION, REPLAY_ORIGINAL_PARTITION),
        (ORIGINAL_OFFSET, REPLAY_ORIGINAL_OFFSET),
    ] {
        if let Some(value) = dead.get(from) {
            headers.push(to, value);
        }
    }
    headers.push(REPLAYED_FROM, dead_letter);
    headers.push(REPLAYED_AT, now_ms.to_string());
    headers
}

/// What a dead letter's headers say about its failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterInfo {
    pub original_topic: String,
    pub original_partition: i32,
    pub original_offset: i64,
    pub original_timestamp_ms: Option<i64>,
    pub consumer_group: String,
    pub error_class: String,
    pub error_message: String,
    pub attempts: u32,
    pub first_failure_ms: Option<i64>,
    pub dead_lettered_at_ms: Option<i64>,
}

impl DeadLetterInfo {
    /// Reads the error headers; `None` if this is not a dead letter.
    pub fn from_headers(headers: &HeaderList) -> Option<DeadLetterInfo> {
        let number = |name: &str| headers.get(name).and_then(|v| v.parse::<i64>().ok());
        Some(DeadLetterInfo {
            original_topic: headers.get(ORIGINAL_TOPIC)?.to_owned(),
            original_partition: headers.get(ORIGINAL_PARTITION)?.parse().ok()?,
            original_offset: headers.get(ORIGINAL_OFFSET)?.parse().ok()?,
            original_timestamp_ms: number(ORIGINAL_TIMESTAMP),
            consumer_group: headers.get(CONSUMER_GROUP)?.to_owned(),
            error_class: headers.get(ERROR_CLASS)?.to_owned(),
            error_message: headers.get(ERROR_MESSAGE).unwrap_or_default().to_owned(),
            attempts: headers.get(ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(0),
            first_failure_ms: number(FIRST_FAILURE).filter(|&t| t > 0),
            dead_lettered_at_ms: number(DEAD_LETTERED_AT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_keeps_original_headers_and_names_the_origin() {
        let mut dead = HeaderList::default();
        dead.push("event_type", "PlaceOrder");
        dead.push(ORIGINAL_TOPIC, "order.commands");
        dead.push(ORIGINAL_PARTITION, "2");
        dead.push(ORIGINAL_OFFSET, "41");
        dead.push(CONSUMER_GROUP, "order-svc");
        dead.push(ERROR_CLASS, "permanent");
        dead.push(ERROR_MESSAGE, "boom");
        let info = DeadLetterInfo::from_headers(&dead).expect("a dead letter");
        assert_eq!(
            (info.original_topic.as_str(), info.original_partition, info.original_offset),
            ("order.commands", 2, 41)
        );

        let replay = replay_headers(&dead, "order-svc.dlq/0/7", 123);
        assert_eq!(replay.get("event_type"), Some("PlaceOrder"));
        assert_eq!(replay.get(ERROR_CLASS), None);
        assert_eq!(replay.get(REPLAY_ORIGINAL_TOPIC), Some("order.commands"));
        assert_eq!(replay.get(REPLAYED_FROM), Some("order-svc.dlq/0/7"));
        assert!(DeadLetterInfo::from_headers(&replay).is_none());
    }
}
