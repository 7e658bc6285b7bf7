use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let config = product_svc::Config::parse();
    let app = product_svc::build(config).await.context("starting product-svc")?;
    app.run_until_stopped(platform::telemetry::shutdown_on_signal()).await.context("running product-svc")
}
