//! Typed configuration, layered: built-in defaults that work on one machine, then
//! environment variables, then command-line flags. Every service flattens
//! [`PlatformConfig`] into its own `Config`.

use std::time::Duration;

use crate::kafka::{Connection, KafkaSecurityArgs};

/// Settings every service shares.
#[derive(Debug, Clone, clap::Args)]
pub struct PlatformConfig {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// How to authenticate to the brokers (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*,
    /// KAFKA_SSL_CA_LOCATION): see [`crate::kafka::connection`].
    #[command(flatten)]
    pub kafka_security: KafkaSecurityArgs,

    /// Address of the HTTP endpoints (/healthz, /readyz, /metrics). Port 0 picks
    /// a free port (logged at start-up).
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:0")]
    pub http_addr: String,

    /// Database URL: `sqlite://PATH` (created if missing) or `postgres://...`.
    /// Defaults to `sqlite://<data-dir>/<service>.db`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory for the default SQLite database.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: String,

    /// Kafka consumer group; defaults to the service name. Its dead-letter topic is
    /// `<group>.dlq`.
    #[arg(long, env = "GROUP_ID")]
    pub group_id: Option<String>,

    /// Static group membership (`group.instance.id`): a restarted instance takes
    /// its partitions back at once instead of waiting for its old session to
    /// expire. Must be unique per replica; unset means dynamic membership.
    #[arg(long, env = "GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,

    /// Longest time a consumer's fetch waits on the broker for records to arrive.
    /// Apache Kafka answers as soon as a record is there, so this only bounds idle
    /// fetches. Tansu 0.6 holds every fetch for the whole wait, adding it to every
    /// hop of the saga: use 10ms there (scripts/run-local.sh and the tests do).
    #[arg(long, env = "KAFKA_FETCH_WAIT_MAX", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub kafka_fetch_wait_max: Duration,

    /// How long the group waits for a consumer that stopped heartbeating before
    /// it gives the consumer's partitions to others (Kafka's default). Longer
    /// than a broker restart, so that a consumer keeps its membership through
    /// one; a static member (GROUP_INSTANCE_ID) that restarts takes its
    /// partitions back at once anyway.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT", default_value = "45s", value_parser = humantime::parse_duration)]
    pub kafka_session_timeout: Duration,

    /// Partitions for topics this service creates if they are missing.
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 3)]
    pub topic_partitions: i32,

    /// Replication factor for topics this service creates.
    #[arg(long, env = "TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,

    /// Transient failures: attempts before a record is dead-lettered.
    #[arg(long, env = "RETRY_MAX_ATTEMPTS", default_value_t = 8)]
    pub retry_max_attempts: usize,

    /// Transient failures: first back-off delay (e.g. `50ms`).
    #[arg(long, env = "RETRY_MIN_DELAY", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub retry_min_delay: Duration,

    /// Transient failures: longest single back-off delay.
    #[arg(long, env = "RETRY_MAX_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub retry_max_delay: Duration,

    /// Transient failures: total back-off time before a record is dead-lettered.
    #[arg(long, env = "RETRY_MAX_ELAPSED", default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_max_elapsed: Duration,

    /// How often the outbox relay looks for unsent rows when nothing woke it.
    #[arg(long, env = "OUTBOX_POLL_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub outbox_poll_interval: Duration,

    /// How long a published outbox row is kept (for inspection) before the
    /// pruner deletes it. A row not yet published is never deleted.
    #[arg(long, env = "OUTBOX_RETENTION", default_value = "1d", value_parser = humantime::parse_duration)]
    pub outbox_retention: Duration,

    /// How long the inbox remembers the id of an applied event, so that its
    /// redelivery is a no-op. Keep it at least the retention of the topics the
    /// service reads, dead-letter topics included (Kafka's default, 7 days):
    /// a record older than that is gone from the broker and cannot come back.
    #[arg(long, env = "INBOX_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub inbox_retention: Duration,

    /// How often the pruner deletes outbox rows and inbox ids past their
    /// retention (OUTBOX_RETENTION, INBOX_RETENTION).
    #[arg(long, env = "PRUNE_INTERVAL", default_value = "1m", value_parser = nonzero_duration)]
    pub prune_interval: Duration,

    /// SQLite only: how long a statement waits for the write lock before failing
    /// as busy (a transient error, retried).
    #[arg(long, env = "DATABASE_BUSY_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_busy_timeout: Duration,

    /// Fault injection, for the fault suite only: the probability (0..1) that the
    /// process aborts right after a record's transaction committed and before its
    /// offset is stored, the window at-least-once delivery must cover.
    #[arg(long, env = "CHAOS_CRASH_AFTER_COMMIT", default_value_t = 0.0)]
    pub chaos_crash_after_commit: f64,

    /// How long records may wait on a consumer's partitions, with none arriving
    /// and the committed offsets standing still, before it reports itself
    /// stalled (logged, counted, /readyz unready until records arrive; checked
    /// at this interval, so after 1-2 of them).
    #[arg(long, env = "CONSUMER_STALL_AFTER", default_value = "45s", value_parser = humantime::parse_duration)]
    pub consumer_stall_after: Duration,

    /// How long an event that refers to something not yet known here (a user,
    /// a SKU or an order that travels on another topic) is retried for that fact
    /// to arrive, before it is rejected or recorded with a clear reason. Must
    /// stay below what the transient retries allow (RETRY_*): checked at start.
    #[arg(long, env = "PROJECTION_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub projection_wait: Duration,

    /// Database connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8)]
    pub database_max_connections: u32,
}

impl PlatformConfig {
    /// Defaults for `service` against `brokers`, as the CLI would produce with no
    /// flags and an empty environment. Tests start from this.
    pub fn local(brokers: &str) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: PlatformConfig,
        }
        let mut config = Wrapper::parse_from(["service", "--brokers", brokers]).config;
        // The defaults must not pick up the caller's environment in tests.
        config.database_url = None;
        config.group_id = None;
        config.group_instance_id = None;
        config.kafka_security = KafkaSecurityArgs::plaintext();
        config
    }

    /// The brokers and how to reach them, checked (a bad combination of the
    /// KAFKA_SECURITY_PROTOCOL settings, or an unreadable password file, is a
    /// configuration error naming the setting).
    pub fn kafka(&self) -> Result<Connection, crate::Error> {
        self.kafka_security.connect(&self.brokers)
    }

    /// The shortest time the transient retries of one record can take, from
    /// the RETRY_* settings (back-off without jitter, which only adds).
    pub fn shortest_retry_window(&self) -> Duration {
        let mut delay = self.retry_min_delay;
        let mut total = Duration::ZERO;
        for _ in 1..self.retry_max_attempts {
            total += delay.min(self.retry_max_delay);
            delay = delay.saturating_mul(2);
        }
        total.min(self.retry_max_elapsed)
    }

    /// Settings that contradict each other, named.
    pub fn validate(&self) -> Result<(), String> {
        let window = self.shortest_retry_window();
        if self.projection_wait >= window {
            return Err(format!(
                "PROJECTION_WAIT ({:?}) must be shorter than the transient retries allow ({window:?} from \
                 RETRY_MAX_ATTEMPTS, RETRY_MIN_DELAY, RETRY_MAX_DELAY and RETRY_MAX_ELAPSED), or records waiting \
                 for a projection are dead-lettered instead of rejected",
                self.projection_wait
            ));
        }
        Ok(())
    }

    pub fn database_url_for(&self, service: &str) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}/{service}.db", self.data_dir.trim_end_matches('/')),
        }
    }

    pub fn group_id_for(&self, service: &str) -> String {
        self.group_id.clone().unwrap_or_else(|| service.to_owned())
    }
}

/// A humantime duration longer than zero, for periods of background tasks.
fn nonzero_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projection_wait_must_fit_in_the_retries() {
        let mut config = PlatformConfig::local("127.0.0.1:9092");
        // 50 ms doubling over 7 retries, capped at 5 s: 6.35 s.
        assert_eq!(config.shortest_retry_window(), Duration::from_millis(6350));
        assert!(config.validate().is_ok());
        config.projection_wait = Duration::from_secs(7);
        let error = config.validate().expect_err("longer than the retries");
        assert!(error.starts_with("PROJECTION_WAIT (7s) must be shorter"), "{error}");
        config.retry_max_attempts = 20;
        assert!(config.validate().is_ok(), "more attempts make room");
    }
}
