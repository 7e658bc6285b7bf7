//! `shopctl demo`: against a running system, registers a user and two products,
//! then runs four orders and prints each saga's timeline:
//! (a) confirmed; (b) rejected for stock; (c) cancelled after a declined payment;
//! (d) deferred by a gateway outage (switched on through the simulator's
//! `/control`), then confirmed once the gateway is healthy again.
//!
//! Ids carry a short random run id, so the demo can be run again and again
//! against the same system. `--check` turns a wrong outcome into a non-zero exit.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use events::{CreateProduct, Message, OrderLine, OrderStatus, RegisterUser};

use crate::broker::{Broker, GroupOffsets, Start};
use crate::cli::DemoArgs;
use crate::output::{money, Table};
use crate::shortcuts::place_order;
use crate::timeline::{self, Watch};
use crate::{publish, say, Globals};

/// The payment gateway simulator's control API.
struct Gateway {
    url: String,
    http: reqwest::Client,
}

impl Gateway {
    fn new(url: &str) -> Result<Gateway> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().context("HTTP client")?;
        Ok(Gateway { url: url.trim_end_matches('/').to_owned(), http })
    }

    async fn check(&self) -> Result<()> {
        let url = format!("{}/control", self.url);
        self.http.get(&url).send().await.and_then(reqwest::Response::error_for_status).with_context(|| {
            format!("the payment gateway simulator at {} does not answer (--gateway-url)", self.url)
        })?;
        Ok(())
    }

    async fn set(&self, mode: &str) -> Result<()> {
        let url = format!("{}/control", self.url);
        self.http
            .put(&url)
            .json(&serde_json::json!({ "mode": mode, "latency_ms": 0 }))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("switching the payment gateway at {} to {mode}", self.url))?;
        Ok(())
    }
}

/// One demo order and what should become of it.
struct Case {
    label: &'static str,
    order_id: String,
    expected: OrderStatus,
    /// An event the saga must contain besides reaching `expected`.
    must_see: Option<&'static str>,
    outcome: Option<OrderStatus>,
    problem: Option<String>,
}

impl Case {
    fn new(label: &'static str, order_id: String, expected: OrderStatus) -> Case {
        Case { label, order_id, expected, must_see: None, outcome: None, problem: None }
    }

    fn ok(&self) -> bool {
        self.problem.is_none() && self.outcome == Some(self.expected)
    }
}

/// The notification kind that ends each outcome's timeline.
fn notification_kind(status: OrderStatus) -> Option<&'static str> {
    match status {
        OrderStatus::Confirmed => Some("confirmed"),
        OrderStatus::Rejected => Some("rejected"),
        OrderStatus::Cancelled => Some("cancelled"),
        _ => None,
    }
}

pub async fn run(globals: &Globals, args: DemoArgs) -> Result<()> {
    let deadline = Instant::now() + args.timeout;
    let broker = globals.connect().await?;
    broker.require(events::topics::ALL)?;
    let gateway = Gateway::new(&args.gateway_url)?;
    gateway.check().await?;
    // Only what happens from now on matters: start reading at the current ends.
    let mut watch = Watch::open(&broker, Start::End, None).await?;

    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let user = format!("demo-{run}");
    let (mug, lamp) = (format!("MUG-{run}"), format!("LAMP-{run}"));
    say!("demo run {run}: user {user}; {mug} at {} (stock 10), {lamp} at {} (stock 1)", money(1250), money(4900));
    let setup: Vec<Message> = vec![
        RegisterUser { user_id: user.clone(), email: format!("{user}@example.com"), name: format!("Demo {run}") }
            .into(),
        CreateProduct { sku: mug.clone(), name: "Mug".into(), price_minor: 1250, initial_stock: 10 }.into(),
        CreateProduct { sku: lamp.clone(), name: "Lamp".into(), price_minor: 4900, initial_stock: 1 }.into(),
    ];
    publish::send(&broker, setup).await?;
    wait_projections(&broker, &mut watch, &user, &[&mug, &lamp], deadline).await?;
    say!("user and products known to order-svc and inventory-svc");

    let line = |sku: &str, quantity: i64| OrderLine { sku: sku.to_owned(), quantity };
    let mut cases = vec![
        Case::new("(a) confirmed", format!("demo-{run}-a"), OrderStatus::Confirmed),
        Case::new("(b) rejected: out of stock", format!("demo-{run}-b"), OrderStatus::Rejected),
        Case::new("(c) cancelled: payment declined", format!("demo-{run}-c"), OrderStatus::Cancelled),
        Case::new("(d) deferred by a gateway outage, then confirmed", format!("demo-{run}-d"), OrderStatus::Confirmed),
    ];
    cases[1].must_see = Some("StockReservationFailed");
    cases[2].must_see = Some("PaymentDeclined");
    cases[3].must_see = Some("PaymentDeferred");

    let first_three = vec![
        place_order(&cases[0].order_id, &user, vec![line(&mug, 2)], "tok_visa"),
        place_order(&cases[1].order_id, &user, vec![line(&lamp, 5)], "tok_visa"),
        place_order(&cases[2].order_id, &user, vec![line(&mug, 1)], "tok_decline_card"),
    ];
    publish::send(&broker, first_three).await?;
    for case in cases.iter_mut().take(3) {
        finish(&mut watch, case, deadline).await;
    }

    let case = &mut cases[3];
    say!();
    say!("{}: switching the payment gateway to outage", case.label);
    gateway.set("outage").await?;
    let outcome = deferred_case(&broker, &mut watch, case, &user, line(&mug, 1), deadline).await;
    // Whatever happened, leave the gateway healthy.
    let restored = gateway.set("healthy").await;
    outcome?;
    restored?;
    finish(&mut watch, case, deadline).await;

    say!();
    let mut table = Table::new(&["CASE", "ORDER", "EXPECTED", "OUTCOME", "RESULT"]);
    for case in &cases {
        table.row(vec![
            case.label.to_owned(),
            case.order_id.clone(),
            case.expected.to_string(),
            case.outcome.map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
            if case.ok() { "ok".to_owned() } else { format!("WRONG: {}", case.problem.as_deref().unwrap_or("")) },
        ]);
    }
    say!("{}", table.render());
    let wrong: Vec<String> = cases
        .iter()
        .filter(|c| !c.ok())
        .map(|c| {
            format!(
                "{} {} ended {} (expected {}){}",
                c.label,
                c.order_id,
                c.outcome.map_or("in no known state", OrderStatus::as_str),
                c.expected,
                c.problem.as_deref().map(|p| format!(": {p}")).unwrap_or_default()
            )
        })
        .collect();
    if wrong.is_empty() {
        say!("all four orders ended as expected");
    } else if args.check {
        bail!("demo check failed:\n  {}", wrong.join("\n  "));
    } else {
        say!("{} of four orders did not end as expected (use --check to fail on this)", wrong.len());
    }
    Ok(())
}

/// Places the deferred order during the outage and waits until its payment is
/// deferred; the caller switches the gateway back.
async fn deferred_case(
    broker: &Broker,
    watch: &mut Watch,
    case: &mut Case,
    user: &str,
    line: OrderLine,
    deadline: Instant,
) -> Result<()> {
    publish::send(broker, vec![place_order(&case.order_id, user, vec![line], "tok_visa")]).await?;
    let id = case.order_id.clone();
    let deferred = watch
        .wait_until(deadline, |w| {
            w.has(&id, "PaymentDeferred").is_some() || w.status(&id).is_some_and(OrderStatus::is_terminal)
        })
        .await;
    if watch.has(&id, "PaymentDeferred").is_some() {
        say!("{}: payment deferred; switching the payment gateway back to healthy", case.label);
    } else if deferred {
        say!("{}: the order ended before its payment was deferred", case.label);
    } else {
        say!("{}: no PaymentDeferred before the timeout", case.label);
    }
    Ok(())
}

/// Waits for the order's terminal state (and the notification that follows),
/// prints its timeline, and records the outcome.
async fn finish(watch: &mut Watch, case: &mut Case, deadline: Instant) {
    let id = case.order_id.clone();
    watch.wait_until(deadline, |w| w.status(&id).is_some_and(OrderStatus::is_terminal)).await;
    let status = watch.status(&id);
    if let Some(kind) = status.and_then(notification_kind) {
        let settle = deadline.min(Instant::now() + Duration::from_secs(5));
        watch
            .wait_until(settle, |w| {
                w.events(&id).iter().any(|e| matches!(&e.message, Some(Message::NotificationSent(n)) if n.kind == kind))
            })
            .await;
        // Let the stragglers (e.g. StockCommitted) in.
        watch.wait_until(Instant::now() + Duration::from_millis(500), |_| false).await;
    }
    let status = watch.status(&id);
    case.outcome = status;
    if let Some(required) = case.must_see {
        if watch.has(&id, required).is_none() {
            case.problem = Some(format!("no {required} in its saga"));
        }
    }
    say!();
    say!("{} - order {id}: expected {}", case.label, case.expected);
    let events = watch.events(&id);
    if events.is_empty() {
        say!("(no events)");
    } else {
        say!("{}", timeline::render(events));
    }
    match status {
        Some(status) if status.is_terminal() => say!("status: {status}"),
        Some(status) => say!("status: {status} (not finished when the demo timed out)"),
        None => say!("status: unknown (no order events before the demo timed out)"),
    }
}

/// Waits until order-svc knows the user and products, and inventory-svc the
/// products: their consumer groups have committed past the UserRegistered and
/// ProductCreated records (offsets are stored only after the effects commit).
async fn wait_projections(
    broker: &Broker,
    watch: &mut Watch,
    user: &str,
    skus: &[&str],
    deadline: Instant,
) -> Result<()> {
    let mut needed: Vec<(&str, &'static str)> = vec![(user, "UserRegistered")];
    needed.extend(skus.iter().map(|sku| (*sku, "ProductCreated")));
    let seen = watch.wait_until(deadline, |w| needed.iter().all(|(id, event)| w.has(id, event).is_some())).await;
    if !seen {
        let missing: Vec<String> = needed
            .iter()
            .filter(|(id, event)| watch.has(id, event).is_none())
            .map(|(id, event)| format!("{event} for {id}"))
            .collect();
        bail!(
            "no {} within the demo timeout: are user-svc and product-svc running against {}?",
            missing.join(", "),
            broker.addr
        );
    }
    let consumers = [
        ("order-svc", "UserRegistered"),
        ("order-svc", "ProductCreated"),
        ("inventory-svc", "ProductCreated"),
        ("notification-svc", "UserRegistered"),
    ];
    let mut waits = Vec::new();
    for (group, event_type) in consumers {
        for (id, event) in &needed {
            if *event == event_type {
                if let Some(found) = watch.has(id, event) {
                    waits.push((group, found.topic.clone(), found.partition, found.offset));
                }
            }
        }
    }
    for (group, topic, partition, offset) in waits {
        let offsets = GroupOffsets::new(broker, group)?;
        loop {
            let committed = offsets.committed(&topic, partition).await.ok().flatten();
            if committed.is_some_and(|c| c > offset) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} has not consumed {topic}/{partition} offset {offset} within the demo timeout (committed: {}); \
                     is it running?",
                    offsets.group(),
                    committed.map_or_else(|| "nothing".to_owned(), |c| c.to_string())
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}
