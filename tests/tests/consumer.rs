//! The consumer loop of platform/, on its own: a handler of the test's making
//! behind the real loop, against a real broker and database. Runs on Apache
//! Kafka and on Tansu, each on SQLite and PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::{Envelope, Message, RegisterUser};
use platform::consumer::{self, ConsumerSettings, RetryPolicy};
use platform::dead_letter::DeadLetterInfo;
use platform::kafka::HeaderList;
use platform::{Db, Handler, HandlerError, Tx};
use rdkafka::Message as _;
use saga_tests::{eventually, expect_eq, Broker, BrokerStorage, Databases, Target};
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

saga_tests::on_every_target!(a_panicking_handler_dead_letters_its_record_and_the_partition_goes_on);

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
    let dbs = Databases::new(target.backend);
    let broker = Broker::start(target.broker, dbs.dir(), BrokerStorage::Memory).await;
    let topic = events::topics::USER_COMMANDS;
    let (dlq, replay) = (events::topics::dead_letter(GROUP), events::topics::replay(GROUP));
    // One partition: the records behind the marked one wait in the same queue.
    platform::kafka::ensure_topics(&broker.addr, &[topic, &dlq, &replay], 1, 1).await.expect("topics");
    let db = Db::connect(&dbs.url_for("consumer").await, 4, Duration::from_secs(5)).await.expect("database");
    db.migrate(&Migrator::DEFAULT).await.expect("migrations");

    let producer = platform::kafka::producer(&broker.addr).expect("producer");
    for user_id in ["before", "panic", "after-1", "after-2"] {
        let envelope = Envelope::new(
            RegisterUser { user_id: user_id.into(), email: format!("{user_id}@example.com"), name: user_id.into() },
            "consumer-test",
        );
        let (headers, value) = (HeaderList::for_envelope(&envelope, None).to_kafka(), envelope.to_json());
        let record = rdkafka::producer::FutureRecord::to(topic).key(envelope.key()).payload(&value).headers(headers);
        producer.send(record, Duration::from_secs(30)).await.expect("publish");
    }

    let handler = PanicsOnMarkedRecord::default();
    let applied = handler.applied.clone();
    let settings = ConsumerSettings {
        service: "consumer-test",
        brokers: broker.addr.clone(),
        group_id: GROUP.into(),
        group_instance_id: None,
        topics: vec![topic],
        retry: RetryPolicy {
            max_attempts: 8,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            max_elapsed: Duration::from_secs(10),
        },
        chaos_crash_after_commit: 0.0,
        stall_after: Duration::from_secs(600),
        fetch_wait_max: target.broker.fetch_wait_max(),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer::run(
        settings,
        db.clone(),
        producer.clone(),
        Arc::new(Notify::new()),
        Arc::new(handler),
        shutdown.clone(),
    ));

    eventually("the records behind the marked one applied", Duration::from_secs(60), || async {
        let applied = applied.lock().unwrap_or_else(|p| p.into_inner()).clone();
        expect_eq("applied", applied, vec!["before".to_owned(), "after-1".to_owned(), "after-2".to_owned()])
    })
    .await;
    let letters = saga_tests::stack::read_topic_at(&broker.addr, &dlq).await;
    assert_eq!(letters.len(), 1, "the marked record alone is dead-lettered");
    let info =
        DeadLetterInfo::from_headers(&HeaderList::from_kafka(letters[0].headers())).expect("dead-letter headers");
    assert_eq!(info.error_class, "permanent");
    assert!(info.error_message.contains("handler panicked") && info.error_message.contains("the marked record"));
    assert_eq!(info.attempts, 2, "tried once more before giving up");

    // Every offset is stored (nothing is redelivered to a new member) and nothing
    // was applied twice: the inbox has the three applied records.
    shutdown.cancel();
    running.await.expect("consumer task").expect("consumer ends cleanly");
    let inbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox").fetch_one(db.pool()).await.expect("inbox");
    assert_eq!(inbox, 3);
    let committed = committed_offset(&broker.addr, topic, target.broker.fetch_wait_max()).await;
    assert_eq!(committed, Some(4), "the group's committed offset is past all four records");
    db.close().await;
    dbs.drop_all().await;
}

async fn committed_offset(brokers: &str, topic: &str, fetch_wait: Duration) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer =
            platform::kafka::consumer_config(&brokers, GROUP, None, fetch_wait).create().expect("consumer");
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition(&topic, 0);
        let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
        committed.elements().first().and_then(|e| e.offset().to_raw())
    })
    .await
    .expect("lookup")
}
