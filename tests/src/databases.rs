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
    /// The PostgreSQL server's admin URL.
    admin: String,
    created: Mutex<Vec<String>>,
}

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl Databases {
    pub fn new(backend: Backend) -> Databases {
        Databases::on_server(backend, postgres_admin_url())
    }

    /// Like [`Databases::new`], with PostgreSQL databases on the server at `admin`.
    pub fn on_server(backend: Backend, admin: String) -> Databases {
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        Databases { backend, dir: tempfile::tempdir().expect("temp dir"), prefix, admin, created: Mutex::default() }
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
                let admin = &self.admin;
                let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if !created.contains(&name) {
                    sqlx::any::install_default_drivers();
                    let mut conn = sqlx::AnyConnection::connect(admin)
                        .await
                        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test: {e}"));
                    conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create database");
                    created.push(name.clone());
                    *self.created.lock().unwrap_or_else(|p| p.into_inner()) = created;
                }
                replace_database(admin, &name)
            }
        }
    }

    /// Drops the PostgreSQL databases this test created.
    pub async fn drop_all(&self) {
        let names = std::mem::take(&mut *self.created.lock().unwrap_or_else(|p| p.into_inner()));
        if names.is_empty() {
            return;
        }
        let Ok(mut conn) = sqlx::AnyConnection::connect(&self.admin).await else { return };
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

/// A PostgreSQL server of a test's own (`scripts/postgres.sh start`), for
/// faults that would disturb other tests on the shared one: stopping it.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
    pub url: String,
}

impl OwnPostgres {
    pub async fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().expect("temp dir");
        // The server runs as the postgres user, who must reach its directory.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod temp dir");
        let mut server = OwnPostgres { dir, port: crate::broker::free_port(), url: String::new() };
        server.url = server.script("start");
        server
    }

    /// Fast shutdown: sessions are terminated, new connections refused.
    pub fn stop(&self) {
        self.script("stop");
    }

    /// Back on the same port, with its data.
    pub fn start_again(&self) {
        self.script("start");
    }

    fn script(&self, verb: &str) -> String {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh");
        let data = self.dir.path().join("pg");
        let mut command = std::process::Command::new(script);
        command.arg(verb).arg(&data);
        if verb == "start" {
            command.arg(self.port.to_string());
        }
        let output = command.output().expect("running scripts/postgres.sh");
        assert!(output.status.success(), "postgres.sh {verb}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        // Stopped already, or never started: nothing to report.
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh");
        let _ = std::process::Command::new(script).arg("stop").arg(self.dir.path().join("pg")).output();
    }
}
