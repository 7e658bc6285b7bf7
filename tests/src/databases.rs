//! Fresh databases per test: SQLite files in a temporary directory, or one
//! PostgreSQL database per service on the server named by `TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`). PostgreSQL being
//! unreachable fails the test: it is never skipped.

use std::sync::Mutex;

use sqlx::{Connection, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Databases {
    pub backend: Backend,
    dir: tempfile::TempDir,
    prefix: String,
    created: Mutex<Vec<String>>,
}

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl Databases {
    pub fn new(backend: Backend) -> Databases {
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        Databases { backend, dir: tempfile::tempdir().expect("temp dir"), prefix, created: Mutex::default() }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The database URL of `service`, creating the database if needed.
    pub async fn url_for(&self, service: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("sqlite://{}/{service}.db", self.dir.path().display()),
            Backend::Postgres => {
                let name = format!("{}_{}", self.prefix, service.replace('-', "_"));
                let admin = postgres_admin_url();
                let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if !created.contains(&name) {
                    sqlx::any::install_default_drivers();
                    let mut conn = sqlx::AnyConnection::connect(&admin)
                        .await
                        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test: {e}"));
                    conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create database");
                    created.push(name.clone());
                    *self.created.lock().unwrap_or_else(|p| p.into_inner()) = created;
                }
                replace_database(&admin, &name)
            }
        }
    }

    /// Drops the PostgreSQL databases this test created.
    pub async fn drop_all(&self) {
        let names = std::mem::take(&mut *self.created.lock().unwrap_or_else(|p| p.into_inner()));
        if names.is_empty() {
            return;
        }
        let Ok(mut conn) = sqlx::AnyConnection::connect(&postgres_admin_url()).await else { return };
        for name in names {
            let _ = conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
        }
    }
}

/// `postgres://u@h:p/admin?x` → `postgres://u@h:p/<name>?x`.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}
