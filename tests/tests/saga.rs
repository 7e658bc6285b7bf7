//! The order saga end to end: real broker, six real services, real databases.
//! Every scenario runs on Apache Kafka and on Tansu, each on SQLite and PostgreSQL, and checks the final state in
//! every service's own database, not only the last event.

use std::time::{Duration, Instant};

use events::CancelOrder;
use saga_tests::{eventually, expect_eq, Stack, Target};

const SAGA: Duration = Duration::from_secs(60);

saga_tests::on_every_target!(
    confirmed_order_is_charged_and_stock_sold,
    out_of_stock_order_is_rejected,
    declined_payment_releases_stock_and_cancels,
    cancel_after_confirmation_refunds_and_releases,
    two_hundred_orders_for_fifty_units,
);

async fn notifications(stack: &mut Stack, order_id: &str) -> Vec<(String, String)> {
    let db = stack.db("notification-svc").await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, recipient FROM notifications WHERE order_id = $1 ORDER BY created_at, kind")
            .bind(order_id)
            .fetch_all(db.pool())
            .await
            .expect("notifications");
    rows
}

async fn wait_notified(stack: &mut Stack, order_id: &str, expected: &[(&str, &str)]) {
    let db = stack.db("notification-svc").await;
    let expected: Vec<(String, String)> = expected.iter().map(|(k, r)| ((*k).into(), (*r).into())).collect();
    eventually(&format!("notifications of {order_id}"), SAGA, || {
        let (db, expected) = (db.clone(), expected.clone());
        async move {
            let mut rows: Vec<(String, String)> =
                sqlx::query_as("SELECT kind, recipient FROM notifications WHERE order_id = $1")
                    .bind(order_id)
                    .fetch_all(db.pool())
                    .await
                    .map_err(|e| e.to_string())?;
            rows.sort();
            let mut expected = expected;
            expected.sort();
            expect_eq("notifications", rows, expected)
        }
    })
    .await;
}

async fn wait_reservation(stack: &mut Stack, order_id: &str, status: &str) {
    let db = stack.db("inventory-svc").await;
    eventually(&format!("reservation of {order_id} is {status}"), SAGA, || {
        let db = db.clone();
        async move {
            let actual: Option<String> = sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(db.pool())
                .await
                .map_err(|e| e.to_string())?;
            expect_eq("reservation", actual.as_deref(), Some(status))
        }
    })
    .await;
}

async fn confirmed_order_is_charged_and_stock_sold(target: Target) {
    let mut stack = Stack::start(target).await;
    stack.register_user("alice").await;
    stack.create_product("SKU-MUG", 1250, 10).await;

    let started = Instant::now();
    stack.place_order("order-1", "alice", &[("SKU-MUG", 2)], "tok_visa").await;
    stack.wait_order("order-1", "CONFIRMED", SAGA).await;
    println!("saga placed -> confirmed in {:?} ({target:?})", started.elapsed());

    // order-svc: priced from its projection.
    let total = stack.scalar_i64("order-svc", "SELECT total_minor FROM orders WHERE order_id = $1", "order-1").await;
    assert_eq!(total, Some(2500));
    // inventory-svc: reserved, then committed as sold.
    wait_reservation(&mut stack, "order-1", "COMMITTED").await;
    stack.wait_stock("SKU-MUG", (8, 0, 2, 10), SAGA).await;
    // payment-svc: one authorised payment, and the gateway charged once.
    let payment = stack.scalar_text("payment-svc", "SELECT status FROM payments WHERE order_id = $1", "order-1").await;
    assert_eq!(payment.as_deref(), Some("AUTHORIZED"));
    let ledger = stack.ledger().await;
    let charge = ledger.charges.get("order-1").expect("gateway charged order-1");
    assert!(charge.approved);
    assert_eq!(charge.amount_minor, 2500);
    assert_eq!(ledger.charges.len(), 1);
    // notification-svc: the customer was told, at the address from its projection.
    wait_notified(&mut stack, "order-1", &[("confirmed", "alice@example.com")]).await;
    // user-svc and product-svc own their records.
    let users = stack.scalar_i64("user-svc", "SELECT COUNT(*) FROM users WHERE user_id = $1", "alice").await;
    assert_eq!(users, Some(1));
    let price = stack.scalar_i64("product-svc", "SELECT price_minor FROM products WHERE sku = $1", "SKU-MUG").await;
    assert_eq!(price, Some(1250));
    stack.wait_outboxes_drained().await;
    stack.stop().await;
}

async fn out_of_stock_order_is_rejected(target: Target) {
    let mut stack = Stack::start(target).await;
    stack.register_user("bob").await;
    stack.create_product("SKU-LAMP", 4000, 1).await;
    stack.create_product("SKU-BULB", 300, 50).await;

    stack.place_order("order-2", "bob", &[("SKU-BULB", 4), ("SKU-LAMP", 2)], "tok_visa").await;
    stack.wait_order("order-2", "REJECTED", SAGA).await;

    let reason = stack.scalar_text("order-svc", "SELECT reason FROM orders WHERE order_id = $1", "order-2").await;
    let reason = reason.unwrap_or_default();
    assert!(reason.contains("out of stock") && reason.contains("SKU-LAMP"), "reason: {reason}");
    // All or nothing: the bulbs that were available were not kept either.
    wait_reservation(&mut stack, "order-2", "FAILED").await;
    stack.wait_stock("SKU-LAMP", (1, 0, 0, 1), SAGA).await;
    stack.wait_stock("SKU-BULB", (50, 0, 0, 50), SAGA).await;
    // Never charged.
    let payments =
        stack.scalar_i64("payment-svc", "SELECT COUNT(*) FROM payments WHERE order_id = $1", "order-2").await;
    assert_eq!(payments, Some(0));
    assert!(stack.ledger().await.charges.is_empty());
    wait_notified(&mut stack, "order-2", &[("rejected", "bob@example.com")]).await;

    // An order naming an unknown product is refused by order-svc itself.
    stack.place_order("order-3", "bob", &[("SKU-NOPE", 1)], "tok_visa").await;
    stack.wait_order("order-3", "REJECTED", SAGA).await;
    let reason = stack.scalar_text("order-svc", "SELECT reason FROM orders WHERE order_id = $1", "order-3").await;
    assert!(reason.unwrap_or_default().contains("unknown product SKU-NOPE"));
    wait_notified(&mut stack, "order-3", &[("rejected", "bob@example.com")]).await;
    stack.wait_outboxes_drained().await;
    stack.stop().await;
}

async fn declined_payment_releases_stock_and_cancels(target: Target) {
    let mut stack = Stack::start(target).await;
    stack.register_user("carol").await;
    stack.create_product("SKU-DESK", 20000, 3).await;

    stack.place_order("order-4", "carol", &[("SKU-DESK", 1)], "tok_decline_card").await;
    stack.wait_order("order-4", "CANCELLED", SAGA).await;

    let refunded = stack.scalar_i64("order-svc", "SELECT refunded FROM orders WHERE order_id = $1", "order-4").await;
    assert_eq!(refunded, Some(0), "never paid, so never refunded");
    let reason = stack.scalar_text("order-svc", "SELECT reason FROM orders WHERE order_id = $1", "order-4").await;
    assert!(reason.unwrap_or_default().contains("card declined"));
    wait_reservation(&mut stack, "order-4", "RELEASED").await;
    stack.wait_stock("SKU-DESK", (3, 0, 0, 3), SAGA).await;
    let payment = stack.scalar_text("payment-svc", "SELECT status FROM payments WHERE order_id = $1", "order-4").await;
    assert_eq!(payment.as_deref(), Some("DECLINED"));
    let ledger = stack.ledger().await;
    assert!(!ledger.charges.get("order-4").expect("gateway was asked").approved);
    wait_notified(&mut stack, "order-4", &[("cancelled", "carol@example.com")]).await;
    stack.wait_outboxes_drained().await;
    stack.stop().await;
}

async fn cancel_after_confirmation_refunds_and_releases(target: Target) {
    let mut stack = Stack::start(target).await;
    stack.register_user("dave").await;
    stack.create_product("SKU-CHAIR", 7500, 5).await;

    stack.place_order("order-5", "dave", &[("SKU-CHAIR", 2)], "tok_visa").await;
    stack.wait_order("order-5", "CONFIRMED", SAGA).await;
    stack.wait_stock("SKU-CHAIR", (3, 0, 2, 5), SAGA).await;

    stack.publish(CancelOrder { order_id: "order-5".into(), reason: "changed my mind".into() }).await;
    stack.wait_order("order-5", "CANCELLED", SAGA).await;

    let refunded = stack.scalar_i64("order-svc", "SELECT refunded FROM orders WHERE order_id = $1", "order-5").await;
    assert_eq!(refunded, Some(1));
    let payment = stack.scalar_text("payment-svc", "SELECT status FROM payments WHERE order_id = $1", "order-5").await;
    assert_eq!(payment.as_deref(), Some("REFUNDED"));
    let ledger = stack.ledger().await;
    assert_eq!(ledger.charges.len(), 1, "charged once");
    assert_eq!(ledger.refunds.len(), 1, "refunded once");
    assert_eq!(ledger.refunds.get("refund:order-5").map(|r| r.amount_minor), Some(15000));
    wait_reservation(&mut stack, "order-5", "RELEASED").await;
    stack.wait_stock("SKU-CHAIR", (5, 0, 0, 5), SAGA).await;
    wait_notified(&mut stack, "order-5", &[("confirmed", "dave@example.com"), ("cancelled", "dave@example.com")]).await;
    // Cancelling again changes nothing.
    stack.publish(CancelOrder { order_id: "order-5".into(), reason: "again".into() }).await;
    stack.wait_outboxes_drained().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.ledger().await.refunds.len(), 1);
    assert_eq!(notifications(&mut stack, "order-5").await.len(), 2);
    stack.stop().await;
}

async fn two_hundred_orders_for_fifty_units(target: Target) {
    let mut stack = Stack::start(target).await;
    let users: Vec<String> = (0..10).map(|i| format!("user-{i}")).collect();
    for user in &users {
        stack.register_user(user).await;
    }
    stack.create_product("SKU-HOT", 999, 50).await;

    let started = Instant::now();
    let orders: Vec<String> = (0..200).map(|i| format!("rush-{i:03}")).collect();
    futures::future::join_all(
        orders
            .iter()
            .enumerate()
            .map(|(i, order)| stack.place_order(order, &users[i % users.len()], &[("SKU-HOT", 1)], "tok_visa")),
    )
    .await;

    let db = stack.db("order-svc").await;
    eventually("all 200 orders terminal", Duration::from_secs(180), || {
        let db = db.clone();
        async move {
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM orders WHERE order_id LIKE 'rush-%' AND status NOT IN ('CONFIRMED', 'REJECTED')",
            )
            .fetch_one(db.pool())
            .await
            .map_err(|e| e.to_string())?;
            let all: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE order_id LIKE 'rush-%'")
                .fetch_one(db.pool())
                .await
                .map_err(|e| e.to_string())?;
            expect_eq("(orders, not terminal)", (all, open), (200, 0))
        }
    })
    .await;
    println!("200 orders for 50 units settled in {:?} ({target:?})", started.elapsed());

    let confirmed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status = 'CONFIRMED'")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(confirmed, 50, "exactly the stock is sold");
    stack.wait_stock("SKU-HOT", (0, 0, 50, 50), SAGA).await;
    let inventory = stack.db("inventory-svc").await;
    let committed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reservations WHERE status = 'COMMITTED'")
        .fetch_one(inventory.pool())
        .await
        .expect("count");
    assert_eq!(committed, 50);
    let payments = stack.db("payment-svc").await;
    let authorized: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM payments WHERE status = 'AUTHORIZED'")
        .fetch_one(payments.pool())
        .await
        .expect("count");
    assert_eq!(authorized, 50);
    let ledger = stack.ledger().await;
    assert_eq!(ledger.charges.len(), 50, "charged exactly the confirmed orders");
    assert!(ledger.charges.keys().all(|k| k.starts_with("rush-")));
    let notifications = stack.db("notification-svc").await;
    eventually("200 notifications", SAGA, || {
        let db = notifications.clone();
        async move {
            let by_kind: Vec<(String, i64)> =
                sqlx::query_as("SELECT kind, COUNT(*) FROM notifications GROUP BY kind ORDER BY kind")
                    .fetch_all(db.pool())
                    .await
                    .map_err(|e| e.to_string())?;
            expect_eq("notifications by kind", by_kind, vec![("confirmed".into(), 50), ("rejected".into(), 150)])
        }
    })
    .await;
    stack.wait_outboxes_drained().await;
    stack.stop().await;
}
