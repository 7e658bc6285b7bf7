//! The end-to-end harness: starts a real Tansu broker on a free loopback port,
//! creates fresh databases (SQLite files or PostgreSQL databases), runs the six
//! services and the gateway simulator in-process, and gives tests a way to
//! publish messages and inspect each service's own database.

pub mod bench;
pub mod broker;
pub mod databases;
pub mod faults;
pub mod processes;
pub mod stack;

pub use broker::Broker;
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

/// Generates `sqlite::<name>` and `postgres::<name>` tests from one scenario
/// `async fn <name>(backend: Backend)`, so every scenario runs on both databases.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $name() { super::$name($crate::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $name() { super::$name($crate::Backend::Postgres).await } )*
        }
    };
}
