//! The outbox and inbox end to end: the relay publishes in commit order (its
//! `seq`), not in event-id order; a database from before `seq` existed keeps its
//! unsent rows, first in line; and every service prunes published outbox rows
//! and old inbox ids. Apache Kafka only (the relay's order and the pruning are
//! the platform's, not the broker's), on both databases.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use events::{Envelope, Message, UserRegistered};
use platform::{Db, Tx};
use rdkafka::Message as _;
use saga_tests::stack::SERVICES;
use saga_tests::{eventually, expect_eq, Backend, Databases, Stack, Target};
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use uuid::Uuid;

saga_tests::on_kafka!(relay_follows_commit_order_not_event_ids, published_rows_and_old_inbox_ids_are_pruned_everywhere);

const SAGA: Duration = Duration::from_secs(60);

async fn relay_follows_commit_order_not_event_ids(target: Target) {
    const TRANSACTIONS: usize = 5;
    const PER_TRANSACTION: usize = 6;
    const KEYS: [&str; 2] = ["probe-1", "probe-2"];
    let total = TRANSACTIONS * PER_TRANSACTION;
    let mut stack = Stack::start(target).await;
    // With user-svc stopped its outbox fills up, and its relay finds every row
    // at once when it starts again: the order it sends them in is all its own.
    stack.stop_service(user_svc::SERVICE).await;
    let db = stack.db(user_svc::SERVICE).await;
    // Event ids deliberately newest first, so that event-id order is the
    // reverse of commit order.
    let mut ids: Vec<Uuid> = (0..total).map(|_| Uuid::now_v7()).collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut ids = ids.into_iter();
    for transaction in 0..TRANSACTIONS {
        let mut tx = Tx::begin(&db, user_svc::SERVICE).await.expect("begin");
        for i in 0..PER_TRANSACTION {
            let n = transaction * PER_TRANSACTION + i;
            let key = KEYS[n % KEYS.len()];
            let message =
                UserRegistered { user_id: key.into(), email: format!("{key}@example.com"), name: n.to_string() };
            let mut envelope = Envelope::new(message, user_svc::SERVICE);
            envelope.event_id = ids.next().expect("an id per event");
            tx.emit_envelope(envelope);
        }
        tx.commit(&Notify::new()).await.expect("commit");
    }
    stack.start_service(user_svc::SERVICE).await;

    eventually("every probe event published", SAGA, || {
        let stack = &stack;
        async move {
            let count: usize = probes_published(stack, &KEYS).await.values().map(Vec::len).sum();
            expect_eq("probe events on user.events", count, total)
        }
    })
    .await;
    let published = probes_published(&stack, &KEYS).await;
    for (k, key) in KEYS.iter().enumerate() {
        let committed: Vec<usize> = (k..total).step_by(KEYS.len()).collect();
        assert_eq!(published.get(*key), Some(&committed), "{key}: published in commit order");
    }
    stack.stop().await;
}

/// The numbers in the probe events of `keys` on user.events, per key (one
/// partition each) in offset order.
async fn probes_published(stack: &Stack, keys: &[&str]) -> BTreeMap<String, Vec<usize>> {
    let mut by_key: BTreeMap<String, Vec<(i64, usize)>> = BTreeMap::new();
    for record in stack.read_topic(events::topics::USER_EVENTS).await {
        let Some(envelope) = record.payload().and_then(|p| Envelope::from_json(p).ok()) else { continue };
        let Message::UserRegistered(m) = &envelope.message else { continue };
        if let (true, Ok(n)) = (keys.contains(&m.user_id.as_str()), m.name.parse::<usize>()) {
            by_key.entry(m.user_id.clone()).or_default().push((record.offset(), n));
        }
    }
    by_key
        .into_iter()
        .map(|(key, mut numbers)| {
            numbers.sort_unstable();
            (key, numbers.into_iter().map(|(_, n)| n).collect())
        })
        .collect()
}

async fn published_rows_and_old_inbox_ids_are_pruned_everywhere(target: Target) {
    let mut stack = Stack::start_tweaked(
        target,
        |p| {
            p.outbox_retention = Duration::from_secs(1);
            p.inbox_retention = Duration::from_secs(5);
            p.prune_interval = Duration::from_millis(200);
        },
        |_| {},
    )
    .await;
    stack.register_user("pruned").await;
    stack.create_product("SKU-PRUNE", 500, 10).await;
    stack.place_order("order-pruned", "pruned", &[("SKU-PRUNE", 1)], "tok_visa").await;
    stack.wait_order("order-pruned", "CONFIRMED", SAGA).await;

    // Just applied, so younger than its retention: the id that confirmed the
    // order is still in order-svc's inbox (a redelivery would be a no-op).
    let authorized = stack
        .read_topic(events::topics::PAYMENT_EVENTS)
        .await
        .iter()
        .filter_map(|r| Envelope::from_json(r.payload()?).ok())
        .find(|e| matches!(&e.message, Message::PaymentAuthorized(m) if m.order_id == "order-pruned"))
        .expect("PaymentAuthorized on payment.events");
    let remembered = stack
        .scalar_i64("order-svc", "SELECT COUNT(*) FROM inbox WHERE event_id = $1", &authorized.event_id.to_string())
        .await;
    assert_eq!(remembered, Some(1), "order-svc's inbox holds the PaymentAuthorized it just applied");

    // Then every service's published rows go after a second, and its inbox ids
    // after five; nothing is left unsent on the way.
    for service in SERVICES {
        let db = stack.db(service).await;
        eventually(&format!("{service}: outbox and inbox pruned"), Duration::from_secs(30), || {
            let db = db.clone();
            async move {
                let counts: (i64, i64, i64) = sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM outbox WHERE sent_at IS NOT NULL),
                            (SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL),
                            (SELECT COUNT(*) FROM inbox)",
                )
                .fetch_one(db.pool())
                .await
                .map_err(|e| e.to_string())?;
                expect_eq("(published outbox rows, unsent outbox rows, inbox ids)", counts, (0, 0, 0))
            }
        })
        .await;
    }
    stack.stop().await;
}

/// A database from before `seq`: its unsent rows keep their old order (by
/// event id) and go out before anything written after the migration. No
/// broker: this is about the migration.
async fn existing_unsent_rows_are_numbered_by_the_migration(backend: Backend) {
    let dbs = Databases::new(backend);
    let db = Db::connect(&dbs.url_for("legacy-outbox").await, 2, Duration::from_secs(5)).await.expect("connect");
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../platform/migrations"));
    let platform = Migrator::new(dir).await.expect("platform migrations");
    let first = Migrator { migrations: Cow::Owned(platform.migrations[..1].to_vec()), ..Migrator::DEFAULT };
    first.run(db.writer()).await.expect("the first platform migration");
    for (id, sent_at) in [("c-unsent", None), ("s-sent", Some(5_i64)), ("a-unsent", None), ("b-unsent", None)] {
        sqlx::query(
            "INSERT INTO outbox (event_id, topic, message_key, event_type, envelope, headers, created_at, sent_at)
             VALUES ($1, 'user.events', 'k', 'UserRegistered', '{}', '[]', 1, $2)",
        )
        .bind(id)
        .bind(sent_at)
        .execute(db.writer())
        .await
        .expect("legacy row");
    }

    db.migrate(&Migrator::DEFAULT).await.expect("migrate");
    let mut tx = Tx::begin(&db, "legacy").await.expect("begin");
    let message = UserRegistered { user_id: "k".into(), email: "k@example.com".into(), name: "new".into() };
    let new = Envelope::new(message, "legacy");
    tx.emit_envelope(new.clone());
    tx.commit(&Notify::new()).await.expect("commit");

    let relay_order: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox WHERE sent_at IS NULL ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .expect("unsent rows");
    assert_eq!(relay_order, ["a-unsent", "b-unsent", "c-unsent", &new.event_id.to_string()]);
    db.close().await;
    dbs.drop_all().await;
}

#[tokio::test]
async fn sqlite_existing_unsent_rows_are_numbered_by_the_migration() {
    existing_unsent_rows_are_numbered_by_the_migration(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_existing_unsent_rows_are_numbered_by_the_migration() {
    existing_unsent_rows_are_numbered_by_the_migration(Backend::Postgres).await;
}
