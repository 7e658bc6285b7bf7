//! The consumer loop of platform/, on its own: a handler of the test's making
//! behind the real loop, against a real broker and database. Runs on Apache
//! Kafka and on Tansu, each on SQLite and PostgreSQL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::{Envelope, Message, RegisterUser};
use platform::consumer::{self, ConsumerSettings, RetryPolicy};
use platform::dead_letter::DeadLetterInfo;
use platform::kafka::HeaderList;
use platform::{Db, Handler, HandlerError, Tx};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message as _;
use saga_tests::{eventually, expect_eq, Broker, BrokerKind, BrokerStorage, Databases, Target};
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

saga_tests::on_every_target!(
    a_panicking_handler_dead_letters_its_record_and_the_partition_goes_on,
    a_blocked_partition_does_not_hold_up_the_others,
    shutdown_finishes_the_record_in_hand,
    replicas_joining_and_leaving_hand_over_partitions_without_redelivery,
    a_static_member_resumes_after_a_broker_restart_longer_than_its_session,
);

const GROUP: &str = "consumer-test";

/// Records the user ids it applied; panics on the user id `panic`.
#[derive(Default)]
struct PanicsOnMarkedRecord {
    applied: Arc<Mutex<Vec<String>>>,
}

impl Handler for PanicsOnMarkedRecord {
    fn wants(&self, message: &Message) -> bool {
        matches!(message, Message::RegisterUser(_))
    }

    async fn handle(&self, event: &Envelope, _tx: &mut Tx) -> Result<(), HandlerError> {
        if let Message::RegisterUser(user) = &event.message {
            assert_ne!(user.user_id, "panic", "the marked record");
            self.applied.lock().unwrap_or_else(|p| p.into_inner()).push(user.user_id.clone());
        }
        Ok(())
    }
}

async fn a_panicking_handler_dead_letters_its_record_and_the_partition_goes_on(target: Target) {
    // One partition: the records behind the marked one wait in the same queue.
    let mut fixture = Fixture::start(target, 1, BrokerStorage::Memory).await;
    for user_id in ["before", "panic", "after-1", "after-2"] {
        fixture.publish(0, user_id).await;
    }
    let handler = PanicsOnMarkedRecord::default();
    let applied = handler.applied.clone();
    fixture.consume(fixture.settings(), handler);

    eventually("the records behind the marked one applied", Duration::from_secs(60), || async {
        let applied = applied.lock().unwrap_or_else(|p| p.into_inner()).clone();
        expect_eq("applied", applied, vec!["before".to_owned(), "after-1".to_owned(), "after-2".to_owned()])
    })
    .await;
    let letters = saga_tests::stack::read_topic_at(&fixture.broker.addr, &events::topics::dead_letter(GROUP)).await;
    assert_eq!(letters.len(), 1, "the marked record alone is dead-lettered");
    let info =
        DeadLetterInfo::from_headers(&HeaderList::from_kafka(letters[0].headers())).expect("dead-letter headers");
    assert_eq!(info.error_class, "permanent");
    assert!(info.error_message.contains("handler panicked") && info.error_message.contains("the marked record"));
    assert_eq!(info.attempts, 2, "tried once more before giving up");

    // Every offset is stored (nothing is redelivered to a new member) and nothing
    // was applied twice: the inbox has the three applied records.
    fixture.stop_consuming().await;
    assert_eq!(fixture.inbox_rows().await, 3);
    assert_eq!(fixture.committed_offset().await, Some(4), "the group's committed offset is past all four records");
    fixture.finish().await;
}

/// Applies user registrations, noting when; the user id `block` fails as
/// transient until released, so its partition's worker is in retry meanwhile
/// (outside any transaction, as a real retry is).
struct BlocksOnMarkedRecord {
    applied: Arc<Mutex<HashMap<String, Instant>>>,
    released: Arc<AtomicBool>,
}

impl Handler for BlocksOnMarkedRecord {
    fn wants(&self, message: &Message) -> bool {
        matches!(message, Message::RegisterUser(_))
    }

    async fn handle(&self, event: &Envelope, _tx: &mut Tx) -> Result<(), HandlerError> {
        if let Message::RegisterUser(user) = &event.message {
            if user.user_id == "block" && !self.released.load(Ordering::Relaxed) {
                return Err(HandlerError::transient("blocked until the test releases it"));
            }
            self.applied.lock().unwrap_or_else(|p| p.into_inner()).insert(user.user_id.clone(), Instant::now());
        }
        Ok(())
    }
}

/// Partition 0's worker is in retry with 300 records queued behind it, more than
/// its queue holds; meanwhile records on partitions 1 and 2 are applied at their
/// usual pace. Latencies (publish acknowledged -> applied) of both are printed.
async fn a_blocked_partition_does_not_hold_up_the_others(target: Target) {
    // Tansu's memory engine can lose records of large batches read back from the start.
    let mut fixture = Fixture::start(target, 3, BrokerStorage::Durable).await;
    let handler = BlocksOnMarkedRecord { applied: Arc::default(), released: Arc::default() };
    let (applied, released) = (handler.applied.clone(), handler.released.clone());
    let mut settings = fixture.settings();
    // In retry for up to a minute, not dead-lettered meanwhile.
    settings.retry.max_attempts = usize::MAX;
    settings.retry.max_delay = Duration::from_millis(500);
    settings.retry.max_elapsed = Duration::from_secs(60);
    fixture.consume(settings, handler);

    let mut published: HashMap<String, Instant> = HashMap::new();
    fixture.publish(0, "block").await;
    for i in 0..300 {
        let user_id = format!("stuck-{i}");
        fixture.publish(0, &user_id).await;
        published.insert(user_id, Instant::now());
    }
    let others: Vec<String> = (0..40).map(|i| format!("other-{i}")).collect();
    for (i, user_id) in others.iter().enumerate() {
        fixture.publish(1 + (i % 2) as i32, user_id).await;
        published.insert(user_id.clone(), Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(
        "the other partitions' records applied while partition 0 is blocked",
        Duration::from_secs(30),
        || async {
            let applied = applied.lock().unwrap_or_else(|p| p.into_inner());
            let done = others.iter().filter(|u| applied.contains_key(*u)).count();
            expect_eq("applied on partitions 1 and 2", done, others.len())
        },
    )
    .await;
    assert!(!applied.lock().unwrap_or_else(|p| p.into_inner()).contains_key("block"), "partition 0 was still blocked");

    released.store(true, Ordering::Relaxed);
    let released = Instant::now();
    eventually("partition 0 drained after the release", Duration::from_secs(60), || async {
        let done = applied.lock().unwrap_or_else(|p| p.into_inner()).len();
        expect_eq("applied in all", done, 1 + 300 + 40)
    })
    .await;
    let applied = applied.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let latency = |users: &mut dyn Iterator<Item = &String>| {
        let mut ms: Vec<f64> = users
            .filter_map(|u| Some(applied.get(u)?.saturating_duration_since(*published.get(u)?).as_secs_f64() * 1000.0))
            .collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms.get(((ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
        (at(0.5), at(0.99))
    };
    let (others_p50, others_p99) = latency(&mut others.iter());
    let stuck: Vec<String> = (0..300).map(|i| format!("stuck-{i}")).collect();
    let drained = stuck.iter().filter_map(|u| applied.get(u)).max().map(|t| t.saturating_duration_since(released));
    println!(
        "{target:?}: partitions 1-2 while partition 0 blocked: p50 {others_p50:.0} ms, p99 {others_p99:.0} ms; \
         partition 0's 300 queued records drained {drained:?} after the release"
    );
    fixture.finish().await;
}

/// Takes three seconds over each record, inside its transaction, and says when
/// it started one.
#[derive(Default)]
struct Slow {
    started: Arc<AtomicBool>,
}

impl Handler for Slow {
    fn wants(&self, message: &Message) -> bool {
        matches!(message, Message::RegisterUser(_))
    }

    async fn handle(&self, _event: &Envelope, _tx: &mut Tx) -> Result<(), HandlerError> {
        self.started.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(())
    }
}

/// Shutdown requested while a handler is busy with a record: the record's
/// transaction commits and its offset is committed before the loop returns.
async fn shutdown_finishes_the_record_in_hand(target: Target) {
    let mut fixture = Fixture::start(target, 1, BrokerStorage::Memory).await;
    fixture.publish(0, "in-hand").await;
    let handler = Slow::default();
    let started = handler.started.clone();
    fixture.consume(fixture.settings(), handler);
    eventually("the handler has the record", Duration::from_secs(60), || async {
        expect_eq("started", started.load(Ordering::Relaxed), true)
    })
    .await;
    fixture.stop_consuming().await;
    assert_eq!(fixture.inbox_rows().await, 1, "the record in hand was committed");
    assert_eq!(fixture.committed_offset().await, Some(1), "and its offset");
    fixture.finish().await;
}

/// Counts each delivery of a registration (`wants` sees every record a worker
/// takes, redeliveries included) and notes each application in order; an
/// application takes a few milliseconds in its transaction, so queues build up.
#[derive(Clone, Default)]
struct Counted {
    replica: usize,
    deliveries: Arc<Mutex<HashMap<String, usize>>>,
    /// (user id, replica), in the order applied.
    applied: Arc<Mutex<Vec<(String, usize)>>>,
}

impl Counted {
    fn for_replica(&self, replica: usize) -> Counted {
        Counted { replica, ..self.clone() }
    }
}

impl Handler for Counted {
    fn wants(&self, message: &Message) -> bool {
        if let Message::RegisterUser(user) = message {
            *self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).entry(user.user_id.clone()).or_default() += 1;
        }
        matches!(message, Message::RegisterUser(_))
    }

    async fn handle(&self, event: &Envelope, _tx: &mut Tx) -> Result<(), HandlerError> {
        if let Message::RegisterUser(user) = &event.message {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.applied.lock().unwrap_or_else(|p| p.into_inner()).push((user.user_id.clone(), self.replica));
        }
        Ok(())
    }
}

/// Records flow to six partitions while a second and a third replica of the
/// group join (each takes partitions over) and, later, leave (gracefully). Each
/// rebalance hands a partition over only once its old owner has finished the
/// record in hand and committed its offset, so every record is delivered once
/// (no redelivery, the inbox is never needed), applied once, and each
/// partition's records in order. On Tansu only the last two hold (see the end
/// of the test).
async fn replicas_joining_and_leaving_hand_over_partitions_without_redelivery(target: Target) {
    const PARTITIONS: i32 = 6;
    let fixture = Fixture::start(target, PARTITIONS, BrokerStorage::Durable).await;
    let handler = Counted::default();
    let first = fixture.replica(fixture.settings(), handler.for_replica(0));
    // About 60 records/s until the last replica has left.
    let publishing_ends = CancellationToken::new();
    let publishing = keep_publishing(&fixture, PARTITIONS, Duration::from_millis(16), publishing_ends.clone());
    // Each replica joins once the previous one has applied records (a Kafka
    // rebalance takes a few seconds), and leaves while records still flow.
    let has_applied = |replica: usize| {
        let applied = handler.applied.clone();
        async move {
            eventually(&format!("replica {replica} applies records"), Duration::from_secs(60), || async {
                let any = applied.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|(_, r)| *r == replica);
                expect_eq("applied any", any, true)
            })
            .await
        }
    };
    has_applied(0).await;
    let (mut joined, mut took_over) = (Vec::new(), Vec::new());
    for replica in 1..=2 {
        let joining = Instant::now();
        joined.push(fixture.replica(fixture.settings(), handler.for_replica(replica)));
        has_applied(replica).await;
        took_over.push(joining.elapsed());
    }
    for replica in joined {
        tokio::time::sleep(Duration::from_secs(2)).await;
        replica.leave().await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    publishing_ends.cancel();
    let published = publishing.await.expect("publisher");
    eventually("every record applied", Duration::from_secs(60), || async {
        let applied = handler.applied.lock().unwrap_or_else(|p| p.into_inner()).len();
        expect_eq("applied", applied, published.len())
    })
    .await;
    first.leave().await;

    let (applied, by): (Vec<String>, Vec<usize>) =
        handler.applied.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().unzip();
    let per_replica: Vec<usize> = (0..=2).map(|replica| by.iter().filter(|r| **r == replica).count()).collect();
    println!(
        "{target:?}: records applied by replica 0, 1, 2: {per_replica:?}; \
         from joining to a first record applied: {took_over:?}"
    );
    let mut once = applied.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), applied.len(), "a record applied twice");
    for partition in 0..PARTITIONS {
        let prefix = format!("p{partition}-");
        let in_order: Vec<&String> = applied.iter().filter(|u| u.starts_with(&prefix)).collect();
        assert!(in_order.is_sorted(), "partition {partition} applied out of order: {in_order:?}");
    }
    let deliveries = handler.deliveries.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut redelivered: Vec<(&String, &usize)> = deliveries.iter().filter(|(_, n)| **n > 1).collect();
    redelivered.sort();
    let redelivery = format!("{} of {} records delivered again", redelivered.len(), published.len());
    match target.broker {
        BrokerKind::Kafka => assert!(redelivered.is_empty(), "{redelivery} after a rebalance: {redelivered:?}"),
        // Tansu answers a JoinGroup at once, without waiting for the other
        // members to rejoin, so the leader can assign a partition its owner has
        // not yet revoked: two owners for a moment. The inbox absorbs it (each
        // record applied once, in order, as asserted above), but records are
        // delivered twice.
        BrokerKind::Tansu => println!("{target:?}: {redelivery} (Tansu's group coordinator has no join barrier)"),
    }
    fixture.finish().await;
}

/// The broker is SIGKILLed and comes back after more than the consumer's session
/// timeout (10 s here), while records keep coming. The consumer, a static
/// member, loses its session;
/// librdkafka then sends its queued auto-commits with the member id it lost,
/// Kafka fences them (FencedInstanceId), and a fenced consumer is dead for good.
/// The loop sees the fatal error and joins with a new consumer: records flow
/// again soon after the broker is back, with stall detection out of the way.
/// (Tansu fences nothing: there the consumer simply joins again.)
async fn a_static_member_resumes_after_a_broker_restart_longer_than_its_session(target: Target) {
    let mut fixture = Fixture::start(target, 3, BrokerStorage::Durable).await;
    let handler = Counted::default();
    let mut settings = fixture.settings();
    settings.group_instance_id = Some(format!("{GROUP}-1"));
    let replica = fixture.replica(settings, handler.clone());
    let publishing_ends = CancellationToken::new();
    let publishing = keep_publishing(&fixture, 3, Duration::from_millis(50), publishing_ends.clone());
    let applied = || handler.applied.lock().unwrap_or_else(|p| p.into_inner()).len();
    eventually("records flow", Duration::from_secs(60), || async { expect_eq("flowing", applied() > 20, true) }).await;
    fixture.broker.kill();
    let killed = Instant::now();
    // Kafka needs ~12 s to come back by itself; Tansu is back at once.
    let down = match target.broker {
        BrokerKind::Kafka => Duration::from_millis(1500),
        BrokerKind::Tansu => Duration::from_secs(12),
    };
    tokio::time::sleep(down).await;
    fixture.broker.restart().await;
    let back = Instant::now();
    let before = applied();
    eventually("records flow again after the broker restart", Duration::from_secs(45), || async {
        expect_eq("flowing again", applied() > before + 20, true)
    })
    .await;
    publishing_ends.cancel();
    publishing.await.expect("publisher");
    println!(
        "{target:?}: broker back {:?} after the kill; records flowed again {:?} after that",
        back - killed,
        back.elapsed()
    );
    replica.leave().await;
    fixture.finish().await;
}

/// A broker, a database with the platform's tables, a producer, and the consumer
/// loop of the test's handler once [`Fixture::consume`] is called.
struct Fixture {
    dbs: Databases,
    broker: Broker,
    db: Db,
    producer: FutureProducer,
    consuming: Option<Replica>,
}

impl Fixture {
    /// user.commands with `partitions` partitions, and the group's DLQ and replay
    /// topics with one.
    async fn start(target: Target, partitions: i32, storage: BrokerStorage) -> Fixture {
        let dbs = Databases::new(target.backend);
        let broker = Broker::start(target.broker, dbs.dir(), storage).await;
        let (dlq, replay) = (events::topics::dead_letter(GROUP), events::topics::replay(GROUP));
        platform::kafka::ensure_topics(&broker.addr, &[events::topics::USER_COMMANDS], partitions, 1)
            .await
            .expect("topics");
        // One partition each: the sticky assignor balances partition counts over
        // all topics, and the idle replay topic would take a joining replica's share.
        platform::kafka::ensure_topics(&broker.addr, &[&dlq, &replay], 1, 1).await.expect("topics");
        let db = Db::connect(&dbs.url_for("consumer").await, 4, Duration::from_secs(5)).await.expect("database");
        db.migrate(&Migrator::DEFAULT).await.expect("migrations");
        let producer = platform::kafka::producer(&broker.addr).expect("producer");
        Fixture { dbs, broker, db, producer, consuming: None }
    }

    /// The consumer settings of these tests: short retries, stall detection out
    /// of the way.
    fn settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            service: "consumer-test",
            kafka: self.broker.connection(),
            group_id: GROUP.into(),
            group_instance_id: None,
            topics: vec![events::topics::USER_COMMANDS],
            retry: RetryPolicy {
                max_attempts: 8,
                min_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(100),
                max_elapsed: Duration::from_secs(10),
            },
            chaos_crash_after_commit: 0.0,
            stall_after: Duration::from_secs(600),
            fetch_wait_max: self.broker.kind.fetch_wait_max(),
            // Shorter than the platform's default, to keep expiry tests short.
            session_timeout: Duration::from_secs(10),
            projection_wait: Duration::from_secs(5),
            health: Default::default(),
        }
    }

    fn consume(&mut self, settings: ConsumerSettings, handler: impl Handler) {
        self.consuming = Some(self.replica(settings, handler));
    }

    /// One more member of the group, with its own shutdown.
    fn replica(&self, settings: ConsumerSettings, handler: impl Handler) -> Replica {
        let shutdown = CancellationToken::new();
        let (db, producer, relay) = (self.db.clone(), self.producer.clone(), Arc::new(Notify::new()));
        let running = tokio::spawn(consumer::run(settings, db, producer, relay, Arc::new(handler), shutdown.clone()));
        Replica { shutdown, running }
    }

    async fn publish(&self, partition: i32, user_id: &str) {
        publish(&self.producer, partition, user_id).await;
    }

    /// Graceful stop of the consumer loop, which must end without an error.
    async fn stop_consuming(&mut self) {
        if let Some(consuming) = self.consuming.take() {
            consuming.leave().await;
        }
    }

    async fn inbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM inbox").fetch_one(self.db.pool()).await.expect("inbox")
    }

    /// The group's committed offset on partition 0.
    async fn committed_offset(&self) -> Option<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let (brokers, fetch_wait) = (self.broker.addr.clone(), self.broker.kind.fetch_wait_max());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer =
                platform::kafka::consumer_config(&brokers, GROUP, None, fetch_wait).create().expect("consumer");
            let mut list = rdkafka::TopicPartitionList::new();
            list.add_partition(events::topics::USER_COMMANDS, 0);
            let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
            committed.elements().first().and_then(|e| e.offset().to_raw())
        })
        .await
        .expect("lookup")
    }

    async fn finish(mut self) {
        self.stop_consuming().await;
        self.db.close().await;
        self.dbs.drop_all().await;
    }
}

/// Publishes registrations `p<partition>-<seq>` round `partitions`, one every
/// `pause`, until `until`; returns the user ids published, in order.
fn keep_publishing(
    fixture: &Fixture,
    partitions: i32,
    pause: Duration,
    until: CancellationToken,
) -> JoinHandle<Vec<String>> {
    let producer = fixture.producer.clone();
    tokio::spawn(async move {
        let mut published = Vec::new();
        for seq in 0.. {
            if until.is_cancelled() {
                break;
            }
            let partition = seq % partitions;
            let user_id = format!("p{partition}-{seq:05}");
            publish(&producer, partition, &user_id).await;
            published.push(user_id);
            tokio::time::sleep(pause).await;
        }
        published
    })
}

/// Publishes a registration of `user_id` to `partition`; returns when acknowledged.
async fn publish(producer: &FutureProducer, partition: i32, user_id: &str) {
    let email = format!("{user_id}@example.com");
    let envelope = Envelope::new(RegisterUser { user_id: user_id.into(), email, name: user_id.into() }, GROUP);
    let (headers, value) = (HeaderList::for_envelope(&envelope, None).to_kafka(), envelope.to_json());
    let record =
        FutureRecord::to(envelope.topic()).partition(partition).key(envelope.key()).payload(&value).headers(headers);
    producer.send(record, Duration::from_secs(30)).await.expect("publish");
}

/// A consumer loop started by [`Fixture::replica`] (or [`Fixture::consume`]).
struct Replica {
    shutdown: CancellationToken,
    running: JoinHandle<Result<(), platform::Error>>,
}

impl Replica {
    /// Graceful stop: the loop must end without an error.
    async fn leave(self) {
        self.shutdown.cancel();
        self.running.await.expect("consumer task").expect("consumer ends cleanly");
    }
}
