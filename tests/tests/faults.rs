//! The fault suite: the real binaries as processes, a seeded schedule of faults
//! while orders flow, then the invariants over every service's own database.
//! A failure prints the seed; `FAULT_SEED=<seed>` repeats the schedule. Longer
//! runs: `cargo run -p saga-tests --bin saga-faults -- --help`.

use std::time::Duration;

use saga_tests::faults::{self, FaultPlan};
use saga_tests::Backend;

fn seed() -> u64 {
    std::env::var("FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..))
}

async fn run(plan: FaultPlan) {
    let report = faults::run(&plan).await;
    report.print(&plan);
    assert!(!report.failed(), "invariants violated; repeat with FAULT_SEED={}", plan.seed);
    let orders: usize = report.orders.values().sum();
    assert!(orders > 0 && report.faults.values().sum::<usize>() > 0, "the run did something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_load_under_faults_sqlite() {
    run(FaultPlan::short(seed(), Backend::Sqlite)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_load_under_faults_postgres() {
    run(FaultPlan::short(seed(), Backend::Postgres)).await;
}

/// 1,000 one-unit orders from 50 users for 3 SKUs of 100 units, all at once,
/// with faults on: exactly 300 confirmed, no oversell.
async fn scarce(backend: Backend) {
    let plan = FaultPlan { scarce: Some(1000), duration: Duration::from_secs(30), ..FaultPlan::short(seed(), backend) };
    let report = faults::run(&plan).await;
    report.print(&plan);
    assert!(!report.failed(), "invariants violated; repeat with FAULT_SEED={}", plan.seed);
    assert_eq!(report.orders.get("CONFIRMED"), Some(&300), "exactly the stock is sold: {:?}", report.orders);
    assert_eq!(report.orders.get("REJECTED"), Some(&700), "{:?}", report.orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scarce_stock_under_faults_sqlite() {
    scarce(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scarce_stock_under_faults_postgres() {
    scarce(Backend::Postgres).await;
}
