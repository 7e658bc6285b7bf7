//! The command line: every subcommand and flag of `shopctl`, parsed with clap.
//! Nothing here talks to the broker; [`crate::run`] dispatches to the modules
//! that do.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Command-line producer and operator tool for the order saga.
#[derive(Debug, Parser)]
#[command(name = "shopctl", version, propagate_version = true, max_term_width = 110)]
#[command(about = "Publish messages, follow orders, manage topics, replay dead letters, run the demo.")]
pub struct Cli {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, global = true, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// How shopctl authenticates: as the operator principal over SASL_SSL in
    /// staging (KAFKA_SECURITY_PROTOCOL=sasl_ssl, KAFKA_SASL_USERNAME=operator,
    /// KAFKA_SASL_PASSWORD_FILE, KAFKA_SSL_CA_LOCATION), plaintext locally.
    #[command(flatten)]
    pub kafka_security: platform::kafka::KafkaSecurityArgs,

    /// How long to wait for the broker to answer before giving up (e.g. `10s`).
    /// Give it before the subcommand: `shopctl --timeout 3s topics list`.
    #[arg(long, env = "SHOPCTL_BROKER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish catalogue messages, validated, to the right topic with the right key.
    ///
    /// Input: `--type T --payload JSON`, a JSON or NDJSON file (`--file f.json`), or
    /// NDJSON on stdin (`--file -`, or no `--payload`/`--file`). Each input is a bare
    /// payload (needs `--type`) or `{"event_type": T, "payload": {...}}`, optionally
    /// with `"schema_version": N`. Everything is validated before anything is sent.
    Publish(PublishArgs),
    /// Users: shortcuts for user commands.
    #[command(subcommand)]
    User(UserCommand),
    /// Products: shortcuts for product commands.
    #[command(subcommand)]
    Product(ProductCommand),
    /// Orders: place, cancel, follow.
    #[command(subcommand)]
    Order(OrderCommand),
    /// Create or list topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// List, inspect and replay dead-letter topics.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// JSON Schemas of the catalogue.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Run the four demo orders against a running system and show their sagas.
    Demo(DemoArgs),
    /// Print the broker's ACLs: one line of arguments for Kafka's ACL tool
    /// (`kafka-acls.sh --bootstrap-server ... --command-config ... LINE`) per
    /// grant, derived from which topics each service consumes and produces.
    /// Needs no broker.
    Acls,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Event type of bare payloads (e.g. `PlaceOrder`).
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    pub event_type: Option<String>,

    /// One message as JSON (bare payload, or wrapped with event_type).
    #[arg(long, value_name = "JSON", conflicts_with = "file")]
    pub payload: Option<String>,

    /// A JSON or NDJSON file of messages; `-` reads stdin.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// Schema version of bare payloads (default: the current one). Older versions are upcast.
    #[arg(long, value_name = "N")]
    pub schema_version: Option<u32>,

    /// Validate and show what would be sent, without sending.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Publish RegisterUser.
    Register {
        #[arg(long, value_name = "USER_ID")]
        id: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProductCommand {
    /// Publish CreateProduct.
    Create {
        #[arg(long)]
        sku: String,
        #[arg(long)]
        name: String,
        /// Price in minor units (cents).
        #[arg(long, value_name = "MINOR_UNITS", allow_negative_numbers = true)]
        price: i64,
        /// Initial stock.
        #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
        stock: i64,
    },
    /// Publish RestockProduct.
    Restock {
        #[arg(long)]
        sku: String,
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        quantity: i64,
    },
    /// Publish ChangePrice.
    Price {
        #[arg(long)]
        sku: String,
        /// New price in minor units (cents).
        #[arg(long, value_name = "MINOR_UNITS", allow_negative_numbers = true)]
        price: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Publish PlaceOrder.
    Place {
        /// Order id; default a fresh UUID v7.
        #[arg(long, value_name = "ORDER_ID")]
        id: Option<String>,
        #[arg(long, value_name = "USER_ID")]
        user: String,
        /// An order line, repeatable: `--line MUG:2 --line TEE:1`.
        #[arg(long = "line", value_name = "SKU:QTY", required = true)]
        lines: Vec<String>,
        /// Payment token for the gateway (`tok_decline...` is declined by the simulator).
        #[arg(long, value_name = "TOKEN")]
        token: String,
    },
    /// Publish CancelOrder.
    Cancel {
        #[arg(long, value_name = "ORDER_ID")]
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show an order's saga across all topics, and its current status.
    Timeline {
        order_id: String,
        /// Keep watching until the order reaches a terminal state.
        #[arg(long)]
        follow: bool,
        /// With --follow: give up (exit 1) after this long.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every catalogue topic and each service's .dlq and .replay topic (existing ones are kept).
    Create {
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
    /// List topics with their partitions and message counts.
    ///
    /// Counts are high minus low watermark per partition. Tansu 0.6 puts the high
    /// watermark at the start of a partition's last record batch, so a topic whose
    /// last write was a batch shows fewer messages than it holds.
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ErrorClassArg {
    Transient,
    Permanent,
}

impl ErrorClassArg {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClassArg::Transient => "transient",
            ErrorClassArg::Permanent => "permanent",
        }
    }
}

/// Which dead letters a command applies to. All given filters must match.
#[derive(Debug, Clone, Default, Args)]
pub struct DlqFilter {
    /// Only this error class.
    #[arg(long, value_enum)]
    pub class: Option<ErrorClassArg>,
    /// Only errors whose message contains this text (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub error: Option<String>,
    /// Only records with this key.
    #[arg(long)]
    pub key: Option<String>,
    /// Only failures at or after this time: RFC 3339, or a duration ago (`10m`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only failures before this time: RFC 3339, or a duration ago (`10m`).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only these dead-letter offsets, inclusive: `A..B`, `A..`, `..B` or `N`.
    #[arg(long, value_name = "A..B")]
    pub offsets: Option<String>,
    /// Only this partition of the dead-letter topic.
    #[arg(long, value_name = "P")]
    pub partition: Option<i32>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Counts by error class and original topic, and one line per dead letter.
    List {
        /// A service (`order-svc`) or its dead-letter topic (`order-svc.dlq`).
        dlq: String,
        #[command(flatten)]
        filter: DlqFilter,
    },
    /// One dead letter in full: key, headers, value.
    Inspect {
        /// A service (`order-svc`) or its dead-letter topic (`order-svc.dlq`).
        dlq: String,
        #[arg(long)]
        offset: i64,
        /// Needed only when the offset exists in several partitions.
        #[arg(long)]
        partition: Option<i32>,
    },
    /// Replay dead letters to the replay topic of the service that failed them.
    Replay {
        /// A service (`order-svc`) or its dead-letter topic (`order-svc.dlq`).
        dlq: String,
        #[command(flatten)]
        filter: DlqFilter,
        /// Show what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replay at most this many records.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// At most this many records per second.
        #[arg(long, value_name = "N")]
        rate: Option<f64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Write one JSON Schema file per message type (`<EventType>.json`) into DIR.
    Export { dir: PathBuf },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit non-zero if any demo order ends in the wrong state.
    #[arg(long)]
    pub check: bool,
    /// The payment gateway simulator (its /control endpoint switches outages).
    #[arg(long, env = "PAYMENT_GATEWAY_URL", default_value = "http://127.0.0.1:8090")]
    pub gateway_url: String,
    /// Give up on the demo after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}
