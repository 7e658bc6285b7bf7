//! The system as separate OS processes: the real binaries (six services and the
//! gateway simulator), configured through the environment exactly as an operator
//! would, against a durable broker. Used where in-process services
//! cannot tell the truth: SIGKILL, restarts, per-service memory, and several
//! replicas of a service on one database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use platform::kafka::SecurityProtocol;

use crate::broker::free_port;
use crate::stack::SERVICES;
use crate::{Broker, BrokerStorage, Databases, Target};

/// Which build of the binaries to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

/// Builds the workspace binaries (a no-op when up to date) and returns their directory.
pub fn build_binaries(profile: Profile) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.current_dir(&root).args(["build", "--quiet", "--bins", "--workspace"]);
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("running cargo build");
    assert!(status.success(), "cargo build --bins failed");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    target.join(if profile == Profile::Release { "release" } else { "debug" })
}

pub struct ProcessStack {
    pub broker: Broker,
    pub dbs: Databases,
    pub gateway_url: String,
    bin_dir: PathBuf,
    gateway: Option<Child>,
    /// By service and replica (0-based).
    services: HashMap<(&'static str, usize), Child>,
    http: HashMap<(&'static str, usize), u16>,
    /// Replicas of every service ([`ProcessStack::start_replicated`]).
    pub replicas: usize,
    /// Extra environment for every service (e.g. retry or deadline settings).
    pub env: Vec<(String, String)>,
    logs: PathBuf,
}

impl ProcessStack {
    /// A durable broker, the gateway simulator and the six services, each a process.
    pub async fn start(target: Target, profile: Profile, env: Vec<(String, String)>) -> ProcessStack {
        ProcessStack::start_in(target, build_binaries(profile), BrokerStorage::Durable, env).await
    }

    /// Like [`ProcessStack::start`], with binaries already built in `bin_dir` and a
    /// choice of broker storage (the benchmark runs Tansu on its memory engine).
    pub async fn start_in(
        target: Target,
        bin_dir: PathBuf,
        storage: BrokerStorage,
        env: Vec<(String, String)>,
    ) -> ProcessStack {
        let dbs = Databases::new(target.backend);
        let broker = Broker::start(target.broker, dbs.dir(), storage).await;
        ProcessStack::start_on(broker, dbs, bin_dir, env).await
    }

    /// The gateway simulator and the six services against a broker already running
    /// (a Kafka cluster, say).
    pub async fn start_on(
        broker: Broker,
        dbs: Databases,
        bin_dir: PathBuf,
        env: Vec<(String, String)>,
    ) -> ProcessStack {
        ProcessStack::start_replicated(broker, dbs, bin_dir, env, 1).await
    }

    /// `replicas` processes of every service, sharing each service's database
    /// (PostgreSQL: SQLite is single-replica) and consumer group.
    pub async fn start_replicated(
        broker: Broker,
        dbs: Databases,
        bin_dir: PathBuf,
        env: Vec<(String, String)>,
        replicas: usize,
    ) -> ProcessStack {
        let logs = dbs.dir().join("logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let gateway_port = free_port();
        let mut stack = ProcessStack {
            broker,
            dbs,
            gateway_url: format!("http://127.0.0.1:{gateway_port}"),
            bin_dir,
            gateway: None,
            services: HashMap::new(),
            http: HashMap::new(),
            replicas,
            env,
            logs,
        };
        stack.start_gateway();
        for replica in 0..replicas {
            for service in SERVICES {
                stack.start_replica(service, replica, &[]).await;
            }
        }
        stack
    }

    fn log_file(&self, name: &str) -> Stdio {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .expect("log file");
        Stdio::from(file)
    }

    /// The binary `name` this stack runs.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn log_dir(&self) -> &Path {
        &self.logs
    }

    pub fn start_gateway(&mut self) {
        let listen = self.gateway_url.trim_start_matches("http://").to_owned();
        let child = Command::new(self.bin("gateway-sim"))
            .env("GATEWAY_LISTEN", &listen)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(self.log_file("gateway-sim"))
            .spawn()
            .expect("start gateway-sim");
        let url = format!("{}/healthz", self.gateway_url);
        let child = self.gateway.insert(child);
        if let Some(status) = tokio::task::block_in_place(|| wait_http(&url, child)) {
            panic!("gateway-sim exited during start-up ({status})");
        }
    }

    /// Starts `service` as a process and waits until it answers /readyz.
    pub async fn start_service(&mut self, service: &'static str) {
        self.start_replica(service, 0, &[]).await;
    }

    /// Like [`ProcessStack::start_service`], with extra environment for this start only.
    pub async fn start_service_with(&mut self, service: &'static str, extra: &[(&str, &str)]) {
        self.start_replica(service, 0, extra).await;
    }

    /// Starts replica `replica` of `service` (its own HTTP port and group
    /// instance id), with extra environment for this start only.
    pub async fn start_replica(&mut self, service: &'static str, replica: usize, extra: &[(&str, &str)]) {
        let database_url = self.dbs.url_for(service).await;
        let port = *self.http.entry((service, replica)).or_insert_with(free_port);
        let name = if replica == 0 { service.to_owned() } else { format!("{service}-{}", replica + 1) };
        let mut command = Command::new(self.bin(service));
        command
            .envs(self.kafka_security_env(service))
            .env("KAFKA_BROKERS", &self.broker.addr)
            .env("KAFKA_FETCH_WAIT_MAX", format!("{}ms", self.broker.kind.fetch_wait_max().as_millis()))
            .env("DATABASE_URL", database_url)
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("PAYMENT_GATEWAY_URL", &self.gateway_url)
            .env("DATABASE_MAX_CONNECTIONS", "4")
            .env("GROUP_INSTANCE_ID", format!("{service}-{}", replica + 1))
            .env("RUST_LOG", std::env::var("SERVICE_LOG").unwrap_or_else(|_| "info,librdkafka=off,rdkafka=off".into()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .stdout(self.log_file(&name))
            .stderr(self.log_file(&name));
        let child = command.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let child = self.services.entry((service, replica)).insert_entry(child).into_mut();
        let url = format!("http://127.0.0.1:{port}/readyz");
        if let Some(status) = tokio::task::block_in_place(|| wait_http(&url, child)) {
            // With extra settings (a chaos start, say) exiting early can be the
            // point; the caller looks. Otherwise it is a failure to start.
            assert!(!extra.is_empty(), "{name} exited during start-up ({status})");
        }
    }

    /// The process of `service` (its first replica).
    pub fn pid(&self, service: &'static str) -> Option<u32> {
        self.services.get(&(service, 0)).map(Child::id)
    }

    /// On a secure broker, the settings that make `service` its own principal,
    /// its password from a file (as compose's secrets give it); none otherwise.
    fn kafka_security_env(&self, service: &str) -> Vec<(&'static str, String)> {
        let security = self.broker.security_for(service);
        if security.protocol == SecurityProtocol::Plaintext {
            return Vec::new();
        }
        let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
        vec![
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
            ("KAFKA_SASL_USERNAME", security.username.unwrap_or_default()),
            ("KAFKA_SASL_PASSWORD_FILE", path(security.password_file)),
            ("KAFKA_SSL_CA_LOCATION", path(security.ca_location)),
        ]
    }

    /// The processes of every replica of `service` that is running.
    pub fn pids(&self, service: &'static str) -> Vec<u32> {
        (0..self.replicas).filter_map(|replica| self.services.get(&(service, replica)).map(Child::id)).collect()
    }

    /// SIGKILL: no shutdown, no flush, no final commit.
    pub fn kill(&mut self, service: &'static str) {
        self.kill_replica(service, 0);
    }

    /// SIGKILL of one replica.
    pub fn kill_replica(&mut self, service: &'static str, replica: usize) {
        if let Some(mut child) = self.services.remove(&(service, replica)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: the graceful path.
    pub fn terminate(&mut self, service: &'static str) {
        for replica in 0..self.replicas {
            if let Some(mut child) = self.services.remove(&(service, replica)) {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                let _ = child.wait();
            }
        }
    }

    /// Whether `service` (its first replica) is still running (it exits on
    /// purpose in crash tests).
    pub fn alive(&mut self, service: &'static str) -> bool {
        self.replica_alive(service, 0)
    }

    pub fn replica_alive(&mut self, service: &'static str, replica: usize) -> bool {
        self.services.get_mut(&(service, replica)).is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Peak resident memory (VmHWM) of a running service, in kB.
    pub fn peak_rss_kb(&self, service: &'static str) -> Option<u64> {
        let pid = self.pid(service)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    pub fn http_port(&self, service: &'static str) -> Option<u16> {
        self.http.get(&(service, 0)).copied()
    }

    /// Stops everything gracefully.
    pub async fn stop(mut self) {
        for service in SERVICES {
            self.terminate(service);
        }
        if let Some(mut gateway) = self.gateway.take() {
            let _ = gateway.kill();
            let _ = gateway.wait();
        }
        self.dbs.drop_all().await;
    }
}

impl Drop for ProcessStack {
    fn drop(&mut self) {
        for (_, mut child) in self.services.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut gateway) = self.gateway.take() {
            let _ = gateway.kill();
            let _ = gateway.wait();
        }
    }
}

/// Blocks until `url` (plain `http://host:port/path`) answers 200, or `child`,
/// the process behind it, exits (its status is returned then). Panics after
/// 30 s, with the last answer.
fn wait_http(url: &str, child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ready, answer) = http_get(url);
        if ready {
            return None;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        assert!(std::time::Instant::now() < deadline, "{url} did not become ready in 30 s: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal blocking GET, enough for readiness probes without an HTTP client:
/// whether it answered 200, and what it answered (or why there was no answer).
fn http_get(url: &str) -> (bool, String) {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = match std::net::TcpStream::connect(host) {
        Ok(stream) => stream,
        Err(error) => return (false, error.to_string()),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if let Err(error) = write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n") {
        return (false, error.to_string());
    }
    let mut answer = String::new();
    let _ = stream.take(4096).read_to_string(&mut answer);
    let ready = answer.split(' ').nth(1) == Some("200");
    (ready, answer)
}
