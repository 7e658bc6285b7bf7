//! saga-bench: how fast the order saga runs, against what the broker alone can do.
//!
//! ```text
//! cargo run --release -p saga-tests --bin saga-bench -- \
//!     [--broker kafka|tansu|both] [--backend sqlite|postgres|both] [--orders N] [--rate R] \
//!     [--runs K] [--json out.json] [--replicas N --backend postgres]
//! ```
//!
//! Each run, for every selected broker (Apache Kafka on disk, Tansu on its
//! memory engine), first measures the raw broker (rdkafka produces and consumes
//! as many records, of the same size, as N orders cause), then, per database
//! backend, starts a fresh broker of the same kind and the six services and the
//! gateway simulator as separate release processes, and drives the saga: a
//! warm-up, N orders at once (maximum throughput) and an open-loop phase at a
//! fixed offered rate (default: half the maximum just measured). Latency per
//! order comes from the events' own `occurred_at`. The summary gives the medians
//! per backend with the brokers side by side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use saga_tests::bench::stats::median;
use saga_tests::bench::topics::Sample;
use saga_tests::bench::traffic::{Load, Phase};
use saga_tests::bench::{baseline, topics, traffic};
use saga_tests::processes::ProcessStack;
use saga_tests::{Backend, Broker, BrokerKind, BrokerStorage, Databases};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backends {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Brokers {
    Kafka,
    Tansu,
    Both,
}

#[derive(Debug, Parser)]
#[command(name = "saga-bench", about = "Saga throughput and latency against the raw broker")]
struct Args {
    /// Broker: each selected one gets its own raw baseline and saga runs.
    #[arg(long, value_enum, default_value = "both")]
    broker: Brokers,
    /// Database backend of the services.
    #[arg(long, value_enum, default_value = "both")]
    backend: Backends,
    /// Orders in the maximum-throughput phase (and the baseline moves as many
    /// orders' worth of records).
    #[arg(long, default_value_t = 2000)]
    orders: usize,
    /// Offered load of the open-loop phase, orders/s. Default: half of the
    /// maximum measured in the same run.
    #[arg(long)]
    rate: Option<f64>,
    /// Length of the open-loop phase in seconds.
    #[arg(long, default_value_t = 20.0)]
    rate_seconds: f64,
    /// Orders in the warm-up (not measured).
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Independent runs (fresh broker, processes and databases each); figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Extra environment for every service, KEY=VALUE (repeatable), for experiments.
    #[arg(long = "service-env")]
    service_env: Vec<String>,
    /// Write every figure of every run here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run the service binaries found here instead of building them (release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Processes per service, sharing its database (PostgreSQL only) and its
    /// consumer group. With more than one, give the topics partitions enough
    /// for all: `--service-env TOPIC_PARTITIONS=12`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    replicas: u16,
}

#[derive(Debug, Serialize)]
struct SystemRun {
    backend: &'static str,
    max: Phase,
    rated: Phase,
    /// max.completed_orders_per_s / broker ceiling in orders/s.
    ratio_to_ceiling: f64,
    ceiling_orders_per_s: f64,
    peak_rss_kb: BTreeMap<String, u64>,
}

/// One broker in one run: its raw baseline, then the saga on it per backend.
#[derive(Debug, Serialize)]
struct Run {
    run: usize,
    broker: &'static str,
    /// Where the broker kept its log (Kafka: disk, Tansu: memory engine).
    broker_storage: &'static str,
    baseline: baseline::Baseline,
    baseline_messages_per_order: usize,
    systems: Vec<SystemRun>,
}

#[derive(Debug, Serialize)]
struct Medians {
    broker: &'static str,
    broker_storage: &'static str,
    backend: &'static str,
    runs: usize,
    baseline_through_msgs_per_s: f64,
    baseline_produce_msgs_per_s: f64,
    baseline_consume_msgs_per_s: f64,
    messages_per_order: f64,
    ceiling_orders_per_s: f64,
    max_orders_per_s: f64,
    max_steady_orders_per_s: f64,
    ratio_to_ceiling: f64,
    rated_offered: f64,
    rated_completed_orders_per_s: f64,
    rated_p50_ms: f64,
    rated_p95_ms: f64,
    rated_p99_ms: f64,
    rated_max_ms: f64,
    rated_command_p99_ms: f64,
    max_p50_ms: f64,
    max_p99_ms: f64,
    peak_rss_kb: BTreeMap<String, f64>,
    cpu_ms_per_order_max: BTreeMap<String, f64>,
    machine_busy_max: f64,
    machine_busy_rated: f64,
    /// CPU cores' worth used by processes outside the benchmark during the max phase.
    other_cores_max: f64,
    other_cores_rated: f64,
    hops_rated_p50_ms: BTreeMap<String, f64>,
    hops_rated_p99_ms: BTreeMap<String, f64>,
    hops_max_p50_ms: BTreeMap<String, f64>,
    /// Over all runs: orders of the max and open-loop phases never confirmed, and
    /// phases that timed out (both should be 0).
    unconfirmed_orders: usize,
    timed_out_phases: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    command: Vec<String>,
    machine: BTreeMap<String, String>,
    runs: Vec<Run>,
    medians: Vec<Medians>,
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// Builds the seven binaries the system needs (release) and returns their directory.
fn build_service_binaries() -> PathBuf {
    let root = repo();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.current_dir(&root).args(["build", "--release", "--quiet", "--bins"]);
    for package in ["user-svc", "product-svc", "order-svc", "inventory-svc", "payment-svc", "notification-svc"] {
        cargo.args(["-p", package]);
    }
    let status = cargo.status().expect("running cargo build");
    assert!(status.success(), "cargo build of the service binaries failed");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    target.join("release")
}

/// The machine and the versions of what runs on it, for the selected brokers.
fn machine(brokers: &[BrokerKind]) -> BTreeMap<String, String> {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                // `java -version` answers on stderr.
                let out = if o.stdout.is_empty() { o.stderr } else { o.stdout };
                String::from_utf8_lossy(&out).trim().to_owned()
            })
            .unwrap_or_default()
    };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mut machine = BTreeMap::from([
        ("nproc".to_owned(), run("nproc", &[])),
        ("memory".to_owned(), mem),
        ("cpu".to_owned(), cpu),
        ("kernel".to_owned(), run("uname", &["-r"])),
        ("rustc".to_owned(), run("rustc", &["--version"])),
        ("librdkafka".to_owned(), rdkafka::util::get_rdkafka_version().1),
    ]);
    for kind in brokers {
        match kind {
            BrokerKind::Kafka => {
                // `scripts/kafka.sh` with no arguments prints the directory of the
                // broker jars; the version is in the broker jar's name.
                let libs = run(&repo().join("scripts/kafka.sh").to_string_lossy(), &[]);
                let jar = std::fs::read_dir(&libs)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .find(|name| name.starts_with("kafka_2.13-") && name.ends_with(".jar"));
                let version = jar.as_deref().and_then(|j| j.strip_prefix("kafka_2.13-")?.strip_suffix(".jar"));
                machine.insert("kafka".to_owned(), version.unwrap_or("unknown").to_owned());
                let java = run("java", &["-version"]);
                machine.insert("java".to_owned(), java.lines().next().unwrap_or("").to_owned());
            }
            BrokerKind::Tansu => {
                let tansu = run(&saga_tests::broker::tansu_bin().to_string_lossy(), &["--version"]);
                machine.insert("tansu".to_owned(), tansu);
            }
        }
    }
    machine
}

async fn run_system(
    kind: BrokerKind,
    backend: Backend,
    bin_dir: &Path,
    args: &Args,
    env: &[(String, String)],
    ceiling_orders_per_s: f64,
) -> SystemRun {
    let name = format!("{}/{}", kind.name(), backend_name(backend));
    eprintln!(
        "[{name}] starting broker ({}), gateway simulator and six services x {} replicas",
        baseline::storage(kind),
        args.replicas
    );
    // Tansu on its memory engine, as the baseline; Kafka keeps its log on disk regardless.
    let dbs = Databases::new(backend);
    let broker = Broker::start(kind, dbs.dir(), BrokerStorage::Memory).await;
    let replicas = usize::from(args.replicas);
    let stack = ProcessStack::start_replicated(broker, dbs, bin_dir.to_owned(), env.to_vec(), replicas).await;
    let producer = platform::kafka::producer(&stack.broker.addr).expect("producer");
    traffic::reference_data(&stack, &producer).await;
    eprintln!("[{name}] warm-up: {} orders at 50/s", args.warmup);
    let _ = traffic::phase(&stack, &producer, "warmup", args.warmup, Load::Rate(50.0)).await;
    eprintln!("[{name}] maximum throughput: {} orders at once", args.orders);
    let max = traffic::phase(&stack, &producer, "max", args.orders, Load::Burst).await;
    eprintln!(
        "[{name}]   {:.1} orders/s completed (steady {:.1}), placed->confirmed p50 {:.0} ms p99 {:.0} ms",
        max.completed_orders_per_s,
        max.steady_orders_per_s,
        max.placed_to_confirmed_ms.p50,
        max.placed_to_confirmed_ms.p99
    );
    let rate = args.rate.unwrap_or((max.completed_orders_per_s / 2.0).max(1.0));
    let rated_orders = ((rate * args.rate_seconds).round() as usize).max(10);
    eprintln!("[{name}] open loop: {rate:.1} orders/s for {rated_orders} orders");
    let rated = traffic::phase(&stack, &producer, "rated", rated_orders, Load::Rate(rate)).await;
    eprintln!(
        "[{name}]   placed->confirmed p50 {:.0} p95 {:.0} p99 {:.0} max {:.0} ms; {:.2} cores used by others",
        rated.placed_to_confirmed_ms.p50,
        rated.placed_to_confirmed_ms.p95,
        rated.placed_to_confirmed_ms.p99,
        rated.placed_to_confirmed_ms.max,
        rated.other_cpu_seconds / rated.wall_seconds
    );
    let peak_rss_kb = traffic::peak_rss(&stack);
    drop(producer);
    stack.stop().await;
    SystemRun {
        backend: backend_name(backend),
        ratio_to_ceiling: max.completed_orders_per_s / ceiling_orders_per_s,
        ceiling_orders_per_s,
        max,
        rated,
        peak_rss_kb,
    }
}

/// One broker in one run: the raw baseline on a fresh broker, then the saga on
/// a fresh broker of the same kind for every backend.
async fn run_broker(
    run: usize,
    kind: BrokerKind,
    backends: &[Backend],
    samples: &[Sample],
    bin_dir: &Path,
    args: &Args,
    env: &[(String, String)],
) -> Run {
    eprintln!(
        "== run {run}/{} on {}: broker baseline, {} orders x {} records",
        args.runs,
        kind.name(),
        args.orders,
        samples.len()
    );
    let base = baseline::run(kind, samples, args.orders, 3).await;
    eprintln!(
        "   through {:.0} msg/s, produce {:.0} msg/s, consume {:.0} msg/s ({} records of {:.0} B)",
        base.through_msgs_per_s, base.produce_msgs_per_s, base.consume_msgs_per_s, base.messages, base.avg_bytes
    );
    // The baseline's records are those of one order, so this holds even for a
    // phase in which orders went missing (the phase's own count is reported too).
    let ceiling = base.through_msgs_per_s / samples.len() as f64;
    let mut systems = Vec::new();
    for backend in backends {
        systems.push(run_system(kind, *backend, bin_dir, args, env, ceiling).await);
    }
    Run {
        run,
        broker: kind.name(),
        broker_storage: base.storage,
        baseline: base,
        baseline_messages_per_order: samples.len(),
        systems,
    }
}

fn medians_of(broker: BrokerKind, backend: Backend, runs: &[Run]) -> Option<Medians> {
    let (broker, backend) = (broker.name(), backend_name(backend));
    let systems: Vec<(&Run, &SystemRun)> = runs
        .iter()
        .filter(|r| r.broker == broker)
        .flat_map(|r| r.systems.iter().filter(|s| s.backend == backend).map(move |s| (r, s)))
        .collect();
    let (first_run, _) = systems.first()?;
    let m = |f: &dyn Fn(&Run, &SystemRun) -> f64| median(systems.iter().map(|(r, s)| f(r, s)));
    let keyed = |f: &dyn Fn(&SystemRun) -> BTreeMap<String, f64>| {
        let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (_, s) in &systems {
            for (k, v) in f(s) {
                all.entry(k).or_default().push(v);
            }
        }
        all.into_iter().map(|(k, v)| (k, median(v))).collect::<BTreeMap<_, _>>()
    };
    let phases = || systems.iter().flat_map(|(_, s)| [&s.max, &s.rated]);
    Some(Medians {
        broker,
        broker_storage: first_run.broker_storage,
        backend,
        runs: systems.len(),
        baseline_through_msgs_per_s: m(&|r, _| r.baseline.through_msgs_per_s),
        baseline_produce_msgs_per_s: m(&|r, _| r.baseline.produce_msgs_per_s),
        baseline_consume_msgs_per_s: m(&|r, _| r.baseline.consume_msgs_per_s),
        messages_per_order: m(&|_, s| s.max.messages_per_order),
        ceiling_orders_per_s: m(&|_, s| s.ceiling_orders_per_s),
        max_orders_per_s: m(&|_, s| s.max.completed_orders_per_s),
        max_steady_orders_per_s: m(&|_, s| s.max.steady_orders_per_s),
        ratio_to_ceiling: m(&|_, s| s.ratio_to_ceiling),
        rated_offered: m(&|_, s| s.rated.offered_rate.unwrap_or(f64::NAN)),
        rated_completed_orders_per_s: m(&|_, s| s.rated.completed_orders_per_s),
        rated_p50_ms: m(&|_, s| s.rated.placed_to_confirmed_ms.p50),
        rated_p95_ms: m(&|_, s| s.rated.placed_to_confirmed_ms.p95),
        rated_p99_ms: m(&|_, s| s.rated.placed_to_confirmed_ms.p99),
        rated_max_ms: m(&|_, s| s.rated.placed_to_confirmed_ms.max),
        rated_command_p99_ms: m(&|_, s| s.rated.command_to_confirmed_ms.p99),
        max_p50_ms: m(&|_, s| s.max.placed_to_confirmed_ms.p50),
        max_p99_ms: m(&|_, s| s.max.placed_to_confirmed_ms.p99),
        peak_rss_kb: keyed(&|s| s.peak_rss_kb.iter().map(|(k, v)| (k.clone(), *v as f64)).collect()),
        cpu_ms_per_order_max: keyed(&|s| {
            s.max.cpu_seconds.iter().map(|(k, v)| (k.clone(), v * 1000.0 / s.max.orders as f64)).collect()
        }),
        machine_busy_max: m(&|_, s| s.max.machine_busy),
        machine_busy_rated: m(&|_, s| s.rated.machine_busy),
        other_cores_max: m(&|_, s| s.max.other_cpu_seconds / s.max.wall_seconds),
        other_cores_rated: m(&|_, s| s.rated.other_cpu_seconds / s.rated.wall_seconds),
        hops_rated_p50_ms: keyed(&|s| s.rated.hops_ms.iter().map(|(k, v)| (k.clone(), v.p50)).collect()),
        hops_rated_p99_ms: keyed(&|s| s.rated.hops_ms.iter().map(|(k, v)| (k.clone(), v.p99)).collect()),
        hops_max_p50_ms: keyed(&|s| s.max.hops_ms.iter().map(|(k, v)| (k.clone(), v.p50)).collect()),
        unconfirmed_orders: phases().map(|p| p.not_confirmed).sum(),
        timed_out_phases: phases().filter(|p| p.timed_out).count(),
    })
}

/// One line of the summary: a label, then one cell per broker.
fn print_row(label: &str, cells: impl IntoIterator<Item = String>) {
    let cells: String = cells.into_iter().map(|c| format!(" {c:>18}")).collect();
    println!("  {label:<64}{cells}");
}

/// The medians of one backend, a column per broker, so the brokers read side by side.
fn print_medians(columns: &[&Medians]) {
    let Some(first) = columns.first() else { return };
    let row = |label: &str, f: &dyn Fn(&Medians) -> String| print_row(label, columns.iter().map(|m| f(m)));
    // One row per key (hop, process) any broker has, under a heading of their own.
    let keyed_rows = |heading: &str, keys: &dyn Fn(&Medians) -> Vec<String>, f: &dyn Fn(&Medians, &str) -> String| {
        println!("  {heading}");
        let mut names: Vec<String> = columns.iter().flat_map(|m| keys(m)).collect();
        names.sort();
        names.dedup();
        for name in names {
            row(&format!("  {name}"), &|m| f(m, &name));
        }
    };
    let get = |map: &BTreeMap<String, f64>, key: &str, scale: f64, digits: usize| {
        map.get(key).map_or("-".to_owned(), |v| format!("{:.digits$}", v * scale))
    };
    println!();
    println!("== {} (medians of each broker's runs) ==", first.backend);
    row("broker", &|m| format!("{} ({})", m.broker, m.broker_storage));
    row("runs", &|m| m.runs.to_string());
    row("baseline through msg/s", &|m| format!("{:.0}", m.baseline_through_msgs_per_s));
    row("baseline produce msg/s", &|m| format!("{:.0}", m.baseline_produce_msgs_per_s));
    row("baseline consume msg/s", &|m| format!("{:.0}", m.baseline_consume_msgs_per_s));
    row("messages per order", &|m| format!("{:.2}", m.messages_per_order));
    row("broker ceiling orders/s", &|m| format!("{:.1}", m.ceiling_orders_per_s));
    row("saga max orders/s completed (steady)", &|m| {
        format!("{:.1} ({:.1})", m.max_orders_per_s, m.max_steady_orders_per_s)
    });
    row("% of ceiling", &|m| format!("{:.1}%", m.ratio_to_ceiling * 100.0));
    row("at max: placed->confirmed p50 / p99 ms", &|m| format!("{:.0} / {:.0}", m.max_p50_ms, m.max_p99_ms));
    row("at max: machine busy, cores used by others", &|m| {
        format!("{:.0}%, {:.2}", m.machine_busy_max * 100.0, m.other_cores_max)
    });
    row("open loop: offered / completed orders/s", &|m| {
        format!("{:.1} / {:.1}", m.rated_offered, m.rated_completed_orders_per_s)
    });
    row("open loop: placed->confirmed p50 / p95 ms", &|m| format!("{:.0} / {:.0}", m.rated_p50_ms, m.rated_p95_ms));
    row("open loop: placed->confirmed p99 / max ms", &|m| format!("{:.0} / {:.0}", m.rated_p99_ms, m.rated_max_ms));
    row("open loop: PlaceOrder->confirmed p99 ms", &|m| format!("{:.0}", m.rated_command_p99_ms));
    row("open loop: machine busy, cores used by others", &|m| {
        format!("{:.0}%, {:.2}", m.machine_busy_rated * 100.0, m.other_cores_rated)
    });
    row("unconfirmed orders, timed-out phases (all runs)", &|m| {
        format!("{}, {}", m.unconfirmed_orders, m.timed_out_phases)
    });
    keyed_rows(
        "per hop, ms: p50 open loop / p99 open loop / p50 at max",
        &|m| m.hops_rated_p50_ms.keys().cloned().collect(),
        &|m, hop| {
            let cell = |map: &BTreeMap<String, f64>| get(map, hop, 1.0, 0);
            format!("{} / {} / {}", cell(&m.hops_rated_p50_ms), cell(&m.hops_rated_p99_ms), cell(&m.hops_max_p50_ms))
        },
    );
    keyed_rows("CPU ms per order at max", &|m| m.cpu_ms_per_order_max.keys().cloned().collect(), &|m, process| {
        get(&m.cpu_ms_per_order_max, process, 1.0, 2)
    });
    keyed_rows("peak RSS MB", &|m| m.peak_rss_kb.keys().cloned().collect(), &|m, process| {
        get(&m.peak_rss_kb, process, 1.0 / 1024.0, 1)
    });
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let mut env: Vec<(String, String)> = Vec::new();
    for setting in &args.service_env {
        let Some((key, value)) = setting.split_once('=') else {
            eprintln!("saga-bench: --service-env takes KEY=VALUE, not '{setting}'");
            std::process::exit(2);
        };
        env.push((key.to_owned(), value.to_owned()));
    }
    let backends: Vec<Backend> = match args.backend {
        Backends::Sqlite => vec![Backend::Sqlite],
        Backends::Postgres => vec![Backend::Postgres],
        Backends::Both => vec![Backend::Sqlite, Backend::Postgres],
    };
    if args.replicas > 1 && args.backend != Backends::Postgres {
        eprintln!("saga-bench: --replicas {} needs --backend postgres (SQLite is single-replica)", args.replicas);
        std::process::exit(2);
    }
    let brokers: Vec<BrokerKind> = match args.broker {
        Brokers::Kafka => vec![BrokerKind::Kafka],
        Brokers::Tansu => vec![BrokerKind::Tansu],
        Brokers::Both => vec![BrokerKind::Kafka, BrokerKind::Tansu],
    };
    let machine = machine(&brokers);
    for (key, value) in &machine {
        eprintln!("{key:>10}: {value}");
    }
    let bin_dir = args.bin_dir.clone().unwrap_or_else(build_service_binaries);
    let samples = topics::one_order(&uuid::Uuid::now_v7().to_string(), "bench-user-01", "BENCH-SKU-01");
    let started = Instant::now();
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        // The brokers take turns within a run, so both see the same spells of load
        // from whatever else shares the machine.
        for kind in &brokers {
            runs.push(run_broker(run, *kind, &backends, &samples, &bin_dir, &args, &env).await);
        }
    }
    eprintln!("benchmark took {:.0} s", started.elapsed().as_secs_f64());
    let mut medians = Vec::new();
    for backend in &backends {
        let columns: Vec<Medians> = brokers.iter().filter_map(|kind| medians_of(*kind, *backend, &runs)).collect();
        print_medians(&columns.iter().collect::<Vec<_>>());
        medians.extend(columns);
    }
    if let Some(path) = &args.json {
        let report = Report { command: std::env::args().collect(), machine, runs, medians };
        let text = serde_json::to_string_pretty(&report).expect("report serialises");
        std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    }
}
