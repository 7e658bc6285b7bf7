//! Several processes of a service. On PostgreSQL, replicas share the work (on
//! Kafka with SASL_SSL and ACLs, as staging runs them): one
//! relay at a time publishes the outbox, and payments are claimed, so each row is
//! published once and each attempt reaches the gateway once, kills included.
//! SQLite is single-replica and a second process says so. And a payment worker
//! that dies during its call leaves a charge whose fate is unknown: it is
//! settled by key before it can be stopped.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use events::{CancelOrder, CreateProduct, OrderLine, PlaceOrder, RegisterUser};
use payment_svc::simulator::Mode;
use platform::Db;
use saga_tests::faults::{self, gateway_ledger, publish, set_gateway, FaultPlan, Faults};
use saga_tests::processes::{ProcessStack, Profile};
use saga_tests::{eventually, expect_eq, Backend, BrokerKind, Target};

fn seed() -> u64 {
    std::env::var("FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..))
}

/// Three processes of every service on one PostgreSQL database each, on Kafka
/// with SASL_SSL and ACLs (each its service's principal), under load: fault-free at first (each event on its topic once, one gateway call
/// per charge), then replicas SIGKILLed and restarted; the fault suite's
/// invariants hold throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_three_replicas_of_every_service_on_postgres() {
    let plan = FaultPlan {
        faults: Faults::ReplicaKills,
        replicas: 3,
        ..FaultPlan::short(seed(), Target::new(BrokerKind::Kafka, Backend::Postgres))
    };
    let report = faults::run(&plan).await;
    assert!(!report.failed(), "invariants violated; repeat with FAULT_SEED={}", plan.seed);
    assert!(report.faults.get("replica SIGKILL + restart").is_some_and(|&n| n >= 5), "{:?}", report.timeline);
    let checked =
        |name: &str| report.invariants.iter().find(|(n, _, _)| n == name).map_or(0, |(_, checked, _)| *checked);
    assert!(checked("fault-free: each event published once") >= 500, "{:?}", report.invariants);
    assert!(checked("fault-free: one gateway call per first-attempt charge") >= 50, "{:?}", report.invariants);
}

/// A second process on a service's SQLite file refuses to start and says why,
/// while the first keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_a_second_replica_on_sqlite_refuses_to_start() {
    let mut stack = ProcessStack::start(Target::new(BrokerKind::Kafka, Backend::Sqlite), Profile::Debug, vec![]).await;
    let mut second = Command::new(stack.bin("user-svc"))
        .env("KAFKA_BROKERS", &stack.broker.addr)
        .env("DATABASE_URL", stack.dbs.url_for("user-svc").await)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run a second user-svc");
    let started = Instant::now();
    while second.try_wait().expect("second user-svc").is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second user-svc is running on the first one's SQLite file");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = second.wait_with_output().expect("second user-svc");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second replica started on SQLite: {stderr}");
    let pid = stack.pid("user-svc").expect("the first user-svc");
    assert!(
        stderr.contains(&format!("another process (pid {pid}) already runs on")) && stderr.contains("single-replica"),
        "{stderr}"
    );
    assert!(stack.alive("user-svc"), "the first user-svc kept running");
    stack.stop().await;
}

/// payment-svc is SIGKILLed while its charge call is at the gateway, which
/// took the money; the customer cancels meanwhile. The restarted worker cannot
/// know whether that call charged, so it looks the charge up by key and
/// refunds it, instead of stopping a payment that went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_a_charge_whose_worker_died_mid_call_is_settled_before_it_is_stopped() {
    let env =
        vec![("GATEWAY_TIMEOUT".to_owned(), "3s".to_owned()), ("PAYMENT_CLAIM_LEASE".to_owned(), "13s".to_owned())];
    let mut stack = ProcessStack::start(Target::new(BrokerKind::Kafka, Backend::Sqlite), Profile::Debug, env).await;
    let producer = platform::kafka::producer(&stack.broker.addr).expect("producer");
    let http = reqwest::Client::new();
    let user = RegisterUser { user_id: "u1".into(), email: "u1@example.com".into(), name: "U".into() };
    assert!(publish(&producer, user).await);
    let product = CreateProduct { sku: "SKU-1".into(), name: "One".into(), price_minor: 700, initial_stock: 5 };
    assert!(publish(&producer, product).await);
    let orders = Db::connect(&stack.dbs.url_for("order-svc").await, 1, Duration::from_secs(5)).await.expect("db");
    eventually("the order's projections", Duration::from_secs(30), || async {
        let known: i64 = sqlx::query_scalar("SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM products)")
            .fetch_one(orders.pool())
            .await
            .map_err(|e| e.to_string())?;
        expect_eq("users and products known", known, 2)
    })
    .await;

    // The gateway does the work at once and answers after 2 s.
    set_gateway(&http, &stack.gateway_url, Mode::Slow, 2000).await;
    let lines = vec![OrderLine { sku: "SKU-1".into(), quantity: 1 }];
    let place = PlaceOrder { order_id: "o1".into(), user_id: "u1".into(), lines, payment_token: "tok_visa".into() };
    assert!(publish(&producer, place).await);
    let gateway_url = stack.gateway_url.clone();
    let ledger = || gateway_ledger(&http, &gateway_url);
    eventually("the charge taken at the gateway", Duration::from_secs(30), || async {
        let ledger = ledger().await;
        expect_eq("charge approved", ledger.charges.get("o1").map(|c| c.approved), Some(true))
    })
    .await;
    stack.kill("payment-svc");
    let cancel = CancelOrder { order_id: "o1".into(), reason: "changed my mind".into() };
    assert!(publish(&producer, cancel).await);
    set_gateway(&http, &stack.gateway_url, Mode::Healthy, 0).await;
    stack.start_service("payment-svc").await;

    let order = |sql: &'static str| {
        let pool = orders.pool().clone();
        async move { sqlx::query_as::<_, (String, i64)>(sql).fetch_one(&pool).await.map_err(|e| e.to_string()) }
    };
    eventually("the order cancelled and refunded", Duration::from_secs(60), || async {
        let (status, refunded) = order("SELECT status, refunded FROM orders WHERE order_id = 'o1'").await?;
        expect_eq("status, refunded", (status.as_str(), refunded), ("CANCELLED", 1))
    })
    .await;
    let ledger = ledger().await;
    let refund = ledger.refunds.get("refund:o1").expect("a refund of the charge");
    assert!(refund.approved && refund.amount_minor == 700, "{refund:?}");
    stack.stop().await;
}
