//! Failure semantics end to end: poison messages and dead letters, transient
//! database failures, gateway outages and slowness behind the breaker, the
//! durable payment queue across a restart, duplicates, and the operational
//! endpoints. Every scenario runs on Apache Kafka and on Tansu, each on SQLite and
//! on PostgreSQL.

use std::time::{Duration, Instant};

use events::Envelope;
use payment_svc::simulator::{Ledger, Mode};
use platform::dead_letter::DeadLetterInfo;
use platform::kafka::HeaderList;
use rdkafka::Message as _;
use saga_tests::{eventually, expect_eq, Backend, BrokerKind, Stack, Target};
use sqlx::Executor;

const SAGA: Duration = Duration::from_secs(60);

saga_tests::on_every_target!(
    poison_messages_are_dead_lettered_and_orders_behind_them_complete,
    transient_database_failure_is_retried,
    gateway_outage_defers_then_confirms_each_order_once,
    outage_past_the_deadline_is_compensated,
    slow_gateway_times_out_and_is_charged_once,
    payment_queue_survives_a_restart,
    redelivered_events_change_nothing,
    readiness_follows_the_broker_and_metrics_move,
    replay_after_the_fix_completes_the_order_and_twice_is_a_no_op,
);

async fn setup(stack: &mut Stack) {
    stack.register_user("ann").await;
    stack.create_product("SKU-PEN", 200, 100).await;
}

async fn dead_letters(stack: &Stack, topic: &str) -> Vec<(HeaderList, Option<Vec<u8>>)> {
    stack
        .read_topic(topic)
        .await
        .into_iter()
        .map(|r| (HeaderList::from_kafka(r.headers()), r.payload().map(<[u8]>::to_vec)))
        .collect()
}

async fn poison_messages_are_dead_lettered_and_orders_behind_them_complete(target: Target) {
    let mut stack = Stack::start(target).await;
    setup(&mut stack).await;
    // Three kinds of poison on order.commands, all under one key so they sit in
    // front of the order on the same partition.
    let key = "order-after-poison";
    let mut unknown_type = Envelope::new(events::CancelOrder { order_id: key.into(), reason: String::new() }, "test");
    unknown_type.schema_version = 1;
    let unknown_type =
        String::from_utf8(unknown_type.to_json()).expect("utf8").replace("CancelOrder", "OrderTeleported");
    let future_version =
        Envelope::new(events::CancelOrder { order_id: key.into(), reason: String::new() }, "test").to_json();
    let future_version =
        String::from_utf8(future_version).expect("utf8").replace("\"schema_version\":1", "\"schema_version\":9");
    let mut headers = HeaderList::default();
    headers.push("origin", "poison-test");
    let poisons: [(&str, Vec<u8>); 3] = [
        ("not a JSON envelope", b"{this is not json".to_vec()),
        ("unknown event type `OrderTeleported`", unknown_type.into_bytes()),
        ("schema_version 9 is not supported", future_version.into_bytes()),
    ];
    for (_, value) in &poisons {
        stack.publish_raw(events::topics::ORDER_COMMANDS, key, value, headers.clone()).await;
    }
    stack.place_order(key, "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    stack.wait_order(key, "CONFIRMED", SAGA).await;

    eventually("three dead letters in order-svc.dlq", SAGA, || {
        let stack = &stack;
        async move { expect_eq("dead letters", dead_letters(stack, "order-svc.dlq").await.len(), 3) }
    })
    .await;
    let letters = dead_letters(&stack, "order-svc.dlq").await;
    for ((expected_error, value), (headers, payload)) in poisons.iter().zip(&letters) {
        let info = DeadLetterInfo::from_headers(headers).expect("error headers");
        assert_eq!(info.original_topic, "order.commands");
        assert_eq!(info.consumer_group, "order-svc");
        assert_eq!(info.error_class, "permanent");
        assert_eq!(info.attempts, 1, "permanent errors are not retried");
        assert!(info.error_message.contains(expected_error), "{} lacks {expected_error}", info.error_message);
        assert!(info.original_timestamp_ms.is_some() && info.first_failure_ms.is_some());
        assert_eq!(payload.as_deref(), Some(value.as_slice()), "value unchanged");
        assert_eq!(headers.get("origin"), Some("poison-test"), "original headers kept");
    }
    // Offsets 0, 1, 2 of one partition, in order.
    let offsets: Vec<i64> =
        letters.iter().filter_map(|(h, _)| DeadLetterInfo::from_headers(h)).map(|i| i.original_offset).collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    // No other service dead-lettered anything.
    for dlq in ["user-svc.dlq", "product-svc.dlq", "inventory-svc.dlq", "payment-svc.dlq", "notification-svc.dlq"] {
        assert!(stack.read_topic(dlq).await.is_empty(), "{dlq} should be empty");
    }
    stack.stop().await;
}

async fn transient_database_failure_is_retried(target: Target) {
    let mut stack =
        Stack::start_tweaked(target, |c| c.database_busy_timeout = Duration::from_millis(200), |_| {}).await;
    setup(&mut stack).await;
    let url = stack.dbs.url_for("inventory-svc").await;
    match target.backend {
        Backend::Sqlite => {
            // Another process holds the write lock for two seconds: inventory-svc's
            // transactions fail busy, back off, and get through once it is released.
            let mut locker = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.expect("connect");
            locker.execute("BEGIN EXCLUSIVE").await.expect("lock");
            stack.place_order("order-busy", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            locker.execute("COMMIT").await.expect("unlock");
        }
        Backend::Postgres => {
            // Statements give up after 200 ms waiting for a lock (as a busy
            // production database would make them), and another session holds
            // the stock table for two seconds.
            let admin = saga_tests::databases::postgres_admin_url();
            let name = url.rsplit('/').next().unwrap_or_default().to_owned();
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.expect("admin");
            conn.execute(format!("ALTER DATABASE {name} SET lock_timeout = '200ms'").as_str()).await.expect("alter");
            // Fresh sessions pick the setting up.
            conn.execute(
                format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'").as_str(),
            )
            .await
            .expect("terminate");
            let mut locker = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.expect("connect");
            locker.execute("BEGIN").await.expect("begin");
            locker.execute("LOCK TABLE stock IN ACCESS EXCLUSIVE MODE").await.expect("lock");
            stack.place_order("order-busy", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            locker.execute("COMMIT").await.expect("unlock");
        }
    }
    stack.wait_order("order-busy", "CONFIRMED", SAGA).await;
    let (_, metrics) = stack.http_get("inventory-svc", "/metrics").await;
    let retries = metric(&metrics, "handler_retries_total", "inventory-svc");
    assert!(retries >= 1.0, "inventory-svc retried: {retries}");
    assert!(stack.read_topic("inventory-svc.dlq").await.is_empty(), "nothing dead-lettered");
    stack.stop().await;
}

/// PostgreSQL, the services' database server, down for a minute while orders
/// keep coming: every saga event that needs the database waits for it (an
/// infrastructure failure, never dead-lettered), the services say so in /readyz
/// and /metrics, and once it is back every order completes.
async fn a_minute_without_postgres_is_waited_out(broker: BrokerKind) {
    let server = saga_tests::databases::OwnPostgres::start().await;
    let dbs = saga_tests::Databases::on_server(Backend::Postgres, server.url.clone());
    let broker = saga_tests::Broker::start(broker, dbs.dir(), saga_tests::BrokerStorage::Memory).await;
    let mut stack = Stack::start_on(broker, dbs, saga_tests::Options::default()).await;
    setup(&mut stack).await;
    let order = |i: usize| format!("order-outage-{i}");
    for i in 0..10 {
        stack.place_order(&order(i), "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    }
    stack.wait_order(&order(9), "CONFIRMED", SAGA).await;

    server.stop();
    let down = Instant::now();
    for i in 10..30 {
        stack.place_order(&order(i), "ann", &[("SKU-PEN", 1)], "tok_visa").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (status, body) = stack.http_get("order-svc", "/readyz").await;
    assert_eq!(status, 503, "unready while its database is down: {body}");
    let (_, metrics) = stack.http_get("order-svc", "/metrics").await;
    let waiting = metric(&metrics, "consumer_partitions_waiting_on_infrastructure", "order-svc");
    assert!(waiting >= 1.0, "order-svc's partitions wait for the database: {waiting}");
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(down.elapsed())).await;
    server.start_again();
    println!("PostgreSQL down for {:?}", down.elapsed());

    for i in 30..40 {
        stack.place_order(&order(i), "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    }
    for i in 0..40 {
        stack.wait_order(&order(i), "CONFIRMED", Duration::from_secs(120)).await;
    }
    stack.wait_stock("SKU-PEN", (60, 0, 40, 100), SAGA).await;
    for service in saga_tests::stack::SERVICES {
        let dlq = events::topics::dead_letter(service);
        assert!(stack.read_topic(&dlq).await.is_empty(), "{dlq}: nothing dead-lettered");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_a_minute_without_postgres_is_waited_out() {
    a_minute_without_postgres_is_waited_out(BrokerKind::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_a_minute_without_postgres_is_waited_out() {
    a_minute_without_postgres_is_waited_out(BrokerKind::Tansu).await;
}

/// A producer that librdkafka declares failed fatally refuses every record from
/// then on. Here Kafka refuses the idempotent producer its producer id
/// (ClusterAuthorizationFailed, as when an ACL denies IdempotentWrite): /readyz
/// names the failure, the metric counts it, and the service stops with an error,
/// so that its supervisor starts it again with a new producer. Kafka only: Tansu
/// has no authorizer, nor any other way to fail a producer for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_a_fatal_producer_error_stops_the_service_for_its_supervisor() {
    let dbs = saga_tests::Databases::new(Backend::Sqlite);
    let authorizer = [
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=true",
    ];
    let broker =
        saga_tests::Broker::start_with(BrokerKind::Kafka, dbs.dir(), saga_tests::BrokerStorage::Durable, &authorizer)
            .await;
    let acl = "org.apache.kafka.tools.AclCommand";
    // Everything on the cluster stays allowed (the node's own controller
    // requests included) but an idempotent producer's id, which Kafka also
    // grants to whoever may write some topic: so no writes either.
    let rule = |kind, operation, resource: &[&str]| {
        let mut args = vec!["--add", kind, "User:ANONYMOUS", "--operation", operation];
        args.extend_from_slice(resource);
        broker.kafka_tool(acl, &args);
    };
    for resource in [&["--cluster"][..], &["--topic", "*"]] {
        rule("--allow-principal", "All", resource);
    }
    rule("--deny-principal", "IdempotentWrite", &["--cluster"]);
    rule("--deny-principal", "Write", &["--topic", "*"]);

    let mut config = platform::PlatformConfig::local(&broker.addr);
    config.database_url = Some(dbs.url_for("user-svc").await);
    let app = user_svc::build(user_svc::Config { platform: config }).await.expect("user-svc builds");
    let http = format!("http://{}", app.http_addr());
    let running = tokio::spawn(app.run_until_stopped(tokio_util::sync::CancellationToken::new()));

    // The service's own checks, on a producer of the same making.
    let producer = platform::kafka::producer(&broker.addr).expect("producer");
    eventually("the producer fails fatally", SAGA, || async {
        use rdkafka::producer::Producer as _;
        expect_eq("fatal", platform::kafka::fatal_error(producer.client()).is_some(), true)
    })
    .await;
    let db = platform::Db::connect(&dbs.url_for("user-svc").await, 1, Duration::from_secs(5)).await.expect("db");
    let readiness = platform::http::readiness(&db, &producer, &[]).await;
    assert!(!readiness.ready);
    let producer_check = readiness.checks.iter().find(|(name, _)| *name == "producer").map(|(_, r)| r.clone());
    assert!(
        matches!(&producer_check, Some(Err(why)) if why.contains("ClusterAuthorization")),
        "/readyz names the failure: {producer_check:?}"
    );
    let service_ready = reqwest::get(format!("{http}/readyz")).await.map(|r| r.status().as_u16());

    let ended = tokio::time::timeout(SAGA, running).await.expect("the service stops by itself");
    let error = ended.expect("no panic").expect_err("the service ends with an error");
    assert!(error.to_string().contains("failed fatally"), "{error}");
    let metrics = platform::http::prometheus().render();
    assert!(metric(&metrics, "kafka_producer_fatal_errors_total", "user-svc") >= 1.0, "{metrics}");
    println!("user-svc stopped: {error}; its /readyz while stopping: {service_ready:?}");
    db.close().await;
    dbs.drop_all().await;
}

/// The value of a series for `service` in a Prometheus exposition.
fn metric(exposition: &str, name: &str, service: &str) -> f64 {
    let label = format!("service=\"{service}\"");
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `orders` charges, each approved under one charge id. The gateway may have seen
/// a key more than once (a call that timed out on a loaded machine is repeated
/// with the same idempotency key, by design); it never charged twice.
fn assert_charged_once(ledger: &Ledger, orders: usize) {
    assert_eq!(ledger.charges.len(), orders, "{:?}", ledger.charges);
    let ids: std::collections::HashSet<_> = ledger.charges.values().filter_map(|c| c.id.as_deref()).collect();
    assert!(ledger.charges.values().all(|c| c.approved), "each approved: {:?}", ledger.charges);
    assert_eq!(ids.len(), orders, "one charge id per order: {:?}", ledger.charges);
    let calls: u64 = ledger.charges.values().map(|c| c.calls).sum();
    println!("gateway calls for {orders} charges: {calls}");
}

async fn gateway_outage_defers_then_confirms_each_order_once(target: Target) {
    let mut stack = Stack::start(target).await;
    setup(&mut stack).await;
    stack.set_gateway(Mode::Outage, 0).await;
    let orders: Vec<String> = (0..6).map(|i| format!("outage-{i}")).collect();
    for order in &orders {
        stack.place_order(order, "ann", &[("SKU-PEN", 2)], "tok_visa").await;
    }
    for order in &orders {
        stack.wait_order(order, "PAYMENT_DEFERRED", SAGA).await;
    }
    // The breaker opened on the failures; the payments wait in the durable queue.
    let (_, metrics) = stack.http_get("payment-svc", "/metrics").await;
    assert_eq!(metric(&metrics, "circuit_breaker_state", "payment-svc"), 2.0, "breaker open");
    assert_eq!(metric(&metrics, "payment_queue_depth", "payment-svc"), 6.0);
    let notified = stack.db("notification-svc").await;
    eventually("customers told about the delay", SAGA, || {
        let db = notified.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE kind = 'delayed'")
                .fetch_one(db.pool())
                .await
                .map_err(|e| e.to_string())?;
            expect_eq("delay notifications", n, 6)
        }
    })
    .await;

    let recovered = Instant::now();
    stack.set_gateway(Mode::Healthy, 0).await;
    for order in &orders {
        stack.wait_order(order, "CONFIRMED", SAGA).await;
    }
    println!(
        "outage recovery: all deferred orders confirmed {:?} after the gateway came back ({target:?})",
        recovered.elapsed()
    );
    let ledger = stack.ledger().await;
    assert_charged_once(&ledger, 6);
    stack.wait_outboxes_drained().await;
    stack.wait_stock("SKU-PEN", (88, 0, 12, 100), SAGA).await;
    stack.stop().await;
}

async fn outage_past_the_deadline_is_compensated(target: Target) {
    let mut stack = Stack::start_with(target, |c| c.payment_deadline = Duration::from_secs(2)).await;
    setup(&mut stack).await;
    stack.set_gateway(Mode::Outage, 0).await;
    stack.place_order("order-late", "ann", &[("SKU-PEN", 3)], "tok_visa").await;
    stack.wait_order("order-late", "CANCELLED", SAGA).await;

    let reason = stack.scalar_text("order-svc", "SELECT reason FROM orders WHERE order_id = $1", "order-late").await;
    assert!(reason.unwrap_or_default().contains("deadline"));
    let payment =
        stack.scalar_text("payment-svc", "SELECT status FROM payments WHERE order_id = $1", "order-late").await;
    assert_eq!(payment.as_deref(), Some("DECLINED"));
    assert_eq!(stack.stock("SKU-PEN").await, Some((100, 0, 0, 100)), "stock released");
    assert!(stack.ledger().await.charges.is_empty(), "never charged");
    let kinds = stack.db("notification-svc").await;
    eventually("delayed, then cancelled", SAGA, || {
        let db = kinds.clone();
        async move {
            let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM notifications ORDER BY kind")
                .fetch_all(db.pool())
                .await
                .map_err(|e| e.to_string())?;
            expect_eq("notifications", kinds, vec!["cancelled".to_owned(), "delayed".to_owned()])
        }
    })
    .await;
    stack.stop().await;
}

async fn slow_gateway_times_out_and_is_charged_once(target: Target) {
    let mut stack = Stack::start_with(target, |c| c.gateway_timeout = Duration::from_millis(300)).await;
    setup(&mut stack).await;
    // The gateway takes the charge but answers after our timeout: the call is
    // ambiguous, so it is repeated later with the same idempotency key.
    stack.set_gateway(Mode::Slow, 800).await;
    stack.place_order("order-slow", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    stack.wait_order("order-slow", "PAYMENT_DEFERRED", SAGA).await;
    stack.set_gateway(Mode::Healthy, 0).await;
    stack.wait_order("order-slow", "CONFIRMED", SAGA).await;
    let ledger = stack.ledger().await;
    let charge = ledger.charges.get("order-slow").expect("charged");
    assert!(charge.approved);
    assert!(charge.calls >= 2, "the gateway saw the repeat: {}", charge.calls);
    assert_eq!(ledger.charges.len(), 1, "but money moved once");
    stack.stop().await;
}

async fn payment_queue_survives_a_restart(target: Target) {
    let mut stack = Stack::start(target).await;
    setup(&mut stack).await;
    stack.set_gateway(Mode::Outage, 0).await;
    for i in 0..3 {
        stack.place_order(&format!("queued-{i}"), "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    }
    for i in 0..3 {
        stack.wait_order(&format!("queued-{i}"), "PAYMENT_DEFERRED", SAGA).await;
    }
    stack.stop_service("payment-svc").await;
    let queued = stack.scalar_i64("payment-svc", "SELECT COUNT(*) FROM payments WHERE status = $1", "DEFERRED").await;
    assert_eq!(queued, Some(3), "the queue is in the database while the service is down");
    stack.set_gateway(Mode::Healthy, 0).await;
    stack.start_service("payment-svc").await;
    for i in 0..3 {
        stack.wait_order(&format!("queued-{i}"), "CONFIRMED", SAGA).await;
    }
    let ledger = stack.ledger().await;
    assert_charged_once(&ledger, 3);
    stack.stop().await;
}

async fn redelivered_events_change_nothing(target: Target) {
    let mut stack = Stack::start(target).await;
    setup(&mut stack).await;
    stack.place_order("order-dup", "ann", &[("SKU-PEN", 5)], "tok_visa").await;
    stack.wait_order("order-dup", "CONFIRMED", SAGA).await;
    stack.publish(events::CancelOrder { order_id: "order-dup".into(), reason: "test".into() }).await;
    stack.wait_order("order-dup", "CANCELLED", SAGA).await;
    stack.wait_outboxes_drained().await;
    let db = stack.db("notification-svc").await;
    eventually("confirmed and cancelled notifications", SAGA, || {
        let db = db.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE order_id = 'order-dup'")
                .fetch_one(db.pool())
                .await
                .map_err(|e| e.to_string())?;
            expect_eq("notifications", n, 2)
        }
    })
    .await;
    let notified = notification_count(&mut stack).await;

    // Every record of the saga, published again byte for byte (same event ids),
    // plus a PlaceOrder with a new event id for the same order.
    let mut republished = 0;
    for topic in events::topics::ALL {
        for record in stack.read_topic(topic).await {
            let Ok(envelope) = Envelope::from_json(record.payload().unwrap_or_default()) else { continue };
            if envelope.correlation_id != "order-dup" {
                continue;
            }
            let key = String::from_utf8_lossy(record.key().unwrap_or_default()).into_owned();
            let value = record.payload().unwrap_or_default().to_vec();
            stack.publish_raw(topic, &key, &value, HeaderList::from_kafka(record.headers())).await;
            republished += 1;
        }
    }
    assert!(republished >= 10, "the saga's records were found: {republished}");
    stack.place_order("order-dup", "ann", &[("SKU-PEN", 5)], "tok_visa").await;
    // A marker order behind the duplicates shows they have all been consumed.
    stack.place_order("order-marker", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    stack.wait_order("order-marker", "CONFIRMED", SAGA).await;
    stack.wait_outboxes_drained().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ledger = stack.ledger().await;
    assert_eq!(ledger.charges.get("order-dup").map(|c| c.calls), Some(1), "charged once");
    assert_eq!(ledger.refunds.get("refund:order-dup").map(|c| c.calls), Some(1), "refunded once");
    // Only the marker's unit is sold.
    stack.wait_stock("SKU-PEN", (99, 0, 1, 100), SAGA).await;
    assert_eq!(stack.order_status("order-dup").await.as_deref(), Some("CANCELLED"));
    let after = notification_count(&mut stack).await;
    assert_eq!(after, notified + 1, "only the marker order notified");
    stack.stop().await;
}

async fn notification_count(stack: &mut Stack) -> i64 {
    let db = stack.db("notification-svc").await;
    sqlx::query_scalar("SELECT COUNT(*) FROM notifications").fetch_one(db.pool()).await.expect("count")
}

async fn readiness_follows_the_broker_and_metrics_move(target: Target) {
    // Tansu's sqlite engine keeps topics across the broker restart below (with
    // the memory engine they vanish, which librdkafka 2.12 handles badly).
    let options = saga_tests::Options { broker_storage: saga_tests::BrokerStorage::Durable, ..Default::default() };
    let mut stack = Stack::start_with_options(target, options).await;
    setup(&mut stack).await;
    for service in saga_tests::stack::SERVICES {
        assert_eq!(stack.http_get(service, "/healthz").await.0, 200);
        let (status, body) = stack.http_get(service, "/readyz").await;
        assert_eq!(status, 200, "{service}: {body}");
    }
    stack.place_order("order-metrics", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    stack.wait_order("order-metrics", "CONFIRMED", SAGA).await;
    let (_, metrics) = stack.http_get("order-svc", "/metrics").await;
    assert!(metric(&metrics, "messages_consumed_total", "order-svc") >= 4.0, "{metrics}");
    assert!(metric(&metrics, "messages_produced_total", "order-svc") >= 2.0);
    assert!(metrics.contains("handler_duration_seconds_bucket"), "latency histogram exported");
    assert!(metrics.contains("orders_by_status{service=\"order-svc\",status=\"CONFIRMED\"} 1"), "{metrics}");
    assert!(metrics.contains("outbox_backlog{service=\"order-svc\"}"));

    stack.broker.kill();
    for service in ["order-svc", "payment-svc"] {
        let (status, body) = stack.http_get(service, "/readyz").await;
        assert_eq!(status, 503, "{service} unready without a broker: {body}");
        assert!(body.contains("\"broker\"") && body.contains("\"database\":\"ok\""), "{body}");
    }
    stack.broker.restart().await;
    eventually("ready again", SAGA, || {
        let stack = &stack;
        async move {
            let (status, body) = stack.http_get("order-svc", "/readyz").await;
            expect_eq(&body, status, 200)
        }
    })
    .await;
    stack.stop().await;
}

/// Runs the real CLI code path (`shopctl ...`) against the stack's broker.
async fn shopctl(stack: &Stack, args: &[&str]) {
    use clap::Parser;
    let mut argv = vec!["shopctl", "--brokers", stack.broker.addr.as_str()];
    argv.extend_from_slice(args);
    let cli = shopctl::cli::Cli::try_parse_from(&argv).expect("valid shopctl arguments");
    shopctl::run(cli).await.expect("shopctl succeeds");
}

async fn replay_after_the_fix_completes_the_order_and_twice_is_a_no_op(target: Target) {
    let mut stack = Stack::start(target).await;
    setup(&mut stack).await;
    // An operator mistake: inventory-svc's reservations table is renamed away.
    // OrderPlaced fails permanently there and is dead-lettered; the order waits.
    let inventory = stack.db("inventory-svc").await;
    inventory.pool().execute("ALTER TABLE reservations RENAME TO reservations_away").await.expect("rename");
    stack.place_order("order-replay", "ann", &[("SKU-PEN", 4)], "tok_visa").await;
    eventually("OrderPlaced dead-lettered by inventory-svc", SAGA, || {
        let stack = &stack;
        async move { expect_eq("dead letters", dead_letters(stack, "inventory-svc.dlq").await.len(), 1) }
    })
    .await;
    let letters = dead_letters(&stack, "inventory-svc.dlq").await;
    let info = DeadLetterInfo::from_headers(&letters[0].0).expect("error headers");
    assert_eq!((info.original_topic.as_str(), info.error_class.as_str()), ("order.events", "permanent"));
    assert_eq!(stack.order_status("order-replay").await.as_deref(), Some("PENDING"));

    // The fix, then the replay: the order completes.
    inventory.pool().execute("ALTER TABLE reservations_away RENAME TO reservations").await.expect("rename back");
    shopctl(&stack, &["dlq", "replay", "inventory-svc"]).await;
    stack.wait_order("order-replay", "CONFIRMED", SAGA).await;
    stack.wait_stock("SKU-PEN", (96, 0, 4, 100), SAGA).await;

    // The same replay again changes nothing: the inbox knows the event.
    shopctl(&stack, &["dlq", "replay", "inventory-svc"]).await;
    stack.place_order("order-marker", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    stack.wait_order("order-marker", "CONFIRMED", SAGA).await;
    stack.wait_outboxes_drained().await;
    // The marker's unit sold (inventory-svc commits it after the confirmation),
    // nothing else moved.
    stack.wait_stock("SKU-PEN", (95, 0, 5, 100), SAGA).await;
    let ledger = stack.ledger().await;
    assert_eq!(ledger.charges.get("order-replay").map(|c| c.calls), Some(1), "charged once");
    let replays = stack.read_topic("inventory-svc.replay").await;
    assert_eq!(replays.len(), 2, "both replays reached inventory-svc's replay topic");
    for topic in ["order-svc.replay", "payment-svc.replay", "notification-svc.replay"] {
        assert!(stack.read_topic(topic).await.is_empty(), "{topic}: replays reach only the failing service");
    }
    let headers = HeaderList::from_kafka(replays[0].headers());
    assert_eq!(headers.get(platform::dead_letter::REPLAY_ORIGINAL_TOPIC), Some("order.events"));
    assert!(headers.get(platform::dead_letter::REPLAYED_FROM).is_some_and(|f| f.starts_with("inventory-svc.dlq/")));
    assert_eq!(headers.get("event_type"), Some("OrderPlaced"), "original headers kept");
    stack.stop().await;
}

/// Stall detection, against a membership Tansu never repairs: a static member
/// that vanished without leaving still holds the partitions of user.commands,
/// so commands on them wait and none reach user-svc. The consumer loop must
/// notice, say which partitions wait, count it and turn /readyz unready (a
/// wedged consumer is loud, not silent; nothing in the client can cure this one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_a_consumer_that_receives_nothing_while_records_wait_is_reported_stalled() {
    let options = saga_tests::stack::Options {
        platform: |config| config.consumer_stall_after = Duration::from_secs(2),
        ..Default::default()
    };
    let mut stack = Stack::start_with_options(Target::new(BrokerKind::Tansu, Backend::Sqlite), options).await;
    let vanished_at = vanish_static_member_of_user_svc(&mut stack).await;
    register_wedged_users(&stack, 12).await;
    eventually("the stall is reported", SAGA, || async {
        let (status, body) = stack.http_get("user-svc", "/readyz").await;
        let reported = status == 503 && body.contains("records wait on user.commands/");
        expect_eq(&format!("/readyz {status} {body}"), reported, true)
    })
    .await;
    // Metrics are process-wide here, shared with other tests' user-svc: at least.
    let (_, metrics) = stack.http_get("user-svc", "/metrics").await;
    assert!(metric(&metrics, "consumer_stalls_total", "user-svc") >= 1.0, "{metrics}");
    println!("stall reported {:?} after the ghost vanished", vanished_at.elapsed());
    stack.stop().await;
}

/// Static membership on Apache Kafka, where it has its real semantics: a static
/// member that vanishes sends no LeaveGroup and keeps its partitions until its
/// session times out; then the group rebalances and user-svc gets them, so every
/// command waiting on them is processed. Meanwhile user-svc holds nothing while
/// records wait: it reports itself stalled (/readyz unready), and ready again
/// once they flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_a_vanished_static_member_is_expired_and_its_partitions_flow_again() {
    let options = saga_tests::stack::Options {
        platform: |config| config.consumer_stall_after = Duration::from_secs(2),
        ..Default::default()
    };
    let mut stack = Stack::start_with_options(Target::new(BrokerKind::Kafka, Backend::Sqlite), options).await;
    let vanished_at = vanish_static_member_of_user_svc(&mut stack).await;
    register_wedged_users(&stack, 12).await;
    let users = stack.db("user-svc").await;
    let reported_stalled = std::sync::atomic::AtomicBool::new(false);
    eventually("every registration processed", SAGA, || {
        let (stack, users, reported) = (&stack, &users, &reported_stalled);
        async move {
            let (status, body) = stack.http_get("user-svc", "/readyz").await;
            if status == 503 && body.contains("records wait on user.commands/") {
                reported.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE user_id LIKE 'wedged-%'")
                .fetch_one(users.pool())
                .await
                .map_err(|e| e.to_string())?;
            expect_eq("registered users", n, 12)
        }
    })
    .await;
    assert!(reported_stalled.into_inner(), "user-svc was unready while the vanished member held its partitions");
    eventually("ready again", SAGA, || async {
        let (status, body) = stack.http_get("user-svc", "/readyz").await;
        expect_eq(&body, status, 200)
    })
    .await;
    let waited = vanished_at.elapsed();
    // The session timeout is 10 s: anything quicker means the member was not held.
    assert!(waited >= Duration::from_secs(8), "partitions freed after {waited:?}, before the session could expire");
    println!("partitions of the vanished static member flowed again {waited:?} after it vanished");
    // Metrics are process-wide here, shared with other tests' user-svc: at least.
    let (_, metrics) = stack.http_get("user-svc", "/metrics").await;
    assert!(metric(&metrics, "consumer_stalls_total", "user-svc") >= 1.0, "{metrics}");
    stack.stop().await;
}

/// Stops user-svc, lets a static member of its group take partitions of
/// user.commands and vanish without leaving, and starts user-svc again. Returns
/// when the member vanished.
async fn vanish_static_member_of_user_svc(stack: &mut Stack) -> Instant {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    stack.stop_service("user-svc").await;
    let fetch_wait = stack.broker.kind.fetch_wait_max();
    let ghost: BaseConsumer =
        platform::kafka::consumer_config(&stack.broker.addr, "user-svc", Some("ghost-1"), fetch_wait)
            .set("session.timeout.ms", "10000")
            .create()
            .expect("ghost consumer");
    ghost.subscribe(&[events::topics::USER_COMMANDS]).expect("subscribe");
    let joined = Instant::now();
    while ghost.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(joined.elapsed() < SAGA, "the ghost never got partitions");
        let _ = ghost.poll(Duration::from_millis(100));
    }
    drop(ghost); // a static member leaves no LeaveGroup behind
    let vanished = Instant::now();
    stack.start_service("user-svc").await;
    vanished
}

async fn register_wedged_users(stack: &Stack, count: usize) {
    for i in 0..count {
        let user_id = format!("wedged-{i}");
        let email = format!("{user_id}@example.com");
        stack.publish(events::RegisterUser { user_id, email, name: "Wedged".into() }).await;
    }
}
