//! Kafka security on the real broker: one Apache Kafka node configured like
//! staging (SASL_SSL with SCRAM-SHA-512, TLS, the StandardAuthorizer with
//! `allow.everyone.if.no.acl.found=false`, deploy/kafka/secure.properties), its
//! certificates and passwords made by deploy/kafka/secrets.sh, the ACLs of
//! `shopctl acls` applied with Kafka's own ACL tool.
//!
//! One broker serves every check (starting one and granting the ACLs takes
//! most of the time), so they run in order in one test, each denial next to
//! the grant it is the other side of, so that a check would fail if the ACLs or
//! the security were missing rather than pass by accident:
//!
//! 1. before any ACL exists, the operator is authenticated yet may not create
//!    topics (nothing is allowed that no ACL allows); after `shopctl acls`, it
//!    creates them with `shopctl topics create`;
//! 2. a service's credentials produce to its own topic, but not to another
//!    service's (TopicAuthorizationFailed, and no record there, read as the
//!    operator), nor may the operator forge a service's events; a service does
//!    not even see a topic it does not read;
//! 3. a wrong password is refused (SASL authentication failed), and so is a
//!    plaintext client on the SASL_SSL port;
//! 4. a client that does not trust the deployment's CA (another CA, or only
//!    the system's) fails the TLS handshake;
//! 5. the saga runs green with the six services each authenticated as its own
//!    principal under these ACLs, and the commands published as the operator;
//!    the services that read payment.events dead-letter step 2's record (no
//!    envelope) to their own DLQs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform::kafka::{Connection, KafkaSecurityArgs};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, FutureRecord, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::Message as _;
use saga_tests::{Backend, Broker, Databases, Options, Stack};

/// The errors librdkafka reports for a client (authentication, TLS, transport):
/// they come through the context's error callback, not as a call's result.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<(RDKafkaErrorCode, String)>>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((code, reason.to_owned()));
    }
}

impl ProducerContext for Errors {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

impl Errors {
    fn seen(&self) -> Vec<(RDKafkaErrorCode, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Asks for metadata with `config`: Ok if the broker answered, else the errors
/// librdkafka reported meanwhile. A producer, because its poll hands error
/// events to the context with their reason (a consumer's returns bare codes).
async fn metadata_with(config: rdkafka::ClientConfig) -> Result<(), Vec<(RDKafkaErrorCode, String)>> {
    tokio::task::spawn_blocking(move || {
        let errors = Errors::default();
        let client: BaseProducer<Errors> = config.create_with_context(errors.clone()).expect("client");
        match client.client().fetch_metadata(None, Duration::from_secs(6)) {
            Ok(_) => Ok(()),
            Err(_) => {
                for _ in 0..10 {
                    client.poll(Duration::from_millis(100));
                }
                Err(errors.seen())
            }
        }
    })
    .await
    .expect("metadata thread")
}

/// Produces one record as `connection` with the platform's producer (the
/// services'); the delivery's outcome.
async fn produce(connection: &Connection, topic: &str, key: &str) -> Result<(), KafkaError> {
    let producer = platform::kafka::producer(connection).expect("producer");
    let record = FutureRecord::to(topic).key(key).payload("forged");
    producer.send(record, Timeout::After(Duration::from_secs(20))).await.map(|_| ()).map_err(|(error, _)| error)
}

/// Runs shopctl's `args` as `principal`, as the compose `cli` service would.
async fn shopctl(broker: &Broker, principal: &str, args: &[&str]) -> anyhow::Result<()> {
    let secure = broker.secure().expect("secure broker");
    let password = secure.secrets.join(format!("{principal}.password"));
    let ca = secure.secrets.join("ca.crt");
    let mut argv: Vec<String> = ["shopctl", "--brokers", &broker.addr, "--kafka-security-protocol", "sasl_ssl"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    argv.extend(["--kafka-sasl-username".to_owned(), principal.to_owned()]);
    argv.extend(["--kafka-sasl-password-file".to_owned(), password.display().to_string()]);
    argv.extend(["--kafka-ssl-ca-location".to_owned(), ca.display().to_string()]);
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    let cli = <shopctl::cli::Cli as clap::Parser>::try_parse_from(&argv).expect("shopctl's arguments parse");
    shopctl::run(cli).await
}

fn has(errors: &[(RDKafkaErrorCode, String)], code: RDKafkaErrorCode, text: &str) -> bool {
    errors.iter().any(|(c, reason)| *c == code && reason.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_sasl_ssl_with_acls_per_service() {
    let dbs = Databases::new(Backend::Sqlite);
    let broker = Broker::start_secure(dbs.dir()).await;
    let secrets = broker.secure().expect("secure").secrets.clone();
    let payment = broker.connection_as("payment-svc");
    let operator = broker.connection();

    // 1. Nothing without an ACL: the operator authenticates, yet may not create
    // topics; with the ACLs of `shopctl acls` it may.
    let denied = shopctl(&broker, "operator", &["topics", "create", "--partitions", "2"]).await;
    let denied = format!("{:#}", denied.expect_err("no ACL allows creating topics yet"));
    assert!(denied.contains("authorization"), "creating topics without ACLs failed otherwise: {denied}");
    let started = std::time::Instant::now();
    tokio::task::block_in_place(|| broker.apply_acls());
    eprintln!("ACLs applied in {:?}", started.elapsed());
    shopctl(&broker, "operator", &["topics", "create", "--partitions", "2"])
        .await
        .unwrap_or_else(|e| panic!("the operator creates the topics under its ACLs: {e:#}"));

    // 2. A service writes its own topic, and no other; the operator cannot forge
    // a service's events either.
    produce(&payment, events::topics::PAYMENT_EVENTS, "own-topic")
        .await
        .unwrap_or_else(|e| panic!("payment-svc may write payment.events: {e}"));
    for (who, connection, topic) in [
        ("payment-svc", &payment, events::topics::ORDER_EVENTS),
        ("payment-svc", &payment, events::topics::USER_COMMANDS),
        ("operator", &operator, events::topics::PAYMENT_EVENTS),
    ] {
        let error = produce(connection, topic, "forged").await.expect_err("denied");
        assert_eq!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed),
            "{who} writing {topic}: {error}"
        );
    }
    let written = saga_tests::stack::read_topic_at(&operator, events::topics::ORDER_EVENTS).await;
    assert!(
        written.is_empty(),
        "records reached order.events: {:?}",
        written.iter().map(|r| r.key()).collect::<Vec<_>>()
    );
    let forged = saga_tests::stack::read_topic_at(&operator, events::topics::PAYMENT_EVENTS).await;
    assert_eq!(forged.iter().map(|r| r.key()).collect::<Vec<_>>(), [Some(b"own-topic".as_slice())]);
    // A topic it does not read is hidden from it.
    let hidden = tokio::task::spawn_blocking({
        let payment = payment.clone();
        move || {
            let client: BaseConsumer = payment.client_config().create().expect("client");
            let metadata = client.fetch_metadata(Some(events::topics::USER_COMMANDS), Duration::from_secs(10));
            metadata.expect("metadata").topics().first().and_then(|t| t.error()).map(RDKafkaErrorCode::from)
        }
    })
    .await
    .expect("metadata thread");
    assert_eq!(hidden, Some(RDKafkaErrorCode::TopicAuthorizationFailed), "payment-svc sees user.commands");

    // 3. A wrong password, and plaintext on the SASL_SSL port, are refused; the
    // right password gets in (above, and here with the same client settings).
    let mut wrong =
        KafkaSecurityArgs::sasl_ssl("payment-svc", &secrets.join("payment-svc.password"), &secrets.join("ca.crt"));
    wrong.password_file = None;
    wrong.password = Some(platform::kafka::Secret::new("not-the-password"));
    let refused = metadata_with(wrong.connect(&broker.addr).expect("valid settings").client_config()).await;
    let refused = refused.expect_err("a wrong password is refused");
    assert!(
        has(&refused, RDKafkaErrorCode::Authentication, "SASL authentication error"),
        "a wrong password failed otherwise: {refused:?}"
    );
    metadata_with(payment.client_config()).await.unwrap_or_else(|e| panic!("the right password is refused: {e:?}"));
    let plaintext = metadata_with(Connection::plaintext(&broker.addr).client_config()).await;
    let plaintext = plaintext.expect_err("plaintext is refused on the SASL_SSL port");
    assert!(!plaintext.is_empty(), "a plaintext client failed without saying why");

    // 4. TLS: a client trusting another CA, or only the system's, does not
    // accept the broker's certificate.
    let other = saga_tests::broker::make_secrets(&dbs.dir().join("other-ca"));
    let other_ca =
        KafkaSecurityArgs::sasl_ssl("payment-svc", &secrets.join("payment-svc.password"), &other.join("ca.crt"));
    let untrusted = metadata_with(other_ca.connect(&broker.addr).expect("valid settings").client_config()).await;
    let untrusted = untrusted.expect_err("another CA's client is refused");
    assert!(
        has(&untrusted, RDKafkaErrorCode::SSL, "certificate verify failed"),
        "another CA failed otherwise: {untrusted:?}"
    );
    let mut system_only = payment.client_config();
    system_only.remove("ssl.ca.location");
    let untrusted = metadata_with(system_only).await.expect_err("the system's CAs do not vouch for the broker");
    assert!(
        has(&untrusted, RDKafkaErrorCode::SSL, "certificate verify failed"),
        "no CA failed otherwise: {untrusted:?}"
    );

    // 5. The saga, each service its own principal.
    let mut stack = Stack::start_on(broker, dbs, Options::default()).await;
    let saga = std::panic::AssertUnwindSafe(async {
        stack.register_user("ada").await;
        stack.create_product("MUG", 1250, 10).await;
        stack.place_order("order-secure", "ada", &[("MUG", 2)], "tok_visa").await;
        stack.wait_order("order-secure", "CONFIRMED", Duration::from_secs(60)).await;
        stack.wait_stock("MUG", (8, 0, 2, 10), Duration::from_secs(30)).await;
    });
    if let Err(panic) = futures::FutureExt::catch_unwind(saga).await {
        eprintln!("{}", stack.broker.log_tail(60));
        std::panic::resume_unwind(panic);
    }
    // The record payment-svc wrote to its own topic in step 2 is no envelope:
    // each service reading payment.events dead-lettered it, to its own DLQ,
    // which its ACLs let it write.
    for access in events::access::SERVICES {
        let dead = stack.read_topic(&events::topics::dead_letter(access.service)).await;
        let keys: Vec<Option<&[u8]>> = dead.iter().map(|r| r.key()).collect();
        let expected: Vec<Option<&[u8]>> =
            if access.consumes.contains(&events::topics::PAYMENT_EVENTS) { vec![Some(b"own-topic")] } else { vec![] };
        assert_eq!(keys, expected, "dead letters of {}", access.service);
    }
    stack.stop().await;
}
