//! Stall detection: whether records wait for this consumer on the broker
//! (committed offset below the end of the log, on the partitions assigned to
//! it, or on all partitions of its topics when it has none), which the loop's
//! watchdog compares across checks while nothing arrives.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;

use super::GroupConsumer;

/// The partitions (see the module doc) whose committed offset (for this group) is below the
/// end of the log, as `topic/partition@committed`; `None` when there are none or
/// the broker cannot tell. Blocking calls, so on the blocking pool.
pub(super) async fn waiting_records(consumer: &Arc<GroupConsumer>, topics: &[String]) -> Option<Vec<String>> {
    let (consumer, topics) = (consumer.clone(), topics.to_vec());
    let lookup = move || -> Result<Vec<String>, rdkafka::error::KafkaError> {
        let timeout = Duration::from_secs(5);
        // Its own partitions; with none at all, every partition of its topics
        // (records waiting while nothing is assigned is the wedge looked for).
        let mut list = consumer.assignment()?;
        if list.count() == 0 {
            for topic in &topics {
                let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
                for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                    list.add_partition(topic, partition.id());
                }
            }
        }
        let committed = consumer.committed_offsets(list, timeout)?;
        let mut waiting = Vec::new();
        for element in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
            let at = match element.offset() {
                rdkafka::Offset::Offset(at) => at,
                _ => low,
            };
            if at < high {
                waiting.push(format!("{}/{}@{at}", element.topic(), element.partition()));
            }
        }
        Ok(waiting)
    };
    match tokio::task::spawn_blocking(lookup).await {
        Ok(Ok(waiting)) if !waiting.is_empty() => Some(waiting),
        Ok(Err(error)) => {
            tracing::debug!(%error, "checking for waiting records");
            None
        }
        _ => None,
    }
}
