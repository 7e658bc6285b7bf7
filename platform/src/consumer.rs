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
//! The group uses cooperative-sticky assignment; a revoked partition is handed
//! over drained and committed ([`rebalance`]).
//!
//! A consumer that librdkafka declares failed for good (a static member fenced
//! after a broker restart that outlasted its session: see [`Ended::Fatal`]) is
//! replaced by a new one at once. Stall detection covers what the loop cannot
//! see from inside: records waiting on its partitions while none arrive and the
//! committed offsets stand still, over two checks. It is a signal, not a cure:
//! logged, counted, and /readyz unready until records flow again ([`Health`]).
//! Its known trigger is Tansu's: a vanished static member it never expires.
//!
//! This module is the receive loop; beside it: [`dispatch`] (records to their
//! partition's queue, pausing a full one), [`worker`] (one record: inbox,
//! handler, commit, offset), [`rebalance`] (hand-over of revoked partitions),
//! [`retry`] (bounded, outage and panic retries), [`dead_letters`] (publishing
//! a failed record) and [`stall`] (stall detection).

mod dead_letters;
mod dispatch;
mod rebalance;
mod retry;
mod stall;
mod worker;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use events::{Envelope, Message};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::Message as _;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::kafka;
use crate::outbox::Tx;
use crate::{Error, HandlerError};
use rebalance::GroupContext;
use worker::{partition_worker, Worker};

/// A service's reaction to the events it consumes.
pub trait Handler: Send + Sync + 'static {
    /// Whether the service reacts to this message at all. Others are skipped
    /// without touching the database (their offsets are still stored).
    fn wants(&self, message: &Message) -> bool;

    /// Applies one event inside `tx`. Returning an error rolls the transaction
    /// back; whether it is retried depends on its class.
    fn handle(&self, event: &Envelope, tx: &mut Tx) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

pub use retry::RetryPolicy;
pub use worker::Failure;

/// Everything a consumer needs besides its handler.
#[derive(Clone)]
pub struct ConsumerSettings {
    pub service: &'static str,
    pub kafka: kafka::Connection,
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
    /// See `PlatformConfig::kafka_session_timeout`.
    pub session_timeout: Duration,
    /// See `PlatformConfig::projection_wait`.
    pub projection_wait: Duration,
    /// Where the loop says it is stalled, for /readyz.
    pub health: Health,
}

/// Whether a consumer loop is stalled: records wait on its partitions and none
/// arrive. Shared with the service's /readyz, which is unready meanwhile.
#[derive(Clone, Default)]
pub struct Health(Arc<std::sync::Mutex<Option<String>>>);

impl Health {
    /// Why the consumer is stalled, if it is.
    pub fn stalled(&self) -> Option<String> {
        lock(&self.0).clone()
    }

    fn set(&self, stalled: Option<String>) {
        *lock(&self.0) = stalled;
    }
}

/// A mutex guard, poisoned or not: what these mutexes hold stays consistent
/// whatever panicked while holding it.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Channel depth per partition worker: enough to keep a worker busy between
/// fetches, small enough that a stuck partition does not buffer much.
const PARTITION_QUEUE: usize = 256;

type GroupConsumer = StreamConsumer<GroupContext>;

/// Runs until `shutdown`, then finishes the record each partition is on, and
/// commits the stored offsets. A consumer that failed fatally is replaced by a
/// new one.
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
            Ended::Fatal(reason) => {
                metrics::counter!("consumer_fatal_errors_total", "service" => settings.service).increment(1);
                tracing::error!(group = %settings.group_id, %reason, "consumer failed fatally; joining again with a new one");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

enum Ended {
    Shutdown,
    /// librdkafka declared the consumer failed for good. Seen after a broker
    /// restart outlasting the session: the consumer's auto-commit, still
    /// carrying the member id it lost, is refused with FencedInstanceId when it
    /// is a static member, and a fenced consumer never rejoins.
    Fatal(String),
}

type SessionParts<H> = (ConsumerSettings, Db, FutureProducer, Arc<Notify>, Arc<H>);

/// One membership of the group: a consumer, its partition workers, and a final
/// commit when it ends.
async fn session<H: Handler>(
    (settings, db, producer, relay, handler): SessionParts<H>,
    shutdown: &CancellationToken,
) -> Result<Ended, Error> {
    let context = GroupContext::new(settings.group_id.clone());
    let consumer: Arc<GroupConsumer> = Arc::new(
        kafka::consumer_config(
            &settings.kafka,
            &settings.group_id,
            settings.group_instance_id.as_deref(),
            settings.fetch_wait_max,
        )
        .set("session.timeout.ms", settings.session_timeout.as_millis().to_string())
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

    // Workers stop with the session: on shutdown, or when the consumer failed fatally.
    let stop = shutdown.child_token();
    let mut dispatcher = dispatch::Dispatcher::default();
    let mut tasks = JoinSet::new();
    let spawn_worker = |tasks: &mut JoinSet<()>, key: &dispatch::Key| {
        let (sender, receiver) = mpsc::channel(PARTITION_QUEUE);
        // Its own stop, for a revoke of its partition.
        let partition_stop = stop.child_token();
        let done = consumer.context().worker_started(key.clone(), partition_stop.clone());
        tasks.spawn(partition_worker(worker.clone(), receiver, partition_stop, done));
        sender
    };
    // Well past a rebalance by default, so only a wedged membership trips it.
    let mut stall_check = tokio::time::interval(worker.settings.stall_after);
    stall_check.reset();
    let mut received_since_check = false;
    let mut waiting_at_check: Option<Vec<String>> = None;
    // A check runs beside the loop (its broker queries take a while), never in it.
    let probe = stall::Probe::new(&worker.settings)?;
    let mut check: Option<tokio::task::JoinHandle<Option<Vec<String>>>> = None;
    let mut ended = Ended::Shutdown;
    let mut fatal_check = tokio::time::interval(Duration::from_secs(1));
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => break,
            _ = fatal_check.tick() => {
                if let Some(reason) = kafka::fatal_error(consumer.client()) {
                    ended = Ended::Fatal(reason);
                    stop.cancel();
                    break;
                }
                continue;
            }
            received = consumer.recv() => received.map(|m| m.detach()),
            Some((partition, room)) = dispatcher.room() => {
                dispatcher.fill(partition, room, consumer.as_ref(), &mut |key| spawn_worker(&mut tasks, key));
                continue;
            }
            _ = stall_check.tick(), if check.is_none() => {
                let idle = !std::mem::take(&mut received_since_check)
                    && worker.in_flight.load(Ordering::Relaxed) == 0;
                let assigned = consumer.assignment().unwrap_or_default();
                check = Some(tokio::spawn(probe.clone().waiting_records(idle.then_some(assigned))));
                continue;
            }
            Some(waiting) = async { Some(check.as_mut()?.await.ok().flatten()) }, if check.is_some() => {
                check = None;
                // Records arrived meanwhile: not stalled, whatever the check saw.
                let waiting = waiting.filter(|_| !received_since_check);
                let stalled = waiting.is_some() && waiting == waiting_at_check;
                stall::report(&worker.settings, stalled.then_some(waiting.as_deref().unwrap_or_default()));
                waiting_at_check = waiting;
                continue;
            }
        };
        // Partitions revoked during that `recv`: their workers have stopped;
        // what was queued or held for them is the new owner's.
        let revoked = consumer.context().take_revoked();
        for key in &revoked {
            worker.in_flight.fetch_sub(dispatcher.forget(key), Ordering::Relaxed);
        }
        reap(&mut tasks);
        let record = match received {
            Ok(record) if revoked.contains(&(record.topic().to_owned(), record.partition())) => continue,
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(%error, "consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !received_since_check && worker.settings.health.stalled().is_some() {
            stall::report(&worker.settings, None);
        }
        received_since_check = true;
        worker.in_flight.fetch_add(1, Ordering::Relaxed);
        dispatcher.dispatch(record, consumer.as_ref(), &mut |key| spawn_worker(&mut tasks, key));
    }
    // Closes every partition queue: each worker finishes the record in hand.
    drop(dispatcher);
    while let Some(done) = tasks.join_next().await {
        worker_ended(done);
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!(group = %worker.settings.group_id, "offsets committed"),
        Err(error) => tracing::debug!(%error, "final commit (nothing stored is fine)"),
    }
    Ok(ended)
}

/// Collects the workers that have ended (revoked, or died), so the set does not
/// grow with every rebalance.
fn reap(tasks: &mut JoinSet<()>) {
    while let Some(done) = tasks.try_join_next() {
        worker_ended(done);
    }
}

fn worker_ended(done: Result<(), tokio::task::JoinError>) {
    // Handler panics are caught in the worker; this is a bug in the loop itself.
    // The dispatcher starts a new worker for the partition's next record.
    if let Err(error) = done {
        tracing::error!(%error, "partition worker died");
    }
}
