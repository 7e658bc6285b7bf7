//! shopctl: the command-line producer and operator tool of the order saga.
//! Publishes validated catalogue messages, follows an order's saga across all
//! topics, creates and lists topics, lists/inspects/replays dead letters, exports
//! the JSON Schemas, and runs the demo. `main.rs` only parses and reports errors;
//! the work is in the modules below.

pub mod broker;
pub mod cli;
mod demo;
mod dlq;
pub mod input;
pub mod output;
mod publish;
pub mod saga;
mod schema;
mod shortcuts;
mod timeline;
mod topics;

use std::time::Duration;

use anyhow::{anyhow, Result};
use platform::kafka::{Connection, KafkaSecurityArgs};

use crate::cli::{Cli, Command, OrderCommand, SchemaCommand};

/// The settings every broker-using command shares.
#[derive(Debug, Clone)]
pub struct Globals {
    pub brokers: String,
    pub security: KafkaSecurityArgs,
    pub timeout: Duration,
}

impl Globals {
    /// The brokers and how to authenticate to them, checked (a bad combination
    /// of the KAFKA_SECURITY_PROTOCOL settings is an error naming the setting).
    /// Checked here rather than at parse time: commands that need no broker
    /// (`schema export`, `acls`) run without credentials.
    pub fn kafka(&self) -> Result<Connection> {
        self.security.connect(&self.brokers).map_err(|error| anyhow!("{error}"))
    }

    /// The broker, reachable, with its topic list; or an error naming the address.
    pub async fn connect(&self) -> Result<broker::Broker> {
        broker::Broker::connect(self.kafka()?, self.timeout).await
    }
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let globals = Globals { brokers: cli.brokers, security: cli.kafka_security, timeout: cli.timeout };
    match cli.command {
        Command::Publish(args) => publish::run(&globals, args).await,
        Command::User(command) => shortcuts::user(&globals, command).await,
        Command::Product(command) => shortcuts::product(&globals, command).await,
        Command::Order(OrderCommand::Timeline { order_id, follow, timeout }) => {
            timeline::run(&globals, &order_id, follow, timeout).await
        }
        Command::Order(command) => shortcuts::order(&globals, command).await,
        Command::Topics(command) => topics::run(&globals, command).await,
        Command::Dlq(command) => dlq::run(&globals, command).await,
        Command::Schema(SchemaCommand::Export { dir }) => schema::export(&dir),
        Command::Demo(args) => demo::run(&globals, args).await,
        Command::Acls => {
            for line in events::access::acl_commands() {
                say!("{}", line.join(" "));
            }
            Ok(())
        }
    }
}
