//! The fault suite: the real binaries as processes, a seeded schedule of faults
//! while orders flow, then the invariants over every service's own database.
//! Mixed faults and scarce stock run on Apache Kafka and on Tansu, each on SQLite
//! and PostgreSQL; the broker failover runs on a three-node Kafka cluster.
//! A failure prints the seed; `FAULT_SEED=<seed>` repeats the schedule. Longer
//! runs: `cargo run -p saga-tests --bin saga-faults -- --help`.

use std::time::Duration;

use saga_tests::faults::{self, FaultPlan, Faults, Report};
use saga_tests::{Backend, BrokerKind, Target};

saga_tests::on_every_target!(mixed_load_under_faults, scarce_stock_under_faults);

fn seed() -> u64 {
    std::env::var("FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..))
}

async fn run(plan: FaultPlan) -> Report {
    let report = faults::run(&plan).await;
    assert!(!report.failed(), "invariants violated; repeat with FAULT_SEED={}", plan.seed);
    let orders: usize = report.orders.values().sum();
    assert!(orders > 0 && report.faults.values().sum::<usize>() > 0, "the run did something");
    report
}

async fn mixed_load_under_faults(target: Target) {
    run(FaultPlan::short(seed(), target)).await;
}

/// 1,000 one-unit orders from 50 users for 3 SKUs of 100 units, all at once,
/// with faults on: exactly 300 confirmed, no oversell.
async fn scarce_stock_under_faults(target: Target) {
    let plan = FaultPlan { scarce: Some(1000), duration: Duration::from_secs(30), ..FaultPlan::short(seed(), target) };
    let report = run(plan).await;
    assert_eq!(report.orders.get("CONFIRMED"), Some(&300), "exactly the stock is sold: {:?}", report.orders);
    assert_eq!(report.orders.get("REJECTED"), Some(&700), "{:?}", report.orders);
}

/// A few hundred orders (60 s at 8/s offered; producers stall while partitions
/// lose their leader) on a three-node Kafka cluster while the
/// node leading order.events/0 is SIGKILLed and later restarted.
async fn broker_failover(backend: Backend) {
    let plan = FaultPlan {
        faults: Faults::BrokerFailover,
        duration: Duration::from_secs(60),
        ..FaultPlan::short(seed(), Target::new(BrokerKind::Kafka, backend))
    };
    let report = run(plan).await;
    assert_eq!(report.faults.get("broker leader SIGKILL"), Some(&1), "{:?}", report.timeline);
    let orders: usize = report.orders.values().sum();
    assert!(orders >= 200, "a few hundred orders: {orders}");
}

mod on_kafka_cluster {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn broker_failover_under_load_sqlite() {
        super::broker_failover(saga_tests::Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn broker_failover_under_load_postgres() {
        super::broker_failover(saga_tests::Backend::Postgres).await;
    }
}
