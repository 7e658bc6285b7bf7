//! The fault suite as a command, for long runs:
//!
//! ```sh
//! cargo run --release -p saga-tests --bin saga-faults -- --duration 10m --backend both --broker both
//! cargo run --release -p saga-tests --bin saga-faults -- --failover --duration 3m   # three Kafka nodes
//! cargo run --release -p saga-tests --bin saga-faults -- --replicas 3 --backend postgres   # replica SIGKILLs
//! cargo run --release -p saga-tests --bin saga-faults -- --seed 42      # repeat a schedule
//! ```
//!
//! Prints the faults injected, the orders by final status and every invariant;
//! exits non-zero (with the seed) if one is violated.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use saga_tests::faults::{self, FaultPlan, Faults};
use saga_tests::processes::Profile;
use saga_tests::{Backend, BrokerKind, Target};

#[derive(Debug, Parser)]
#[command(name = "saga-faults", about = "Inject faults into the running system and check the saga's invariants")]
struct Args {
    /// Seed of the fault schedule and the load (random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// sqlite, postgres or both.
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres", "both"])]
    backend: String,
    /// kafka, tansu or both.
    #[arg(long, default_value = "kafka", value_parser = ["kafka", "tansu", "both"])]
    broker: String,
    /// Instead of mixed faults: a three-node Kafka cluster whose leader of the
    /// saga's partitions is SIGKILLed and restarted under load.
    #[arg(long)]
    failover: bool,
    /// Instead of mixed faults: this many replicas of every service (PostgreSQL),
    /// half the run fault-free (each event published once, each charge called
    /// once), then replicas SIGKILLed and restarted.
    #[arg(long, conflicts_with = "failover", value_parser = clap::value_parser!(u16).range(2..))]
    replicas: Option<u16>,
    /// How long orders and faults are injected.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Orders per second offered.
    #[arg(long, default_value_t = 8.0)]
    rate: f64,
    /// Run the scarce-stock case with this many one-unit orders instead (3 SKUs x 100 units).
    #[arg(long)]
    scarce: Option<usize>,
    /// Run the debug build of the services instead of the release build.
    #[arg(long)]
    debug: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    if args.replicas.is_some() && (args.backend != "postgres" || args.broker != "kafka") {
        eprintln!(
            "saga-faults: --replicas needs --backend postgres (SQLite is single-replica) and --broker kafka \
             (the replicas run on Kafka with SASL_SSL and ACLs, as in staging)"
        );
        return ExitCode::from(2);
    }
    let backends = match args.backend.as_str() {
        "postgres" => vec![Backend::Postgres],
        "both" => vec![Backend::Sqlite, Backend::Postgres],
        _ => vec![Backend::Sqlite],
    };
    let brokers = match (args.failover, args.broker.as_str()) {
        (true, _) | (false, "kafka") => vec![BrokerKind::Kafka],
        (false, "tansu") => vec![BrokerKind::Tansu],
        _ => vec![BrokerKind::Kafka, BrokerKind::Tansu],
    };
    let targets = brokers.iter().flat_map(|&broker| backends.iter().map(move |&backend| Target::new(broker, backend)));
    let mut failed = false;
    for target in targets {
        let plan = FaultPlan {
            seed,
            target,
            faults: match (args.failover, args.replicas) {
                (true, _) => Faults::BrokerFailover,
                (false, Some(_)) => Faults::ReplicaKills,
                (false, None) => Faults::Mixed,
            },
            duration: args.duration,
            rate: args.rate,
            scarce: args.scarce,
            profile: if args.debug { Profile::Debug } else { Profile::Release },
            replicas: args.replicas.map_or(1, usize::from),
        };
        let report = faults::run(&plan).await;
        if let Some(expected) = args.scarce.map(|n| n.min(300)) {
            let confirmed = report.orders.get("CONFIRMED").copied().unwrap_or(0);
            if confirmed != expected {
                println!("  scarce stock: {confirmed} confirmed, expected {expected}");
                failed = true;
            }
        }
        failed |= report.failed();
    }
    if failed {
        println!("FAILED; repeat with --seed {seed}");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
