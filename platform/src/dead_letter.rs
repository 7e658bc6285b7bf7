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

/// Headers added to a replayed record, so it can be told apart and traced back.
pub const REPLAYED_FROM: &str = "replay.from";
pub const REPLAYED_AT: &str = "replay.at";
pub const REPLAY_TARGET_GROUP: &str = "replay.target.group";

/// Error messages are cut here so one pathological error cannot bloat the topic.
const MAX_MESSAGE: usize = 2000;

pub(crate) fn annotate(headers: &mut HeaderList, record: &OwnedMessage, group: &str, failure: &Failure) {
    let timestamp = record.timestamp().to_millis().map(|t| t.to_string()).unwrap_or_default();
    let mut message = failure.message.clone();
    if message.len() > MAX_MESSAGE {
        let cut = (0..=MAX_MESSAGE).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
        message.truncate(cut);
    }
    headers.push(ORIGINAL_TOPIC, record.topic());
    headers.push(ORIGINAL_PARTITION, record.partition().to_string());
    headers.push(ORIGINAL_OFFSET, record.offset().to_string());
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
