use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let config = user_svc::Config::parse();
    let app = user_svc::build(config).await.context("starting user-svc")?;
    app.run_until_stopped(platform::telemetry::shutdown_on_signal()).await.context("running user-svc")
}
