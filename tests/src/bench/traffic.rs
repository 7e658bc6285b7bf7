//! Driving the saga: reference data, open-loop and full-speed order traffic, a
//! tracker that sees orders finish, and the analysis of what the topics hold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::{CreateProduct, Envelope, Message, OrderLine, PlaceOrder, RegisterUser};
use futures::future::join_all;
use platform::kafka::HeaderList;
use platform::Db;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::probe;
use super::stats::{summarize, Summary};
use super::topics::{Record, SAGA_TOPICS};
use crate::processes::ProcessStack;
use crate::stack::SERVICES;
use crate::{Broker, BrokerKind};

pub const USERS: usize = 20;
pub const SKUS: usize = 20;
/// Report name of the broker's process in CPU and memory figures (which broker
/// it is, the run says).
const BROKER: &str = "broker";
/// A phase in which none of its records arrived for this long has lost orders.
const STALLED_AFTER: Duration = Duration::from_secs(60);

pub fn user_id(i: usize) -> String {
    format!("bench-user-{:02}", i % USERS)
}

pub fn sku(i: usize) -> String {
    format!("BENCH-SKU-{:02}", i % SKUS)
}

async fn publish(producer: &FutureProducer, message: impl Into<Message>) {
    let envelope = Envelope::new(message, "saga-bench");
    let value = envelope.to_json();
    let record = FutureRecord::to(envelope.topic())
        .key(envelope.key())
        .payload(&value)
        .headers(HeaderList::for_envelope(&envelope, None).to_kafka());
    producer.send(record, Timeout::After(Duration::from_secs(30))).await.expect("publish reference data");
}

async fn count(db: &Db, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db.pool()).await.unwrap_or(0)
}

/// Registers the users and creates the products (with stock that never runs
/// out), and waits until every projection has them.
pub async fn reference_data(stack: &ProcessStack, producer: &FutureProducer) {
    for i in 0..USERS {
        let user_id = user_id(i);
        publish(producer, RegisterUser { email: format!("{user_id}@example.com"), name: format!("User {i}"), user_id })
            .await;
    }
    for i in 0..SKUS {
        publish(
            producer,
            CreateProduct {
                sku: sku(i),
                name: format!("Product {i}"),
                price_minor: 1000,
                initial_stock: 1_000_000_000,
            },
        )
        .await;
    }
    let checks = [
        ("order-svc", "SELECT COUNT(*) FROM users", USERS),
        ("order-svc", "SELECT COUNT(*) FROM products", SKUS),
        ("inventory-svc", "SELECT COUNT(*) FROM stock", SKUS),
        ("notification-svc", "SELECT COUNT(*) FROM contacts", USERS),
    ];
    for (service, sql, expected) in checks {
        let db = Db::connect(&stack.dbs.url_for(service).await, 1, Duration::from_secs(5)).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(60);
        while count(&db, sql).await < expected as i64 {
            assert!(Instant::now() < deadline, "{service}: `{sql}` did not reach {expected}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        db.close().await;
    }
}

/// How a phase offers load.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Every order published at once, as fast as the producer takes them.
    Burst,
    /// Open loop: order i is published at start + i / rate, whatever completes.
    Rate(f64),
}

/// Watches every saga topic from its current end and keeps the records of the
/// phase's orders as they arrive. (Reading the topics back from the beginning
/// afterwards is not reliable on Tansu's memory engine: records produced in
/// large batches were missing from such reads, while live consumers saw them.)
struct Tracker {
    stop: Arc<AtomicBool>,
    progress: Arc<Mutex<Progress>>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Debug, Default, Clone)]
struct Progress {
    confirmed: usize,
    rejected_or_cancelled: usize,
    committed: usize,
    notified: usize,
    /// Records seen again (same event id): redelivered by the broker.
    duplicates: usize,
    seen: HashSet<uuid::Uuid>,
    records: Vec<Record>,
}

impl Progress {
    fn done(&self, orders: usize) -> bool {
        self.confirmed + self.rejected_or_cancelled >= orders
            && self.committed >= self.confirmed
            && self.notified >= orders
    }
}

impl Tracker {
    fn start(broker: &Broker, orders: Arc<HashSet<String>>) -> Tracker {
        // The tracker's wait only delays the end of a phase, never a measured
        // latency. Tansu holds every fetch for the whole wait, so 5 ms there;
        // Kafka answers as soon as a record is in, so it keeps its own wait.
        let wait = match broker.kind {
            BrokerKind::Kafka => broker.kind.fetch_wait_max(),
            BrokerKind::Tansu => Duration::from_millis(5),
        };
        let mut config = platform::kafka::client_config(&broker.addr);
        config
            .set("group.id", "saga-bench-tracker")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", wait.as_millis().to_string());
        let consumer: BaseConsumer = config.create().expect("tracker");
        let mut assignment = TopicPartitionList::new();
        for topic in SAGA_TOPICS {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
            for partition in metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())) {
                let (_, high) =
                    consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
                assignment.add_partition_offset(topic, partition, Offset::Offset(high)).expect("assign");
            }
        }
        consumer.assign(&assignment).expect("assign");
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Mutex::new(Progress::default()));
        let (stop_flag, shared) = (stop.clone(), progress.clone());
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else { continue };
                let Some(record) = Record::from_kafka(&message) else { continue };
                let Some(envelope) = &record.envelope else { continue };
                if !orders.contains(&envelope.correlation_id) {
                    continue;
                }
                let mut p = shared.lock().unwrap_or_else(|e| e.into_inner());
                if !p.seen.insert(envelope.event_id) {
                    p.duplicates += 1;
                    continue;
                }
                match envelope.message {
                    Message::OrderConfirmed(_) => p.confirmed += 1,
                    Message::OrderRejected(_) | Message::OrderCancelled(_) => p.rejected_or_cancelled += 1,
                    Message::StockCommitted(_) => p.committed += 1,
                    Message::NotificationSent(_) => p.notified += 1,
                    _ => {}
                }
                p.records.push(record);
            }
        });
        Tracker { stop, progress, thread }
    }

    /// Whether the phase is finished, how many of its records arrived so far, and
    /// how many of its orders are confirmed.
    fn status(&self, orders: usize) -> (bool, usize, usize) {
        let p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        (p.done(orders), p.records.len(), p.confirmed)
    }

    fn finish(self) -> Progress {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let progress = std::mem::take(&mut *self.progress.lock().unwrap_or_else(|e| e.into_inner()));
        progress
    }
}

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub offered_rate: Option<f64>,
    pub orders: usize,
    pub confirmed: usize,
    pub not_confirmed: usize,
    /// Gave up before every order finished (see `STALLED_AFTER`).
    pub timed_out: bool,
    /// Seconds the publisher took to hand every PlaceOrder to the broker.
    pub publish_seconds: f64,
    /// How late the open-loop publisher was against its schedule (ms).
    pub schedule_lag_ms: Summary,
    /// Orders / (last OrderConfirmed.occurred_at - first PlaceOrder.occurred_at).
    pub completed_orders_per_s: f64,
    /// The same over the middle 80% of completions (excludes ramp up and tail).
    pub steady_orders_per_s: f64,
    /// OrderPlaced.occurred_at -> OrderConfirmed.occurred_at (ms).
    pub placed_to_confirmed_ms: Summary,
    /// PlaceOrder.occurred_at (bench publish time) -> OrderConfirmed.occurred_at (ms).
    pub command_to_confirmed_ms: Summary,
    /// Each hop, from the cause's occurred_at to the effect's (ms).
    pub hops_ms: BTreeMap<String, Summary>,
    pub messages_per_order: f64,
    /// Records of the phase's orders that arrived twice (same event id); not counted elsewhere.
    pub duplicate_records: usize,
    /// Records of the phase's orders, by event type.
    pub messages_by_type: BTreeMap<String, usize>,
    pub deliveries_per_order: f64,
    pub avg_record_bytes: f64,
    pub avg_value_bytes: f64,
    /// CPU seconds per process during the phase.
    pub cpu_seconds: BTreeMap<String, f64>,
    /// Share of all cores busy during the phase (0..1, whole machine).
    pub machine_busy: f64,
    /// CPU seconds of everything else on the machine during the phase (other
    /// people's builds and tests on a shared machine): machine busy time minus
    /// the processes above.
    pub other_cpu_seconds: f64,
    pub wall_seconds: f64,
    /// handler_duration_seconds per service and event type: (mean ms, count).
    pub handler_ms: BTreeMap<String, BTreeMap<String, (f64, f64)>>,
}

/// Which consumer groups read each topic: a produced record is delivered once
/// per group.
fn groups_reading(topic: &str) -> f64 {
    match topic {
        t if t == events::topics::ORDER_COMMANDS => 1.0,
        t if t == events::topics::ORDER_EVENTS => 3.0,
        t if t == events::topics::INVENTORY_EVENTS => 2.0,
        t if t == events::topics::PAYMENT_EVENTS => 3.0,
        _ => 0.0,
    }
}

/// The command name of the broker's process: Tansu's own binary, or the JVM that
/// `scripts/kafka.sh run` execs into.
fn broker_comm(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::Kafka => "java",
        BrokerKind::Tansu => "tansu",
    }
}

/// The processes the benchmark started besides the services, by report name.
fn helpers(stack: &ProcessStack) -> [(&'static str, &'static str); 2] {
    [(BROKER, broker_comm(stack.broker.kind)), ("gateway-sim", "gateway-sim")]
}

/// Processes to watch: the six services (all their replicas), the broker, the gateway simulator,
/// this benchmark, and PostgreSQL's backends (machine-wide) when in use.
fn watched(stack: &ProcessStack) -> Vec<(String, Vec<u32>)> {
    let mut list: Vec<(String, Vec<u32>)> =
        SERVICES.iter().map(|s| ((*s).to_owned(), stack.pids(s))).filter(|(_, pids)| !pids.is_empty()).collect();
    list.extend(helpers(stack).map(|(name, comm)| (name.to_owned(), probe::children_named(comm))));
    list.push(("saga-bench".into(), vec![std::process::id()]));
    if stack.dbs.backend == crate::Backend::Postgres {
        list.push(("postgres (all)".into(), probe::all_named("postgres")));
    }
    list
}

fn cpu_snapshot(stack: &ProcessStack, ticks: f64) -> BTreeMap<String, f64> {
    watched(stack)
        .into_iter()
        .map(|(name, pids)| (name, pids.iter().filter_map(|pid| probe::cpu_seconds(*pid, ticks)).sum()))
        .collect()
}

async fn metrics_snapshot(stack: &ProcessStack, client: &reqwest::Client) -> BTreeMap<String, probe::HandlerTimes> {
    let mut all = BTreeMap::new();
    for service in SERVICES {
        if let Some(port) = stack.http_port(service) {
            all.insert(service.to_owned(), probe::handler_times(client, port).await);
        }
    }
    all
}

/// Runs one phase of `orders` orders and analyses it.
pub async fn phase(stack: &ProcessStack, producer: &FutureProducer, name: &str, orders: usize, load: Load) -> Phase {
    let ticks = probe::clock_ticks();
    let client = reqwest::Client::new();
    let ids: Vec<String> = (0..orders).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let wanted: Arc<HashSet<String>> = Arc::new(ids.iter().cloned().collect());
    let tracker = Tracker::start(&stack.broker, wanted.clone());

    let metrics_before = metrics_snapshot(stack, &client).await;
    let cpu_before = cpu_snapshot(stack, ticks);
    let machine_before = probe::machine_jiffies();
    let started = Instant::now();

    let mut lags = Vec::new();
    let mut deliveries = Vec::with_capacity(orders);
    for (i, order_id) in ids.iter().enumerate() {
        if let Load::Rate(rate) = load {
            let at = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
            lags.push(Instant::now().saturating_duration_since(at).as_secs_f64() * 1000.0);
        }
        let envelope = Envelope::new(
            PlaceOrder {
                order_id: order_id.clone(),
                user_id: user_id(i),
                lines: vec![OrderLine { sku: sku(i), quantity: 1 }],
                payment_token: "tok_visa".into(),
            },
            "saga-bench",
        );
        let value = envelope.to_json();
        let headers = HeaderList::for_envelope(&envelope, None).to_kafka();
        let mut record = FutureRecord::to(envelope.topic()).key(order_id.as_str()).payload(&value).headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for result in join_all(deliveries).await {
        result.expect("delivery future").expect("PlaceOrder acknowledged");
    }
    let publish_seconds = started.elapsed().as_secs_f64();

    // A phase ends when every order finished; it gives up after a generous
    // deadline, or sooner once no record of it arrived for a while (orders lost).
    let deadline = started + Duration::from_secs(120) + Duration::from_secs_f64(orders as f64 / 20.0);
    let (mut seen, mut last_progress) = (0, Instant::now());
    let mut timed_out = false;
    loop {
        let (done, records, confirmed) = tracker.status(orders);
        if done {
            break;
        }
        if records > seen {
            (seen, last_progress) = (records, Instant::now());
        }
        let now = Instant::now();
        if now > deadline || now.duration_since(last_progress) > STALLED_AFTER {
            let waited = now.duration_since(last_progress).as_secs();
            eprintln!(
                "phase {name}: gave up with {confirmed} of {orders} orders confirmed (no new record for {waited} s)"
            );
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let machine_after = probe::machine_jiffies();
    let cpu_after = cpu_snapshot(stack, ticks);
    let metrics_after = metrics_snapshot(stack, &client).await;
    let progress = tracker.finish();

    let mut phase = analyse(name, &progress.records, &wanted);
    phase.offered_rate = match load {
        Load::Rate(rate) => Some(rate),
        Load::Burst => None,
    };
    phase.orders = orders;
    phase.confirmed = progress.confirmed;
    phase.not_confirmed = orders - progress.confirmed.min(orders);
    phase.timed_out = timed_out;
    phase.duplicate_records = progress.duplicates;
    phase.publish_seconds = publish_seconds;
    phase.schedule_lag_ms = summarize(&lags);
    phase.wall_seconds = wall;
    let (busy, total) = (machine_after.0 - machine_before.0, machine_after.1 - machine_before.1);
    phase.machine_busy = if total > 0 { busy as f64 / total as f64 } else { f64::NAN };
    phase.cpu_seconds =
        cpu_after.iter().map(|(k, v)| (k.clone(), v - cpu_before.get(k).copied().unwrap_or(0.0))).collect();
    let watched_total: f64 = phase.cpu_seconds.values().sum();
    phase.other_cpu_seconds = busy as f64 / ticks - watched_total;
    phase.handler_ms = metrics_after
        .iter()
        .map(|(service, after)| {
            let empty = probe::HandlerTimes::new();
            let before = metrics_before.get(service).unwrap_or(&empty);
            let per_type = probe::delta(before, after)
                .into_iter()
                .map(|(event_type, (sum, count))| (event_type, (sum / count * 1000.0, count)))
                .collect();
            (service.clone(), per_type)
        })
        .collect();
    phase
}

/// Latencies, hops, message counts and sizes from the records of the phase's orders.
fn analyse(name: &str, records: &[Record], orders: &HashSet<String>) -> Phase {
    let mut times: HashMap<&str, HashMap<&'static str, i64>> = HashMap::new();
    let (mut messages, mut deliveries, mut bytes, mut value_bytes) = (0usize, 0.0, 0usize, 0usize);
    let mut messages_by_type: BTreeMap<String, usize> = BTreeMap::new();
    for record in records {
        let Some(envelope) = &record.envelope else { continue };
        let Some(order) = orders.get(&envelope.correlation_id) else { continue };
        messages += 1;
        *messages_by_type.entry(envelope.event_type().to_owned()).or_default() += 1;
        deliveries += groups_reading(&record.topic);
        bytes += record.bytes;
        value_bytes += record.value_bytes;
        if let Some(at) = envelope.occurred_at_ms() {
            times.entry(order.as_str()).or_default().insert(envelope.event_type(), at);
        }
    }
    let span = |from: &str, to: &str| -> Vec<f64> {
        times.values().filter_map(|t| Some((t.get(to)? - t.get(from)?) as f64)).collect()
    };
    let hops = [
        ("1 PlaceOrder -> OrderPlaced (order-svc)", "PlaceOrder", "OrderPlaced"),
        ("2 OrderPlaced -> StockReserved (inventory-svc)", "OrderPlaced", "StockReserved"),
        ("3 StockReserved -> PaymentAuthorized (payment-svc + gateway)", "StockReserved", "PaymentAuthorized"),
        ("4 PaymentAuthorized -> OrderConfirmed (order-svc)", "PaymentAuthorized", "OrderConfirmed"),
        ("5 OrderConfirmed -> StockCommitted (inventory-svc)", "OrderConfirmed", "StockCommitted"),
        ("6 OrderConfirmed -> NotificationSent (notification-svc)", "OrderConfirmed", "NotificationSent"),
    ];
    let hops_ms = hops.iter().map(|(label, from, to)| ((*label).to_owned(), summarize(&span(from, to)))).collect();

    // Throughput from event time: first command to last confirmation.
    let mut confirmed_at: Vec<i64> = times.values().filter_map(|t| t.get("OrderConfirmed").copied()).collect();
    confirmed_at.sort_unstable();
    let first_command = times.values().filter_map(|t| t.get("PlaceOrder").copied()).min();
    let completed_orders_per_s = match (first_command, confirmed_at.last()) {
        (Some(first), Some(last)) if *last > first => confirmed_at.len() as f64 / ((last - first) as f64 / 1000.0),
        _ => f64::NAN,
    };
    let steady_orders_per_s = if confirmed_at.len() >= 20 {
        let (lo, hi) = (confirmed_at.len() / 10, confirmed_at.len() * 9 / 10);
        let span = (confirmed_at[hi] - confirmed_at[lo]) as f64 / 1000.0;
        if span > 0.0 {
            (hi - lo) as f64 / span
        } else {
            f64::NAN
        }
    } else {
        f64::NAN
    };
    let n = orders.len().max(1) as f64;
    Phase {
        name: name.to_owned(),
        offered_rate: None,
        orders: orders.len(),
        confirmed: 0,
        not_confirmed: 0,
        timed_out: false,
        publish_seconds: 0.0,
        schedule_lag_ms: Summary::default(),
        completed_orders_per_s,
        steady_orders_per_s,
        placed_to_confirmed_ms: summarize(&span("OrderPlaced", "OrderConfirmed")),
        command_to_confirmed_ms: summarize(&span("PlaceOrder", "OrderConfirmed")),
        hops_ms,
        messages_per_order: messages as f64 / n,
        duplicate_records: 0,
        messages_by_type,
        deliveries_per_order: deliveries / n,
        avg_record_bytes: if messages > 0 { bytes as f64 / messages as f64 } else { f64::NAN },
        avg_value_bytes: if messages > 0 { value_bytes as f64 / messages as f64 } else { f64::NAN },
        cpu_seconds: BTreeMap::new(),
        machine_busy: f64::NAN,
        other_cpu_seconds: f64::NAN,
        wall_seconds: 0.0,
        handler_ms: BTreeMap::new(),
    }
}

/// Peak resident memory (VmHWM) of every service and the broker, in kB.
pub fn peak_rss(stack: &ProcessStack) -> BTreeMap<String, u64> {
    let mut peaks: BTreeMap<String, u64> =
        SERVICES.iter().filter_map(|s| Some(((*s).to_owned(), stack.peak_rss_kb(s)?))).collect();
    for (name, comm) in helpers(stack) {
        if let Some(kb) = probe::children_named(comm).first().and_then(|pid| probe::status_kb(*pid, "VmHWM")) {
            peaks.insert(name.to_owned(), kb);
        }
    }
    peaks
}
