//! The end-to-end harness: starts a real broker (Apache Kafka or Tansu) on free
//! loopback ports, creates fresh databases (SQLite files or PostgreSQL databases), runs the six
//! services and the gateway simulator in-process, and gives tests a way to
//! publish messages and inspect each service's own database.

pub mod bench;
pub mod broker;
pub mod databases;
pub mod faults;
pub mod processes;
pub mod stack;

pub use broker::{Broker, BrokerKind, BrokerStorage};
pub use databases::{Backend, Databases};
pub use stack::{Options, Stack};

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns `Ok`, or panics after `timeout` with the last
/// reason it gave: the failure message says what was still wrong.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(reason) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: still not true after {timeout:?}: {reason}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Fails the check (for [`eventually`]) when `actual != expected`.
pub fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, actual: T, expected: T) -> Result<(), String> {
    if actual == expected {
        Ok(())
    } else {
        Err(format!("{what}: expected {expected:?}, got {actual:?}"))
    }
}

/// The broker and the database a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub broker: BrokerKind,
    pub backend: Backend,
}

impl Target {
    pub const fn new(broker: BrokerKind, backend: Backend) -> Target {
        Target { broker, backend }
    }
}

/// Generates `on_kafka::sqlite::<name>`, `on_kafka::postgres::<name>`,
/// `on_tansu::sqlite::<name>` and `on_tansu::postgres::<name>` from one scenario
/// `async fn <name>(target: Target)`, so every scenario runs on both brokers and
/// both databases. `scripts/test.sh` narrows the brokers with `TEST_BROKER`
/// (`--skip on_kafka` or `--skip on_tansu`: a broker left out shows as
/// filtered, never as passed), so a test bound to one broker says so in its
/// name the same way.
#[macro_export]
macro_rules! on_every_target {
    ($($name:ident),* $(,)?) => {
        $crate::on_every_target!(@broker on_kafka Kafka $($name),*);
        $crate::on_every_target!(@broker on_tansu Tansu $($name),*);
    };
    (@broker $module:ident $kind:ident $($name:ident),*) => {
        mod $module {
            $crate::on_every_target!(@database $kind sqlite Sqlite $($name),*);
            $crate::on_every_target!(@database $kind postgres Postgres $($name),*);
        }
    };
    (@database $kind:ident $module:ident $backend:ident $($name:ident),*) => {
        mod $module {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $name() {
                   let target = $crate::Target::new($crate::BrokerKind::$kind, $crate::Backend::$backend);
                   super::super::$name(target).await
               } )*
        }
    };
}

/// `on_kafka::sqlite::<name>` and `on_kafka::postgres::<name>`, for scenarios
/// whose subject is the services, not the broker: Apache Kafka covers them, on
/// both databases, and `TEST_BROKER=tansu` filters them out by name.
#[macro_export]
macro_rules! on_kafka {
    ($($name:ident),* $(,)?) => {
        $crate::on_every_target!(@broker on_kafka Kafka $($name),*);
    };
}
