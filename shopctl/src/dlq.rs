//! `shopctl dlq list|inspect|replay`: the dead-letter topics of the services.
//!
//! A dead letter is the failed record unchanged (key, value, headers) plus
//! `dlq.*` headers saying why (see `platform::dead_letter`). Replay publishes the
//! same key and value to the replay topic of the consumer group that failed it
//! (`<group>.replay`), so it reaches that service alone, with the original
//! headers and `replay.*` headers naming the dead letter. Replaying twice is
//! harmless: the services' inbox deduplicates by event id, and the value is
//! never altered.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use platform::dead_letter::{replay_headers, DeadLetterInfo};

use crate::broker::{self, Broker, Outgoing, Reader, Record, Start};
use crate::cli::{DlqCommand, DlqFilter};
use crate::output::{escape_bytes, now_ms, progress, rfc3339_ms, Table, PROGRESS_FROM};
use crate::{say, Globals};

/// A record of a dead-letter topic and what its headers say.
struct DeadLetter {
    record: Record,
    info: Option<DeadLetterInfo>,
}

impl DeadLetter {
    fn new(record: Record) -> DeadLetter {
        let info = DeadLetterInfo::from_headers(&record.header_list());
        DeadLetter { record, info }
    }

    /// When it failed: the first failure, else when it was written.
    fn failed_at_ms(&self) -> Option<i64> {
        self.info.as_ref().and_then(|i| i.first_failure_ms).or(self.record.timestamp_ms)
    }

    fn class(&self) -> &str {
        self.info.as_ref().map_or("?", |i| i.error_class.as_str())
    }

    fn original(&self) -> String {
        self.info.as_ref().map_or_else(
            || "?".to_owned(),
            |i| format!("{}/{}/{}", i.original_topic, i.original_partition, i.original_offset),
        )
    }

    fn error(&self) -> &str {
        self.info.as_ref().map_or("not a dead letter (no dlq.* headers)", |i| i.error_message.as_str())
    }

    fn name(&self) -> String {
        format!("{}/{}/{}", self.record.topic, self.record.partition, self.record.offset)
    }
}

/// `order-svc` → `order-svc.dlq`; a topic name is kept.
pub fn dlq_topic(arg: &str) -> String {
    if arg.ends_with(".dlq") {
        arg.to_owned()
    } else {
        events::topics::dead_letter(arg)
    }
}

fn require_dlq(broker: &Broker, topic: &str) -> Result<()> {
    if broker.partitions(topic).is_none() {
        let known: Vec<&str> = broker.topics().keys().map(String::as_str).filter(|t| t.ends_with(".dlq")).collect();
        bail!(
            "dead-letter topic {topic} does not exist on {} (dead-letter topics there: {})",
            broker.addr,
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        );
    }
    Ok(())
}

pub async fn run(globals: &Globals, command: DlqCommand) -> Result<()> {
    match command {
        DlqCommand::List { dlq, filter } => {
            let filter = Filter::parse(&filter, now_ms())?;
            list(globals, &dlq_topic(&dlq), &filter).await
        }
        DlqCommand::Inspect { dlq, offset, partition } => inspect(globals, &dlq_topic(&dlq), offset, partition).await,
        DlqCommand::Replay { dlq, filter, dry_run, limit, rate } => {
            let filter = Filter::parse(&filter, now_ms())?;
            if let Some(rate) = rate {
                if !(rate > 0.0 && rate.is_finite()) {
                    bail!("--rate must be a positive number of records per second, got {rate}");
                }
            }
            replay(globals, &dlq_topic(&dlq), &filter, dry_run, limit, rate).await
        }
    }
}

async fn read_all(broker: &Broker, topic: &str) -> Result<Vec<DeadLetter>> {
    require_dlq(broker, topic)?;
    let mut reader = Reader::open(broker, &[topic], Start::Beginning).await?;
    let mut records = Vec::new();
    reader.read_to_end(broker.timeout, |record| records.push(DeadLetter::new(record))).await?;
    records.sort_by_key(|d| (d.record.partition, d.record.offset));
    Ok(records)
}

async fn list(globals: &Globals, topic: &str, filter: &Filter) -> Result<()> {
    let broker = globals.connect().await?;
    let all = read_all(&broker, topic).await?;
    let total = all.len();
    let selected: Vec<&DeadLetter> = all.iter().filter(|d| filter.matches(d)).collect();
    let matching = if filter.is_empty() { String::new() } else { format!(", {} matching the filters", selected.len()) };
    say!("{topic}: {total} dead letter{}{matching}", if total == 1 { "" } else { "s" });
    if selected.is_empty() {
        return Ok(());
    }
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_topic: BTreeMap<String, usize> = BTreeMap::new();
    for dead in &selected {
        *by_class.entry(dead.class()).or_default() += 1;
        let original = dead.info.as_ref().map_or_else(|| "?".to_owned(), |i| i.original_topic.clone());
        *by_topic.entry(original).or_default() += 1;
    }
    say!();
    let mut counts = Table::new(&["ERROR CLASS", "COUNT"]);
    for (class, n) in by_class {
        counts.row(vec![class.to_owned(), n.to_string()]);
    }
    say!("{}", counts.render());
    say!();
    let mut counts = Table::new(&["ORIGINAL TOPIC", "COUNT"]);
    for (topic, n) in by_topic {
        counts.row(vec![topic, n.to_string()]);
    }
    say!("{}", counts.render());
    say!();
    let mut table = Table::new(&[
        "PARTITION",
        "OFFSET",
        "ORIGINAL (TOPIC/PARTITION/OFFSET)",
        "KEY",
        "CLASS",
        "ATTEMPTS",
        "FAILED AT",
        "ERROR",
    ])
    .limit(3, 24)
    .limit(7, 100);
    for dead in selected {
        table.row(vec![
            dead.record.partition.to_string(),
            dead.record.offset.to_string(),
            dead.original(),
            dead.record.key_text(),
            dead.class().to_owned(),
            dead.info.as_ref().map_or_else(String::new, |i| i.attempts.to_string()),
            dead.failed_at_ms().map(rfc3339_ms).unwrap_or_default(),
            dead.error().to_owned(),
        ]);
    }
    say!("{}", table.render());
    Ok(())
}

async fn inspect(globals: &Globals, topic: &str, offset: i64, partition: Option<i32>) -> Result<()> {
    let broker = globals.connect().await?;
    // Read the whole topic: Tansu's watermarks cannot say reliably which
    // partition holds an offset (see Reader::read_to_end), and DLQs are small.
    let mut found: Vec<DeadLetter> = read_all(&broker, topic)
        .await?
        .into_iter()
        .filter(|d| d.record.offset == offset && partition.is_none_or(|p| p == d.record.partition))
        .collect();
    let dead = match (found.len(), partition) {
        (1, _) => found.remove(0),
        (0, Some(p)) => bail!("{topic} partition {p} has no record at offset {offset}"),
        (0, None) => bail!("{topic} has no record at offset {offset} in any partition"),
        _ => {
            let list: Vec<String> = found.iter().map(|d| d.record.partition.to_string()).collect();
            bail!("offset {offset} exists in partitions {} of {topic}: choose one with --partition", list.join(", "))
        }
    };
    let record = &dead.record;
    say!("dead letter {}", dead.name());
    say!("timestamp: {}", record.timestamp_ms.map(rfc3339_ms).unwrap_or_else(|| "none".to_owned()));
    if let Some(info) = &dead.info {
        say!("original:  {}", dead.original());
        say!("group:     {}", info.consumer_group);
        say!(
            "class:     {} after {} attempt{}",
            info.error_class,
            info.attempts,
            if info.attempts == 1 { "" } else { "s" }
        );
        if let Some(ms) = info.first_failure_ms {
            say!("failed at: {}", rfc3339_ms(ms));
        }
        say!("error:     {}", info.error_message);
    } else {
        say!("note:      no dlq.* headers: this is not a dead letter written by the services");
    }
    match &record.key {
        Some(key) => say!("key:       {}", escape_bytes(key)),
        None => say!("key:       (none)"),
    }
    say!("headers:");
    if record.headers.is_empty() {
        say!("  (none)");
    }
    for (name, value) in &record.headers {
        match value {
            Some(value) => say!("  {name} = {}", escape_bytes(value)),
            None => say!("  {name} (no value)"),
        }
    }
    match record.value.as_deref() {
        None => say!("value: (none)"),
        Some(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(json) => {
                say!("value (JSON, {} bytes):", bytes.len());
                say!("{}", serde_json::to_string_pretty(&json).context("formatting the value")?);
            }
            Err(_) => {
                say!("value (not JSON, {} bytes):", bytes.len());
                say!("{}", escape_bytes(bytes));
            }
        },
    }
    Ok(())
}

async fn replay(
    globals: &Globals,
    topic: &str,
    filter: &Filter,
    dry_run: bool,
    limit: Option<usize>,
    rate: Option<f64>,
) -> Result<()> {
    let broker = globals.connect().await?;
    let all = read_all(&broker, topic).await?;
    let mut selected: Vec<&DeadLetter> = all.iter().filter(|d| filter.matches(d)).collect();
    let (not_dead_letters, _): (Vec<&DeadLetter>, Vec<&DeadLetter>) = selected.iter().partition(|d| d.info.is_none());
    for dead in &not_dead_letters {
        eprintln!("skipping {}: not a dead letter (no dlq.* headers)", dead.name());
    }
    selected.retain(|d| d.info.is_some());
    let matched = selected.len();
    if let Some(limit) = limit {
        selected.truncate(limit);
    }
    let target =
        |dead: &DeadLetter| events::topics::replay(dead.info.as_ref().map_or("", |i| i.consumer_group.as_str()));
    let mut targets: Vec<String> = selected.iter().map(|d| target(d)).collect();
    targets.sort_unstable();
    targets.dedup();
    let limited =
        if selected.len() < matched { format!(" (--limit {} of {matched})", selected.len()) } else { String::new() };
    if dry_run {
        let mut table = Table::new(&["PARTITION", "OFFSET", "ORIGINAL", "KEY", "CLASS", "REPLAY TO", "ERROR"])
            .limit(3, 24)
            .limit(6, 80);
        for dead in &selected {
            table.row(vec![
                dead.record.partition.to_string(),
                dead.record.offset.to_string(),
                dead.original(),
                dead.record.key_text(),
                dead.class().to_owned(),
                target(dead),
                dead.error().to_owned(),
            ]);
        }
        if !table.is_empty() {
            say!("{}", table.render());
        }
        say!(
            "dry run: would replay {} of {} dead letters from {topic}{limited}; nothing sent",
            selected.len(),
            all.len()
        );
        return Ok(());
    }
    if selected.is_empty() {
        say!("nothing to replay: no dead letter in {topic} matches ({} in total)", all.len());
        return Ok(());
    }
    broker.require(&targets)?;
    let now = now_ms();
    let outgoing: Vec<Outgoing> = selected
        .iter()
        .map(|dead| Outgoing {
            topic: target(dead),
            key: dead.record.key.clone(),
            value: dead.record.value.clone(),
            headers: replay_headers(&dead.record.header_list(), &dead.name(), now),
        })
        .collect();
    let producer = broker.producer()?;
    let bar = progress(outgoing.len(), "replaying");
    let delivered = broker::send_all(&producer, outgoing, rate, &bar).await?;
    if delivered.len() < PROGRESS_FROM {
        for (dead, at) in selected.iter().zip(&delivered) {
            say!(
                "replayed {} (original {}, key {}) to {}/{} offset {}",
                dead.name(),
                dead.original(),
                dead.record.key_text(),
                at.topic,
                at.partition,
                at.offset
            );
        }
    }
    let mut per_topic: BTreeMap<&str, usize> = BTreeMap::new();
    for at in &delivered {
        *per_topic.entry(at.topic.as_str()).or_default() += 1;
    }
    let per_topic: Vec<String> = per_topic.iter().map(|(t, n)| format!("{t} {n}")).collect();
    say!("replayed {} of {} dead letters from {topic}{limited} ({})", delivered.len(), all.len(), per_topic.join(", "));
    Ok(())
}

/// The parsed `--class/--error/--key/--since/--until/--offsets/--partition`.
#[derive(Debug, Default)]
struct Filter {
    class: Option<&'static str>,
    error: Option<String>,
    key: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    offsets: Option<(Option<i64>, Option<i64>)>,
    partition: Option<i32>,
}

impl Filter {
    fn parse(args: &DlqFilter, now_ms: i64) -> Result<Filter> {
        Ok(Filter {
            class: args.class.map(|c| c.as_str()),
            error: args.error.as_ref().map(|e| e.to_lowercase()),
            key: args.key.clone(),
            since_ms: args.since.as_deref().map(|t| parse_time("--since", t, now_ms)).transpose()?,
            until_ms: args.until.as_deref().map(|t| parse_time("--until", t, now_ms)).transpose()?,
            offsets: args.offsets.as_deref().map(parse_offsets).transpose()?,
            partition: args.partition,
        })
    }

    fn is_empty(&self) -> bool {
        self.class.is_none()
            && self.error.is_none()
            && self.key.is_none()
            && self.since_ms.is_none()
            && self.until_ms.is_none()
            && self.offsets.is_none()
            && self.partition.is_none()
    }

    fn matches(&self, dead: &DeadLetter) -> bool {
        let record = &dead.record;
        if self.partition.is_some_and(|p| p != record.partition) {
            return false;
        }
        if let Some((from, to)) = self.offsets {
            if from.is_some_and(|a| record.offset < a) || to.is_some_and(|b| record.offset > b) {
                return false;
            }
        }
        if self.key.as_ref().is_some_and(|k| record.key.as_deref() != Some(k.as_bytes())) {
            return false;
        }
        if self.class.is_some_and(|c| dead.info.as_ref().is_none_or(|i| i.error_class != c)) {
            return false;
        }
        if let Some(text) = &self.error {
            if dead.info.as_ref().is_none_or(|i| !i.error_message.to_lowercase().contains(text)) {
                return false;
            }
        }
        if self.since_ms.is_some() || self.until_ms.is_some() {
            let Some(at) = dead.failed_at_ms() else { return false };
            if self.since_ms.is_some_and(|since| at < since) || self.until_ms.is_some_and(|until| at >= until) {
                return false;
            }
        }
        true
    }
}

/// RFC 3339 (`2025-06-01T12:00:00Z`) or a duration ago (`10m`, `1h 30m`).
fn parse_time(flag: &str, text: &str, now_ms: i64) -> Result<i64> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text.trim()) {
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        return Ok(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX));
    }
    if let Ok(ago) = humantime::parse_duration(text.trim()) {
        return Ok(now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)));
    }
    bail!("{flag} \"{text}\": expected an RFC 3339 time (e.g. 2025-06-01T12:00:00Z) or a duration ago (e.g. 10m)")
}

/// `A..B` and `A..=B` (both inclusive), `A..`, `..B`, or `N`.
fn parse_offsets(text: &str) -> Result<(Option<i64>, Option<i64>)> {
    let bad = || anyhow!("--offsets \"{text}\": expected A..B (inclusive), A.., ..B or N, with whole numbers");
    let number = |s: &str| -> Result<Option<i64>> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<i64>().map(Some).map_err(|_| bad())
    };
    let (from, to) = match text.split_once("..") {
        Some((a, b)) => (number(a)?, number(b.strip_prefix('=').unwrap_or(b))?),
        None => {
            let n = number(text)?.ok_or_else(bad)?;
            (Some(n), Some(n))
        }
    };
    if let (Some(a), Some(b)) = (from, to) {
        if a > b {
            bail!("--offsets \"{text}\": the range is empty ({a} > {b})");
        }
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_ranges_are_inclusive() {
        assert_eq!(parse_offsets("3..5").expect("range"), (Some(3), Some(5)));
        assert_eq!(parse_offsets("3..=5").expect("range"), (Some(3), Some(5)));
        assert_eq!(parse_offsets("7..").expect("range"), (Some(7), None));
        assert_eq!(parse_offsets("..2").expect("range"), (None, Some(2)));
        assert_eq!(parse_offsets("4").expect("one"), (Some(4), Some(4)));
        assert!(parse_offsets("x..2").is_err());
        assert!(parse_offsets("5..3").is_err());
    }

    #[test]
    fn times_are_rfc3339_or_ago() {
        assert_eq!(parse_time("--since", "1970-01-01T00:00:01Z", 0).expect("rfc3339"), 1000);
        assert_eq!(parse_time("--since", "10m", 3_600_000).expect("ago"), 3_000_000);
        let error = parse_time("--since", "yesterday", 0).expect_err("invalid").to_string();
        assert!(error.starts_with("--since \"yesterday\": expected an RFC 3339 time"), "{error}");
    }

    #[test]
    fn dlq_names() {
        assert_eq!(dlq_topic("order-svc"), "order-svc.dlq");
        assert_eq!(dlq_topic("order-svc.dlq"), "order-svc.dlq");
    }
}
