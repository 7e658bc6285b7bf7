//! The transactional outbox. A [`Tx`] is a database transaction that can also
//! emit events: they are written to the `outbox` table in the same transaction as
//! the state change, so there is no state change without its event and no event
//! without its state change. The [`relay`] publishes committed rows with the
//! idempotent producer, in commit order (the `seq` column, see `next_seq`), and
//! marks them sent once the broker acknowledged them (see `rows_to_mark`).
//!
//! Replicas of a service share one PostgreSQL database and so one outbox: one
//! relay at a time holds the outbox (see `hold_outbox`) and publishes every
//! replica's rows, so each row is published once and a key's rows stay in order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use events::{Envelope, Message};
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sqlx::{Any, AnyConnection, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{millis, now_ms, Db};
use crate::kafka::HeaderList;

/// Rows published per relay round.
const BATCH: i64 = 500;

/// How soon a relay looks again after finding the outbox held by another replica.
const BUSY_RETRY: Duration = Duration::from_millis(10);

/// A unit of work: one database transaction plus the events it emits.
pub struct Tx {
    tx: sqlx::Transaction<'static, Any>,
    producer: &'static str,
    sqlite: bool,
    cause: Option<(Envelope, Option<String>)>,
    projection_wait: Duration,
    pending: Vec<(Envelope, HeaderList)>,
    wake_after_commit: Vec<Arc<Notify>>,
}

impl Tx {
    pub async fn begin(db: &Db, producer: &'static str) -> Result<Tx, sqlx::Error> {
        Ok(Tx {
            tx: db.writer().begin().await?,
            producer,
            sqlite: db.is_sqlite(),
            cause: None,
            pending: Vec::new(),
            wake_after_commit: Vec::new(),
            projection_wait: Duration::ZERO,
        })
    }

    /// Events emitted from now on continue the saga of `cause`: same correlation
    /// id, causation id = its event id, same trace.
    pub(crate) fn caused_by(mut self, cause: &Envelope, trace_id: Option<&str>) -> Tx {
        self.cause = Some((cause.clone(), trace_id.map(str::to_owned)));
        self
    }

    /// See [`Tx::wait_for_projection`].
    pub(crate) fn projections_awaited_for(mut self, wait: Duration) -> Tx {
        self.projection_wait = wait;
        self
    }

    /// The one policy for an event that refers to something this service has not
    /// heard of yet (a user, a SKU, an order: facts that travel on other topics and
    /// may arrive later): while the event is younger than `PROJECTION_WAIT`, a
    /// transient error, so the record is retried and the fact can catch up; after
    /// that `Ok(())`, and the caller rejects (or records) the event with a clear
    /// reason. A partition therefore waits at most that long for what never comes.
    pub fn wait_for_projection(&self, missing: &str) -> Result<(), crate::HandlerError> {
        let age_ms = self.cause.as_ref().and_then(|(cause, _)| cause.occurred_at_ms()).map(|at| now_ms() - at);
        let wait_ms = millis(self.projection_wait);
        match age_ms {
            Some(age) if age < wait_ms => {
                Err(crate::HandlerError::transient(format!("{missing} not known yet (waiting up to {wait_ms} ms)")))
            }
            _ => Ok(()),
        }
    }

    /// The connection, for the handler's own statements.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Emits an event: it is published if and only if this transaction commits.
    pub fn emit(&mut self, message: impl Into<Message>) {
        let (envelope, trace) = match &self.cause {
            Some((cause, trace)) => (Envelope::caused_by(cause, message, self.producer), trace.as_deref()),
            None => (Envelope::new(message, self.producer), None),
        };
        let headers = HeaderList::for_envelope(&envelope, trace);
        self.pending.push((envelope, headers));
    }

    /// Emits an envelope built by the caller (e.g. one that continues a saga from
    /// a stored correlation id).
    pub fn emit_envelope(&mut self, envelope: Envelope) {
        let trace = self.cause.as_ref().and_then(|(_, t)| t.clone());
        let headers = HeaderList::for_envelope(&envelope, trace.as_deref());
        self.pending.push((envelope, headers));
    }

    /// Wakes `worker` once this transaction has committed (e.g. a job queue that
    /// must not look for the new row before it is visible).
    pub fn wake_after_commit(&mut self, worker: Arc<Notify>) {
        self.wake_after_commit.push(worker);
    }

    pub fn producer(&self) -> &'static str {
        self.producer
    }

    /// Writes the outbox rows, commits, and wakes the relay.
    pub async fn commit(mut self, relay: &Notify) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let insert = format!(
            "INSERT INTO outbox (seq, event_id, topic, message_key, event_type, envelope, headers, created_at)
             VALUES ({}, $1, $2, $3, $4, $5, $6, $7)",
            next_seq(self.sqlite)
        );
        for (envelope, headers) in &self.pending {
            let headers = serde_json::to_string(headers).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            let json = String::from_utf8(envelope.to_json()).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            sqlx::query(&insert)
                .bind(envelope.event_id.to_string())
                .bind(envelope.topic())
                .bind(envelope.key().to_owned())
                .bind(envelope.event_type())
                .bind(json)
                .bind(headers)
                .bind(now)
                .execute(&mut *self.tx)
                .await?;
        }
        let emitted = !self.pending.is_empty();
        self.tx.commit().await?;
        if emitted {
            relay.notify_one();
        }
        for worker in &self.wake_after_commit {
            worker.notify_one();
        }
        Ok(())
    }
}

/// The SQL expression that numbers a new outbox row; the relay sends rows in
/// this order, and it is commit order wherever order is promised.
///
/// SQLite runs one write transaction at a time and this is read inside it: one
/// past the highest number is commit order, for every row.
///
/// PostgreSQL takes the column's sequence. Numbers are drawn at insert, and two
/// transactions may commit the other way round; but order is only promised per
/// key, i.e. per aggregate (an order, a SKU, a user), and a transaction that
/// emits an aggregate's event has first written that aggregate's row (an insert,
/// an update, a compare-and-set it won) and holds the row's lock until it
/// commits, while its outbox rows are inserted last, in [`Tx::commit`]. So the
/// next transaction on that aggregate draws its numbers only after the previous
/// one committed: per key, seq order is commit order, and no row becomes visible
/// after a higher-numbered row of its key (which the relay could have sent
/// first). Events that merely share a key, with no row in common (two
/// independent deliveries of one order's notifications), have no order to keep.
fn next_seq(sqlite: bool) -> &'static str {
    if sqlite {
        "(SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox)"
    } else {
        "nextval(pg_get_serial_sequence('outbox', 'seq'))"
    }
}

struct OutboxRow {
    event_id: String,
    topic: String,
    key: String,
    envelope: String,
    headers: HeaderList,
}

/// Unsent rows, in commit order.
async fn unsent(conn: &mut AnyConnection) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT event_id, topic, message_key, envelope, headers FROM outbox
         WHERE sent_at IS NULL ORDER BY seq LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let headers: String = row.try_get("headers")?;
            Ok(OutboxRow {
                event_id: row.try_get("event_id")?,
                topic: row.try_get("topic")?,
                key: row.try_get("message_key")?,
                envelope: row.try_get("envelope")?,
                headers: serde_json::from_str(&headers).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            })
        })
        .collect()
}

/// Which rows of a batch, given as (topic, key, delivered) in relay order, are
/// marked sent: every delivered row except those behind a failed row of the same
/// topic and key. Those go out again with it next round, so that the key's
/// newest event is also its last on the partition (readers that keep the latest
/// per key, compaction included, end right; consumers' inbox absorbs the
/// repeats); marked, they would stay ahead of the failed row for good. Order is
/// promised per key only, so other keys of the partition are marked as usual.
fn rows_to_mark(batch: &[(&str, &str, bool)]) -> Vec<usize> {
    let mut failed: HashSet<(&str, &str)> = HashSet::new();
    let mut mark = Vec::with_capacity(batch.len());
    for (index, &(topic, key, delivered)) in batch.iter().enumerate() {
        if !delivered {
            failed.insert((topic, key));
        } else if !failed.contains(&(topic, key)) {
            mark.push(index);
        }
    }
    mark
}

async fn mark_sent(conn: &mut AnyConnection, ids: &[&str]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (2..ids.len() + 2).map(|i| format!("${i}")).collect();
    let sql = format!("UPDATE outbox SET sent_at = $1 WHERE event_id IN ({})", placeholders.join(", "));
    let mut query = sqlx::query(&sql).bind(now_ms());
    for id in ids {
        query = query.bind(*id);
    }
    query.execute(conn).await?;
    Ok(())
}

/// Number of rows not yet published.
pub async fn backlog(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetch_one(db.pool()).await
}

/// Unsent rows and the creation time (ms) of the oldest, for metrics.
pub async fn backlog_and_oldest(db: &Db) -> Result<(i64, Option<i64>), sqlx::Error> {
    let row =
        sqlx::query("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL").fetch_one(db.pool()).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// The advisory lock (PostgreSQL) a relay holds while it publishes: the word
/// "outbox" in ASCII. Each service has a database of its own, so one number
/// serves them all.
const OUTBOX_LOCK: i64 = 0x6f75_7462_6f78;

/// What a relay round came to.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// This many rows were published and marked sent.
    Sent(usize),
    /// Another replica holds the outbox and publishes these rows too.
    Busy,
}

/// On PostgreSQL, a transaction holding the outbox for this round, or `None`
/// when another replica holds it. The lock is a transaction-level advisory lock:
/// it is released when the round commits, and also when the replica dies in the
/// middle (its connection closes and the transaction aborts, rows unmarked), so
/// no lease has to expire before another replica takes over. Two relays reading
/// the same rows at once would each publish them, and one could send a key's
/// newer row before the other sent its older one.
async fn hold_outbox(db: &Db) -> Result<Option<Transaction<'static, Any>>, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let held: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(OUTBOX_LOCK).fetch_one(&mut *tx).await?;
    Ok(held.then_some(tx))
}

/// Publishes one batch.
async fn publish_batch(service: &'static str, db: &Db, producer: &FutureProducer) -> Result<Round, String> {
    if db.is_sqlite() {
        // SQLite is single-replica (see `App::build`): nothing to hold, and the
        // one write connection stays free for handlers while the batch is out.
        let mut read = db.pool().acquire().await.map_err(|e| format!("reading outbox: {e}"))?;
        let rows = unsent(&mut read).await.map_err(|e| format!("reading outbox: {e}"))?;
        drop(read);
        let (sent, outcome) = publish_rows(service, &rows, producer).await;
        let mut write = db.writer().acquire().await.map_err(|e| format!("marking outbox rows sent: {e}"))?;
        mark_sent(&mut write, &sent).await.map_err(|e| format!("marking outbox rows sent: {e}"))?;
        return outcome.map(Round::Sent);
    }
    let Some(mut tx) = hold_outbox(db).await.map_err(|e| format!("holding the outbox: {e}"))? else {
        return Ok(Round::Busy);
    };
    let rows = unsent(&mut tx).await.map_err(|e| format!("reading outbox: {e}"))?;
    let (sent, outcome) = publish_rows(service, &rows, producer).await;
    mark_sent(&mut tx, &sent).await.map_err(|e| format!("marking outbox rows sent: {e}"))?;
    tx.commit().await.map_err(|e| format!("marking outbox rows sent: {e}"))?;
    outcome.map(Round::Sent)
}

/// Publishes `rows`; returns the ids to mark sent, and how many they are or
/// what failed.
async fn publish_rows<'r>(
    service: &'static str,
    rows: &'r [OutboxRow],
    producer: &FutureProducer,
) -> (Vec<&'r str>, Result<usize, String>) {
    if rows.is_empty() {
        return (Vec::new(), Ok(0));
    }
    // Enqueue in order and await together: the idempotent producer keeps
    // per-partition order while the whole batch shares round trips.
    let deliveries = rows.iter().map(|row| {
        let record = FutureRecord::to(&row.topic).key(&row.key).payload(&row.envelope).headers(row.headers.to_kafka());
        producer.send(record, Timeout::After(Duration::from_secs(30)))
    });
    let results = join_all(deliveries).await;
    let mut failure = None;
    let mut outcomes = Vec::with_capacity(rows.len());
    for (row, result) in rows.iter().zip(results) {
        match &result {
            Ok(_) => {
                metrics::counter!("messages_produced_total", "service" => service, "topic" => row.topic.clone())
                    .increment(1);
            }
            Err((error, _)) => {
                failure.get_or_insert_with(|| format!("publishing {} to {}: {error}", row.event_id, row.topic));
            }
        }
        outcomes.push((row.topic.as_str(), row.key.as_str(), result.is_ok()));
    }
    let sent: Vec<&str> = rows_to_mark(&outcomes).into_iter().map(|i| rows[i].event_id.as_str()).collect();
    let outcome = match failure {
        Some(failure) => {
            let held = outcomes.iter().filter(|(_, _, delivered)| *delivered).count() - sent.len();
            Err(format!("{failure} ({held} delivered rows behind it on its key are sent again)"))
        }
        None => Ok(sent.len()),
    };
    (sent, outcome)
}

/// The outbox relay: wakes when a transaction committed events, and also polls,
/// since a row can be committed by another process (a replica, or this one before
/// a crash). On shutdown it drains what is committed, then flushes the producer.
pub async fn relay(
    service: &'static str,
    db: Db,
    producer: FutureProducer,
    wake: Arc<Notify>,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        match publish_batch(service, &db, &producer).await {
            Ok(Round::Sent(n)) if n as i64 == BATCH => continue,
            Ok(Round::Sent(_)) => failures = 0,
            // The replica holding the outbox read its batch before our rows
            // may have committed, and then waits for its own wake-up: look
            // again shortly rather than after a whole poll interval.
            Ok(Round::Busy) => {
                tokio::select! {
                    _ = tokio::time::sleep(BUSY_RETRY.min(poll)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "outbox relay: will retry");
                let pause = poll.saturating_mul(failures.min(10));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    // Final drain: whatever committed before shutdown goes out now, bounded so a
    // dead broker cannot hold the process (the rows stay for the next start).
    // Rows another replica holds are its to send.
    let drain = async {
        while let Ok(Round::Sent(n)) = publish_batch(service, &db, &producer).await {
            if n == 0 {
                break;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
        tracing::warn!("outbox relay: could not drain before shutdown; rows stay queued");
    }
    if let Err(error) = producer.flush(Timeout::After(Duration::from_secs(5))) {
        tracing::warn!(%error, "flushing producer at shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::rows_to_mark;

    #[test]
    fn every_delivered_row_is_marked_when_nothing_failed() {
        let batch = [("t", "a", true), ("t", "b", true), ("t", "a", true)];
        assert_eq!(rows_to_mark(&batch), vec![0, 1, 2]);
    }

    #[test]
    fn nothing_behind_a_failure_of_its_key_is_marked() {
        let batch = [
            ("order.events", "o1", true),  // before the failure: marked
            ("order.events", "o2", true),  // another key: marked
            ("order.events", "o1", false), // failed
            ("order.events", "o1", true),  // behind it: sent again next round
            ("order.events", "o2", true),  // another key, after the failure: marked
            ("order.events", "o1", true),  // still behind it
            ("user.events", "o1", true),   // same key, another topic: marked
        ];
        assert_eq!(rows_to_mark(&batch), vec![0, 1, 4, 6]);
    }

    #[test]
    fn a_failed_first_row_holds_back_its_whole_key() {
        let batch = [("t", "a", false), ("t", "a", true), ("t", "b", false), ("t", "a", true), ("t", "c", true)];
        assert_eq!(rows_to_mark(&batch), vec![4]);
    }

    #[test]
    fn an_empty_batch_marks_nothing() {
        assert!(rows_to_mark(&[]).is_empty());
    }
}
