//! Kafka clients with the settings every service needs: an idempotent producer,
//! consumers that store offsets by hand, topic creation, and the header layout
//! every record carries. Every client is built from one [`Connection`]
//! (brokers and security, see [`connection`]); a bare address is plaintext.

use std::time::Duration;

use events::Envelope;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

use crate::Error;

pub mod connection;

pub use connection::{Connection, KafkaSecurityArgs, Secret, Security, SecurityProtocol};

/// Header names mirrored from the envelope, so tools can route and filter
/// without parsing the value.
pub mod header {
    pub const EVENT_TYPE: &str = "event_type";
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const TRACEPARENT: &str = "traceparent";
}

/// Settings shared by every client: the brokers, how to reach them
/// ([`Connection::client_config`]), and librdkafka's common knobs.
pub fn client_config(connection: impl Into<Connection>) -> ClientConfig {
    connection.into().client_config()
}

/// An idempotent producer: retries cannot duplicate or reorder records within a
/// partition, which the outbox relay relies on.
pub fn producer(connection: impl Into<Connection>) -> Result<FutureProducer, Error> {
    Ok(client_config(connection)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The relay hands over a whole batch at once, so waiting for more records
        // buys little batching and costs every hop of the saga its full length.
        .set("linger.ms", "1")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// The fatal error of a client, if it has had one: from then on the instance is
/// useless and only a new one can go on. An idempotent producer gets one when
/// it can no longer guarantee order and once-ness (say, the broker refuses its
/// producer id: ClusterAuthorizationFailed on InitProducerId); a consumer, when
/// it is fenced (FencedInstanceId).
pub fn fatal_error<C: ClientContext>(client: &Client<C>) -> Option<String> {
    client.fatal_error().map(|(code, reason)| format!("{code:?}: {reason}"))
}

/// A consumer in `group_id` that never stores offsets on its own: the consumer
/// loop stores each offset after the record's effects are durable, and the
/// background auto-commit sends only stored offsets.
/// `fetch_wait_max`: see `PlatformConfig::kafka_fetch_wait_max`.
pub fn consumer_config(
    connection: impl Into<Connection>,
    group_id: &str,
    instance_id: Option<&str>,
    fetch_wait_max: Duration,
) -> ClientConfig {
    let mut config = client_config(connection);
    if let Some(instance_id) = instance_id {
        config.set("group.instance.id", instance_id);
    }
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        // A rebalance moves only the partitions that change owner; the consumer
        // loop hands each one over drained and committed (consumer::rebalance).
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("auto.offset.reset", "earliest")
        .set("heartbeat.interval.ms", "1000")
        // A subscribed topic missing from the metadata (created moments ago, or
        // later by an operator) is picked up within this, not librdkafka's 5 min.
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("fetch.wait.max.ms", fetch_wait_max.as_millis().to_string());
    config
}

/// Creates the topics that do not exist yet, and returns once the broker's
/// metadata shows every one of them with a leader for each partition. Safe to
/// run from every service at start-up, concurrently.
///
/// The wait matters on Apache Kafka: a topic just created may not be in the
/// metadata a consumer gets when it subscribes, and librdkafka then leaves it
/// unassigned until its next metadata refresh.
///
/// On a broker with ACLs a service is not allowed to create topics (the
/// operator does, with `shopctl topics create`): a refusal to create is not an
/// error, the topic is waited for like any other, and if it does not appear the
/// error names it and says whether it is missing or hidden from this principal.
pub async fn ensure_topics(
    connection: impl Into<Connection>,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), Error> {
    let connection = connection.into();
    let admin: AdminClient<DefaultClientContext> = connection.client_config().create()?;
    let new_topics: Vec<NewTopic<'_>> =
        topics.iter().map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut refused = Vec::new();
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed)) => {
                refused.push(topic)
            }
            Err((topic, code)) => return Err(Error::Other(format!("creating topic {topic}: {code}"))),
        }
    }
    if !refused.is_empty() {
        tracing::info!(
            principal = connection.principal(),
            topics = %refused.join(", "),
            "not allowed to create topics; waiting for them to exist (`shopctl topics create` as the operator)"
        );
    }
    let topics = topics.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
    tokio::task::spawn_blocking(move || wait_for_leaders(&connection, &topics))
        .await
        .map_err(|e| Error::Other(format!("waiting for topic metadata: {e}")))?
}

fn wait_for_leaders(connection: &Connection, topics: &[String]) -> Result<(), Error> {
    let client: BaseConsumer = connection.client_config().create()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = client.fetch_metadata(None, Duration::from_secs(5))?;
        let missing: Vec<&str> = topics
            .iter()
            .filter(|name| {
                !metadata.topics().iter().any(|t| {
                    t.name() == name.as_str()
                        && t.error().is_none()
                        && !t.partitions().is_empty()
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Other(format!(
                "topics not ready after 30 s: {}",
                missing.iter().map(|t| why_missing(&client, connection, t)).collect::<Vec<_>>().join("; ")
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Why `topic` is not in the metadata: asked for by name, the broker tells a
/// topic that does not exist from one this principal may not see (a listing of
/// all topics silently leaves out those).
fn why_missing(client: &BaseConsumer, connection: &Connection, topic: &str) -> String {
    let error = match client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
        Ok(metadata) => metadata.topics().first().and_then(|t| t.error()).map(RDKafkaErrorCode::from),
        Err(error) => error.rdkafka_error_code(),
    };
    match error {
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => format!(
            "{topic}: principal {} is not authorized to see it (missing ACL: Describe, Read or Write on topic \
             {topic}; see `shopctl acls`)",
            connection.principal()
        ),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::UnknownTopic) => {
            format!("{topic}: does not exist (create it with `shopctl topics create`)")
        }
        Some(code) => format!("{topic}: {code}"),
        None => format!("{topic}: some partition has no leader"),
    }
}

/// Headers as stored in the outbox and copied into dead letters: ordered pairs,
/// values as text (every header we write is text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderList(pub Vec<(String, String)>);

impl HeaderList {
    /// The headers that mirror an envelope, continuing the trace of its cause.
    pub fn for_envelope(envelope: &Envelope, trace_id: Option<&str>) -> Self {
        let trace_id = trace_id.map(str::to_owned).unwrap_or_else(new_trace_id);
        HeaderList(vec![
            (header::EVENT_TYPE.into(), envelope.event_type().into()),
            (header::SCHEMA_VERSION.into(), envelope.schema_version.to_string()),
            (header::CORRELATION_ID.into(), envelope.correlation_id.clone()),
            (header::TRACEPARENT.into(), format!("00-{trace_id}-{}-01", new_span_id())),
        ])
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    pub fn to_kafka(&self) -> OwnedHeaders {
        self.0.iter().fold(OwnedHeaders::new_with_capacity(self.0.len()), |headers, (key, value)| {
            headers.insert(Header { key, value: Some(value.as_bytes()) })
        })
    }

    /// Copies Kafka headers; a value that is not UTF-8 is kept lossily, which only
    /// affects foreign headers we never interpret.
    pub fn from_kafka(headers: Option<&impl Headers>) -> Self {
        let Some(headers) = headers else { return HeaderList::default() };
        HeaderList(
            headers
                .iter()
                .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                .collect(),
        )
    }

    /// The trace id of a W3C traceparent header, if present and well formed.
    pub fn trace_id(&self) -> Option<&str> {
        let parent = self.get(header::TRACEPARENT)?;
        let mut parts = parent.split('-');
        let (_version, trace) = (parts.next()?, parts.next()?);
        (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace)
    }
}

fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn new_span_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}
