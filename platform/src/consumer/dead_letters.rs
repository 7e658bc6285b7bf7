//! Dead-lettering: the failed record, unchanged, on the group's dead-letter
//! topic with the reason in headers (`crate::dead_letter`), acknowledged by the
//! broker before the worker stores the record's offset.

use std::time::Duration;

use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use super::worker::{Failure, Worker};
use super::Handler;
use crate::dead_letter;
use crate::kafka::HeaderList;

impl<H: Handler> Worker<H> {
    /// Publishes the record unchanged to the dead-letter topic, with the reason in
    /// headers, and waits for the broker's acknowledgement; the caller then stores
    /// the offset. Keeps trying while the broker is away: losing the record is not
    /// an option, and shutdown leaves it to be redelivered.
    pub(super) async fn dead_letter(
        &self,
        record: &OwnedMessage,
        failure: Failure,
        shutdown: &CancellationToken,
    ) -> Option<()> {
        let topic = events::topics::dead_letter(&self.settings.group_id);
        let mut headers = HeaderList::from_kafka(rdkafka::Message::headers(record));
        dead_letter::annotate(&mut headers, record, &self.settings.group_id, &failure);
        tracing::error!(
            topic = record.topic(), partition = record.partition(), offset = record.offset(),
            class = %failure.class, error = %failure.message, attempts = failure.attempts,
            dead_letter_topic = %topic, "dead-lettering record"
        );
        metrics::counter!(
            "dead_lettered_total", "service" => self.settings.service, "class" => failure.class.as_str()
        )
        .increment(1);
        let kafka_headers = headers.to_kafka();
        loop {
            let mut out = FutureRecord::<[u8], [u8]>::to(&topic).headers(kafka_headers.clone());
            if let Some(key) = rdkafka::Message::key(record) {
                out = out.key(key);
            }
            if let Some(payload) = rdkafka::Message::payload(record) {
                out = out.payload(payload);
            }
            let sent = tokio::select! {
                sent = self.producer.send(out, Timeout::After(Duration::from_secs(30))) => sent,
                _ = shutdown.cancelled() => return None,
            };
            match sent {
                Ok(_) => return Some(()),
                Err((error, _)) => {
                    tracing::warn!(%error, "dead letter not acknowledged; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }
}
