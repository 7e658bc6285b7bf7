//! saga-bench: how fast the order saga runs, against what the broker alone can do.
//!
//! ```text
//! cargo run --release -p saga-tests --bin saga-bench -- \
//!     [--backend sqlite|postgres|both] [--orders N] [--rate R] [--runs K] [--json out.json]
//! ```
//!
//! Each run first measures the raw broker (a Tansu memory-engine broker; rdkafka
//! produces and consumes as many records, of the same size, as N orders cause),
//! then, per database backend, starts the broker (memory engine) and the six
//! services and the gateway simulator as separate release processes, and drives
//! the saga: a warm-up, N orders at once (maximum throughput) and an open-loop
//! phase at a fixed offered rate (default: half the maximum just measured).
//! Latency per order comes from the events' own `occurred_at`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Parser, ValueEnum};
use saga_tests::bench::stats::median;
use saga_tests::bench::traffic::{self, Load, Phase};
use saga_tests::bench::{baseline, topics};
use saga_tests::processes::ProcessStack;
use saga_tests::{Backend, BrokerKind, BrokerStorage, Target};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backends {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Parser)]
#[command(name = "saga-bench", about = "Saga throughput and latency against the raw broker")]
struct Args {
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
}

#[derive(Debug, Serialize)]
struct SystemRun {
    backend: &'static str,
    broker_engine: &'static str,
    max: Phase,
    rated: Phase,
    /// max.completed_orders_per_s / broker ceiling in orders/s.
    ratio_to_ceiling: f64,
    ceiling_orders_per_s: f64,
    peak_rss_kb: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct Run {
    baseline: baseline::Baseline,
    baseline_messages_per_order: usize,
    systems: Vec<SystemRun>,
}

#[derive(Debug, Serialize)]
struct Medians {
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
    /// CPU cores' worth used by processes outside the benchmark during the max phase.
    other_cores_max: f64,
    hops_rated_p50_ms: BTreeMap<String, f64>,
    hops_rated_p99_ms: BTreeMap<String, f64>,
    hops_max_p50_ms: BTreeMap<String, f64>,
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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

fn machine() -> BTreeMap<String, String> {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
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
    let tansu = run(&saga_tests::broker::tansu_bin().to_string_lossy(), &["--version"]);
    BTreeMap::from([
        ("nproc".to_owned(), run("nproc", &[])),
        ("memory".to_owned(), mem),
        ("cpu".to_owned(), cpu),
        ("kernel".to_owned(), run("uname", &["-r"])),
        ("rustc".to_owned(), run("rustc", &["--version"])),
        ("tansu".to_owned(), tansu),
        ("librdkafka".to_owned(), rdkafka::util::get_rdkafka_version().1),
    ])
}

async fn run_system(
    backend: Backend,
    bin_dir: &Path,
    args: &Args,
    env: &[(String, String)],
    baseline: &baseline::Baseline,
) -> SystemRun {
    let name = backend_name(backend);
    eprintln!("[{name}] starting broker (memory engine), gateway simulator and six services");
    let stack = ProcessStack::start_in(Target::new(BrokerKind::Tansu, backend), bin_dir.to_owned(), BrokerStorage::Memory, env.to_vec()).await;
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
        "[{name}]   placed->confirmed p50 {:.0} p95 {:.0} p99 {:.0} max {:.0} ms",
        rated.placed_to_confirmed_ms.p50,
        rated.placed_to_confirmed_ms.p95,
        rated.placed_to_confirmed_ms.p99,
        rated.placed_to_confirmed_ms.max
    );
    let peak_rss_kb = traffic::peak_rss(&stack);
    drop(producer);
    stack.stop().await;
    let ceiling = baseline.through_msgs_per_s / max.messages_per_order;
    SystemRun {
        backend: name,
        broker_engine: "memory",
        ratio_to_ceiling: max.completed_orders_per_s / ceiling,
        ceiling_orders_per_s: ceiling,
        max,
        rated,
        peak_rss_kb,
    }
}

fn medians(backend: &'static str, runs: &[Run]) -> Option<Medians> {
    let systems: Vec<(&Run, &SystemRun)> =
        runs.iter().flat_map(|r| r.systems.iter().filter(|s| s.backend == backend).map(move |s| (r, s))).collect();
    if systems.is_empty() {
        return None;
    }
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
    Some(Medians {
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
        other_cores_max: m(&|_, s| s.max.other_cpu_seconds / s.max.wall_seconds),
        hops_rated_p50_ms: keyed(&|s| s.rated.hops_ms.iter().map(|(k, v)| (k.clone(), v.p50)).collect()),
        hops_rated_p99_ms: keyed(&|s| s.rated.hops_ms.iter().map(|(k, v)| (k.clone(), v.p99)).collect()),
        hops_max_p50_ms: keyed(&|s| s.max.hops_ms.iter().map(|(k, v)| (k.clone(), v.p50)).collect()),
    })
}

fn print_medians(m: &Medians) {
    println!();
    println!("== {} (medians of {} runs; broker: Tansu memory engine) ==", m.backend, m.runs);
    println!(
        "  broker baseline      through {:>8.0} msg/s   produce {:>8.0} msg/s   consume {:>8.0} msg/s",
        m.baseline_through_msgs_per_s, m.baseline_produce_msgs_per_s, m.baseline_consume_msgs_per_s
    );
    println!(
        "  messages per order   {:>8.2}   broker ceiling {:>8.1} orders/s",
        m.messages_per_order, m.ceiling_orders_per_s
    );
    println!(
        "  saga max throughput  {:>8.1} orders/s (steady {:.1})   ratio to ceiling {:.1}%",
        m.max_orders_per_s,
        m.max_steady_orders_per_s,
        m.ratio_to_ceiling * 100.0
    );
    println!(
        "  open loop            offered {:>6.1} orders/s, completed {:.1} orders/s",
        m.rated_offered, m.rated_completed_orders_per_s
    );
    println!("  placed->confirmed    p50 {:>6.0}  p95 {:>6.0}  p99 {:>6.0}  max {:>6.0} ms   (PlaceOrder->confirmed p99 {:.0} ms)",
        m.rated_p50_ms, m.rated_p95_ms, m.rated_p99_ms, m.rated_max_ms, m.rated_command_p99_ms);
    println!(
        "  at max throughput    p50 {:>6.0}  p99 {:>6.0} ms; machine busy {:.0}% ({:.2} cores used by other processes)",
        m.max_p50_ms,
        m.max_p99_ms,
        m.machine_busy_max * 100.0,
        m.other_cores_max
    );
    println!("  {:<62} {:>10} {:>10} {:>10}", "hop", "p50 rated", "p99 rated", "p50 max");
    for (hop, p50) in &m.hops_rated_p50_ms {
        let p99 = m.hops_rated_p99_ms.get(hop).copied().unwrap_or(f64::NAN);
        let max = m.hops_max_p50_ms.get(hop).copied().unwrap_or(f64::NAN);
        println!("  {hop:<62} {p50:>10.0} {p99:>10.0} {max:>10.0}");
    }
    println!("  {:<20} {:>14} {:>22}", "process", "peak RSS MB", "CPU ms/order at max");
    let mut names: Vec<&String> = m.cpu_ms_per_order_max.keys().chain(m.peak_rss_kb.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let rss = m.peak_rss_kb.get(name).map_or("-".to_owned(), |kb| format!("{:.1}", kb / 1024.0));
        let cpu = m.cpu_ms_per_order_max.get(name).map_or("-".to_owned(), |ms| format!("{ms:.2}"));
        println!("  {name:<20} {rss:>14} {cpu:>22}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let env: Vec<(String, String)> = args
        .service_env
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("--service-env takes KEY=VALUE");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let backends: Vec<Backend> = match args.backend {
        Backends::Sqlite => vec![Backend::Sqlite],
        Backends::Postgres => vec![Backend::Postgres],
        Backends::Both => vec![Backend::Sqlite, Backend::Postgres],
    };
    let bin_dir = args.bin_dir.clone().unwrap_or_else(build_service_binaries);
    let samples = topics::one_order(&uuid::Uuid::now_v7().to_string(), "bench-user-01", "BENCH-SKU-01");
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        eprintln!("== run {run}/{}: broker baseline, {} orders x {} records", args.runs, args.orders, samples.len());
        let base = baseline::run(BrokerKind::Tansu, &samples, args.orders, 3).await;
        eprintln!(
            "   through {:.0} msg/s, produce {:.0} msg/s, consume {:.0} msg/s ({} records of {:.0} B)",
            base.through_msgs_per_s, base.produce_msgs_per_s, base.consume_msgs_per_s, base.messages, base.avg_bytes
        );
        let mut systems = Vec::new();
        for backend in &backends {
            systems.push(run_system(*backend, &bin_dir, &args, &env, &base).await);
        }
        runs.push(Run { baseline: base, baseline_messages_per_order: samples.len(), systems });
    }
    let medians: Vec<Medians> = ["sqlite", "postgres"].into_iter().filter_map(|b| medians(b, &runs)).collect();
    for m in &medians {
        print_medians(m);
    }
    if let Some(path) = &args.json {
        let report = Report { command: std::env::args().collect(), machine: machine(), runs, medians };
        let text = serde_json::to_string_pretty(&report).expect("report serialises");
        std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    }
}
