//! The consumer loop, written once for all services.
//!
//! Records are fanned out to one worker per partition ([`dispatch`]), so a
//! partition is processed strictly in order while a slow or retrying partition
//! does not hold up the others: its fetching is paused, never the receive loop.
//! For each record a worker:
//! 1. decodes it (failure: permanent, dead-lettered);
//! 2. opens a transaction, records the event id in the inbox (already there: a
//!    redelivery, nothing to do), lets the handler change state and emit events
//!    into the outbox, and commits;
//! 3. retries transient failures with exponential back-off and jitter, bounded in
//!    attempts and time; then dead-letters. Infrastructure failures (database
//!    unreachable, pool exhausted, disk full) are retried with capped back-off
//!    for as long as they last and never dead-lettered: the record is fine, and
//!    only its partition waits. A handler that panics is caught: the
//!    record is tried once more, then dead-lettered as permanent with the panic
//!    message, and the partition goes on with the records behind it;
//! 4. stores the offset only once the transaction committed or the dead letter was
//!    acknowledged. Auto-commit sends stored offsets; shutdown commits them.
//!
//! On shutdown each worker finishes the record in hand (the attempt under way;
//! a back-off in progress is cut short and the record left for redelivery),
//! then the final commit runs.
//!
//! A watchdog covers the one failure the loop cannot see from inside: records
//! waiting for the group on the broker while none arrive and the committed
//! offsets stand still (a wedged group membership). The consumer then finishes
//! its work, commits, and joins the group afresh.

mod dispatch;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use events::{Envelope, Message};
use futures::FutureExt as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::db::{now_ms, Db};
use crate::dead_letter;
use crate::kafka::{self, GroupContext, HeaderList};
use crate::outbox::Tx;
use crate::{Error, ErrorClass, HandlerError};

/// A service's reaction to the events it consumes.
pub trait Handler: Send + Sync + 'static {
    /// Whether the service reacts to this message at all. Others are skipped
    /// without touching the database (their offsets are still stored).
    fn wants(&self, message: &Message) -> bool;

    /// Applies one event inside `tx`. Returning an error rolls the transaction
    /// back; whether it is retried depends on its class.
    fn handle(&self, event: &Envelope, tx: &mut Tx) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Bounds of in-process retries for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1))
            .with_total_delay(Some(self.max_elapsed))
            .with_jitter()
    }
}

/// Everything a consumer needs besides its handler.
#[derive(Clone)]
pub struct ConsumerSettings {
    pub service: &'static str,
    pub brokers: String,
    pub group_id: String,
    pub group_instance_id: Option<String>,
    pub topics: Vec<&'static str>,
    pub retry: RetryPolicy,
    /// See `PlatformConfig::chaos_crash_after_commit`.
    pub chaos_crash_after_commit: f64,
    /// See `PlatformConfig::consumer_stall_after`.
    pub stall_after: Duration,
    /// See `PlatformConfig::kafka_fetch_wait_max`.
    pub fetch_wait_max: Duration,
}

/// Channel depth per partition worker: enough to keep a worker busy between
/// fetches, small enough that a stuck partition does not buffer much.
const PARTITION_QUEUE: usize = 256;

struct Worker<H> {
    settings: ConsumerSettings,
    db: Db,
    producer: FutureProducer,
    relay: Arc<Notify>,
    handler: Arc<H>,
    consumer: Arc<GroupConsumer>,
    /// Records handed to workers and not finished yet: while any is, the session
    /// is busy, not stalled.
    in_flight: AtomicUsize,
}

type GroupConsumer = StreamConsumer<GroupContext>;

/// Runs until `shutdown`, then finishes the record each partition is on, and
/// commits the stored offsets. A consumer found stalled is replaced by a new one.
pub async fn run<H: Handler>(
    settings: ConsumerSettings,
    db: Db,
    producer: FutureProducer,
    relay: Arc<Notify>,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    loop {
        let parts = (settings.clone(), db.clone(), producer.clone(), relay.clone(), handler.clone());
        match session(parts, &shutdown).await? {
            Ended::Shutdown => return Ok(()),
            Ended::Stalled(waiting) => {
                metrics::counter!("consumer_rejoins_total", "service" => settings.service).increment(1);
                tracing::error!(
                    group = %settings.group_id, ?waiting, after = ?settings.stall_after,
                    "consumer stalled: records wait for this group and none arrive; joining again"
                );
            }
        }
    }
}

enum Ended {
    Shutdown,
    /// Partitions with records waiting (committed offset below the end).
    Stalled(Vec<String>),
}

type SessionParts<H> = (ConsumerSettings, Db, FutureProducer, Arc<Notify>, Arc<H>);

/// One membership of the group: a consumer, its partition workers, and a final
/// commit when it ends.
async fn session<H: Handler>(
    (settings, db, producer, relay, handler): SessionParts<H>,
    shutdown: &CancellationToken,
) -> Result<Ended, Error> {
    let context = GroupContext { group_id: settings.group_id.clone() };
    let consumer: Arc<GroupConsumer> = Arc::new(
        kafka::consumer_config(
            &settings.brokers,
            &settings.group_id,
            settings.group_instance_id.as_deref(),
            settings.fetch_wait_max,
        )
        .create_with_context(context)?,
    );
    // Besides its inputs, each service reads its own replay topic, where replayed
    // dead letters arrive for it alone.
    let replay = events::topics::replay(&settings.group_id);
    let mut topics: Vec<String> = settings.topics.iter().map(|t| (*t).to_owned()).collect();
    topics.push(replay);
    consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
    tracing::info!(group = %settings.group_id, topics = ?settings.topics, "consuming");
    let worker =
        Arc::new(Worker { settings, db, producer, relay, handler, consumer: consumer.clone(), in_flight: 0.into() });

    // Workers stop with the session: on shutdown, or when it is found stalled.
    let stop = shutdown.child_token();
    let mut dispatcher = dispatch::Dispatcher::default();
    let mut tasks = JoinSet::new();
    let mut spawn_worker = || {
        let (sender, receiver) = mpsc::channel(PARTITION_QUEUE);
        tasks.spawn(partition_worker(worker.clone(), receiver, stop.clone()));
        sender
    };
    // Well past a rebalance by default, so only a wedged membership trips it.
    let mut stall_check = tokio::time::interval(worker.settings.stall_after);
    stall_check.reset();
    let mut received_since_check = false;
    let mut waiting_at_check: Option<Vec<String>> = None;
    let mut ended = Ended::Shutdown;
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => break,
            received = consumer.recv() => received.map(|m| m.detach()),
            Some((partition, room)) = dispatcher.room() => {
                dispatcher.fill(partition, room, consumer.as_ref(), &mut spawn_worker);
                continue;
            }
            _ = stall_check.tick() => {
                let idle = !std::mem::take(&mut received_since_check)
                    && worker.in_flight.load(Ordering::Relaxed) == 0;
                let waiting = if idle { waiting_records(&consumer, &topics).await } else { None };
                if waiting.is_some() && waiting == waiting_at_check {
                    ended = Ended::Stalled(waiting.unwrap_or_default());
                    stop.cancel();
                    break;
                }
                waiting_at_check = waiting;
                continue;
            }
        };
        let record = match received {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(%error, "consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        received_since_check = true;
        worker.in_flight.fetch_add(1, Ordering::Relaxed);
        dispatcher.dispatch(record, consumer.as_ref(), &mut spawn_worker);
    }
    // Closes every partition queue: each worker finishes the record in hand.
    drop(dispatcher);
    while let Some(done) = tasks.join_next().await {
        // Handler panics are caught in the worker; this is a bug in the loop itself.
        if let Err(error) = done {
            tracing::error!(%error, "partition worker died");
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!(group = %worker.settings.group_id, "offsets committed"),
        Err(error) => tracing::debug!(%error, "final commit (nothing stored is fine)"),
    }
    Ok(ended)
}

/// The subscribed partitions whose committed offset (for this group) is below the
/// end of the log, as `topic/partition@committed`; `None` when there are none or
/// the broker cannot tell. Blocking calls, so on the blocking pool.
async fn waiting_records(consumer: &Arc<GroupConsumer>, topics: &[String]) -> Option<Vec<String>> {
    let (consumer, topics) = (consumer.clone(), topics.to_vec());
    let lookup = move || -> Result<Vec<String>, rdkafka::error::KafkaError> {
        let timeout = Duration::from_secs(5);
        let mut list = rdkafka::TopicPartitionList::new();
        for topic in &topics {
            for partition in consumer.fetch_metadata(Some(topic), timeout)?.topics().iter().flat_map(|t| t.partitions())
            {
                list.add_partition(topic, partition.id());
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

async fn partition_worker<H: Handler>(
    worker: Arc<Worker<H>>,
    mut queue: mpsc::Receiver<OwnedMessage>,
    shutdown: CancellationToken,
) {
    loop {
        let record = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            record = queue.recv() => match record { Some(r) => r, None => return },
        };
        // Interrupted by shutdown: the offset is not stored, so the record is
        // delivered again after the restart.
        let Some(()) = worker.process(&record, &shutdown).await else { return };
        if worker.settings.chaos_crash_after_commit > 0.0 && fastrand::f64() < worker.settings.chaos_crash_after_commit
        {
            tracing::error!(
                topic = record.topic(),
                offset = record.offset(),
                "chaos: aborting between commit and offset"
            );
            std::process::abort();
        }
        if let Err(error) = worker.consumer.store_offset(record.topic(), record.partition(), record.offset()) {
            // The partition was revoked meanwhile; its new owner gets the record
            // again and the inbox makes that harmless.
            tracing::debug!(%error, topic = record.topic(), "storing offset");
        }
        worker.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<H: Handler> Worker<H> {
    /// Applies or dead-letters one record. `None` means shutdown interrupted it.
    async fn process(&self, record: &OwnedMessage, shutdown: &CancellationToken) -> Option<()> {
        let service = self.settings.service;
        metrics::counter!("messages_consumed_total", "service" => service, "topic" => record.topic().to_owned())
            .increment(1);
        let envelope = match Envelope::from_json(rdkafka::Message::payload(record).unwrap_or_default()) {
            Ok(envelope) => envelope,
            Err(error) => {
                let failure = Failure {
                    class: ErrorClass::Permanent,
                    message: error.to_string(),
                    attempts: 1,
                    first_failure_ms: now_ms(),
                };
                return self.dead_letter(record, failure, shutdown).await;
            }
        };
        if !self.handler.wants(&envelope.message) {
            return Some(());
        }
        let headers = HeaderList::from_kafka(rdkafka::Message::headers(record));
        let trace_id = headers.trace_id();
        let attempts = AtomicUsize::new(0);
        let first_failure = AtomicI64::new(0);
        let apply = || async {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            if attempt > 1 && shutdown.is_cancelled() {
                return Err(HandlerError::transient("shutting down"));
            }
            // The transaction is dropped (rolled back) while unwinding.
            let result = match AssertUnwindSafe(self.apply(&envelope, trace_id)).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Err(panicked(panic.as_ref(), attempt)),
            };
            if result.is_err() {
                let _ = first_failure.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
            }
            result
        };
        let started = std::time::Instant::now();
        let mut outage = Outage::new(service, self.settings.retry);
        let result = loop {
            // Shutdown cuts a back-off short and ends the retries, but never an
            // attempt in progress: the record in hand is finished.
            let stopping = shutdown.clone();
            let result = apply
                .retry(self.settings.retry.backoff())
                .sleep(move |delay| sleep_unless_cancelled(delay, stopping.clone()))
                .when(|error| error.is_transient() && !shutdown.is_cancelled())
                .notify(|error, delay| {
                    metrics::counter!("handler_retries_total", "service" => service).increment(1);
                    tracing::warn!(event_id = %envelope.event_id, event_type = envelope.event_type(), %error, ?delay, "retrying");
                })
                .await;
            match result {
                // An outage is waited out, however long: the record is fine.
                Err(error) if error.is_infrastructure() && !shutdown.is_cancelled() => {
                    let delay = outage.next_delay(&error);
                    sleep_unless_cancelled(delay, shutdown.clone()).await;
                }
                result => break result,
            }
        };
        outage.end();
        if shutdown.is_cancelled() && result.as_ref().is_err_and(|e| e.is_transient() || e.is_infrastructure()) {
            // Retries cut short: not stored, so delivered again after the restart.
            return None;
        }
        metrics::histogram!("handler_duration_seconds", "service" => service, "event_type" => envelope.event_type())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => Some(()),
            Err(error) => {
                let failure = Failure {
                    class: error.class,
                    message: error.message,
                    attempts: attempts.load(Ordering::Relaxed),
                    first_failure_ms: first_failure.load(Ordering::Relaxed),
                };
                self.dead_letter(record, failure, shutdown).await
            }
        }
    }

    async fn apply(&self, envelope: &Envelope, trace_id: Option<&str>) -> Result<(), HandlerError> {
        let mut tx = Tx::begin(&self.db, self.settings.service).await?.caused_by(envelope, trace_id);
        // The inbox row goes first: on SQLite it takes the write lock up front, so
        // the transaction never has to upgrade from a read lock and fail busy.
        let fresh = sqlx::query(
            "INSERT INTO inbox (event_id, event_type, processed_at) VALUES ($1, $2, $3)
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(envelope.event_id.to_string())
        .bind(envelope.event_type())
        .bind(now_ms())
        .execute(tx.conn())
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tracing::debug!(event_id = %envelope.event_id, "duplicate delivery ignored");
            return Ok(());
        }
        self.handler.handle(envelope, &mut tx).await?;
        tx.commit(&self.relay).await?;
        Ok(())
    }

    /// Publishes the record unchanged to the dead-letter topic, with the reason in
    /// headers, and waits for the broker's acknowledgement; the caller then stores
    /// the offset. Keeps trying while the broker is away: losing the record is not
    /// an option, and shutdown leaves it to be redelivered.
    async fn dead_letter(&self, record: &OwnedMessage, failure: Failure, shutdown: &CancellationToken) -> Option<()> {
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

async fn sleep_unless_cancelled(delay: Duration, cancelled: CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = cancelled.cancelled() => {}
    }
}

/// A partition waiting out an infrastructure outage: capped exponential
/// back-off with jitter, without limit, visible in the log and in metrics
/// (`consumer_partitions_waiting_on_infrastructure`, `infrastructure_retries_total`).
struct Outage {
    service: &'static str,
    policy: RetryPolicy,
    delay: Option<Duration>,
}

impl Outage {
    fn new(service: &'static str, policy: RetryPolicy) -> Outage {
        Outage { service, policy, delay: None }
    }

    fn next_delay(&mut self, error: &HandlerError) -> Duration {
        let service = self.service;
        metrics::counter!("infrastructure_retries_total", "service" => service).increment(1);
        let delay = match self.delay {
            None => {
                metrics::gauge!("consumer_partitions_waiting_on_infrastructure", "service" => service).increment(1.0);
                tracing::warn!(%error, "infrastructure unavailable: this partition waits until it is back");
                self.policy.min_delay
            }
            Some(delay) => (delay * 2).min(self.policy.max_delay),
        };
        self.delay = Some(delay);
        delay.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    fn end(self) {
        if self.delay.is_some() {
            metrics::gauge!("consumer_partitions_waiting_on_infrastructure", "service" => self.service).decrement(1.0);
            tracing::info!("infrastructure back: the partition goes on");
        }
    }
}

/// A panicking handler is a bug or data it cannot cope with: worth one more try
/// (the state it read may have moved on), then permanent.
fn panicked(panic: &(dyn std::any::Any + Send), attempt: usize) -> HandlerError {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned());
    let message = format!("handler panicked: {text}");
    if attempt < 2 {
        HandlerError::transient(message)
    } else {
        HandlerError::permanent(message)
    }
}

/// Why a record is being dead-lettered.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: ErrorClass,
    pub message: String,
    pub attempts: usize,
    pub first_failure_ms: i64,
}
