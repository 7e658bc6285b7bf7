//! The saga keeps its money and stock promises on the paths that break them:
//! a gateway call that may have charged, a cancellation racing the charge, a
//! dead-lettered saga event, a compensation that cannot finish, and events that
//! arrive before what they refer to. Apache Kafka, SQLite and PostgreSQL.

use std::time::Duration;

use events::{CancelOrder, Envelope, OrderLine, PlaceOrder, RegisterUser};
use payment_svc::simulator::{Ledger, Mode};
use platform::dead_letter::DeadLetterInfo;
use platform::kafka::{header, HeaderList};
use rdkafka::Message as _;
use saga_tests::{eventually, expect_eq, Backend, Options, Stack, Target};
use sqlx::Executor;

const SAGA: Duration = Duration::from_secs(60);

saga_tests::on_kafka!(
    an_ambiguous_charge_is_settled_by_key_and_refunded_past_the_deadline,
    a_cancel_while_the_payment_is_deferred_stops_it,
    a_cancel_racing_the_charge_never_keeps_money,
    a_dead_lettered_saga_event_still_ends_the_order,
    an_order_right_after_registering_waits_for_the_user,
    an_order_for_a_user_who_never_registers_is_rejected_without_stalling,
    an_order_priced_beyond_any_amount_is_dead_lettered_not_wrapped,
    a_refund_the_gateway_refuses_is_handed_to_an_operator,
);

async fn setup(stack: &mut Stack) {
    stack.register_user("ann").await;
    stack.create_product("SKU-PEN", 200, 100).await;
}

async fn cancel(stack: &Stack, order_id: &str) {
    stack.publish(CancelOrder { order_id: order_id.into(), reason: "changed my mind".into() }).await;
}

async fn refunded(stack: &mut Stack, order_id: &str) -> bool {
    stack.scalar_i64("order-svc", "SELECT refunded FROM orders WHERE order_id = $1", order_id).await == Some(1)
}

async fn payment_status(stack: &mut Stack, order_id: &str) -> Option<String> {
    stack.scalar_text("payment-svc", "SELECT status FROM payments WHERE order_id = $1", order_id).await
}

async fn attempts(stack: &mut Stack, order_id: &str) -> i64 {
    stack.scalar_i64("payment-svc", "SELECT attempts FROM payments WHERE order_id = $1", order_id).await.unwrap_or(0)
}

/// Charged under the order's key, and approved.
fn charged(ledger: &Ledger, order_id: &str) -> bool {
    ledger.charges.get(order_id).is_some_and(|c| c.approved)
}

fn refund_made(ledger: &Ledger, order_id: &str) -> bool {
    ledger.refunds.get(&format!("refund:{order_id}")).is_some_and(|r| r.approved)
}

/// The gateway takes each charge but answers too late (slow) or with a 500
/// (failing) until past the payment deadline. The calls looked failed, yet the
/// money moved: the payment is settled by its idempotency key, refunded, and the
/// order cancelled as refunded.
async fn an_ambiguous_charge_is_settled_by_key_and_refunded_past_the_deadline(target: Target) {
    let options = Options {
        payment: |c| {
            c.gateway_timeout = Duration::from_millis(300);
            c.payment_deadline = Duration::from_secs(3);
            c.payment_retry_min = Duration::from_millis(200);
            c.payment_retry_max = Duration::from_millis(500);
        },
        ..Options::default()
    };
    let mut stack = Stack::start_with_options(target, options).await;
    setup(&mut stack).await;
    for (order_id, mode) in [("ambiguous-slow", Mode::Slow), ("ambiguous-500", Mode::Failing)] {
        stack.set_gateway(mode, 800).await;
        stack.place_order(order_id, "ann", &[("SKU-PEN", 2)], "tok_visa").await;
        stack.wait_order(order_id, "PAYMENT_DEFERRED", SAGA).await;
        assert!(charged(&stack.ledger().await, order_id), "the gateway took the charge it did not confirm");
        // Past the deadline with the gateway still unusable: nothing can be
        // settled yet, so nothing is compensated yet.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(stack.order_status(order_id).await.as_deref(), Some("PAYMENT_DEFERRED"), "{order_id}");
        stack.set_gateway(Mode::Healthy, 0).await;
        stack.wait_order(order_id, "CANCELLED", SAGA).await;
        let ledger = stack.ledger().await;
        assert!(refund_made(&ledger, order_id), "{order_id}: charged means refunded: {ledger:?}");
        assert!(refunded(&mut stack, order_id).await, "{order_id}: cancelled as refunded");
        assert_eq!(payment_status(&mut stack, order_id).await.as_deref(), Some("REFUNDED"));
    }
    stack.wait_stock("SKU-PEN", (100, 0, 0, 100), SAGA).await;
    stack.stop().await;
}

/// A cancel accepted while the payment waits out an outage stops it: the order
/// is cancelled at once, and the charge is never made, even once the gateway is
/// back. If an earlier call may have charged (a 500), the cancel settles it by
/// key first and refunds.
async fn a_cancel_while_the_payment_is_deferred_stops_it(target: Target) {
    let options = Options {
        payment: |c| {
            c.payment_retry_min = Duration::from_millis(200);
            c.payment_retry_max = Duration::from_millis(500);
        },
        ..Options::default()
    };
    let mut stack = Stack::start_with_options(target, options).await;
    setup(&mut stack).await;
    stack.set_gateway(Mode::Outage, 0).await;
    stack.place_order("deferred-clean", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    stack.wait_order("deferred-clean", "PAYMENT_DEFERRED", SAGA).await;
    cancel(&stack, "deferred-clean").await;
    // Cancelled while the gateway is still down: nothing needed it.
    stack.wait_order("deferred-clean", "CANCELLED", SAGA).await;
    assert_eq!(payment_status(&mut stack, "deferred-clean").await.as_deref(), Some("CANCELLED"));
    assert!(!refunded(&mut stack, "deferred-clean").await);

    stack.set_gateway(Mode::Failing, 0).await;
    stack.place_order("deferred-ambiguous", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    stack.wait_order("deferred-ambiguous", "PAYMENT_DEFERRED", SAGA).await;
    cancel(&stack, "deferred-ambiguous").await;
    stack.wait_order("deferred-ambiguous", "CANCELLING", SAGA).await;
    // While the gateway fails the charge cannot be settled: the settling is
    // retried with the payment's back-off (here at most 500 ms), not in a loop.
    let before = attempts(&mut stack, "deferred-ambiguous").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tried = attempts(&mut stack, "deferred-ambiguous").await - before;
    println!("settling attempts while the gateway failed, in 3 s: {tried}");
    assert!(tried <= 20, "settling backs off: {tried} attempts in 3 s");
    stack.set_gateway(Mode::Healthy, 0).await;
    stack.wait_order("deferred-ambiguous", "CANCELLED", SAGA).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = stack.ledger().await;
    assert!(!charged(&ledger, "deferred-clean"), "stopped before any charge: {ledger:?}");
    assert!(charged(&ledger, "deferred-ambiguous") && refund_made(&ledger, "deferred-ambiguous"), "{ledger:?}");
    assert!(refunded(&mut stack, "deferred-ambiguous").await);
    stack.wait_stock("SKU-PEN", (100, 0, 0, 100), SAGA).await;
    stack.stop().await;
}

/// Cancels sent at seeded random moments after each order: before the payment
/// is queued, while the charge is in flight, after it is confirmed. Whatever
/// the interleaving: the order ends CANCELLED, charged means refunded once, the
/// order says refunded exactly when money moved, and the stock is all back.
async fn a_cancel_racing_the_charge_never_keeps_money(target: Target) {
    let seed = std::env::var("SAGA_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("cancel race seed {seed} (SAGA_SEED={seed} repeats it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut stack = Stack::start(target).await;
    setup(&mut stack).await;
    stack.set_gateway(Mode::Slow, 300).await;
    let orders: Vec<(String, u64)> = (0..16).map(|i| (format!("race-{i}"), rng.u64(0..900))).collect();
    let publishing = orders.iter().map(|(order_id, delay)| {
        let stack = &stack;
        async move {
            stack.place_order(order_id, "ann", &[("SKU-PEN", 1)], "tok_visa").await;
            tokio::time::sleep(Duration::from_millis(*delay)).await;
            cancel(stack, order_id).await;
        }
    });
    futures::future::join_all(publishing).await;
    for (order_id, _) in &orders {
        stack.wait_order(order_id, "CANCELLED", SAGA).await;
    }
    stack.wait_outboxes_drained().await;
    let ledger = stack.ledger().await;
    let mut stopped = 0;
    for (order_id, delay) in &orders {
        let charged = charged(&ledger, order_id);
        assert_eq!(refund_made(&ledger, order_id), charged, "{order_id} (cancel after {delay} ms): {ledger:?}");
        assert_eq!(refunded(&mut stack, order_id).await, charged, "{order_id}: refunded flag");
        if let Some(refund) = ledger.refunds.get(&format!("refund:{order_id}")) {
            assert!(refund.approved, "{order_id}");
        }
        stopped += usize::from(!charged);
    }
    println!("cancel race: {stopped} of {} stopped before a charge, the rest refunded", orders.len());
    stack.wait_stock("SKU-PEN", (100, 0, 0, 100), SAGA).await;
    stack.stop().await;
}

/// Makes `service`'s database refuse the `event` ("INSERT", "UPDATE") of rows
/// of `table` matching `condition` (on `NEW`), as a broken invariant would: the
/// event that needs it is dead-lettered (a permanent error).
async fn refuse(stack: &mut Stack, service: &'static str, event: &str, table: &str, condition: &str, name: &str) {
    let db = stack.db(service).await;
    let sql = match stack.dbs.backend {
        Backend::Sqlite => vec![format!(
            "CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {condition}
             BEGIN SELECT RAISE(ABORT, 'test: {name}'); END"
        )],
        Backend::Postgres => vec![
            format!(
                "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'test: {name}'; END $$"
            ),
            format!(
                "CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW WHEN ({condition})
                 EXECUTE FUNCTION {name}()"
            ),
        ],
    };
    for statement in sql {
        db.pool().execute(statement.as_str()).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Waits until `order_id` is handed to an operator with a reason that mentions
/// `mentioning`, and checks that order-svc's /metrics counts one such order.
async fn wait_handed_to_operator(stack: &mut Stack, order_id: &str, mentioning: &str) {
    let db = stack.db("order-svc").await;
    eventually(&format!("{order_id} handed to an operator"), SAGA, || {
        let db = db.clone();
        async move {
            let attention: Option<String> = sqlx::query_scalar("SELECT attention FROM orders WHERE order_id = $1")
                .bind(order_id)
                .fetch_one(db.pool())
                .await
                .map_err(|e| e.to_string())?;
            match attention {
                Some(reason) if reason.contains(mentioning) => Ok(()),
                other => Err(format!("attention is {other:?}, not a reason mentioning {mentioning:?}")),
            }
        }
    })
    .await;
    let (_, metrics) = stack.http_get("order-svc", "/metrics").await;
    assert!(metrics.lines().any(|l| l.starts_with("orders_needing_operator") && l.ends_with(" 1")), "{metrics}");
}

/// (event type, error message) of every record `service` dead-lettered.
async fn dead_letters(stack: &Stack, service: &str) -> Vec<(String, String)> {
    let records = stack.read_topic(&events::topics::dead_letter(service)).await;
    records
        .iter()
        .map(|record| {
            let headers = HeaderList::from_kafka(record.headers());
            let event_type = headers.get(header::EVENT_TYPE).unwrap_or_default().to_owned();
            let error = DeadLetterInfo::from_headers(&headers).map(|info| info.error_message).unwrap_or_default();
            (event_type, error)
        })
        .collect()
}

async fn dead_lettered_types(stack: &Stack, service: &str) -> Vec<String> {
    dead_letters(stack, service).await.into_iter().map(|(event_type, _)| event_type).collect()
}

/// payment-svc dead-letters the StockReserved of one order, and inventory-svc
/// the compensation of another: neither order stays open. The first is
/// compensated at its PENDING deadline; the second, whose stock cannot be
/// released, is handed to an operator at its CANCELLING deadline, counted.
async fn a_dead_lettered_saga_event_still_ends_the_order(target: Target) {
    let options = Options {
        order: |c| {
            c.order_pending_timeout = Duration::from_secs(3);
            c.order_cancelling_timeout = Duration::from_secs(3);
        },
        ..Options::default()
    };
    let mut stack = Stack::start_with_options(target, options).await;
    setup(&mut stack).await;
    let payment = "NEW.order_id = 'lost-payment' AND NEW.status = 'PENDING'";
    refuse(&mut stack, "payment-svc", "INSERT", "payments", payment, "refuse_payment").await;
    let release = "NEW.order_id = 'stuck' AND NEW.status = 'RELEASED'";
    refuse(&mut stack, "inventory-svc", "UPDATE", "reservations", release, "refuse_release").await;

    stack.place_order("lost-payment", "ann", &[("SKU-PEN", 3)], "tok_visa").await;
    stack.wait_order("lost-payment", "CANCELLED", SAGA).await;
    assert!(dead_lettered_types(&stack, "payment-svc").await.contains(&"StockReserved".to_owned()));
    let reason = stack.scalar_text("order-svc", "SELECT reason FROM orders WHERE order_id = $1", "lost-payment").await;
    assert!(reason.unwrap_or_default().contains("saga deadline"), "the reason says why");
    assert!(!charged(&stack.ledger().await, "lost-payment"));
    stack.wait_stock("SKU-PEN", (100, 0, 0, 100), SAGA).await;

    stack.place_order("stuck", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    stack.wait_order("stuck", "CONFIRMED", SAGA).await;
    cancel(&stack, "stuck").await;
    wait_handed_to_operator(&mut stack, "stuck", "CANCELLING").await;
    assert!(dead_lettered_types(&stack, "inventory-svc").await.contains(&"PaymentRefunded".to_owned()));
    assert!(refund_made(&stack.ledger().await, "stuck"), "the money went back even so");
    stack.stop().await;
}

fn place(order_id: &str, user_id: &str, sku: &str) -> PlaceOrder {
    PlaceOrder {
        order_id: order_id.into(),
        user_id: user_id.into(),
        lines: vec![OrderLine { sku: sku.into(), quantity: 1 }],
        payment_token: "tok_visa".into(),
    }
}

/// Registering and ordering back to back: the order reaches order-svc before
/// the user does, and waits for them instead of being rejected.
async fn an_order_right_after_registering_waits_for_the_user(target: Target) {
    let mut stack = Stack::start(target).await;
    stack.create_product("SKU-PEN", 200, 100).await;
    for i in 0..5 {
        let user = format!("eager-{i}");
        stack
            .publish(RegisterUser { user_id: user.clone(), email: format!("{user}@example.com"), name: user.clone() })
            .await;
        stack.publish(place(&format!("eager-order-{i}"), &user, "SKU-PEN")).await;
    }
    for i in 0..5 {
        stack.wait_order(&format!("eager-order-{i}"), "CONFIRMED", SAGA).await;
    }
    stack.stop().await;
}

/// A user who never registers: the order is rejected after the bounded wait,
/// with the reason; the notification is recorded undeliverable at once, and the
/// partition behind it is not held up.
async fn an_order_for_a_user_who_never_registers_is_rejected_without_stalling(target: Target) {
    let mut stack = Stack::start_tweaked(target, |c| c.projection_wait = Duration::from_secs(2), |_| {}).await;
    setup(&mut stack).await;
    let started = std::time::Instant::now();
    stack.publish(place("ghost-order", "ghost", "SKU-PEN")).await;
    stack.wait_order("ghost-order", "REJECTED", SAGA).await;
    let waited = started.elapsed();
    println!("unknown user rejected after {waited:?}");
    assert!(waited >= Duration::from_secs(2), "waited for the projection first: {waited:?}");
    let reason = stack.scalar_text("order-svc", "SELECT reason FROM orders WHERE order_id = $1", "ghost-order").await;
    assert_eq!(reason.as_deref(), Some("unknown user ghost"));
    let db = stack.db("notification-svc").await;
    eventually("rejection recorded undeliverable", SAGA, || {
        let db = db.clone();
        async move {
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT status, undeliverable_reason FROM notifications WHERE order_id = 'ghost-order'")
                    .fetch_optional(db.pool())
                    .await
                    .map_err(|e| e.to_string())?;
            expect_eq("notification", row, Some(("UNDELIVERABLE".into(), Some("no contact for user ghost".into()))))
        }
    })
    .await;
    // A known customer's order right behind it is told at once.
    stack.place_order("after-ghost", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    stack.wait_order("after-ghost", "CONFIRMED", SAGA).await;
    let told = std::time::Instant::now();
    eventually("ann told", Duration::from_secs(10), || {
        let db = db.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE order_id = 'after-ghost'")
                .fetch_one(db.pool())
                .await
                .map_err(|e| e.to_string())?;
            expect_eq("notifications", n, 1)
        }
    })
    .await;
    println!("the next notification took {:?}", told.elapsed());
    assert!(dead_lettered_types(&stack, "notification-svc").await.is_empty());
    assert!(dead_lettered_types(&stack, "order-svc").await.is_empty());
    stack.stop().await;
}

/// 4611686018427387904 units at 4000.00 once priced to 0.00 (the product
/// wrapped): such a command is refused by name and dead-lettered, never priced.
async fn an_order_priced_beyond_any_amount_is_dead_lettered_not_wrapped(target: Target) {
    let mut stack = Stack::start(target).await;
    stack.register_user("ann").await;
    stack.create_product("SKU-GOLD", 400_000, 10).await;
    let mut envelope = Envelope::new(place("huge", "ann", "SKU-GOLD"), "saga-tests");
    if let events::Message::PlaceOrder(order) = &mut envelope.message {
        order.lines[0].quantity = 4_611_686_018_427_387_904;
    }
    let headers = HeaderList::for_envelope(&envelope, None);
    stack.publish_raw(envelope.topic(), "huge", &envelope.to_json(), headers).await;
    stack.place_order("after-huge", "ann", &[("SKU-GOLD", 1)], "tok_visa").await;
    stack.wait_order("after-huge", "CONFIRMED", SAGA).await;
    assert_eq!(stack.order_status("huge").await, None, "never priced");
    let errors: Vec<String> = dead_letters(&stack, "order-svc").await.into_iter().map(|(_, error)| error).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("lines[0].quantity"), "names the field: {}", errors[0]);
    stack.stop().await;
}

/// The gateway refuses a refund that is owed: nothing automatic can fix that,
/// so the order is handed to an operator at once, with the reason, and counted.
async fn a_refund_the_gateway_refuses_is_handed_to_an_operator(target: Target) {
    let mut stack = Stack::start(target).await;
    setup(&mut stack).await;
    stack.place_order("refused", "ann", &[("SKU-PEN", 1)], "tok_visa").await;
    stack.wait_order("refused", "CONFIRMED", SAGA).await;
    stack.set_gateway(Mode::RefusingRefunds, 0).await;
    cancel(&stack, "refused").await;
    wait_handed_to_operator(&mut stack, "refused", "refused").await;
    assert_eq!(payment_status(&mut stack, "refused").await.as_deref(), Some("REFUND_REFUSED"));
    assert_eq!(stack.order_status("refused").await.as_deref(), Some("CANCELLING"));
    stack.stop().await;
}
