//! The payment gateway simulator as a process (local system, staging).

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "gateway-sim", about = "Payment gateway simulator")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8090")]
    listen: String,
    /// Charges above this amount (minor units) are declined.
    #[arg(long, env = "GATEWAY_DECLINE_OVER_MINOR", default_value_t = 1_000_000)]
    decline_over_minor: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let args = Args::parse();
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "gateway simulator up");
    payment_svc::simulator::serve(listener, args.decline_over_minor, platform::telemetry::shutdown_on_signal())
        .await
        .context("serving")
}
