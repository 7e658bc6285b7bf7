//! A Tansu broker process on a free loopback port. Built once by
//! `scripts/tansu.sh`; found through `TANSU_BIN`, `.tools/bin/tansu`, or `PATH`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

pub struct Broker {
    child: Option<Child>,
    pub addr: String,
    storage: String,
    /// Tansu resolves sqlite:// paths against its working directory.
    dir: Option<PathBuf>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

pub fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cached = repo.join(".tools/bin/tansu");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("tansu")
}

impl Broker {
    /// A broker keeping everything in memory: fast, gone when it stops.
    pub async fn memory() -> Broker {
        Broker::start("memory://tansu/".to_owned(), None, free_port()).await
    }

    /// A broker on the sqlite engine at `path`: survives restarts.
    pub async fn sqlite(path: &Path) -> Broker {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "broker.db".into());
        let dir = path.parent().map(Path::to_path_buf);
        Broker::start(format!("sqlite://{file}"), dir, free_port()).await
    }

    async fn start(storage: String, dir: Option<PathBuf>, port: u16) -> Broker {
        let mut broker = Broker { child: None, addr: format!("127.0.0.1:{port}"), storage, dir };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let bin = tansu_bin();
        let mut command = Command::new(&bin);
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let child = command
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (run scripts/tansu.sh to build it): {e}", bin.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the broker answers a metadata request.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client: BaseConsumer = platform::kafka::client_config(&self.addr).create().expect("kafka client");
        loop {
            if client.fetch_metadata(None, Duration::from_secs(1)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "broker at {} did not come up", self.addr);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
