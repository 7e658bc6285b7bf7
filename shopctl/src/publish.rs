//! `shopctl publish`, and the one sending path every message of this tool takes:
//! everything is validated before anything is sent; each message travels in an
//! envelope (producer `shopctl`) to its catalogue topic, keyed by its aggregate
//! id, with the standard headers; every delivery report is awaited.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use events::{Envelope, Message};
use platform::kafka::HeaderList;

use crate::broker::{self, Delivered, Outgoing};
use crate::cli::PublishArgs;
use crate::input::{self, Defaults, Parsed};
use crate::output::{progress, Table, PROGRESS_FROM};
use crate::{say, Globals};

/// The `producer` of every envelope this tool writes.
pub const PRODUCER: &str = "shopctl";

pub async fn run(globals: &Globals, args: PublishArgs) -> Result<()> {
    let defaults = Defaults { event_type: args.event_type.as_deref(), schema_version: args.schema_version };
    if let Some(event_type) = defaults.event_type {
        if events::spec(event_type).is_none() {
            bail!("{}", input::unknown_type(event_type));
        }
    }
    let (source, text) = read_input(&args)?;
    let (parsed, problems) = input::parse_document(&text, defaults);
    if !problems.is_empty() {
        let total = parsed.len() + problems.len();
        let mut report = format!(
            "nothing was sent: {} of {total} message{} from {source} {} invalid:",
            problems.len(),
            if total == 1 { "" } else { "s" },
            if problems.len() == 1 { "is" } else { "are" },
        );
        for problem in &problems {
            report.push_str(&format!("\n  {source} {problem}"));
        }
        bail!(report);
    }
    if parsed.is_empty() {
        bail!("nothing to send: {source} holds no messages");
    }
    if args.dry_run {
        let mut table = Table::new(&["INPUT", "EVENT TYPE", "TOPIC", "KEY"]);
        for Parsed { at, message } in &parsed {
            let key = message.key().to_owned();
            table.row(vec![at.to_string(), message.event_type().into(), message.topic().into(), key]);
        }
        say!("{}", table.render());
        say!("dry run: {} valid message{}, nothing sent", parsed.len(), if parsed.len() == 1 { "" } else { "s" });
        return Ok(());
    }
    let broker = globals.connect().await?;
    let sent = send(&broker, parsed.into_iter().map(|p| p.message).collect()).await?;
    report(&sent);
    Ok(())
}

/// The input text and a name for it in messages.
fn read_input(args: &PublishArgs) -> Result<(String, String)> {
    if let Some(payload) = &args.payload {
        return Ok(("--payload".to_owned(), payload.clone()));
    }
    match args.file.as_deref() {
        Some(path) if path != Path::new("-") => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok((path.display().to_string(), text))
        }
        _ => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("reading NDJSON messages from stdin (end with Ctrl-D; see --help for --payload/--file)");
            }
            let mut text = String::new();
            stdin.read_to_string(&mut text).context("cannot read stdin")?;
            Ok(("stdin".to_owned(), text))
        }
    }
}

/// Validates (again: shortcuts build messages directly) and delivers `messages`.
pub async fn send(broker: &broker::Broker, messages: Vec<Message>) -> Result<Vec<(Envelope, Delivered)>> {
    for message in &messages {
        message
            .validate()
            .map_err(|e| anyhow::anyhow!("{} field `{}`: {}", message.event_type(), e.field, e.reason))?;
    }
    let envelopes: Vec<Envelope> = messages.into_iter().map(|m| Envelope::new(m, PRODUCER)).collect();
    let mut topics: Vec<&str> = envelopes.iter().map(Envelope::topic).collect();
    topics.sort_unstable();
    topics.dedup();
    broker.require(&topics)?;
    let outgoing = envelopes
        .iter()
        .map(|envelope| Outgoing {
            topic: envelope.topic().to_owned(),
            key: Some(envelope.key().as_bytes().to_vec()),
            value: Some(envelope.to_json()),
            headers: HeaderList::for_envelope(envelope, None),
        })
        .collect();
    let producer = broker.producer()?;
    let bar = progress(envelopes.len(), "publishing");
    let delivered = broker::send_all(&producer, outgoing, None, &bar).await?;
    Ok(envelopes.into_iter().zip(delivered).collect())
}

/// One line per message for short runs, then a per-topic summary.
pub fn report(sent: &[(Envelope, Delivered)]) {
    if sent.len() < PROGRESS_FROM {
        for (envelope, at) in sent {
            say!(
                "sent {} key={} to {}/{} offset {}",
                envelope.event_type(),
                envelope.key(),
                at.topic,
                at.partition,
                at.offset
            );
        }
    }
    let mut per_topic: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, at) in sent {
        *per_topic.entry(at.topic.as_str()).or_default() += 1;
    }
    let topics: Vec<String> = per_topic.iter().map(|(topic, n)| format!("{topic} {n}")).collect();
    say!("sent {} message{} ({})", sent.len(), if sent.len() == 1 { "" } else { "s" }, topics.join(", "));
}
