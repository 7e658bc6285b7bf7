//! `shopctl topics create|list`: the catalogue topics plus each service's
//! dead-letter (`<service>.dlq`) and replay (`<service>.replay`) topics, and a
//! listing with partition and message counts taken from the watermarks.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::cli::TopicsCommand;
use crate::output::Table;
use crate::{say, Globals};

/// Every topic the system uses: the catalogue, and each service's .dlq and
/// .replay topic (`events::access`, the table the ACLs come from too).
pub fn all_topics() -> Vec<String> {
    events::access::all_topics()
}

pub async fn run(globals: &Globals, command: TopicsCommand) -> Result<()> {
    match command {
        TopicsCommand::Create { partitions, replication } => create(globals, partitions, replication).await,
        TopicsCommand::List => list(globals).await,
    }
}

async fn create(globals: &Globals, partitions: i32, replication: i32) -> Result<()> {
    if partitions < 1 || replication < 1 {
        bail!("--partitions and --replication must be at least 1");
    }
    let mut broker = globals.connect().await?;
    let admin: AdminClient<DefaultClientContext> =
        broker.kafka.client_config().create().context("creating a Kafka admin client")?;
    let names = all_topics();
    let new_topics: Vec<NewTopic<'_>> =
        names.iter().map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication))).collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(broker.timeout.max(Duration::from_secs(30))));
    let results = admin.create_topics(&new_topics, &options).await.context("creating topics")?;
    let (mut created, mut existing, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(topic),
            Err((topic, code)) => failed.push(format!("{topic}: {code}")),
        }
    }
    for topic in &created {
        say!("created {topic} ({partitions} partitions)");
    }
    say!("{} topics created, {} already existed", created.len(), existing.len());
    if !failed.is_empty() {
        bail!("could not create {} topics: {}", failed.len(), failed.join("; "));
    }
    broker.refresh().await?;
    let uneven: Vec<String> = existing
        .iter()
        .filter_map(|t| broker.partitions(t).filter(|p| *p != partitions).map(|p| format!("{t} ({p})")))
        .collect();
    if !uneven.is_empty() {
        say!("note: existing topics keep their partition count: {}", uneven.join(", "));
    }
    Ok(())
}

async fn list(globals: &Globals) -> Result<()> {
    let broker = globals.connect().await?;
    let mut table = Table::new(&["TOPIC", "PARTITIONS", "MESSAGES"]);
    for (topic, partitions) in broker.topics() {
        let messages: i64 = broker.watermarks(topic).await?.iter().map(|(_, low, high)| high - low).sum();
        table.row(vec![topic.clone(), partitions.to_string(), messages.to_string()]);
    }
    if table.is_empty() {
        say!("no topics on {} (create them with `shopctl topics create`)", broker.addr);
    } else {
        say!("{}", table.render());
    }
    Ok(())
}
