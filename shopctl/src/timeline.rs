//! `shopctl order timeline`: an order's saga as it happened, gathered from every
//! catalogue topic (all envelopes whose correlation id is the order id), sorted
//! by `occurred_at`, with the status the events imply. `--follow` keeps watching
//! until the order reaches a terminal state. [`Watch`] is the same machinery for
//! the demo, which follows several orders at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use events::{Envelope, Message, OrderStatus};
use serde_json::Value;

use crate::broker::{Broker, Reader, Record, Start};
use crate::output::{cut, human, rfc3339_ms};
use crate::saga;
use crate::{say, Globals};

/// One envelope of a saga, as read from a topic.
#[derive(Debug, Clone)]
pub struct Event {
    pub occurred_ms: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: String,
    pub event_type: String,
    pub producer: String,
    pub summary: String,
    /// `None` if the record is an envelope this build cannot decode.
    pub message: Option<Message>,
}

/// The correlation id and event of a record, if it is an envelope at all.
pub fn event_of(record: &Record) -> Option<(String, Event)> {
    let bytes = record.value.as_deref()?;
    let raw: Value = serde_json::from_slice(bytes).ok()?;
    let text = |name: &str| raw.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    let correlation_id = raw.get("correlation_id")?.as_str()?.to_owned();
    let fallback_ms = record.timestamp_ms.unwrap_or_default();
    let event = match Envelope::from_json(bytes) {
        Ok(envelope) => Event {
            occurred_ms: envelope.occurred_at_ms().unwrap_or(fallback_ms),
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            event_id: envelope.event_id.to_string(),
            event_type: envelope.event_type().to_owned(),
            producer: envelope.producer.clone(),
            summary: saga::summary(&envelope.message),
            message: Some(envelope.message),
        },
        Err(error) => Event {
            occurred_ms: fallback_ms,
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            event_id: text("event_id"),
            event_type: text("event_type"),
            producer: text("producer"),
            summary: format!("undecodable: {error}"),
            message: None,
        },
    };
    Some((correlation_id, event))
}

fn sort(events: &mut [Event]) {
    events.sort_by(|a, b| (a.occurred_ms, &a.event_id).cmp(&(b.occurred_ms, &b.event_id)));
}

/// The status the events imply.
pub fn status(events: &[Event]) -> Option<OrderStatus> {
    saga::status(events.iter().filter_map(|e| e.message.as_ref()))
}

const HEADER: &str =
    "TIME (UTC)    +ELAPSED  TOPIC                EVENT                       PRODUCER          SUMMARY";

/// One row of the timeline, in fixed columns so rows can be printed as they come.
fn row(event: &Event, first_ms: i64) -> String {
    let time = rfc3339_ms(event.occurred_ms);
    let time = time.get(11..23).unwrap_or(&time).to_owned();
    let elapsed = (event.occurred_ms - first_ms) as f64 / 1000.0;
    format!(
        "{time:<12}  {:<8}  {:<19}  {:<26}  {:<16}  {}",
        format!("+{elapsed:.3}s"),
        cut(&event.topic, 19),
        cut(&event.event_type, 26),
        cut(&event.producer, 16),
        cut(&event.summary, 120)
    )
}

/// The whole timeline as a table (events sorted by time).
pub fn render(events: &[Event]) -> String {
    let mut sorted = events.to_vec();
    sort(&mut sorted);
    let first = sorted.first().map_or(0, |e| e.occurred_ms);
    let mut out = HEADER.to_owned();
    for event in &sorted {
        out.push('\n');
        out.push_str(&row(event, first));
    }
    out
}

fn day(events: &[Event]) -> String {
    events.iter().map(|e| e.occurred_ms).min().map(|ms| rfc3339_ms(ms).chars().take(10).collect()).unwrap_or_default()
}

fn status_line(events: &[Event]) -> String {
    match status(events) {
        Some(status) => format!("status: {status}"),
        None => "status: unknown (no order events yet)".to_owned(),
    }
}

pub async fn run(globals: &Globals, order_id: &str, follow: bool, timeout: Duration) -> Result<()> {
    let broker = globals.connect().await?;
    let mut watch = Watch::open(&broker, Start::Beginning, Some(order_id.to_owned())).await?;
    watch.catch_up(broker.timeout).await?;
    let events = watch.events(order_id).to_vec();
    if events.is_empty() && !follow {
        bail!("no events for order {order_id} in {} topics on {}", watch.topics, broker.addr);
    }
    if !events.is_empty() {
        say!("order {order_id}: {} events ({})", events.len(), day(&events));
        say!("{}", render(&events));
    }
    if !follow {
        say!("{}", status_line(&events));
        return Ok(());
    }
    if events.is_empty() {
        say!("order {order_id}: no events yet, waiting");
        say!("{HEADER}");
    }
    let deadline = Instant::now() + timeout;
    let mut first_ms = events.iter().map(|e| e.occurred_ms).min();
    loop {
        if let Some(status) = watch.status(order_id).filter(|s| s.is_terminal()) {
            say!("status: {status}");
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let current = watch.status(order_id).map_or("unknown", OrderStatus::as_str);
            bail!("order {order_id} is still {current} after {}: no terminal state yet", human(timeout));
        }
        if let Some((_, event)) = watch.poll(left.min(Duration::from_millis(500))).await {
            let first = *first_ms.get_or_insert(event.occurred_ms);
            say!("{}", row(&event, first));
        }
    }
}

/// Follows the catalogue topics and gathers envelopes by correlation id.
pub struct Watch {
    reader: Reader,
    only: Option<String>,
    events: HashMap<String, Vec<Event>>,
    /// How many topics are read.
    pub topics: usize,
}

impl Watch {
    /// Reads every catalogue topic that exists, from `start`; keeps only the
    /// events of `only` if given.
    pub async fn open(broker: &Broker, start: Start, only: Option<String>) -> Result<Watch> {
        let topics: Vec<&str> =
            events::topics::ALL.iter().copied().filter(|t| broker.partitions(t).is_some()).collect();
        if topics.is_empty() {
            bail!("no catalogue topics on {}: create them with `shopctl topics create`", broker.addr);
        }
        let reader = Reader::open(broker, &topics, start).await?;
        Ok(Watch { reader, only, events: HashMap::new(), topics: topics.len() })
    }

    fn keep(&mut self, record: &Record) -> Option<(String, Event)> {
        let (correlation_id, event) = event_of(record)?;
        if self.only.as_ref().is_some_and(|only| *only != correlation_id) {
            return None;
        }
        self.events.entry(correlation_id.clone()).or_default().push(event.clone());
        Some((correlation_id, event))
    }

    /// Reads up to the end offsets the topics had when opened.
    pub async fn catch_up(&mut self, stall: Duration) -> Result<()> {
        let mut records = Vec::new();
        self.reader.read_to_end(stall, |record| records.push(record)).await?;
        for record in &records {
            self.keep(record);
        }
        Ok(())
    }

    /// Waits up to `wait` for the next record; returns it if it was kept.
    pub async fn poll(&mut self, wait: Duration) -> Option<(String, Event)> {
        let record = self.reader.next(wait).await?;
        self.keep(&record)
    }

    pub fn events(&self, correlation_id: &str) -> &[Event] {
        self.events.get(correlation_id).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn status(&self, order_id: &str) -> Option<OrderStatus> {
        status(self.events(order_id))
    }

    /// Whether an event of `event_type` was seen for `correlation_id`.
    pub fn has(&self, correlation_id: &str, event_type: &str) -> Option<&Event> {
        self.events(correlation_id).iter().find(|e| e.event_type == event_type)
    }

    /// Polls until `done` holds or `deadline` passes; says which.
    pub async fn wait_until(&mut self, deadline: Instant, mut done: impl FnMut(&Watch) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.poll(left.min(Duration::from_millis(200))).await;
        }
    }
}
