use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let config = inventory_svc::Config::parse();
    let app = inventory_svc::build(config).await.context("starting inventory-svc")?;
    app.run_until_stopped(platform::telemetry::shutdown_on_signal()).await.context("running inventory-svc")
}
