//! The shared runtime of the six services. Everything about *how* events move
//! lives here, once: configuration, telemetry, the database pool and migrations,
//! Kafka clients, the consumer loop with its inbox, retries and dead letters, the
//! transactional outbox and its relay, and the circuit breaker. Services supply
//! only *what* happens: a [`Handler`] and their own tables.

mod app;
pub mod breaker;
pub mod config;
pub mod consumer;
pub mod db;
pub mod dead_letter;
mod error;
pub mod http;
pub mod kafka;
pub mod outbox;
pub mod retention;
pub mod telemetry;

pub use app::App;
pub use config::PlatformConfig;
pub use consumer::Handler;
pub use db::Db;
pub use error::{classify_sqlx, Error, ErrorClass, HandlerError};
pub use outbox::Tx;
