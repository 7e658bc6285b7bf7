//! The broker under test, as child processes on free loopback ports: Apache Kafka
//! 4.4 (the jars and settings of `scripts/kafka.sh`: one node, or a cluster of
//! three or more) or Tansu 0.6 (`scripts/tansu.sh`). Every test that runs the saga
//! names its broker; `BrokerKind::any` picks one for tests about something else.
//!
//! [`Broker::start_secure`] runs a Kafka node as staging does: SASL_SSL with
//! SCRAM-SHA-512, the StandardAuthorizer, certificates and passwords made by
//! deploy/kafka/secrets.sh; [`Broker::apply_acls`] grants what `shopctl acls`
//! prints, as the admin certificate. Its clients then authenticate as a
//! principal ([`Broker::connection_as`]); the harness's own (the stack's
//! publisher, topic reads) as the operator ([`Broker::connection`]).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use platform::kafka::{Connection, KafkaSecurityArgs};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

/// Which Kafka-protocol broker a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Apache Kafka, the broker the system is proven on.
    Kafka,
    /// Tansu, the embedded default of the local system.
    Tansu,
}

impl BrokerKind {
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Kafka => "kafka",
            BrokerKind::Tansu => "tansu",
        }
    }

    /// The consumers' `KAFKA_FETCH_WAIT_MAX` for this broker: Kafka answers a fetch
    /// as soon as a record is there, so the default stands; Tansu 0.6 holds every
    /// fetch for the whole wait, so it must be short there.
    pub fn fetch_wait_max(self) -> Duration {
        match self {
            BrokerKind::Kafka => Duration::from_millis(500),
            BrokerKind::Tansu => Duration::from_millis(10),
        }
    }

    /// The brokers `TEST_BROKER` (`kafka`, `tansu` or `both`, the default) selects.
    pub fn selected() -> Vec<BrokerKind> {
        match std::env::var("TEST_BROKER").as_deref() {
            Ok("kafka") => vec![BrokerKind::Kafka],
            Ok("tansu") => vec![BrokerKind::Tansu],
            _ => vec![BrokerKind::Kafka, BrokerKind::Tansu],
        }
    }

    /// For tests whose subject is not the broker (the CLI, the benchmark's
    /// tools): Tansu when selected (it starts in a fraction of Kafka's time),
    /// else Kafka.
    pub fn any() -> BrokerKind {
        *BrokerKind::selected().last().unwrap_or(&BrokerKind::Kafka)
    }
}

/// Where the broker keeps its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStorage {
    /// Survives [`Broker::restart`] with its topics and offsets: Kafka always,
    /// Tansu on its sqlite engine.
    Durable,
    /// Tansu's memory engine: fast, gone when the broker stops. Kafka keeps its
    /// log on disk regardless.
    Memory,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// deploy/kafka/secrets.sh into `dir`: a CA, the broker's and the admin's
/// certificates, and a password per principal.
pub fn make_secrets(dir: &Path) -> PathBuf {
    let output =
        Command::new(repo().join("deploy/kafka/secrets.sh")).arg(dir).output().expect("deploy/kafka/secrets.sh");
    assert!(output.status.success(), "deploy/kafka/secrets.sh failed: {}", String::from_utf8_lossy(&output.stderr));
    dir.canonicalize().expect("the secrets directory")
}

pub fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let cached = repo().join(".tools/bin/tansu");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("tansu")
}

/// One broker process: a Kafka node, or Tansu.
struct Node {
    child: Option<Child>,
    port: u16,
    /// Kafka: its id, controller port, and directory (data, server.log).
    /// Tansu: the directory its sqlite:// path is resolved against.
    node_id: u32,
    controller_port: u16,
    dir: PathBuf,
}

pub struct Broker {
    pub kind: BrokerKind,
    /// Bootstrap servers: every node, comma separated.
    pub addr: String,
    nodes: Vec<Node>,
    /// Kafka: `controller.quorum.voters`; empty for Tansu.
    voters: String,
    cluster_id: String,
    /// Tansu's storage URL (`memory://tansu/` or `sqlite://FILE`).
    tansu_storage: String,
    /// Extra `KEY=VALUE` settings of every Kafka node (tests that need, say, a
    /// shorter minimum session timeout).
    overrides: Vec<String>,
    /// The directory of a [`Broker::scratch`] broker, removed with it.
    scratch: Option<tempfile::TempDir>,
    /// A secure Kafka node ([`Broker::start_secure`]).
    secure: Option<Secure>,
}

/// What the harness knows of a secure node.
#[derive(Debug, Clone)]
pub struct Secure {
    /// The output of deploy/kafka/secrets.sh: ca.crt, admin.pem, `<principal>.password`.
    pub secrets: PathBuf,
    /// The inter-broker listener, where the admin certificate is a super user.
    pub broker_port: u16,
}

impl Broker {
    /// One broker whose data lives under `dir`.
    pub async fn start(kind: BrokerKind, dir: &Path, storage: BrokerStorage) -> Broker {
        Broker::start_with(kind, dir, storage, &[]).await
    }

    /// A throwaway broker in a directory of its own (Tansu: memory engine), for
    /// tests and benchmarks that need nothing else.
    pub async fn scratch(kind: BrokerKind) -> Broker {
        let dir = tempfile::tempdir().expect("broker dir");
        let mut broker = Broker::start(kind, dir.path(), BrokerStorage::Memory).await;
        broker.scratch = Some(dir);
        broker
    }

    /// A Kafka node started by the caller some other way (the compose test runs
    /// the official image's own configuration step), listening at
    /// `127.0.0.1:port`, with its files in `dir`. Returns once a topic can be
    /// created. It can be killed, not restarted.
    /// `secure`: its secrets and admin listener, when it runs SASL_SSL.
    pub async fn adopt_kafka(child: Child, port: u16, dir: &Path, secure: Option<Secure>) -> Broker {
        let node = Node { child: Some(child), port, node_id: 1, controller_port: 0, dir: dir.to_owned() };
        let mut broker = Broker {
            kind: BrokerKind::Kafka,
            addr: format!("127.0.0.1:{port}"),
            nodes: vec![node],
            voters: String::new(),
            cluster_id: String::new(),
            tansu_storage: String::new(),
            overrides: Vec::new(),
            scratch: None,
            secure,
        };
        if let Err(why) = tokio::task::block_in_place(|| broker.wait_ready(1)) {
            panic!("the adopted Kafka did not start: {why}");
        }
        broker
    }

    /// Like [`Broker::start`], with extra Kafka settings (ignored by Tansu).
    pub async fn start_with(kind: BrokerKind, dir: &Path, storage: BrokerStorage, overrides: &[&str]) -> Broker {
        let storage = match storage {
            BrokerStorage::Durable => "sqlite://broker.db",
            BrokerStorage::Memory => "memory://tansu/",
        };
        Broker::spawn_all(kind, dir, 1, storage, overrides, false).await
    }

    /// One Kafka node with its client listener on SASL_SSL (SCRAM-SHA-512) and
    /// ACLs enforced (deploy/kafka/secure.properties), its secrets made in
    /// `dir/secrets` by deploy/kafka/secrets.sh, a SCRAM user for the operator
    /// and each service. No ACL is granted yet: see [`Broker::apply_acls`].
    pub async fn start_secure(dir: &Path) -> Broker {
        Broker::spawn_all(BrokerKind::Kafka, dir, 1, "", &[], true).await
    }

    /// `nodes` Kafka nodes, the first three of them controllers; topics get
    /// replication factor 3 and `min.insync.replicas=2` (deploy/kafka/cluster.properties).
    pub async fn kafka_cluster(nodes: usize, dir: &Path) -> Broker {
        assert!(nodes >= 3, "a Kafka cluster needs three controllers");
        Broker::spawn_all(BrokerKind::Kafka, dir, nodes, "", &[], false).await
    }

    /// Starts `count` nodes and waits until they are ready. A node that exits
    /// during start-up (most likely a port another process took since
    /// [`free_port`] saw it free) is started afresh on new ports, twice at most.
    async fn spawn_all(
        kind: BrokerKind,
        dir: &Path,
        count: usize,
        storage: &str,
        overrides: &[&str],
        secure: bool,
    ) -> Broker {
        let replication = if count >= 3 { 3 } else { 1 };
        let mut attempt = 1;
        loop {
            let mut broker = Broker::spawn_once(kind, dir, count, storage, overrides, secure);
            match tokio::task::block_in_place(|| broker.wait_ready(replication)) {
                Ok(()) => return broker,
                Err(why) if attempt < 3 => {
                    eprintln!("{} did not start (attempt {attempt}), trying new ports: {why}", kind.name());
                    broker.kill();
                    for node in &broker.nodes {
                        let _ = std::fs::remove_dir_all(&node.dir);
                    }
                    attempt += 1;
                }
                Err(why) => panic!("{} did not start: {why}", kind.name()),
            }
        }
    }

    fn spawn_once(
        kind: BrokerKind,
        dir: &Path,
        count: usize,
        storage: &str,
        overrides: &[&str],
        secure: bool,
    ) -> Broker {
        let nodes: Vec<Node> = (1..=count)
            .map(|i| Node {
                child: None,
                port: free_port(),
                node_id: i as u32,
                controller_port: free_port(),
                dir: dir.join(format!("{}-{i}", kind.name())),
            })
            .collect();
        let voters = match kind {
            BrokerKind::Kafka => nodes
                .iter()
                .take(3)
                .map(|n| format!("{}@127.0.0.1:{}", n.node_id, n.controller_port))
                .collect::<Vec<_>>()
                .join(","),
            BrokerKind::Tansu => String::new(),
        };
        let addr = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",");
        let cluster_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
        let mut broker = Broker {
            kind,
            addr,
            nodes,
            voters,
            cluster_id,
            tansu_storage: storage.to_owned(),
            overrides: overrides.iter().map(|s| (*s).to_owned()).collect(),
            scratch: None,
            secure: secure.then(|| Secure { secrets: make_secrets(&dir.join("secrets")), broker_port: free_port() }),
        };
        for index in 0..broker.nodes.len() {
            broker.spawn(index);
        }
        broker
    }

    /// Runs one of Kafka's command-line tools (`scripts/kafka.sh tool`) against
    /// this broker: `--bootstrap-server` is added. Panics, with its output, if
    /// the tool fails.
    pub fn kafka_tool(&self, class: &str, args: &[&str]) -> String {
        assert_eq!(self.kind, BrokerKind::Kafka, "Kafka's tools need Kafka");
        let output = Command::new(repo().join("scripts/kafka.sh"))
            .args(["tool", class, "--bootstrap-server", &self.addr])
            .args(args)
            .output()
            .expect("scripts/kafka.sh tool");
        let (stdout, stderr) =
            (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{class} {args:?} failed ({}): {stdout}{stderr}", output.status);
        stdout
    }

    /// The secure node's secrets and admin port, if it is one.
    pub fn secure(&self) -> Option<&Secure> {
        self.secure.as_ref()
    }

    /// How the harness's own clients reach the broker: plaintext, or on a
    /// secure node as the operator (who publishes the commands and may read
    /// every topic), like shopctl in staging.
    pub fn connection(&self) -> Connection {
        match &self.secure {
            Some(_) => self.connection_as(events::access::OPERATOR),
            None => Connection::plaintext(&self.addr),
        }
    }

    /// The settings a program authenticating as `principal` gets (its password
    /// from its file, as compose's secrets give it); plaintext on a node that
    /// is not secure.
    pub fn security_for(&self, principal: &str) -> KafkaSecurityArgs {
        match &self.secure {
            Some(secure) => KafkaSecurityArgs::sasl_ssl(
                principal,
                &secure.secrets.join(format!("{principal}.password")),
                &secure.secrets.join("ca.crt"),
            ),
            None => KafkaSecurityArgs::plaintext(),
        }
    }

    /// A connection as `principal` (see [`Broker::security_for`]).
    pub fn connection_as(&self, principal: &str) -> Connection {
        self.security_for(principal).connect(&self.addr).expect("the harness's security settings are valid")
    }

    /// A client of the super user: plaintext, or on a secure node the admin
    /// certificate on the inter-broker listener (TLS, client certificate
    /// required). For the harness only; programs never get a certificate.
    pub fn admin_config(&self) -> rdkafka::ClientConfig {
        let Some(secure) = &self.secure else { return platform::kafka::client_config(&self.addr) };
        let mut config = platform::kafka::client_config(format!("127.0.0.1:{}", secure.broker_port).as_str());
        let (ca, admin) = (secure.secrets.join("ca.crt"), secure.secrets.join("admin.pem"));
        config
            .set("security.protocol", "ssl")
            .set("ssl.ca.location", ca.display().to_string())
            .set("ssl.certificate.location", admin.display().to_string())
            .set("ssl.key.location", admin.display().to_string());
        config
    }

    /// Grants the ACLs `shopctl acls` prints (`events::access::acl_commands`),
    /// through Kafka's own ACL tool as the admin certificate, two tools at a
    /// time (each is a JVM of its own, seconds to start). Panics, with the
    /// tool's output, if one fails.
    pub fn apply_acls(&self) {
        let secure = self.secure.as_ref().expect("ACLs need a secure broker (Broker::start_secure)");
        let properties = secure.secrets.join("admin-client.properties");
        let admin = secure.secrets.join("admin.pem");
        std::fs::write(
            &properties,
            format!(
                "security.protocol=SSL\nssl.keystore.type=PEM\nssl.keystore.location={}\n\
                 ssl.truststore.type=PEM\nssl.truststore.location={}\n",
                admin.display(),
                secure.secrets.join("ca.crt").display()
            ),
        )
        .expect("write the admin client's properties");
        let bootstrap = format!("127.0.0.1:{}", secure.broker_port);
        let commands = events::access::acl_commands();
        for batch in commands.chunks(2) {
            std::thread::scope(|scope| {
                let runs: Vec<_> = batch
                    .iter()
                    .map(|args| {
                        let (bootstrap, properties) = (&bootstrap, &properties);
                        scope.spawn(move || {
                            let output = Command::new(repo().join("scripts/kafka.sh"))
                                .args(["tool", "org.apache.kafka.tools.AclCommand", "--bootstrap-server", bootstrap])
                                .arg("--command-config")
                                .arg(properties)
                                .args(args)
                                // A client JVM starts in half the time without the
                                // optimising compiler, which it never needs.
                                .env("KAFKA_HEAP_OPTS", "-Xms64m -Xmx256m -XX:TieredStopAtLevel=1")
                                .output()
                                .expect("scripts/kafka.sh tool");
                            (args, output)
                        })
                    })
                    .collect();
                for run in runs {
                    let (args, output) = run.join().expect("ACL tool thread");
                    assert!(
                        output.status.success(),
                        "AclCommand {} failed ({}): {}{}",
                        args.join(" "),
                        output.status,
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
            });
        }
    }

    /// Ready means a client can create a topic (with `replication` replicas), not
    /// a line in a log: the controller has a quorum and enough brokers registered.
    /// On a secure node, as the admin (no ACL exists yet).
    fn wait_ready(&mut self, replication: i32) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let admin: AdminClient<DefaultClientContext> = self.admin_config().create().map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let topic = NewTopic::new("harness.ready", 1, TopicReplication::Fixed(replication));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        loop {
            let exited = self.nodes.iter_mut().find_map(|node| match node.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(format!("node {} exited ({status})", node.node_id)),
                _ => None,
            });
            if let Some(exited) = exited {
                return Err(format!("{exited}\n{}", self.log_tail(20)));
            }
            let outcome = runtime.block_on(admin.create_topics([&topic], &options));
            match outcome.as_deref() {
                Ok([Ok(_)]) | Ok([Err((_, RDKafkaErrorCode::TopicAlreadyExists))]) => return Ok(()),
                other if Instant::now() > deadline => {
                    return Err(format!("no topic could be created within 120 s: {other:?}\n{}", self.log_tail(20)))
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn spawn(&mut self, index: usize) {
        let node = &self.nodes[index];
        std::fs::create_dir_all(&node.dir).expect("broker dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("process.out"))
            .expect("broker output file");
        let mut command = match self.kind {
            BrokerKind::Kafka => {
                let mut command = Command::new(repo().join("scripts/kafka.sh"));
                command
                    .arg("run")
                    .arg(node.port.to_string())
                    .arg(&node.dir)
                    .args(&self.overrides)
                    .env("KAFKA_NODE_ID", node.node_id.to_string())
                    .env("KAFKA_CONTROLLER_PORT", node.controller_port.to_string())
                    .env("KAFKA_VOTERS", &self.voters)
                    .env("KAFKA_CLUSTER_ID", &self.cluster_id);
                if let Some(secure) = &self.secure {
                    command
                        .env("KAFKA_SECRETS", &secure.secrets)
                        .env("KAFKA_BROKER_PORT", secure.broker_port.to_string());
                }
                // Nodes past the third are brokers only.
                if node.node_id > 3 {
                    command.arg("process.roles=broker");
                }
                command
            }
            BrokerKind::Tansu => {
                let url = format!("tcp://127.0.0.1:{}", node.port);
                let mut command = Command::new(tansu_bin());
                command
                    .current_dir(&node.dir)
                    .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                    .args(["--storage-engine", &self.tansu_storage])
                    .env("RUST_LOG", "warn");
                command
            }
        };
        let child = command
            .stdout(log.try_clone().map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} (scripts/kafka.sh and scripts/tansu.sh set it up): {e}", self.kind.name())
            });
        self.nodes[index].child = Some(child);
    }

    /// SIGKILL every node, as a crash would.
    pub fn kill(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill_node(index);
        }
    }

    /// Starts every node again on the same ports and storage; returns once the
    /// broker answers.
    pub async fn restart(&mut self) {
        self.kill();
        for index in 0..self.nodes.len() {
            self.spawn(index);
        }
        for index in 0..self.nodes.len() {
            self.wait_node_up(index).await;
        }
    }

    /// SIGKILL one node (index into the nodes, 0-based).
    pub fn kill_node(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again with its data; returns once it serves metadata
    /// and the cluster knows it again.
    pub async fn start_node(&mut self, index: usize) {
        self.kill_node(index);
        self.spawn(index);
        self.wait_node_up(index).await;
    }

    /// The node index leading `topic`'s `partition`, from the cluster's metadata.
    pub async fn leader_of(&self, topic: &str, partition: i32) -> Option<usize> {
        let (addr, topic) = (self.addr.clone(), topic.to_owned());
        let leader = tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = platform::kafka::client_config(&addr).create().ok()?;
            let metadata = client.fetch_metadata(Some(&topic), Duration::from_secs(10)).ok()?;
            Some(metadata.topics().first()?.partitions().iter().find(|p| p.id() == partition)?.leader())
        })
        .await
        .ok()??;
        self.nodes.iter().position(|n| n.node_id as i32 == leader)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The last `lines` lines of every node's log (Kafka's server.log and the
    /// process output), for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            for file in ["server.log", "process.out"] {
                let Ok(text) = std::fs::read_to_string(node.dir.join(file)) else { continue };
                let tail: Vec<&str> = text.lines().rev().take(lines).collect();
                out.push_str(&format!(
                    "--- {} node {} {file} (last {} lines)\n",
                    self.kind.name(),
                    node.node_id,
                    tail.len()
                ));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Waits until node `index` answers metadata that lists it among the brokers
    /// (on a blocking thread: the caller's other futures go on meanwhile).
    async fn wait_node_up(&self, index: usize) {
        let (kind, node_id) = (self.kind, self.nodes[index].node_id as i32);
        let addr = format!("127.0.0.1:{}", self.nodes[index].port);
        let up = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let client: BaseConsumer = platform::kafka::client_config(&addr).create().expect("kafka client");
            while Instant::now() < deadline {
                if let Ok(metadata) = client.fetch_metadata(None, Duration::from_secs(2)) {
                    if kind == BrokerKind::Tansu || metadata.brokers().iter().any(|b| b.id() == node_id) {
                        return true;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(up, "{} node {node_id} did not come back within 120 s\n{}", kind.name(), self.log_tail(20));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Before the scratch directory goes.
        self.kill();
    }
}
