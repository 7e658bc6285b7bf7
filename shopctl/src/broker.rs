//! Talking to the broker: the reachability check every command starts with,
//! topic metadata and watermarks, delivering records (waiting for each delivery
//! report), and reading topics from a given offset up to their end.
//!
//! Every client is built from the one `platform::kafka::Connection` (brokers and
//! security: the operator principal over SASL_SSL in staging), whose settings
//! also turn off KIP-714 metrics push (Tansu does not implement it). Reading never joins a
//! consumer group and never commits: partitions are assigned by hand from
//! explicit offsets, so nothing is left behind on the broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::{FuturesOrdered, StreamExt};
use indicatif::ProgressBar;
use platform::kafka::HeaderList;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use crate::output::human;

/// A reachable broker and what it said about its topics.
pub struct Broker {
    pub addr: String,
    /// The brokers and how shopctl authenticates to them.
    pub kafka: platform::kafka::Connection,
    pub timeout: Duration,
    client: Arc<BaseConsumer>,
    topics: BTreeMap<String, i32>,
}

/// Runs blocking librdkafka calls off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.context("background broker call failed")
}

/// A group id that is never joined nor committed: librdkafka wants one. Its
/// prefix is the one the operator's ACLs allow (`events::access`).
fn throwaway_group() -> String {
    format!("{}{}", events::access::OPERATOR_GROUP_PREFIX, uuid::Uuid::now_v7().simple())
}

impl Broker {
    /// Connects and reads the topic list, or fails naming the address after
    /// `timeout`.
    pub async fn connect(kafka: platform::kafka::Connection, timeout: Duration) -> Result<Broker> {
        let addr = kafka.brokers.clone();
        let client: BaseConsumer = kafka
            .client_config()
            .set("group.id", throwaway_group())
            .set("enable.auto.commit", "false")
            .create()
            .with_context(|| format!("cannot create a Kafka client for `{addr}`"))?;
        let principal = kafka.principal().to_owned();
        let mut broker =
            Broker { addr: addr.clone(), kafka, timeout, client: Arc::new(client), topics: BTreeMap::new() };
        broker.refresh().await.map_err(|error| {
            let reason = match error.downcast_ref::<KafkaError>().and_then(KafkaError::rdkafka_error_code) {
                Some(code) => code.to_string(),
                None => format!("{error:#}"),
            };
            anyhow!(
                "cannot reach the Kafka broker at {addr} within {} ({reason}), as principal {principal}; is it \
                 running? (set --brokers or KAFKA_BROKERS, and KAFKA_SECURITY_PROTOCOL with its credentials)",
                human(timeout)
            )
        })?;
        Ok(broker)
    }

    /// Reads the topic list again (after creating topics).
    pub async fn refresh(&mut self) -> Result<()> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let topics = blocking(move || -> Result<BTreeMap<String, i32>> {
            let metadata = client.fetch_metadata(None, timeout)?;
            Ok(metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| (t.name().to_owned(), i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
                .collect())
        })
        .await??;
        self.topics = topics;
        Ok(())
    }

    /// Topic name → number of partitions.
    pub fn topics(&self) -> &BTreeMap<String, i32> {
        &self.topics
    }

    pub fn partitions(&self, topic: &str) -> Option<i32> {
        self.topics.get(topic).copied()
    }

    /// Fails, naming them, if any of `topics` does not exist.
    pub fn require<S: AsRef<str>>(&self, topics: &[S]) -> Result<()> {
        let missing: Vec<&str> =
            topics.iter().map(AsRef::as_ref).filter(|t| !self.topics.contains_key(*t)).collect::<Vec<_>>();
        if !missing.is_empty() {
            bail!(
                "topic{} {} do{} not exist on {} (create them with `shopctl topics create`)",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", "),
                if missing.len() == 1 { "es" } else { "" },
                self.addr
            );
        }
        Ok(())
    }

    /// (partition, low, high) of every partition of `topic`.
    pub async fn watermarks(&self, topic: &str) -> Result<Vec<(i32, i64, i64)>> {
        let partitions = self.partitions(topic).ok_or_else(|| anyhow!("topic {topic} does not exist"))?;
        let (client, timeout, name) = (self.client.clone(), self.timeout, topic.to_owned());
        blocking(move || {
            (0..partitions)
                .map(|p| {
                    let (low, high) = client
                        .fetch_watermarks(&name, p, timeout)
                        .with_context(|| format!("reading the offsets of {name}/{p}"))?;
                    Ok((p, low, high))
                })
                .collect::<Result<Vec<_>>>()
        })
        .await?
    }

    /// An idempotent producer (acks=all), as the services use.
    pub fn producer(&self) -> Result<FutureProducer> {
        platform::kafka::producer(&self.kafka).context("creating a Kafka producer")
    }
}

/// Reads the offsets a consumer group has committed, without joining it.
pub struct GroupOffsets {
    group: String,
    client: Arc<BaseConsumer>,
    timeout: Duration,
}

impl GroupOffsets {
    pub fn new(broker: &Broker, group: &str) -> Result<GroupOffsets> {
        let client: BaseConsumer = broker
            .kafka
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("creating a Kafka client")?;
        Ok(GroupOffsets { group: group.to_owned(), client: Arc::new(client), timeout: broker.timeout })
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The committed offset (the next record the group will read) of
    /// `topic`/`partition`, if any.
    pub async fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let (client, timeout, topic) = (self.client.clone(), self.timeout, topic.to_owned());
        blocking(move || -> Result<Option<i64>> {
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, partition);
            let committed = client.committed_offsets(list, timeout)?;
            Ok(committed.elements().first().and_then(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            }))
        })
        .await?
    }
}

/// A record to deliver. Key and value are bytes, sent exactly as given.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HeaderList,
}

/// Where the broker stored a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Records in flight at once when no rate is set.
const IN_FLIGHT: usize = 256;

/// Delivers `items` in order (at most `rate` per second if given) and waits for
/// every delivery report. Fails if any record was not acknowledged, saying how
/// many were.
pub async fn send_all(
    producer: &FutureProducer,
    items: Vec<Outgoing>,
    rate: Option<f64>,
    bar: &ProgressBar,
) -> Result<Vec<Delivered>> {
    let total = items.len();
    let mut ticker = rate.filter(|r| *r > 0.0).map(|r| {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    let mut in_flight = FuturesOrdered::new();
    let mut results = Vec::with_capacity(total);
    let settle = |result: Result<Delivered>, results: &mut Vec<Result<Delivered>>| {
        bar.inc(1);
        results.push(result);
    };
    for item in items {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        in_flight.push_back(send_one(producer.clone(), item));
        let limit = if ticker.is_some() { 1 } else { IN_FLIGHT };
        while in_flight.len() >= limit {
            if let Some(result) = in_flight.next().await {
                settle(result, &mut results);
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        settle(result, &mut results);
    }
    bar.finish_and_clear();
    let failed: Vec<String> = results.iter().filter_map(|r| r.as_ref().err()).map(|e| format!("{e:#}")).collect();
    if let Some(first) = failed.first() {
        bail!(
            "{} of {total} records were not delivered (the other {} were): {first}",
            failed.len(),
            total - failed.len()
        );
    }
    Ok(results.into_iter().filter_map(Result::ok).collect())
}

async fn send_one(producer: FutureProducer, item: Outgoing) -> Result<Delivered> {
    let headers = item.headers.to_kafka();
    let mut record = FutureRecord::<[u8], [u8]>::to(&item.topic).headers(headers);
    if let Some(key) = item.key.as_deref() {
        record = record.key(key);
    }
    if let Some(value) = item.value.as_deref() {
        record = record.payload(value);
    }
    match producer.send(record, Timeout::After(Duration::from_secs(30))).await {
        Ok(delivery) => {
            Ok(Delivered { topic: item.topic.clone(), partition: delivery.partition, offset: delivery.offset })
        }
        Err((error, _)) => Err(anyhow!("delivering to {}: {error}", item.topic)),
    }
}

/// A record read from a topic, copied out of librdkafka's buffers.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Headers exactly as stored (a value may be absent or not UTF-8).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// Headers as text, the platform's view (non-UTF-8 kept lossily).
    pub fn header_list(&self) -> HeaderList {
        HeaderList(
            self.headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned()))
                .collect(),
        )
    }

    pub fn key_text(&self) -> String {
        self.key.as_deref().map(crate::output::escape_bytes).unwrap_or_default()
    }
}

/// Where a [`Reader`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest record still stored.
    Beginning,
    /// After the last record stored now: only what is written from here on.
    End,
}

/// Reads topics by assigned partitions (no consumer group), knowing the end
/// offsets at the moment it was opened so it can tell when it has caught up.
pub struct Reader {
    consumer: StreamConsumer,
    /// (topic, partition) → (next offset to read, end offset when opened).
    positions: HashMap<(String, i32), (i64, i64)>,
    last_error: Option<String>,
}

impl Reader {
    pub async fn open<S: AsRef<str>>(broker: &Broker, topics: &[S], start: Start) -> Result<Reader> {
        let consumer = Reader::consumer(broker)?;
        let mut assignment = TopicPartitionList::new();
        let mut positions = HashMap::new();
        for topic in topics {
            let topic = topic.as_ref();
            for (partition, low, high) in broker.watermarks(topic).await? {
                let from = match start {
                    Start::Beginning => low,
                    Start::End => high,
                };
                assignment
                    .add_partition_offset(topic, partition, Offset::Offset(from))
                    .with_context(|| format!("assigning {topic}/{partition}"))?;
                positions.insert((topic.to_owned(), partition), (from, high));
            }
        }
        consumer.assign(&assignment).context("assigning partitions")?;
        Ok(Reader { consumer, positions, last_error: None })
    }

    fn consumer(broker: &Broker) -> Result<StreamConsumer> {
        broker
            .kafka
            .client_config()
            .set("group.id", throwaway_group())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .create()
            .context("creating a Kafka consumer")
    }

    /// The next record, or `None` if none arrived within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Record> {
        let received = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_elapsed) => return None,
            Ok(Err(error)) => {
                // Mostly transient (a reconnect); a stall is caught by read_to_end.
                self.last_error = Some(error.to_string());
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
            Ok(Ok(message)) => message,
        };
        let record = Record {
            topic: received.topic().to_owned(),
            partition: received.partition(),
            offset: received.offset(),
            timestamp_ms: received.timestamp().to_millis(),
            key: received.key().map(<[u8]>::to_vec),
            value: received.payload().map(<[u8]>::to_vec),
            headers: received
                .headers()
                .map(|headers| headers.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
                .unwrap_or_default(),
        };
        if let Some((next, _)) = self.positions.get_mut(&(record.topic.clone(), record.partition)) {
            *next = (*next).max(record.offset + 1);
        }
        Some(record)
    }

    /// Records still to read before reaching the ends seen when opened.
    pub fn remaining(&self) -> i64 {
        self.positions.values().map(|(next, end)| (end - next).max(0)).sum()
    }

    /// Takes the consumer's own positions into account (they move past offsets
    /// that hold no record for us, e.g. transaction markers).
    fn sync_positions(&mut self) {
        let Ok(list) = self.consumer.position() else { return };
        for element in list.elements() {
            if let (Offset::Offset(at), Some((next, _))) =
                (element.offset(), self.positions.get_mut(&(element.topic().to_owned(), element.partition())))
            {
                *next = (*next).max(at);
            }
        }
    }

    /// Reads until every partition reached the end offset it had when the reader
    /// was opened, handing each record to `each`. Fails if no progress is made
    /// for `stall`.
    ///
    /// Tansu 0.6 reports the high watermark as the base offset of the last record
    /// batch plus one, so the last batch may hold more records than the watermark
    /// admits. Those records arrive in the same fetch as the batch's first one,
    /// so after reaching the watermarks the reader drains what is already
    /// arriving until the partitions have been quiet briefly.
    pub async fn read_to_end(&mut self, stall: Duration, mut each: impl FnMut(Record)) -> Result<()> {
        let mut progress_at = Instant::now();
        while self.remaining() > 0 {
            match self.next(Duration::from_millis(200)).await {
                Some(record) => {
                    progress_at = Instant::now();
                    each(record);
                }
                None => {
                    self.sync_positions();
                    if self.remaining() > 0 && progress_at.elapsed() > stall {
                        bail!(
                            "reading stalled: nothing arrived for {} with {} records still expected{}",
                            human(stall),
                            self.remaining(),
                            self.last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
                        );
                    }
                }
            }
        }
        let drain_until = Instant::now() + DRAIN_LIMIT;
        while Instant::now() < drain_until {
            match self.next(DRAIN_QUIET).await {
                Some(record) => each(record),
                None => break,
            }
        }
        Ok(())
    }
}

/// After the watermarks: how long the partitions must be quiet to count as read
/// to the end, and the most time spent draining on a busy topic.
const DRAIN_QUIET: Duration = Duration::from_millis(250);
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
