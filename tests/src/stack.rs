//! The whole system in one test process: a broker (child process), the gateway simulator, and the six
//! services, each with its own database and its own shutdown token so a test can
//! stop and restart one of them.

use std::collections::HashMap;
use std::time::Duration;

use events::{CreateProduct, Envelope, Message, OrderLine, PlaceOrder, RegisterUser};
use payment_svc::simulator::{Ledger, Mode};
use platform::kafka::HeaderList;
use platform::{Db, PlatformConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{eventually, expect_eq, Broker, BrokerStorage, Databases, Target};

pub const SERVICES: [&str; 6] =
    ["user-svc", "product-svc", "order-svc", "inventory-svc", "payment-svc", "notification-svc"];

/// How to start a [`Stack`].
pub struct Options {
    /// Changes to every service's platform settings.
    pub platform: fn(&mut PlatformConfig),
    /// Changes to payment-svc's settings.
    pub payment: fn(&mut payment_svc::Config),
    /// Changes to order-svc's settings (its saga deadlines, say).
    pub order: fn(&mut order_svc::Config),
    /// Tansu only: its sqlite engine (survives [`Broker::restart`] with its
    /// topics and offsets) instead of the faster memory engine.
    pub broker_storage: BrokerStorage,
}

impl Default for Options {
    fn default() -> Self {
        Options { platform: |_| {}, payment: |_| {}, order: |_| {}, broker_storage: BrokerStorage::Memory }
    }
}

type Running = (CancellationToken, JoinHandle<Result<(), platform::Error>>);

pub struct Stack {
    pub broker: Broker,
    pub dbs: Databases,
    pub gateway_url: String,
    gateway_stop: CancellationToken,
    running: HashMap<&'static str, Running>,
    http: HashMap<&'static str, std::net::SocketAddr>,
    producer: FutureProducer,
    pools: HashMap<&'static str, Db>,
    client: reqwest::Client,
    /// Tweaks applied to every service's platform configuration.
    pub platform_config: fn(&mut PlatformConfig),
    /// Tweaks applied to payment-svc's configuration (e.g. a short deadline).
    pub payment_config: fn(&mut payment_svc::Config),
    /// Tweaks applied to order-svc's configuration.
    pub order_config: fn(&mut order_svc::Config),
}

impl Stack {
    /// Broker, gateway simulator and all six services.
    pub async fn start(target: Target) -> Stack {
        Stack::start_with(target, |_| {}).await
    }

    pub async fn start_with(target: Target, payment_config: fn(&mut payment_svc::Config)) -> Stack {
        Stack::start_tweaked(target, |_| {}, payment_config).await
    }

    /// Like [`Stack::start`], with changes to every service's platform settings
    /// and to payment-svc's settings.
    pub async fn start_tweaked(
        target: Target,
        platform: fn(&mut PlatformConfig),
        payment: fn(&mut payment_svc::Config),
    ) -> Stack {
        Stack::start_with_options(target, Options { platform, payment, ..Options::default() }).await
    }

    pub async fn start_with_options(target: Target, options: Options) -> Stack {
        let dbs = Databases::new(target.backend);
        let broker = Broker::start(target.broker, dbs.dir(), options.broker_storage).await;
        Stack::start_on(broker, dbs, options).await
    }

    /// The gateway simulator and the six services against a broker already
    /// running (one configured like staging's, say).
    pub async fn start_on(broker: Broker, dbs: Databases, options: Options) -> Stack {
        platform::telemetry::init();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
        let gateway_url = format!("http://{}", listener.local_addr().expect("gateway address"));
        let gateway_stop = CancellationToken::new();
        tokio::spawn(payment_svc::simulator::serve(listener, 1_000_000, gateway_stop.clone()));
        // The test's publisher is the operator on a secure broker: commands
        // come from shopctl in staging.
        let producer = platform::kafka::producer(broker.connection()).expect("producer");
        let mut stack = Stack {
            broker,
            dbs,
            gateway_url,
            gateway_stop,
            running: HashMap::new(),
            http: HashMap::new(),
            producer,
            pools: HashMap::new(),
            client: reqwest::Client::new(),
            platform_config: options.platform,
            payment_config: options.payment,
            order_config: options.order,
        };
        for service in SERVICES {
            stack.start_service(service).await;
        }
        stack
    }

    fn platform_config(&self, service: &str, database_url: String) -> PlatformConfig {
        let mut config = PlatformConfig::local(&self.broker.addr);
        // Each service its own principal on a secure broker; plaintext otherwise.
        config.kafka_security = self.broker.security_for(service);
        config.database_url = Some(database_url);
        config.kafka_fetch_wait_max = self.broker.kind.fetch_wait_max();
        config.outbox_poll_interval = Duration::from_millis(200);
        config.retry_max_elapsed = Duration::from_secs(20);
        config.database_max_connections = 4;
        (self.platform_config)(&mut config);
        config
    }

    /// Builds and runs `service` in this process.
    pub async fn start_service(&mut self, service: &'static str) {
        let platform = self.platform_config(service, self.dbs.url_for(service).await);
        let app = match service {
            "user-svc" => user_svc::build(user_svc::Config { platform }).await,
            "product-svc" => product_svc::build(product_svc::Config { platform }).await,
            "order-svc" => {
                let mut config = order_svc::Config::local(&self.broker.addr);
                config.platform = platform;
                (self.order_config)(&mut config);
                order_svc::build(config).await
            }
            "inventory-svc" => inventory_svc::build(inventory_svc::Config { platform }).await,
            "notification-svc" => notification_svc::build(notification_svc::Config { platform }).await,
            "payment-svc" => {
                let mut config = payment_svc::Config::local(&self.broker.addr, &self.gateway_url);
                config.platform = platform;
                (self.payment_config)(&mut config);
                payment_svc::build(config).await
            }
            other => panic!("unknown service {other}"),
        };
        let app = app.unwrap_or_else(|e| panic!("building {service}: {e}"));
        self.http.insert(service, app.http_addr());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
        self.running.insert(service, (stop, handle));
    }

    /// GET a path of `service`'s HTTP endpoints: (status, body).
    pub async fn http_get(&self, service: &'static str, path: &str) -> (u16, String) {
        let addr = self.http.get(service).unwrap_or_else(|| panic!("{service} is not running"));
        let response = self.client.get(format!("http://{addr}{path}")).send().await.expect("http request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("http body"))
    }

    /// Graceful stop of one service; panics if it ended with an error.
    pub async fn stop_service(&mut self, service: &'static str) {
        if let Some((stop, handle)) = self.running.remove(service) {
            stop.cancel();
            match handle.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => panic!("{service} failed: {error}"),
                Err(error) => panic!("{service} panicked: {error}"),
            }
        }
    }

    /// Publishes a message as the CLI would: validated, right topic, right key.
    pub async fn publish(&self, message: impl Into<Message>) -> Envelope {
        let envelope = Envelope::new(message, "saga-tests");
        envelope.message.validate().expect("test messages are valid");
        self.publish_raw(
            envelope.topic(),
            envelope.key(),
            &envelope.to_json(),
            HeaderList::for_envelope(&envelope, None),
        )
        .await;
        envelope
    }

    /// Publishes arbitrary bytes (poison messages, hand-made envelopes).
    pub async fn publish_raw(&self, topic: &str, key: &str, value: &[u8], headers: HeaderList) {
        let record = FutureRecord::to(topic).key(key).payload(value).headers(headers.to_kafka());
        self.producer.send(record, Timeout::After(Duration::from_secs(30))).await.expect("publish");
    }

    /// Every record of `topic` from the beginning up to its current end.
    pub async fn read_topic(&self, topic: &str) -> Vec<OwnedMessage> {
        read_topic_at(self.broker.connection(), topic).await
    }

    /// A pool on `service`'s own database, for assertions.
    pub async fn db(&mut self, service: &'static str) -> Db {
        if let Some(db) = self.pools.get(service) {
            return db.clone();
        }
        let db = Db::connect(&self.dbs.url_for(service).await, 2, Duration::from_secs(5))
            .await
            .expect("connect for assertions");
        self.pools.insert(service, db.clone());
        db
    }

    pub async fn scalar_i64(&mut self, service: &'static str, sql: &str, arg: &str) -> Option<i64> {
        let db = self.db(service).await;
        sqlx::query_scalar(sql).bind(arg).fetch_optional(db.pool()).await.expect("query")
    }

    pub async fn scalar_text(&mut self, service: &'static str, sql: &str, arg: &str) -> Option<String> {
        let db = self.db(service).await;
        sqlx::query_scalar::<_, Option<String>>(sql).bind(arg).fetch_optional(db.pool()).await.expect("query").flatten()
    }

    pub async fn order_status(&mut self, order_id: &str) -> Option<String> {
        self.scalar_text("order-svc", "SELECT status FROM orders WHERE order_id = $1", order_id).await
    }

    /// (available, reserved, sold, received) of a SKU in inventory-svc.
    pub async fn stock(&mut self, sku: &str) -> Option<(i64, i64, i64, i64)> {
        let db = self.db("inventory-svc").await;
        stock_of(&db, sku).await.expect("query stock")
    }

    /// Waits until a SKU's stock in inventory-svc is `expected`:
    /// (available, reserved, sold, received).
    pub async fn wait_stock(&mut self, sku: &str, expected: (i64, i64, i64, i64), within: Duration) {
        let db = self.db("inventory-svc").await;
        eventually(&format!("stock of {sku} (available, reserved, sold, received)"), within, || {
            let db = db.clone();
            async move {
                let row = stock_of(&db, sku).await.map_err(|e| e.to_string())?;
                expect_eq("stock", row, Some(expected))
            }
        })
        .await;
    }

    pub async fn ledger(&self) -> Ledger {
        let url = format!("{}/ledger", self.gateway_url);
        self.client.get(url).send().await.expect("ledger").json().await.expect("ledger json")
    }

    pub async fn set_gateway(&self, mode: Mode, latency_ms: u64) {
        let url = format!("{}/control", self.gateway_url);
        let control = payment_svc::simulator::Control { mode, latency_ms };
        self.client.put(url).json(&control).send().await.expect("gateway control").error_for_status().expect("mode");
    }

    /// Registers a user and waits until order-svc and notification-svc know them.
    pub async fn register_user(&mut self, user_id: &str) {
        self.publish(RegisterUser {
            user_id: user_id.into(),
            email: format!("{user_id}@example.com"),
            name: format!("User {user_id}"),
        })
        .await;
        for service in ["order-svc", "notification-svc"] {
            let table = if service == "order-svc" { "users" } else { "contacts" };
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE user_id = $1");
            let db = self.db(service).await;
            eventually(&format!("{service} knows user {user_id}"), Duration::from_secs(30), || {
                let (db, sql) = (db.clone(), sql.clone());
                async move {
                    let n: i64 =
                        sqlx::query_scalar(&sql).bind(user_id).fetch_one(db.pool()).await.map_err(|e| e.to_string())?;
                    expect_eq("users", n, 1)
                }
            })
            .await;
        }
    }

    /// Creates a product and waits until order-svc prices it and inventory stocks it.
    pub async fn create_product(&mut self, sku: &str, price_minor: i64, initial_stock: i64) {
        self.publish(CreateProduct { sku: sku.into(), name: format!("Product {sku}"), price_minor, initial_stock })
            .await;
        for (service, table) in [("order-svc", "products"), ("inventory-svc", "stock")] {
            let db = self.db(service).await;
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE sku = $1");
            eventually(&format!("{service} knows {sku}"), Duration::from_secs(30), || {
                let (db, sql) = (db.clone(), sql.clone());
                async move {
                    let n: i64 =
                        sqlx::query_scalar(&sql).bind(sku).fetch_one(db.pool()).await.map_err(|e| e.to_string())?;
                    expect_eq("products", n, 1)
                }
            })
            .await;
        }
    }

    pub async fn place_order(
        &self,
        order_id: &str,
        user_id: &str,
        lines: &[(&str, i64)],
        payment_token: &str,
    ) -> Envelope {
        self.publish(PlaceOrder {
            order_id: order_id.into(),
            user_id: user_id.into(),
            lines: lines.iter().map(|(sku, quantity)| OrderLine { sku: (*sku).into(), quantity: *quantity }).collect(),
            payment_token: payment_token.into(),
        })
        .await
    }

    /// Waits until the order reaches `status` in order-svc's database.
    pub async fn wait_order(&mut self, order_id: &str, status: &str, timeout: Duration) {
        let db = self.db("order-svc").await;
        eventually(&format!("order {order_id} is {status}"), timeout, || {
            let db = db.clone();
            async move {
                let actual: Option<String> = sqlx::query_scalar("SELECT status FROM orders WHERE order_id = $1")
                    .bind(order_id)
                    .fetch_optional(db.pool())
                    .await
                    .map_err(|e| e.to_string())?;
                expect_eq("status", actual.as_deref(), Some(status))
            }
        })
        .await;
    }

    /// Waits until every service's outbox is fully published.
    pub async fn wait_outboxes_drained(&mut self) {
        for service in SERVICES {
            let db = self.db(service).await;
            eventually(&format!("{service} outbox drained"), Duration::from_secs(30), || {
                let db = db.clone();
                async move {
                    let backlog = platform::outbox::backlog(&db).await.map_err(|e| e.to_string())?;
                    expect_eq("unsent outbox rows", backlog, 0)
                }
            })
            .await;
        }
    }

    /// Stops everything; panics if a service ended with an error.
    pub async fn stop(mut self) {
        for service in SERVICES {
            self.stop_service(service).await;
        }
        self.gateway_stop.cancel();
        for (_, db) in self.pools.drain() {
            db.close().await;
        }
        self.dbs.drop_all().await;
    }
}

/// (available, reserved, sold, received) of a SKU in inventory-svc's database.
async fn stock_of(db: &Db, sku: &str) -> Result<Option<(i64, i64, i64, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT available, reserved, sold, received FROM stock WHERE sku = $1")
        .bind(sku)
        .fetch_optional(db.pool())
        .await
}

/// Every record of `topic` on the broker at `brokers` (an address: plaintext),
/// up to its current end.
pub async fn read_topic_at(brokers: impl Into<platform::kafka::Connection>, topic: &str) -> Vec<OwnedMessage> {
    let (connection, topic) = (brokers.into(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_topic_blocking(&connection, &topic)).await.expect("reader thread")
}

fn read_topic_blocking(connection: &platform::kafka::Connection, topic: &str) -> Vec<OwnedMessage> {
    let timeout = Duration::from_secs(10);
    let mut config = connection.client_config();
    // A reader group of the operator's kind, which its ACLs allow on a secure broker.
    let group = format!("{}saga-tests-reader", events::access::OPERATOR_GROUP_PREFIX);
    config.set("group.id", group).set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().expect("reader");
    let metadata = consumer.fetch_metadata(Some(topic), timeout).expect("metadata");
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0usize;
    let mut ends = std::collections::HashMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout).expect("watermarks");
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("assign");
            ends.insert(partition, high);
            remaining += 1;
        }
    }
    let mut records = Vec::new();
    if remaining == 0 {
        return records;
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while remaining > 0 && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.expect("read record");
        let end = ends.get(&rdkafka::Message::partition(&message)).copied().unwrap_or(0);
        if rdkafka::Message::offset(&message) + 1 >= end {
            remaining -= 1;
        }
        records.push(message.detach());
    }
    assert_eq!(remaining, 0, "could not read {topic} to its end");
    // Tansu 0.6 reports the high watermark as the last batch's base offset plus
    // one, so the last batch may hold records past it: they arrive in the same
    // fetch, so drain until the partitions have been quiet briefly.
    let drain_until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < drain_until {
        match consumer.poll(Duration::from_millis(250)) {
            Some(message) => records.push(message.expect("read record").detach()),
            None => break,
        }
    }
    records
}
