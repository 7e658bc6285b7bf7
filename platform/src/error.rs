//! The platform's error type, and the one classification of failures that
//! decides what the consumer does with a record: retry it a bounded while, wait
//! out an outage for as long as it lasts, or dead-letter it.

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

/// Whether trying again can help, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// About the data, and passing: a lock conflict, a projection not caught up
    /// yet. Retried a bounded while, then dead-lettered.
    Transient,
    /// Undecodable, unknown version, broken invariant: retrying gives the same answer.
    Permanent,
    /// The machinery, not the record: database unreachable, pool exhausted, disk
    /// full. Nothing is wrong with the record, so it is never dead-lettered: it
    /// is retried for as long as the outage lasts, holding up only its partition.
    Infrastructure,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Infrastructure => "infrastructure",
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

    pub fn is_infrastructure(&self) -> bool {
        self.class == ErrorClass::Infrastructure
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

/// Lost connections, pool exhaustion, a server shutting down and a full disk
/// are outages; SQLite busy/locked, PostgreSQL serialisation failures, deadlocks
/// and lock timeouts pass with time; everything else is a bug or bad data and
/// will fail again.
pub fn classify_sqlx(error: &sqlx::Error) -> ErrorClass {
    use sqlx::Error as E;
    match error {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Tls(_) | E::Protocol(_) => {
            ErrorClass::Infrastructure
        }
        E::Database(db) => match db.code().as_deref() {
            // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
            Some(code) if matches!(sqlite_primary(code), Some(5 | 6)) => ErrorClass::Transient,
            // SQLite: SQLITE_IOERR (10), SQLITE_FULL (13), SQLITE_CANTOPEN (14).
            Some(code) if matches!(sqlite_primary(code), Some(10 | 13 | 14)) => ErrorClass::Infrastructure,
            // PostgreSQL: serialization_failure, deadlock_detected, lock_not_available.
            Some("40001" | "40P01" | "55P03") => ErrorClass::Transient,
            // PostgreSQL: too_many_connections, disk_full, out_of_memory, admin or
            // crash shutdown, cannot connect now, and the connection exceptions.
            Some("53300" | "53100" | "53200" | "57P01" | "57P02" | "57P03") => ErrorClass::Infrastructure,
            Some(code) if code.starts_with("08") => ErrorClass::Infrastructure,
            _ => ErrorClass::Permanent,
        },
        _ => ErrorClass::Permanent,
    }
}

/// The primary result code of a SQLite (extended) code; PostgreSQL's SQLSTATEs
/// are five characters with letters or a leading zero, never a plain small number.
fn sqlite_primary(code: &str) -> Option<u32> {
    code.parse::<u32>().ok().filter(|_| !code.starts_with('0') && code.len() < 5).map(|c| c & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_and_io_are_infrastructure() {
        assert_eq!(classify_sqlx(&sqlx::Error::PoolTimedOut), ErrorClass::Infrastructure);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(classify_sqlx(&sqlx::Error::Io(io)), ErrorClass::Infrastructure);
    }

    #[test]
    fn missing_rows_and_decoding_are_permanent() {
        assert_eq!(classify_sqlx(&sqlx::Error::RowNotFound), ErrorClass::Permanent);
        assert_eq!(classify_sqlx(&sqlx::Error::ColumnNotFound("x".into())), ErrorClass::Permanent);
    }

    #[test]
    fn sqlite_codes_include_extended_codes() {
        assert_eq!(sqlite_primary("5"), Some(5));
        assert_eq!(sqlite_primary("517"), Some(5)); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(sqlite_primary("6"), Some(6));
        assert_eq!(sqlite_primary("19"), Some(19)); // SQLITE_CONSTRAINT
        assert_eq!(sqlite_primary("3338"), Some(10)); // SQLITE_IOERR_FSYNC... (10 | 13<<8)
        assert_eq!(sqlite_primary("23505"), None); // PostgreSQL unique_violation
        assert_eq!(sqlite_primary("08006"), None); // PostgreSQL connection_failure
    }

    #[test]
    fn decode_errors_are_permanent() {
        let error: HandlerError = events::DecodeError::UnknownEventType("Nope".into()).into();
        assert_eq!(error.class, ErrorClass::Permanent);
    }
}
