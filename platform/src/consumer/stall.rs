//! Stall detection, a signal only: whether records wait for this consumer on
//! the broker (committed offset below the end of the log, on the partitions
//! assigned to it, and on all partitions of its input topics when it holds none
//! of them), which the loop compares across checks while nothing arrives.
//! A stall is logged, counted (`consumer_stalls_total`, `consumer_stalled`)
//! and makes /readyz unready until a record arrives.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;

use super::ConsumerSettings;
use crate::{kafka, Error};

/// Records the verdict of a check: `Some(waiting partitions)` when the consumer
/// is stalled, `None` once it is not. Logged and counted when it changes; the
/// service's /readyz is unready while stalled.
pub(super) fn report(settings: &ConsumerSettings, stalled: Option<&[String]>) {
    let was = settings.health.stalled().is_some();
    let service = settings.service;
    match stalled {
        Some(waiting) if !was => {
            metrics::counter!("consumer_stalls_total", "service" => service).increment(1);
            tracing::error!(
                group = %settings.group_id, ?waiting, after = ?settings.stall_after,
                "consumer stalled: records wait on its partitions and none arrive"
            );
        }
        None if was => tracing::info!(group = %settings.group_id, "consumer flowing again"),
        _ => {}
    }
    metrics::gauge!("consumer_stalled", "service" => service).set(if stalled.is_some() { 1.0 } else { 0.0 });
    settings.health.set(stalled.map(|waiting| format!("records wait on {} and none arrive", waiting.join(" "))));
}

/// Asks the broker about the consumer's partitions over a connection of its
/// own: on the consumer's, each query would queue behind a fetch waiting up to
/// `fetch.wait.max.ms`.
#[derive(Clone)]
pub(super) struct Probe {
    client: Arc<BaseConsumer>,
    topics: Vec<&'static str>,
}

impl Probe {
    /// A client in the consumer's group that never joins it (offset lookups only).
    pub(super) fn new(settings: &ConsumerSettings) -> Result<Probe, Error> {
        let client =
            kafka::consumer_config(&settings.kafka, &settings.group_id, None, settings.fetch_wait_max).create()?;
        Ok(Probe { client: Arc::new(client), topics: settings.topics.clone() })
    }

    /// The partitions (see the module doc) whose committed offset is below the
    /// end of the log, as `topic/partition@committed`, given the consumer's
    /// assignment; `None` without one (the consumer was busy), when there are
    /// none, or when the broker cannot tell.
    pub(super) async fn waiting_records(self, assigned: Option<TopicPartitionList>) -> Option<Vec<String>> {
        let mut list = assigned?;
        let Probe { client, topics } = self;
        let lookup = move || -> Result<Vec<String>, rdkafka::error::KafkaError> {
            let timeout = Duration::from_secs(5);
            // Holding none of its input topics' partitions, all of those too:
            // records waiting there while it gets none is a wedged membership
            // (Tansu's vanished static member holds them for good).
            if !list.elements().iter().any(|e| topics.contains(&e.topic())) {
                for topic in topics.iter().copied() {
                    let metadata = client.fetch_metadata(Some(topic), timeout)?;
                    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                        list.add_partition(topic, partition.id());
                    }
                }
            }
            let committed = client.committed_offsets(list, timeout)?;
            let mut waiting = Vec::new();
            for element in committed.elements() {
                let (low, high) = client.fetch_watermarks(element.topic(), element.partition(), timeout)?;
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
}
