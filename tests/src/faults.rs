//! Fault injection with invariants. Runs the real binaries as processes (see
//! [`crate::processes`]) against a durable broker (Apache Kafka, or Tansu on its
//! sqlite engine), drives a mixed load of orders, and meanwhile injects faults
//! from a seeded schedule: SIGKILL and restart of services, broker SIGKILL and
//! restart, gateway outages and slow periods, re-published (duplicate) records,
//! crashes between a database commit and the offset commit, and poison messages
//! on every input topic. Or, on a three-node Kafka cluster, the failover of the
//! node leading the saga's partitions, under load. When the
//! system has quiesced, [`check`] reads every service's own database (and the
//! dead-letter topics, and the gateway's ledger) and verifies the invariants.
//!
//! The same seed gives the same schedule of decisions (timing still varies).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::{CancelOrder, CreateProduct, Envelope, Message, OrderLine, PlaceOrder, RegisterUser, RestockProduct};
use payment_svc::simulator::{Control, Ledger, Mode};
use platform::kafka::HeaderList;
use platform::Db;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message as _;
use sqlx::Row;

use crate::processes::{build_binaries, ProcessStack, Profile};
use crate::stack::SERVICES;
use crate::{Backend, Broker, BrokerKind, Databases, Target};

/// Which consumer groups read each input topic, hence which dead-letter topics
/// a poison message on it must reach.
pub const SUBSCRIBERS: &[(&str, &[&str])] = &[
    ("user.commands", &["user-svc"]),
    ("product.commands", &["product-svc"]),
    ("order.commands", &["order-svc"]),
    ("user.events", &["order-svc", "notification-svc"]),
    ("product.events", &["order-svc", "inventory-svc"]),
    ("order.events", &["inventory-svc", "payment-svc", "notification-svc"]),
    ("inventory.events", &["order-svc", "payment-svc"]),
    ("payment.events", &["order-svc", "inventory-svc", "notification-svc"]),
];

/// What goes wrong during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    /// One fault every 1.5-4 s from the whole catalogue, on one broker node.
    Mixed,
    /// A three-node Kafka cluster (replication factor 3, min ISR 2): a quarter
    /// into the load, SIGKILL the node leading order.events/0, restart it with
    /// its data halfway through. Nothing else goes wrong.
    BrokerFailover,
    /// `FaultPlan::replicas` processes of every service on one PostgreSQL
    /// database each, on Kafka with SASL_SSL and ACLs. The first half of the load runs without faults, and there
    /// every outbox row must reach its topic once and the gateway get one call
    /// per payment attempt; then a random replica of a random service is
    /// SIGKILLed every 1.5-4 s and started again 0.2-1.5 s later.
    ReplicaKills,
}

#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub seed: u64,
    pub target: Target,
    pub faults: Faults,
    /// How long orders and faults are injected.
    pub duration: Duration,
    /// Orders per second offered.
    pub rate: f64,
    /// Scarce-stock case: every order asks one unit of one of 3 SKUs with 100
    /// units each, from 50 users, all declared confirmable.
    pub scarce: Option<usize>,
    pub profile: Profile,
    /// Processes per service (more than one on PostgreSQL only).
    pub replicas: usize,
}

impl FaultPlan {
    pub fn short(seed: u64, target: Target) -> FaultPlan {
        FaultPlan {
            seed,
            target,
            faults: Faults::Mixed,
            duration: Duration::from_secs(60),
            rate: 8.0,
            scarce: None,
            profile: Profile::Debug,
            replicas: 1,
        }
    }
}

/// What happened during a run.
#[derive(Debug, Default)]
pub struct Report {
    pub faults: BTreeMap<&'static str, usize>,
    /// Each fault as it happened: seconds since the load started, what, on what.
    pub timeline: Vec<String>,
    pub orders: BTreeMap<String, usize>,
    pub invariants: Vec<(String, usize, Vec<String>)>,
    /// When the first fault of a plan that starts fault-free struck (ms since
    /// the epoch, the envelopes' clock).
    pub faults_from_ms: Option<i64>,
}

impl Report {
    pub fn print(&self, plan: &FaultPlan) {
        println!(
            "fault run: seed {} broker {} backend {:?} faults {:?} duration {:?}",
            plan.seed,
            plan.target.broker.name(),
            plan.target.backend,
            plan.faults,
            plan.duration
        );
        println!("  faults injected: {:?}", self.faults);
        println!("  fault timeline: {}", self.timeline.join(", "));
        println!("  orders by final status: {:?}", self.orders);
        for (name, checked, offenders) in &self.invariants {
            let verdict = if offenders.is_empty() { "ok".to_owned() } else { format!("FAILED: {:?}", offenders) };
            println!("  invariant {name}: {checked} checked, {verdict}");
        }
    }

    pub fn failed(&self) -> bool {
        self.invariants.iter().any(|(_, _, offenders)| !offenders.is_empty())
    }
}

/// What the load generator sent (acknowledged by the broker).
#[derive(Debug, Default)]
pub struct Sent {
    orders: BTreeMap<String, Vec<(String, i64)>>,
    cancels: BTreeSet<String>,
    initial: BTreeMap<String, i64>,
    restocked: BTreeMap<String, i64>,
    poison: Vec<(String, String)>,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &[u8], headers: &HeaderList) -> bool {
    let record = FutureRecord::to(topic).key(key).payload(value).headers(headers.to_kafka());
    producer.send(record, Timeout::After(Duration::from_secs(60))).await.is_ok()
}

/// Publishes `message` as a client would (its topic, its key, the headers);
/// whether the broker acknowledged it.
pub async fn publish(producer: &FutureProducer, message: impl Into<Message>) -> bool {
    let envelope = Envelope::new(message, "fault-suite");
    let headers = HeaderList::for_envelope(&envelope, None);
    send(producer, envelope.topic(), envelope.key(), &envelope.to_json(), &headers).await
}

/// Runs the whole plan and returns the report (invariants included).
pub async fn run(plan: &FaultPlan) -> Report {
    let env = vec![
        ("PAYMENT_DEADLINE".to_owned(), "120s".to_owned()),
        ("GATEWAY_TIMEOUT".to_owned(), "500ms".to_owned()),
        ("RETRY_MAX_ELAPSED".to_owned(), "60s".to_owned()),
        // A consumer wedged by the faults is reported within the settle time
        // (the fault logs then say "consumer stalled").
        ("CONSUMER_STALL_AFTER".to_owned(), "15s".to_owned()),
    ];
    let mut stack = match plan.faults {
        Faults::Mixed => ProcessStack::start(plan.target, plan.profile, env).await,
        Faults::BrokerFailover => {
            assert_eq!(plan.target.broker, BrokerKind::Kafka, "broker failover needs a Kafka cluster");
            let dbs = Databases::new(plan.target.backend);
            let broker = Broker::kafka_cluster(3, dbs.dir()).await;
            let mut env = env;
            env.push(("TOPIC_REPLICATION".to_owned(), "3".to_owned()));
            ProcessStack::start_on(broker, dbs, build_binaries(plan.profile), env).await
        }
        Faults::ReplicaKills => {
            assert_eq!(plan.target.backend, Backend::Postgres, "replicas share a PostgreSQL database");
            assert_eq!(plan.target.broker, BrokerKind::Kafka, "replicas run as staging does: Kafka with SASL_SSL");
            let dbs = Databases::new(plan.target.backend);
            // As in staging: each replica authenticates as its service's
            // principal, the ACLs enforced, the topics made by the operator.
            let broker = Broker::start_secure(dbs.dir()).await;
            tokio::task::block_in_place(|| broker.apply_acls());
            let topics = events::access::all_topics();
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            platform::kafka::ensure_topics(broker.connection(), &topics, 3, 1).await.expect("topics, as the operator");
            let mut env = env;
            // Relays looking often make two of them reading the same rows likely,
            // were the outbox not held by one at a time.
            env.push(("OUTBOX_POLL_INTERVAL".to_owned(), "20ms".to_owned()));
            ProcessStack::start_replicated(broker, dbs, build_binaries(plan.profile), env, plan.replicas).await
        }
    };
    let producer = platform::kafka::producer(stack.broker.connection()).expect("producer");
    let http = reqwest::Client::new();
    let sent: Shared<Sent> = Arc::default();
    let mut rng = fastrand::Rng::with_seed(plan.seed);

    // Catalogue and customers.
    let (users, skus): (Vec<String>, Vec<(String, i64)>) = match plan.scarce {
        Some(_) => ((0..50).map(|i| format!("u{i}")).collect(), (0..3).map(|i| (format!("SCARCE-{i}"), 100)).collect()),
        None => ((0..10).map(|i| format!("u{i}")).collect(), (0..5).map(|i| (format!("SKU-{i}"), 40)).collect()),
    };
    for user in &users {
        let ok = publish(
            &producer,
            RegisterUser { user_id: user.clone(), email: format!("{user}@example.com"), name: user.clone() },
        )
        .await;
        assert!(ok, "registering {user}");
    }
    for (sku, stock) in &skus {
        let created = CreateProduct { sku: sku.clone(), name: sku.clone(), price_minor: 500, initial_stock: *stock };
        assert!(publish(&producer, created).await, "creating {sku}");
        lock(&sent).initial.insert(sku.clone(), *stock);
    }
    wait_projections(&stack, users.len() as i64, skus.len() as i64).await;

    let mut report = Report::default();
    let deadline = Instant::now() + plan.duration;
    let load = generate_load(plan, &producer, &sent, &users, &skus, rng.u64(..), deadline);
    match plan.faults {
        Faults::Mixed => {
            let faults = inject_faults(&mut stack, &producer, &http, &sent, &mut rng, deadline, &mut report);
            tokio::join!(load, faults);
        }
        Faults::BrokerFailover => {
            tokio::join!(load, fail_over(&mut stack, plan.duration, &mut report));
        }
        Faults::ReplicaKills => {
            // Calls that take a while give a second worker time to take the
            // same payment, were it not claimed.
            set_gateway(&http, &stack.gateway_url, Mode::Slow, 300).await;
            tokio::join!(load, kill_replicas(&mut stack, &mut rng, plan.duration, &mut report));
        }
    }

    // Quiesce: gateway healthy, everyone running, then wait for the saga to settle.
    set_gateway(&http, &stack.gateway_url, Mode::Healthy, 0).await;
    for service in SERVICES {
        for replica in 0..stack.replicas {
            if !stack.replica_alive(service, replica) {
                // Nothing in the schedule leaves a service down: it exited by itself.
                report.timeline.push(format!("{service} replica {} found exited at quiesce; restarted", replica + 1));
                stack.start_replica(service, replica, &[]).await;
            }
        }
    }
    let sent = std::mem::take(&mut *lock(&sent));
    let settle = Instant::now() + Duration::from_secs(180);
    loop {
        let (invariants, orders) = check(&stack, &http, &sent).await;
        let done = invariants.iter().all(|(_, _, offenders)| offenders.is_empty());
        if done || Instant::now() > settle {
            report.invariants = invariants;
            report.orders = orders;
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Some(faults_from) = report.faults_from_ms {
        let (invariants, summary) = once_before(&stack, &http, faults_from - CUT_MARGIN_MS).await;
        report.invariants.extend(invariants);
        report.timeline.push(summary);
    }
    // Each service log, read once: the stalls its consumer reported always;
    // on failure, a copy kept and the tail printed after the verdict (CI keeps
    // only the head and the end of a test's output).
    let kept =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/fault-logs/seed-{}", plan.seed));
    if report.failed() {
        let _ = std::fs::create_dir_all(&kept);
    }
    let mut tails = Vec::new();
    for entry in std::fs::read_dir(stack.log_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let stalls = text.lines().filter(|l| l.contains("consumer stalled")).count();
        if stalls > 0 {
            report.timeline.push(format!("{name} consumer stalled x{stalls}"));
        }
        if report.failed() {
            let _ = std::fs::write(kept.join(&name), &bytes);
            tails.push(log_tail(&name, &text));
        }
    }
    report.print(plan);
    if report.failed() {
        tails.iter().for_each(|tail| print!("{tail}"));
        println!("service logs kept in {}", kept.display());
        println!("{}", stack.broker.log_tail(15));
    }
    stack.stop().await;
    report
}

/// The last warnings and errors of a service log: where CI keeps only the test's
/// output, this is what tells a failure's story.
fn log_tail(name: &str, text: &str) -> String {
    let notable: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["WARN", "ERROR", "consuming", "partitions assigned", "partitions revoked"].iter().any(|k| l.contains(k))
        })
        .collect();
    let mut tail = format!("--- {name} ({} lines, last warnings, errors and rebalances):\n", text.lines().count());
    for line in &notable[notable.len().saturating_sub(20)..] {
        tail += &format!("    {}\n", line.chars().take(300).collect::<String>());
    }
    tail
}

async fn wait_projections(stack: &ProcessStack, users: i64, skus: i64) {
    let order_db = connect(stack, "order-svc").await;
    let inventory_db = connect(stack, "inventory-svc").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let u: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(order_db.pool()).await.unwrap_or(0);
        let p: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products").fetch_one(order_db.pool()).await.unwrap_or(0);
        let s: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stock").fetch_one(inventory_db.pool()).await.unwrap_or(0);
        if u == users && p == skus && s == skus {
            return;
        }
        assert!(Instant::now() < deadline, "projections not built: users {u}, products {p}, stock {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn connect(stack: &ProcessStack, service: &'static str) -> Db {
    Db::connect(&stack.dbs.url_for(service).await, 2, Duration::from_secs(5)).await.expect("connect for checks")
}

/// Offers orders at `plan.rate` until `deadline`: confirmable, out of stock,
/// declined, and cancelled after placement; plus restocks.
async fn generate_load(
    plan: &FaultPlan,
    producer: &FutureProducer,
    sent: &Shared<Sent>,
    users: &[String],
    skus: &[(String, i64)],
    seed: u64,
    deadline: Instant,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.1));
    let total = plan.scarce.unwrap_or(usize::MAX);
    let mut n = 0usize;
    let mut next = Instant::now();
    let mut pending_cancels: Vec<(Instant, String)> = Vec::new();
    while n < total && (plan.scarce.is_some() || Instant::now() < deadline) {
        let order_id = format!("o{:05}", n);
        let user = users[rng.usize(..users.len())].clone();
        let (sku, _) = &skus[rng.usize(..skus.len())];
        let kind = if plan.scarce.is_some() { 0 } else { rng.u8(..10) };
        let (quantity, token) = match kind {
            _ if plan.scarce.is_some() => (1, "tok_visa"),
            0..=5 => (1 + rng.i64(0..2), "tok_visa"),
            6 => (10_000, "tok_visa"),
            7 => (1, "tok_decline_card"),
            _ => (1, "tok_visa"),
        };
        let lines = vec![OrderLine { sku: sku.clone(), quantity }];
        let place = PlaceOrder { order_id: order_id.clone(), user_id: user, lines, payment_token: token.into() };
        if publish(producer, place).await {
            lock(sent).orders.insert(order_id.clone(), vec![(sku.clone(), quantity)]);
            if kind >= 8 {
                pending_cancels.push((Instant::now() + Duration::from_millis(rng.u64(200..3000)), order_id));
            }
        }
        if plan.scarce.is_none() && rng.u8(..20) == 0 {
            let (sku, _) = &skus[rng.usize(..skus.len())];
            let quantity = 1 + rng.i64(0..10);
            if publish(producer, RestockProduct { sku: sku.clone(), quantity }).await {
                *lock(sent).restocked.entry(sku.clone()).or_default() += quantity;
            }
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = pending_cancels.drain(..).partition(|(at, _)| *at <= now);
        pending_cancels = later;
        for (_, order_id) in due {
            if publish(producer, CancelOrder { order_id: order_id.clone(), reason: "fault suite".into() }).await {
                lock(sent).cancels.insert(order_id);
            }
        }
        n += 1;
        next += interval;
        if plan.scarce.is_none() {
            tokio::time::sleep_until(next.into()).await;
        }
    }
    for (at, order_id) in pending_cancels {
        tokio::time::sleep_until(at.into()).await;
        if publish(producer, CancelOrder { order_id: order_id.clone(), reason: "fault suite".into() }).await {
            lock(sent).cancels.insert(order_id);
        }
    }
}

/// The gateway simulator's ledger at `url`; empty while it cannot be read.
pub async fn gateway_ledger(http: &reqwest::Client, url: &str) -> Ledger {
    match http.get(format!("{url}/ledger")).send().await {
        Ok(response) => response.json().await.unwrap_or_default(),
        Err(_) => Ledger::default(),
    }
}

pub async fn set_gateway(http: &reqwest::Client, url: &str, mode: Mode, latency_ms: u64) {
    let _ = http.put(format!("{url}/control")).json(&Control { mode, latency_ms }).send().await;
}

/// The failover episode of [`Faults::BrokerFailover`].
async fn fail_over(stack: &mut ProcessStack, duration: Duration, report: &mut Report) {
    let started = Instant::now();
    tokio::time::sleep(duration / 4).await;
    let topic = events::topics::ORDER_EVENTS;
    let Some(leader) = stack.broker.leader_of(topic, 0).await else {
        report.timeline.push(format!("{:.1}s no leader found for {topic}/0", started.elapsed().as_secs_f64()));
        return;
    };
    stack.broker.kill_node(leader);
    let at = started.elapsed().as_secs_f64();
    report.timeline.push(format!("{at:.1}s broker node {} (leader of {topic}/0) SIGKILL", leader + 1));
    *report.faults.entry("broker leader SIGKILL").or_default() += 1;
    tokio::time::sleep(duration / 4).await;
    // Who leads now: the cluster moved on without the killed node.
    let successor = stack.broker.leader_of(topic, 0).await.map_or("none".to_owned(), |n| format!("node {}", n + 1));
    report.timeline.push(format!("{:.1}s {topic}/0 led by {successor}", started.elapsed().as_secs_f64()));
    stack.broker.start_node(leader).await;
    let at = started.elapsed().as_secs_f64();
    report.timeline.push(format!("{at:.1}s broker node {} restarted with its data", leader + 1));
    *report.faults.entry("broker node restart").or_default() += 1;
}

/// The episode of [`Faults::ReplicaKills`]: half of `duration` without faults,
/// then replica SIGKILLs until its end.
async fn kill_replicas(stack: &mut ProcessStack, rng: &mut fastrand::Rng, duration: Duration, report: &mut Report) {
    let started = Instant::now();
    tokio::time::sleep(duration / 2).await;
    report.faults_from_ms = Some(platform::db::now_ms());
    while started.elapsed() < duration {
        let service = SERVICES[rng.usize(..SERVICES.len())];
        let replica = rng.usize(..stack.replicas);
        stack.kill_replica(service, replica);
        let at = started.elapsed().as_secs_f64();
        report.timeline.push(format!("{at:.1}s SIGKILL {service} replica {}", replica + 1));
        tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
        stack.start_replica(service, replica, &[]).await;
        *report.faults.entry("replica SIGKILL + restart").or_default() += 1;
        tokio::time::sleep(Duration::from_millis(rng.u64(1500..4000))).await;
    }
}

/// Events that occurred this long before the first fault were published long
/// before it (the relay takes milliseconds), so a fault cannot excuse a repeat.
const CUT_MARGIN_MS: i64 = 2_000;

/// The fault-free part of a run, everything that occurred before `cut_ms`:
/// each event the services emitted is on its topic once (one relay published
/// it), and each charge that went through at its first attempt (no
/// PaymentDeferred) reached the gateway once (one worker made it). Also a line
/// counting the repeats after the cut, which a kill between the broker's ack
/// and the relay's commit explains.
async fn once_before(stack: &ProcessStack, http: &reqwest::Client, cut_ms: i64) -> (Vec<Invariant>, String) {
    let mut published: HashMap<String, (usize, i64)> = HashMap::new();
    let mut first_attempt: BTreeSet<String> = BTreeSet::new();
    let mut deferred: BTreeSet<String> = BTreeSet::new();
    for topic in events::topics::ALL.iter().filter(|t| t.ends_with(".events")) {
        for record in crate::stack::read_topic_at(stack.broker.connection(), topic).await {
            let Ok(envelope) = Envelope::from_json(record.payload().unwrap_or_default()) else { continue };
            let occurred = envelope.occurred_at_ms().unwrap_or(i64::MAX);
            let seen = published.entry(envelope.event_id.to_string()).or_insert((0, occurred));
            seen.0 += 1;
            match &envelope.message {
                Message::PaymentAuthorized(paid) if occurred < cut_ms => {
                    first_attempt.insert(paid.order_id.clone());
                }
                Message::PaymentDeclined(declined) if occurred < cut_ms => {
                    first_attempt.insert(declined.order_id.clone());
                }
                Message::PaymentDeferred(later) => {
                    deferred.insert(later.order_id.clone());
                }
                _ => {}
            }
        }
    }
    let before: Vec<(&String, &(usize, i64))> = published.iter().filter(|(_, (_, at))| *at < cut_ms).collect();
    let repeated: Vec<String> =
        before.iter().filter(|(_, (n, _))| *n > 1).map(|(id, (n, _))| format!("{id} published {n} times")).collect();
    let repeats_after = published.values().filter(|(n, at)| *at >= cut_ms && *n > 1).count();
    let ledger = gateway_ledger(http, &stack.gateway_url).await;
    let charges: Vec<&String> = first_attempt.difference(&deferred).collect();
    let called_again: Vec<String> = charges
        .iter()
        .filter_map(|order| {
            let calls = ledger.charges.get(*order).map_or(0, |c| c.calls);
            (calls > 1).then(|| format!("{order}: {calls} charge calls"))
        })
        .collect();
    let summary = format!(
        "{} events before the first fault, {} after it; {repeats_after} of those after it published more than once",
        before.len(),
        published.len() - before.len()
    );
    let invariants = vec![
        ("fault-free: each event published once".to_owned(), before.len(), repeated),
        ("fault-free: one gateway call per first-attempt charge".to_owned(), charges.len(), called_again),
    ];
    (invariants, summary)
}

/// Injects one fault every 1.5–4 s until `deadline`, chosen by the seeded `rng`.
async fn inject_faults(
    stack: &mut ProcessStack,
    producer: &FutureProducer,
    http: &reqwest::Client,
    sent: &Shared<Sent>,
    rng: &mut fastrand::Rng,
    deadline: Instant,
    report: &mut Report,
) {
    let started = Instant::now();
    let counts = &mut report.faults;
    let mut poison_n = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.u64(1500..4000))).await;
        let at = started.elapsed().as_secs_f64();
        let mut target = "";
        let fault: &'static str = match rng.u8(..8) {
            0 | 1 => {
                let service = SERVICES[rng.usize(..SERVICES.len())];
                target = service;
                stack.kill(service);
                tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
                stack.start_service(service).await;
                "service SIGKILL + restart"
            }
            2 => {
                stack.broker.kill();
                tokio::time::sleep(Duration::from_millis(rng.u64(500..2000))).await;
                stack.broker.restart().await;
                "broker SIGKILL + restart"
            }
            3 => {
                set_gateway(http, &stack.gateway_url, Mode::Outage, 0).await;
                tokio::time::sleep(Duration::from_millis(rng.u64(1000..4000))).await;
                set_gateway(http, &stack.gateway_url, Mode::Healthy, 0).await;
                "gateway outage"
            }
            4 => {
                set_gateway(http, &stack.gateway_url, Mode::Slow, 800).await;
                tokio::time::sleep(Duration::from_millis(rng.u64(1000..3000))).await;
                set_gateway(http, &stack.gateway_url, Mode::Healthy, 0).await;
                "gateway slow period"
            }
            5 => {
                let topic = events::topics::ALL[rng.usize(..events::topics::ALL.len())];
                target = topic;
                let records = crate::stack::read_topic_at(stack.broker.connection(), topic).await;
                let mut republished = 0;
                for record in records.iter().filter(|_| rng.u8(..4) == 0).take(20) {
                    let key = String::from_utf8_lossy(record.key().unwrap_or_default()).into_owned();
                    let headers = HeaderList::from_kafka(record.headers());
                    if send(producer, topic, &key, record.payload().unwrap_or_default(), &headers).await {
                        republished += 1;
                    }
                }
                *counts.entry("duplicated records").or_default() += republished;
                "duplicate re-publish"
            }
            6 => {
                // Restart a service armed to abort right after a commit and before
                // the offset is stored; once it has, bring it back unarmed.
                let service = SERVICES[rng.usize(..SERVICES.len())];
                target = service;
                stack.kill(service);
                stack.start_service_with(service, &[("CHAOS_CRASH_AFTER_COMMIT", "0.2")]).await;
                let armed = Instant::now();
                while stack.alive(service) && armed.elapsed() < Duration::from_secs(10) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if stack.alive(service) {
                    stack.kill(service); // no traffic reached it: an ordinary SIGKILL then
                } else {
                    *counts.entry("aborted between commit and offset").or_default() += 1;
                }
                stack.start_service(service).await;
                "crash-after-commit window"
            }
            _ => {
                for (topic, _) in SUBSCRIBERS {
                    poison_n += 1;
                    let key = format!("poison-{poison_n}");
                    let value: &[u8] = match poison_n % 3 {
                        0 => b"\x00\x01 not json",
                        1 => br#"{"event_id":"0192d4c6-4f3a-7cc0-9a7e-3f3c0c4e9b11","event_type":"Nope","schema_version":1,"occurred_at":"x","correlation_id":"c","producer":"p","payload":{}}"#,
                        _ => br#"{"event_id":"0192d4c6-4f3a-7cc0-9a7e-3f3c0c4e9b12","event_type":"CancelOrder","schema_version":99,"occurred_at":"x","correlation_id":"c","producer":"p","payload":{}}"#,
                    };
                    if send(producer, topic, &key, value, &HeaderList::default()).await {
                        lock(sent).poison.push(((*topic).to_owned(), key));
                    }
                }
                "poison on every input topic"
            }
        };
        *counts.entry(fault).or_default() += 1;
        report.timeline.push(format!("{at:.1}s {fault} {target}").trim_end().to_owned());
    }
}

type Invariant = (String, usize, Vec<String>);

/// Checks every invariant against the services' own databases, the dead-letter
/// topics and the gateway ledger. Returns (invariants, orders by status).
pub async fn check(
    stack: &ProcessStack,
    http: &reqwest::Client,
    sent: &Sent,
) -> (Vec<Invariant>, BTreeMap<String, usize>) {
    let mut out = Vec::new();
    let orders_db = connect(stack, "order-svc").await;
    let rows =
        sqlx::query("SELECT order_id, status, refunded FROM orders").fetch_all(orders_db.pool()).await.expect("orders");
    let orders: HashMap<String, (String, bool)> =
        rows.iter().map(|r| (r.get::<String, _>(0), (r.get::<String, _>(1), r.get::<i64, _>(2) == 1))).collect();
    let mut by_status = BTreeMap::new();
    for (status, _) in orders.values() {
        *by_status.entry(status.clone()).or_default() += 1;
    }

    // 1. Every order placed reaches a terminal state.
    let stuck: Vec<String> = sent
        .orders
        .keys()
        .filter(|id| !matches!(orders.get(*id).map(|(s, _)| s.as_str()), Some("CONFIRMED" | "REJECTED" | "CANCELLED")))
        .map(|id| format!("{id}:{:?}", orders.get(id).map(|(s, _)| s.clone())))
        .collect();
    out.push(("every order terminal".to_owned(), sent.orders.len(), stuck));

    // 2. Stock conserved, never negative, never oversold.
    let inventory = connect(stack, "inventory-svc").await;
    let stock = sqlx::query("SELECT sku, available, reserved, sold, received FROM stock")
        .fetch_all(inventory.pool())
        .await
        .expect("stock");
    let mut sold_by_orders: BTreeMap<String, i64> = BTreeMap::new();
    for (id, lines) in &sent.orders {
        if orders.get(id).map(|(s, _)| s.as_str()) == Some("CONFIRMED") {
            for (sku, q) in lines {
                *sold_by_orders.entry(sku.clone()).or_default() += q;
            }
        }
    }
    let mut bad = Vec::new();
    for row in &stock {
        let sku: String = row.get(0);
        let (available, reserved, sold, received): (i64, i64, i64, i64) =
            (row.get(1), row.get(2), row.get(3), row.get(4));
        let expected_received =
            sent.initial.get(&sku).copied().unwrap_or(0) + sent.restocked.get(&sku).copied().unwrap_or(0);
        let sold_expected = sold_by_orders.get(&sku).copied().unwrap_or(0);
        if available + reserved + sold != received
            || received != expected_received
            || available < 0
            || reserved != 0
            || sold != sold_expected
        {
            bad.push(format!(
                "{sku}: available {available} reserved {reserved} sold {sold} received {received} \
                 (expected received {expected_received}, sold {sold_expected})"
            ));
        }
    }
    out.push(("stock conserved, none reserved, sold = confirmed".to_owned(), stock.len(), bad));

    // 3. Money: one charge per confirmed order, one refund per refunded one, none otherwise.
    let ledger = gateway_ledger(http, &stack.gateway_url).await;
    let mut bad = Vec::new();
    for (id, (status, refunded)) in &orders {
        let charged = ledger.charges.get(id).is_some_and(|c| c.approved);
        let refund = ledger.refunds.get(&format!("refund:{id}")).is_some_and(|r| r.approved);
        let ok = match (status.as_str(), refunded) {
            ("CONFIRMED", _) => charged && !refund,
            ("CANCELLED", true) => charged && refund,
            _ => !charged && !refund,
        };
        if !ok {
            bad.push(format!("{id}: {status} refunded={refunded} charged={charged} refund={refund}"));
        }
    }
    for key in ledger.charges.keys() {
        if !orders.contains_key(key) {
            bad.push(format!("charge {key} without an order"));
        }
    }
    out.push(("charged once if confirmed, refunded once if cancelled after charge".to_owned(), orders.len(), bad));

    // 4. Exactly one notification per terminal outcome.
    let notifications = connect(stack, "notification-svc").await;
    let rows =
        sqlx::query("SELECT order_id, kind FROM notifications").fetch_all(notifications.pool()).await.expect("notes");
    let mut kinds: HashMap<String, Vec<String>> = HashMap::new();
    for row in &rows {
        kinds.entry(row.get(0)).or_default().push(row.get(1));
    }
    let mut bad = Vec::new();
    for (id, (status, refunded)) in &orders {
        let got = kinds.get(id).cloned().unwrap_or_default();
        let count = |k: &str| got.iter().filter(|g| *g == k).count();
        let ok = match status.as_str() {
            "CONFIRMED" => count("confirmed") == 1 && count("cancelled") == 0 && count("rejected") == 0,
            "REJECTED" => count("rejected") == 1 && count("confirmed") == 0 && count("cancelled") == 0,
            "CANCELLED" => count("cancelled") == 1 && count("rejected") == 0 && (*refunded || count("confirmed") == 0),
            _ => false,
        };
        if !ok {
            bad.push(format!("{id}: {status} notified {got:?}"));
        }
    }
    out.push(("one notification per terminal outcome".to_owned(), orders.len(), bad));

    // 5. Every poison message dead-lettered by every subscriber, and nothing else.
    let mut dead: HashMap<String, Vec<(String, HeaderList)>> = HashMap::new();
    for service in SERVICES {
        let topic = events::topics::dead_letter(service);
        for record in crate::stack::read_topic_at(stack.broker.connection(), &topic).await {
            let key = String::from_utf8_lossy(record.key().unwrap_or_default()).into_owned();
            dead.entry(service.to_owned()).or_default().push((key, HeaderList::from_kafka(record.headers())));
        }
    }
    let mut bad = Vec::new();
    for (topic, key) in &sent.poison {
        let groups = SUBSCRIBERS.iter().find(|(t, _)| t == topic).map(|(_, g)| *g).unwrap_or_default();
        for group in groups {
            let found = dead.get(*group).into_iter().flatten().any(|(k, h)| {
                k == key
                    && h.get(platform::dead_letter::ORIGINAL_TOPIC) == Some(topic.as_str())
                    && h.get(platform::dead_letter::ERROR_CLASS) == Some("permanent")
            });
            if !found {
                bad.push(format!("{key} on {topic} not in {group}.dlq"));
            }
        }
    }
    for (group, letters) in &dead {
        for (key, headers) in letters {
            if !key.starts_with("poison-") {
                let error = headers.get(platform::dead_letter::ERROR_MESSAGE).unwrap_or_default();
                bad.push(format!("{group}.dlq holds {key}: {error}"));
            }
        }
    }
    out.push(("poison dead-lettered, nothing else".to_owned(), sent.poison.len(), bad));

    // 6. Every outbox row published.
    let mut bad = Vec::new();
    for service in SERVICES {
        let db = connect(stack, service).await;
        match platform::outbox::backlog(&db).await {
            Ok(0) => {}
            Ok(n) => bad.push(format!("{service}: {n} unsent")),
            Err(e) => bad.push(format!("{service}: {e}")),
        }
        db.close().await;
    }
    out.push(("every outbox row published".to_owned(), SERVICES.len(), bad));
    for db in [orders_db, inventory, notifications] {
        db.close().await;
    }
    (out, by_status)
}
