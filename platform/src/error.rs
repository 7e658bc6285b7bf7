//! The platform's error type, and the transient/permanent classification that
//! decides between retrying a record and dead-lettering it.

use std::fmt;

/// Errors of the shared runtime itself (start-up, broker, database).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Database busy, broker hiccup, a projection not caught up yet: retry.
    Transient,
    /// Undecodable, unknown version, broken invariant: retrying gives the same answer.
    Permanent,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a handler returns when it cannot apply an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct HandlerError {
    pub class: ErrorClass,
    pub message: String,
}

impl HandlerError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Transient, message: message.into() }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Permanent, message: message.into() }
    }

    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        HandlerError { class: classify_sqlx(&error), message: format!("database: {error}") }
    }
}

impl From<events::DecodeError> for HandlerError {
    fn from(error: events::DecodeError) -> Self {
        HandlerError::permanent(error.to_string())
    }
}

/// SQLite busy/locked, PostgreSQL serialisation failures, deadlocks, lost
/// connections and pool exhaustion pass with time; everything else is a bug or bad
/// data and will fail again.
pub fn classify_sqlx(error: &sqlx::Error) -> ErrorClass {
    use sqlx::Error as E;
    match error {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Tls(_) | E::Protocol(_) => {
            ErrorClass::Transient
        }
        E::Database(db) => match db.code().as_deref() {
            // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
            Some(code) if is_sqlite_busy(code) => ErrorClass::Transient,
            // PostgreSQL: serialization_failure, deadlock_detected, lock_not_available,
            // too_many_connections, admin/crash shutdown, connection exceptions.
            Some("40001" | "40P01" | "55P03" | "53300" | "57P01" | "57P02" | "57P03") => ErrorClass::Transient,
            Some(code) if code.starts_with("08") => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        },
        _ => ErrorClass::Permanent,
    }
}

fn is_sqlite_busy(code: &str) -> bool {
    code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_and_io_are_transient() {
        assert_eq!(classify_sqlx(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(classify_sqlx(&sqlx::Error::Io(io)), ErrorClass::Transient);
    }

    #[test]
    fn missing_rows_and_decoding_are_permanent() {
        assert_eq!(classify_sqlx(&sqlx::Error::RowNotFound), ErrorClass::Permanent);
        assert_eq!(classify_sqlx(&sqlx::Error::ColumnNotFound("x".into())), ErrorClass::Permanent);
    }

    #[test]
    fn sqlite_busy_codes_include_extended_codes() {
        assert!(is_sqlite_busy("5"));
        assert!(is_sqlite_busy("517")); // SQLITE_BUSY_SNAPSHOT
        assert!(is_sqlite_busy("6"));
        assert!(!is_sqlite_busy("19")); // SQLITE_CONSTRAINT
        assert!(!is_sqlite_busy("23505"));
    }

    #[test]
    fn decode_errors_are_permanent() {
        let error: HandlerError = events::DecodeError::UnknownEventType("Nope".into()).into();
        assert_eq!(error.class, ErrorClass::Permanent);
    }
}
