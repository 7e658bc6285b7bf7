//! Retention of the inbox and the outbox, which otherwise only grow. Every
//! service's [`crate::App`] runs [`run`]: every PRUNE_INTERVAL it deletes
//!
//! - outbox rows published more than OUTBOX_RETENTION ago (kept that long only
//!   for inspection); a row not yet published is never deleted, whatever its age;
//! - inbox ids applied more than INBOX_RETENTION ago. An id guards against a
//!   redelivery of its event, and a record can only be redelivered while its
//!   topic keeps it: past the topics' retention it cannot come back.
//!
//! Deletes run in batches of [`BATCH`] rows, each a statement of its own, so that
//! a large backlog (a database from before pruning existed) never holds the
//! writer for long: on SQLite the one write connection goes back to the
//! consumers between batches.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::{millis, now_ms, Db};
use crate::{Error, PlatformConfig};

/// Rows deleted per statement.
pub const BATCH: i64 = 1000;

/// What to keep, and how often to prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub outbox: Duration,
    pub inbox: Duration,
    pub interval: Duration,
}

impl Retention {
    pub fn of(config: &PlatformConfig) -> Retention {
        Retention { outbox: config.outbox_retention, inbox: config.inbox_retention, interval: config.prune_interval }
    }
}

/// Rows one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub outbox: u64,
    pub inbox: u64,
}

/// One pass at time `now` (ms): deletes everything past its retention, batch by
/// batch, stopping early (between batches) when `stop` is cancelled.
pub async fn prune(db: &Db, retention: &Retention, now: i64, stop: &CancellationToken) -> Result<Pruned, sqlx::Error> {
    // `sent_at < cutoff` is never true of an unsent row: its sent_at is NULL.
    let outbox = prune_table(
        db,
        "DELETE FROM outbox WHERE event_id IN (SELECT event_id FROM outbox WHERE sent_at < $1 LIMIT $2)",
        cutoff(now, retention.outbox),
        stop,
    )
    .await?;
    let inbox = prune_table(
        db,
        "DELETE FROM inbox WHERE event_id IN (SELECT event_id FROM inbox WHERE processed_at < $1 LIMIT $2)",
        cutoff(now, retention.inbox),
        stop,
    )
    .await?;
    Ok(Pruned { outbox, inbox })
}

async fn prune_table(db: &Db, delete: &str, cutoff: i64, stop: &CancellationToken) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    while !stop.is_cancelled() {
        let batch = sqlx::query(delete).bind(cutoff).bind(BATCH).execute(db.writer()).await?.rows_affected();
        deleted += batch;
        if batch < BATCH.unsigned_abs() {
            break;
        }
    }
    Ok(deleted)
}

fn cutoff(now: i64, retention: Duration) -> i64 {
    now.saturating_sub(millis(retention))
}

/// Prunes now and then every `retention.interval` until `shutdown`. A failed
/// pass is logged and tried again next time: nothing depends on it soon.
pub(crate) async fn run(
    service: &'static str,
    db: Db,
    retention: Retention,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    loop {
        match prune(&db, &retention, now_ms(), &shutdown).await {
            Ok(pruned) => {
                metrics::counter!("outbox_rows_pruned_total", "service" => service).increment(pruned.outbox);
                metrics::counter!("inbox_ids_pruned_total", "service" => service).increment(pruned.inbox);
                if pruned != Pruned::default() {
                    tracing::debug!(service, outbox = pruned.outbox, inbox = pruned.inbox, "pruned");
                }
            }
            Err(error) => tracing::warn!(service, %error, "pruning the inbox and outbox failed; will try again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.interval) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh SQLite database with the platform's tables, removed on drop.
    struct Scratch {
        db: Db,
        path: std::path::PathBuf,
    }

    impl Scratch {
        async fn new() -> Scratch {
            let path = std::env::temp_dir().join(format!("platform-retention-{}.db", uuid::Uuid::new_v4()));
            let db =
                Db::connect(&format!("sqlite://{}", path.display()), 2, Duration::from_secs(5)).await.expect("connect");
            db.migrate(&sqlx::migrate::Migrator::DEFAULT).await.expect("migrate");
            Scratch { db, path }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
            }
        }
    }

    async fn outbox_row(db: &Db, id: &str, created_at: i64, sent_at: Option<i64>) {
        sqlx::query(
            "INSERT INTO outbox (seq, event_id, topic, message_key, event_type, envelope, headers, created_at, sent_at)
             VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox), $1, 't', 'k', 'E', '{}', '[]', $2, $3)",
        )
        .bind(id)
        .bind(created_at)
        .bind(sent_at)
        .execute(db.writer())
        .await
        .expect("outbox row");
    }

    async fn ids(db: &Db, sql: &str) -> Vec<String> {
        sqlx::query_scalar(sql).fetch_all(db.pool()).await.expect("ids")
    }

    #[tokio::test]
    async fn prunes_sent_rows_and_old_inbox_ids_in_batches_and_never_an_unsent_row() {
        let scratch = Scratch::new().await;
        let db = &scratch.db;
        let now = 100 * 86_400_000;
        let day = 86_400_000;
        // More than a batch of old published rows, and of old inbox ids.
        let old = usize::try_from(BATCH).expect("batch") + 10;
        for i in 0..old {
            outbox_row(db, &format!("sent-old-{i:05}"), now - 3 * day, Some(now - 2 * day)).await;
            sqlx::query("INSERT INTO inbox (event_id, event_type, processed_at) VALUES ($1, 'E', $2)")
                .bind(format!("seen-old-{i:05}"))
                .bind(now - 8 * day)
                .execute(db.writer())
                .await
                .expect("inbox row");
        }
        outbox_row(db, "sent-recent", now - day / 2, Some(now - day / 2)).await;
        outbox_row(db, "unsent-ancient", 0, None).await;
        sqlx::query("INSERT INTO inbox (event_id, event_type, processed_at) VALUES ('seen-recent', 'E', $1)")
            .bind(now - 6 * day)
            .execute(db.writer())
            .await
            .expect("inbox row");

        let retention = Retention {
            outbox: Duration::from_secs(86_400),
            inbox: Duration::from_secs(7 * 86_400),
            interval: Duration::from_secs(60),
        };
        let pruned = prune(db, &retention, now, &CancellationToken::new()).await.expect("prune");
        assert_eq!(pruned, Pruned { outbox: old as u64, inbox: old as u64 });
        assert_eq!(ids(db, "SELECT event_id FROM outbox ORDER BY seq").await, ["sent-recent", "unsent-ancient"]);
        assert_eq!(ids(db, "SELECT event_id FROM inbox").await, ["seen-recent"]);

        // A stopped pruner deletes nothing more.
        let stopped = CancellationToken::new();
        stopped.cancel();
        let later = now + 30 * day;
        assert_eq!(prune(db, &retention, later, &stopped).await.expect("prune"), Pruned::default());
        let pruned = prune(db, &retention, later, &CancellationToken::new()).await.expect("prune");
        assert_eq!(pruned, Pruned { outbox: 1, inbox: 1 });
        assert_eq!(ids(db, "SELECT event_id FROM outbox").await, ["unsent-ancient"]);
        db.close().await;
    }

    #[test]
    fn cutoff_saturates() {
        assert_eq!(cutoff(10_000, Duration::from_secs(1)), 9_000);
        assert_eq!(cutoff(10_000, Duration::MAX), 10_000 - i64::MAX);
        assert_eq!(cutoff(i64::MIN + 1, Duration::from_secs(1)), i64::MIN);
    }
}
