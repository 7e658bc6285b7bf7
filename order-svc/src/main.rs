use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let config = order_svc::Config::parse();
    let app = order_svc::build(config).await.context("starting order-svc")?;
    app.run_until_stopped(platform::telemetry::shutdown_on_signal()).await.context("running order-svc")
}
