use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let config = payment_svc::Config::parse();
    let app = payment_svc::build(config).await.context("starting payment-svc")?;
    app.run_until_stopped(platform::telemetry::shutdown_on_signal()).await.context("running payment-svc")
}
