//! A service's process: database, producer, outbox relay, its one consumer group
//! and any background workers, with an orderly shutdown.
//!
//! A producer that fails fatally (librdkafka refuses every record from then on)
//! ends the process with an error, for its supervisor to start it again.
//!
//! Shutdown order matters: consumers and workers stop first (finishing the record
//! in hand and committing offsets), then the relay drains the outbox and flushes
//! the producer, then the database closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer as _};
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consumer::{self, ConsumerSettings, Handler, RetryPolicy};
use crate::db::SingleReplica;
use crate::http::{self, ScrapeHook};
use crate::{kafka, outbox, retention, Db, Error, PlatformConfig};

type Task = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;
type TaskFactory = Box<dyn FnOnce(CancellationToken) -> Task + Send>;

/// A built service, ready to run.
pub struct App {
    service: &'static str,
    config: PlatformConfig,
    /// The checked broker connection every client of the service is built from.
    kafka: kafka::Connection,
    db: Db,
    producer: FutureProducer,
    relay: Arc<Notify>,
    tasks: Vec<(&'static str, TaskFactory)>,
    consumers: Vec<consumer::Health>,
    http: TcpListener,
    scrape_hooks: Vec<ScrapeHook>,
    /// Held until the database is closed (SQLite only).
    single_replica: Option<SingleReplica>,
}

impl App {
    /// Connects to the database (migrating it) and the broker (creating missing
    /// topics, including this service's dead-letter topic).
    ///
    /// On plaintext (the local system) a service creates every topic of the
    /// system, so that any one of them started first finds what it needs. With
    /// SASL it is its own principal, which the ACLs do not let create topics
    /// (the operator does: `shopctl topics create`) nor see others' topics: it
    /// waits only for the topics it touches (`events::access`).
    pub async fn build(service: &'static str, config: PlatformConfig, migrations: &Migrator) -> Result<App, Error> {
        config.validate().map_err(Error::Config)?;
        let kafka = config.kafka()?;
        let url = config.database_url_for(service);
        let db = Db::connect(&url, config.database_max_connections, config.database_busy_timeout).await?;
        let single_replica = SingleReplica::hold(&url)?;
        db.migrate(migrations).await?;
        let group = config.group_id_for(service);
        let (dlq, replay) = (events::topics::dead_letter(&group), events::topics::replay(&group));
        let mut topics: Vec<String> = match events::access::service(service).filter(|_| kafka.is_secure()) {
            Some(access) => access.consumes.iter().chain(access.produces).map(|t| (*t).to_owned()).collect(),
            None => events::topics::ALL.iter().map(|t| (*t).to_owned()).collect(),
        };
        topics.extend([dlq, replay]);
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        kafka::ensure_topics(&kafka, &topics, config.topic_partitions, config.topic_replication).await?;
        let producer = kafka::producer(&kafka)?;
        let http = TcpListener::bind(&config.http_addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on HTTP_ADDR {}: {e}", config.http_addr)))?;
        http::prometheus();
        tracing::info!(
            service, database = %redact(&url), kafka = %kafka,
            http = %http.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "built"
        );
        let (pruner_db, retention) = (db.clone(), retention::Retention::of(&config));
        let app = App {
            service,
            config,
            kafka,
            db,
            producer,
            relay: Arc::new(Notify::new()),
            tasks: Vec::new(),
            consumers: Vec::new(),
            http,
            scrape_hooks: Vec::new(),
            single_replica,
        };
        // Every service prunes its inbox and outbox; stopped with the workers.
        Ok(app.spawn("pruner", move |stop| retention::run(service, pruner_db, retention, stop)))
    }

    /// Where /healthz, /readyz and /metrics are served.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http.local_addr().unwrap_or_else(|_| ([127, 0, 0, 1], 0).into())
    }

    /// Runs `hook` before each /metrics scrape, to refresh gauges read from state.
    pub fn on_scrape<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.scrape_hooks.push(Arc::new(move || Box::pin(hook())));
        self
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Wakes the outbox relay; pass to [`outbox::Tx::commit`].
    pub fn relay(&self) -> Arc<Notify> {
        self.relay.clone()
    }

    /// Consumes `topics` in the service's consumer group with `handler`.
    pub fn consume<H: Handler>(mut self, topics: &[&'static str], handler: H) -> Self {
        let config = &self.config;
        let settings = ConsumerSettings {
            service: self.service,
            kafka: self.kafka.clone(),
            group_id: config.group_id_for(self.service),
            group_instance_id: config.group_instance_id.clone(),
            topics: topics.to_vec(),
            retry: RetryPolicy {
                max_attempts: config.retry_max_attempts,
                min_delay: config.retry_min_delay,
                max_delay: config.retry_max_delay,
                max_elapsed: config.retry_max_elapsed,
            },
            chaos_crash_after_commit: config.chaos_crash_after_commit,
            stall_after: config.consumer_stall_after,
            fetch_wait_max: config.kafka_fetch_wait_max,
            session_timeout: config.kafka_session_timeout,
            projection_wait: config.projection_wait,
            health: consumer::Health::default(),
        };
        self.consumers.push(settings.health.clone());
        let (db, producer, relay, handler) =
            (self.db.clone(), self.producer.clone(), self.relay.clone(), Arc::new(handler));
        self.tasks.push((
            "consumer",
            Box::new(move |stop| Box::pin(consumer::run(settings, db, producer, relay, handler, stop))),
        ));
        self
    }

    /// Runs a background worker until shutdown (stopped with the consumers).
    pub fn spawn<F, Fut>(mut self, name: &'static str, worker: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        self.tasks.push((name, Box::new(move |stop| Box::pin(worker(stop)))));
        self
    }

    /// Runs until `shutdown` is cancelled or a task fails, then shuts down in order.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let stop_work = CancellationToken::new();
        let stop_relay = CancellationToken::new();
        let stop_http = CancellationToken::new();
        let ops = http::Ops {
            service: self.service,
            db: self.db.clone(),
            producer: self.producer.clone(),
            consumers: self.consumers,
            hooks: self.scrape_hooks,
        };
        let http = tokio::spawn(http::serve(self.http, ops, stop_http.clone()));
        let relay = tokio::spawn(outbox::relay(
            self.service,
            self.db.clone(),
            self.producer.clone(),
            self.relay.clone(),
            self.config.outbox_poll_interval,
            stop_relay.clone(),
        ));
        let mut tasks = JoinSet::new();
        for (name, factory) in self.tasks {
            let task = factory(stop_work.clone());
            tasks.spawn(async move { (name, task.await) });
        }
        let mut failure = None;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            Some(done) = tasks.join_next() => failure = task_failure(done),
            reason = producer_failed(self.service, &self.producer) => failure = Some(Error::Other(format!(
                "the Kafka producer failed fatally ({reason}); stopping, so that the service is started \
                 again with a new one (committed events wait in the outbox, unfinished records on the broker)"
            ))),
        }
        tracing::info!(service = self.service, "stopping");
        stop_work.cancel();
        while let Some(done) = tasks.join_next().await {
            failure = failure.or(task_failure(done));
        }
        stop_relay.cancel();
        if let Err(error) = relay.await {
            tracing::error!(%error, "outbox relay panicked");
        }
        stop_http.cancel();
        let _ = http.await;
        self.db.close().await;
        drop(self.single_replica);
        tracing::info!(service = self.service, "stopped");
        failure.map_or(Ok(()), Err)
    }
}

/// Resolves once the producer has failed fatally. Checked each second: such a
/// failure is final and rare, so polling misses nothing and costs nothing.
async fn producer_failed(service: &'static str, producer: &FutureProducer) -> String {
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        check.tick().await;
        if let Some(reason) = kafka::fatal_error(producer.client()) {
            metrics::counter!("kafka_producer_fatal_errors_total", "service" => service).increment(1);
            tracing::error!(service, %reason, "the Kafka producer failed fatally");
            return reason;
        }
    }
}

fn task_failure(done: Result<(&'static str, Result<(), Error>), tokio::task::JoinError>) -> Option<Error> {
    match done {
        Ok((_, Ok(()))) => None,
        Ok((name, Err(error))) => Some(Error::Other(format!("{name} failed: {error}"))),
        Err(error) => Some(Error::Other(format!("task panicked: {error}"))),
    }
}

/// A database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
