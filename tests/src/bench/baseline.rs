//! The raw broker baseline: the same number of messages, of the same size, as
//! the saga run causes, produced and consumed with rdkafka and the services'
//! own client settings, with no database and no handler in between.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use serde::Serialize;

use super::topics::Sample;
use crate::{Broker, BrokerKind};

const TOPIC: &str = "bench.baseline";

#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// `kafka` or `tansu`.
    pub broker: &'static str,
    /// Where that broker kept the records: see [`storage`].
    pub storage: &'static str,
    pub messages: usize,
    pub avg_bytes: f64,
    /// Produced and acknowledged (idempotent producer, acks=all).
    pub produce_msgs_per_s: f64,
    /// Produced and, concurrently, consumed by one group: first send to last receipt.
    pub through_msgs_per_s: f64,
    /// A second group reading the whole topic from the beginning.
    pub consume_msgs_per_s: f64,
}

/// Where the benchmark's brokers keep their log: Kafka always on disk, Tansu on
/// its memory engine (`BrokerStorage::Memory`).
pub fn storage(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::Kafka => "disk",
        BrokerKind::Tansu => "memory",
    }
}

/// Runs the baseline on a fresh broker of `kind` (Tansu: memory engine).
pub async fn run(kind: BrokerKind, samples: &[Sample], orders: usize, partitions: i32) -> Baseline {
    let broker = Broker::scratch(kind).await;
    let fetch_wait = kind.fetch_wait_max();
    platform::kafka::ensure_topics(&broker.addr, &[TOPIC, "bench.warmup"], partitions, 1)
        .await
        .expect("baseline topic");
    let total = samples.len() * orders;
    let avg_bytes = samples.iter().map(Sample::bytes).sum::<usize>() as f64 / samples.len() as f64;

    // The consumer joins its group before the clock starts.
    let received = Arc::new(AtomicU64::new(0));
    let joined = Arc::new(AtomicBool::new(false));
    let reader = {
        let (addr, received, joined) = (broker.addr.clone(), received.clone(), joined.clone());
        std::thread::spawn(move || consume(&addr, fetch_wait, "bench-through", total, &received, &joined))
    };
    while !joined.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let producer = platform::kafka::producer(&broker.addr).expect("producer");
    // Connection, metadata and producer id are set up before the clock starts.
    producer
        .send(FutureRecord::<str, str>::to("bench.warmup").payload("warm-up"), Timeout::After(Duration::from_secs(30)))
        .await
        .expect("warm-up record");
    let started = Instant::now();
    produce(&producer, samples, orders).await;
    let produced = started.elapsed();
    let times = tokio::task::spawn_blocking(move || reader.join().expect("reader thread")).await.expect("join reader");
    let through = times.done.saturating_duration_since(started);

    let (addr, count, flag) = (broker.addr.clone(), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let times = tokio::task::spawn_blocking(move || consume(&addr, fetch_wait, "bench-replay", total, &count, &flag))
        .await
        .expect("second reader");
    // The replay clock starts once the group is joined.
    let replay = times.done.saturating_duration_since(times.joined);
    drop(producer);
    drop(broker);
    Baseline {
        broker: kind.name(),
        storage: storage(kind),
        messages: total,
        avg_bytes,
        produce_msgs_per_s: total as f64 / produced.as_secs_f64(),
        through_msgs_per_s: total as f64 / through.as_secs_f64(),
        consume_msgs_per_s: total as f64 / replay.as_secs_f64(),
    }
}

/// Sends `orders` copies of the sample set, each order under its own key, as fast
/// as the producer takes them, and waits for every acknowledgement.
async fn produce(producer: &FutureProducer, samples: &[Sample], orders: usize) {
    let headers: Vec<_> = samples.iter().map(|s| s.headers.to_kafka()).collect();
    let mut pending = Vec::with_capacity(samples.len() * orders);
    for order in 0..orders {
        let key = format!("{:036}", order);
        for (sample, headers) in samples.iter().zip(&headers) {
            let mut record =
                FutureRecord::to(TOPIC).key(key.as_str()).payload(sample.value.as_slice()).headers(headers.clone());
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((_, back)) => {
                        // Queue full: let librdkafka drain a little.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
    }
    for result in join_all(pending).await {
        result.expect("delivery future").expect("baseline record acknowledged");
    }
    producer.flush(Timeout::After(Duration::from_secs(30))).expect("flush");
}

struct Times {
    joined: Instant,
    done: Instant,
}

/// Consumes until `total` records arrived. Uses the services' consumer settings
/// (stored offsets, auto-commit, fetch.wait.max.ms).
fn consume(
    addr: &str,
    fetch_wait: Duration,
    group: &str,
    total: usize,
    received: &AtomicU64,
    joined: &AtomicBool,
) -> Times {
    let consumer: BaseConsumer =
        platform::kafka::consumer_config(addr, group, None, fetch_wait).create().expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut joined_at = None;
    loop {
        assert!(Instant::now() < deadline, "baseline consumer stalled at {received:?} of {total}");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let _ = consumer.store_offset(message.topic(), message.partition(), message.offset());
                let now = Instant::now();
                let joined_at = *joined_at.get_or_insert(now);
                if received.fetch_add(1, Ordering::Relaxed) + 1 >= total as u64 {
                    return Times { joined: joined_at, done: now };
                }
            }
            Some(Err(error)) => eprintln!("baseline consumer: {error}"),
            None => {}
        }
        if joined_at.is_none() && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            joined_at = Some(Instant::now());
            joined.store(true, Ordering::Release);
        }
    }
}
