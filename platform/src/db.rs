//! The database: one pool per service through sqlx's Any driver, so the same SQL
//! text runs on SQLite (embedded default) and PostgreSQL (staging, replicas).
//! Portable SQL only: `$N` placeholders, TEXT ids, BIGINT money and milliseconds.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::Error;

/// The shared tables: inbox (processed event ids) and outbox (events to publish).
static PLATFORM_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// Where write transactions run ([`Db::writer`]): on SQLite a pool of its own
    /// with one connection, on PostgreSQL the same pool as reads.
    writer: AnyPool,
    sqlite: bool,
}

impl Db {
    /// Connects, creating the SQLite file (and its directory) if needed.
    pub async fn connect(url: &str, max_connections: u32, busy_timeout: Duration) -> Result<Db, Error> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite { prepare_sqlite_url(url)? } else { url.to_owned() };
        let options: AnyConnectOptions = url.parse()?;
        let options = options.log_statements(tracing::log::LevelFilter::Trace);
        let pool_options = |size: u32| {
            AnyPoolOptions::new().max_connections(size).acquire_timeout(Duration::from_secs(10)).after_connect(
                move |conn, _| {
                    Box::pin(async move {
                        if sqlite {
                            // WAL lets readers run beside the single writer; NORMAL is
                            // durable across process crashes, which is what we promise.
                            let pragmas = format!(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                                 PRAGMA busy_timeout = {};",
                                busy_timeout.as_millis()
                            );
                            conn.execute(pragmas.as_str()).await?;
                        }
                        Ok(())
                    })
                },
            )
        };
        if !sqlite {
            let pool = pool_options(max_connections).connect_with(options).await?;
            return Ok(Db { writer: pool.clone(), pool, sqlite });
        }
        // SQLite runs one write transaction at a time. Writers therefore share one
        // connection, and wait for it in the pool's queue (asynchronously, first come
        // first served) rather than in SQLite's busy handler, which sleeps 1, 2, 5,
        // 10... ms between tries and so turns contention between partition workers
        // into latency. One connection also keeps its page cache: in WAL mode a
        // connection drops its cache whenever another one has written. Reads use the
        // other connections.
        let writer = pool_options(1).connect_with(options.clone()).await?;
        let pool = pool_options(max_connections.saturating_sub(1).max(1)).connect_with(options).await?;
        Ok(Db { pool, writer, sqlite })
    }

    /// Applies the platform's tables, then the service's own migrations. The two
    /// sets share sqlx's bookkeeping table, so each ignores the other's versions.
    pub async fn migrate(&self, service: &Migrator) -> Result<(), Error> {
        for source in [&PLATFORM_MIGRATIONS, service] {
            let mut migrator = Migrator { migrations: source.migrations.clone(), ..Migrator::DEFAULT };
            migrator.set_ignore_missing(true);
            migrator.run(&self.writer).await?;
        }
        Ok(())
    }

    /// The pool for reads (and, on PostgreSQL, everything).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool write transactions begin on (see [`crate::Tx`]).
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// The lock a service holds on its SQLite database for as long as it runs
/// ([`SingleReplica::hold`]).
#[derive(Debug)]
pub struct SingleReplica {
    _lock: std::fs::File,
}

impl SingleReplica {
    /// SQLite is single-replica: a second process on the same file would relay
    /// the same outbox rows and work the same queue, with nothing to share the
    /// work out (PostgreSQL's row locks). So a service on SQLite locks
    /// `<file>.lock` beside its database and refuses to start, naming the
    /// holder, when another one has it. The lock is the kernel's (flock): it
    /// goes with the process, SIGKILL included. `None` on PostgreSQL.
    pub fn hold(url: &str) -> Result<Option<SingleReplica>, Error> {
        if !url.starts_with("sqlite:") {
            return Ok(None);
        }
        let path = format!("{}.lock", sqlite_path(url));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::Config(format!("cannot open {path}: {e}")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(Error::Config(format!(
                    "another process (pid {}) already runs on {}: SQLite is single-replica; run replicas on \
                     PostgreSQL (DATABASE_URL=postgres://...)",
                    holder.trim(),
                    sqlite_path(url)
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::Config(format!("cannot lock {path}: {e}"))),
        }
        use std::io::Write;
        // For the message above; a stale pid from a dead holder is never read,
        // since its lock died with it.
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .map_err(|e| Error::Config(format!("cannot write {path}: {e}")))?;
        Ok(Some(SingleReplica { _lock: file }))
    }
}

/// The file of a `sqlite:` URL.
fn sqlite_path(url: &str) -> &str {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    path.split('?').next().unwrap_or_default()
}

fn prepare_sqlite_url(url: &str) -> Result<String, Error> {
    let path = sqlite_path(url);
    if path.is_empty() || path == ":memory:" {
        return Err(Error::Config(format!(
            "`{url}`: a service database must be a file, since the inbox and outbox must survive restarts"
        )));
    }
    if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("cannot create database directory {}: {e}", dir.display())))?;
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(if url.contains("mode=") { url.to_owned() } else { format!("{url}{separator}mode=rwc") })
}

/// Milliseconds since the Unix epoch, the time format of every table.
pub fn now_ms() -> i64 {
    millis(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default())
}

/// A duration in the tables' unit, milliseconds, saturating (a setting of
/// years is still a number to add to `now_ms` with `saturating_add`).
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
