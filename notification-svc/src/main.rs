use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let config = notification_svc::Config::parse();
    let app = notification_svc::build(config).await.context("starting notification-svc")?;
    app.run_until_stopped(platform::telemetry::shutdown_on_signal()).await.context("running notification-svc")
}
