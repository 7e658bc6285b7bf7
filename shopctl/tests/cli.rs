//! shopctl end to end: the real binary (`CARGO_BIN_EXE_shopctl`) run as a child
//! process against a real broker (Tansu when `TEST_BROKER` selects it, else Kafka), and against the six real services
//! (saga_tests::Stack) where the effect has to show up in a service's database.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use events::PriceChanged;
use platform::kafka::HeaderList;
use saga_tests::{Backend, Broker, BrokerKind, Stack, Target};
use shopctl::broker::{Broker as Kafka, GroupOffsets, Reader, Start};

const SAGA: Duration = Duration::from_secs(90);

/// What a shopctl run printed and how it ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs shopctl with `args` against `brokers`, feeding `stdin` if given.
async fn shopctl(brokers: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let bin = env!("CARGO_BIN_EXE_shopctl");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let (brokers, stdin) = (brokers.to_owned(), stdin.map(str::to_owned));
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(&args)
            .env("KAFKA_BROKERS", &brokers)
            .env_remove("SHOPCTL_BROKER_TIMEOUT")
            .env_remove("PAYMENT_GATEWAY_URL")
            .env("NO_COLOR", "1")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shopctl");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        let output = child.wait_with_output().expect("shopctl output");
        let run = Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            took: started.elapsed(),
        };
        eprintln!("$ shopctl {}\n-> {:?}\n{}{}", args.join(" "), run.code, run.stdout, run.stderr);
        run
    })
    .await
    .expect("shopctl task")
}

/// Records stored in `topic` (all partitions), by reading them: Tansu's
/// watermarks undercount a final record batch.
async fn count(brokers: &str, topic: &str) -> usize {
    let kafka = Kafka::connect(brokers.into(), Duration::from_secs(10)).await.expect("broker");
    let mut reader = Reader::open(&kafka, &[topic], Start::Beginning).await.expect("reader");
    let mut records = 0;
    reader.read_to_end(Duration::from_secs(10), |_| records += 1).await.expect("read");
    records
}

/// Polls an async condition until it holds, or fails the test after SAGA.
macro_rules! wait_until {
    ($what:expr, $condition:expr) => {{
        let deadline = Instant::now() + SAGA;
        loop {
            if $condition {
                break;
            }
            assert!(Instant::now() < deadline, "{}: still not true after {:?}", $what, SAGA);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ndjson_is_rejected_naming_line_and_field_and_nothing_is_sent() {
    let broker = Broker::scratch(BrokerKind::any()).await;
    assert!(shopctl(&broker.addr, &["topics", "create"], None).await.ok());
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("users.ndjson");
    let lines = [
        r#"{"event_type":"RegisterUser","payload":{"user_id":"u1","email":"u1@example.com","name":"One"}}"#,
        r#"{"event_type":"RegisterUser","payload":{"user_id":"u2","email":"not-an-email","name":"Two"}}"#,
        r#"{"event_type":"RegisterUser","payload":{"user_id":"u3","email":"u3@example.com","name":"Three"}}"#,
        r#"{"event_type":"RegisterUser","payload":{"user_id":"u4", "#,
    ];
    std::fs::write(&file, lines.join("\n") + "\n").expect("write file");
    let path = file.display().to_string();

    let run = shopctl(&broker.addr, &["publish", "--file", &path], None).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.starts_with("error: nothing was sent: 2 of 4 messages"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("{path} line 2: RegisterUser field `email`: `not-an-email` is not an email address")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&format!("{path} line 4, column ")), "{}", run.stderr);
    assert!(run.stderr.contains("malformed JSON"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(count(&broker.addr, "user.commands").await, 0, "nothing may be sent");

    // A payload of the wrong type names the nested field.
    let bad_order = r#"{"order_id":"o1","user_id":"u","payment_token":"t","lines":[{"sku":"MUG","quantity":"two"}]}"#;
    let run = shopctl(&broker.addr, &["publish", "--type", "PlaceOrder", "--payload", bad_order], None).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("PlaceOrder field `lines[0].quantity`: invalid type"), "{}", run.stderr);
    assert_eq!(count(&broker.addr, "order.commands").await, 0);

    // The same file without its bad lines goes through.
    std::fs::write(&file, [lines[0], lines[2]].join("\n")).expect("write file");
    let run = shopctl(&broker.addr, &["publish", "--file", &path], None).await;
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stdout.contains("sent 2 messages (user.commands 2)"), "{}", run.stdout);
    assert_eq!(count(&broker.addr, "user.commands").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_event_types_list_the_known_ones() {
    let broker = Broker::scratch(BrokerKind::any()).await;
    assert!(shopctl(&broker.addr, &["topics", "create"], None).await.ok());
    let run = shopctl(&broker.addr, &["publish", "--type", "ShipOrder", "--payload", "{}"], None).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.starts_with("error: unknown event type `ShipOrder`; known types: RegisterUser, "),
        "{}",
        run.stderr
    );
    for known in events::known_event_types() {
        assert!(run.stderr.contains(known), "{known} missing from: {}", run.stderr);
    }
    let run = shopctl(&broker.addr, &["publish"], Some("{\"event_type\":\"ShipOrder\",\"payload\":{}}\n")).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("stdin line 1: unknown event type `ShipOrder`; known types: RegisterUser,"),
        "{}",
        run.stderr
    );
    assert_eq!(count(&broker.addr, "order.commands").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_order_lines_are_refused_with_the_flag_quoted() {
    let broker = Broker::scratch(BrokerKind::any()).await;
    assert!(shopctl(&broker.addr, &["topics", "create"], None).await.ok());
    let place = |line: &'static str| {
        ["order", "place", "--user", "u1", "--line", "TEE:1", "--line", line, "--token", "tok_visa"]
    };
    let run = shopctl(&broker.addr, &place("MUG:x"), None).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stderr.trim(), "error: --line \"MUG:x\": quantity \"x\" is not a whole number");
    let run = shopctl(&broker.addr, &place("MUG"), None).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--line \"MUG\": expected SKU:QTY"), "{}", run.stderr);
    let run = shopctl(&broker.addr, &place("TEE:2"), None).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("PlaceOrder field `lines`: SKU `TEE` appears twice"), "{}", run.stderr);
    assert_eq!(count(&broker.addr, "order.commands").await, 0);

    let run = shopctl(&broker.addr, &place("MUG:3"), None).await;
    assert!(run.ok(), "{}", run.stderr);
    assert_eq!(count(&broker.addr, "order.commands").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_naming_its_address() {
    let addr = format!("127.0.0.1:{}", saga_tests::broker::free_port());
    for args in [&["--timeout", "2s", "topics", "list"][..], &["--timeout", "2s", "dlq", "list", "order-svc"][..]] {
        let run = shopctl(&addr, args, None).await;
        assert_eq!(run.code, Some(1), "{run:?}");
        assert!(
            run.stderr.starts_with(&format!("error: cannot reach the Kafka broker at {addr} within 2s")),
            "{}",
            run.stderr
        );
        assert!(run.took < Duration::from_secs(15), "took {:?}", run.took);
    }
    let run =
        shopctl(&addr, &["--timeout", "2s", "user", "register", "--id", "u", "--email", "u@x.io", "--name", "U"], None)
            .await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains(&addr), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_export_writes_the_committed_schemas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("schemas");
    let run = shopctl("127.0.0.1:1", &["schema", "export", &out.display().to_string()], None).await;
    assert!(run.ok(), "{}", run.stderr);
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/schemas");
    let mut files = 0;
    for entry in std::fs::read_dir(&committed).expect("events/schemas") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_owned();
        let exported = std::fs::read_to_string(out.join(&name)).expect("exported file");
        assert_eq!(exported, std::fs::read_to_string(&path).expect("committed"), "{name:?}");
        files += 1;
    }
    assert_eq!(files, events::CATALOGUE.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ndjson_on_stdin_reaches_the_services() {
    let mut stack = Stack::start(Target::new(BrokerKind::any(), Backend::Sqlite)).await;
    let brokers = stack.broker.addr.clone();
    let input = concat!(
        "{\"user_id\":\"ann\",\"email\":\"ann@example.com\",\"name\":\"Ann\"}\n",
        "{\"event_type\":\"RegisterUser\",\"payload\":{\"user_id\":\"ben\",\"email\":\"ben@example.com\",\"name\":\"Ben\"}}\n",
        "\n",
        "{\"event_type\":\"CreateProduct\",\"schema_version\":1,\"payload\":{\"sku\":\"LAMP\",\"name\":\"Lamp\",\"price_minor\":4900}}\n",
    );
    let run = shopctl(&brokers, &["publish", "--type", "RegisterUser", "--file", "-"], Some(input)).await;
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stdout.contains("sent 3 messages (product.commands 1, user.commands 2)"), "{}", run.stdout);
    for user in ["ann", "ben"] {
        wait_until!(
            format!("user-svc has {user}"),
            stack.scalar_i64("user-svc", "SELECT COUNT(*) FROM users WHERE user_id = $1", user).await == Some(1)
        );
    }
    wait_until!(
        "product-svc has LAMP",
        stack.scalar_i64("product-svc", "SELECT price_minor FROM products WHERE sku = $1", "LAMP").await == Some(4900)
    );
    // Same path with no --file: stdin is read when there is no --payload.
    let run = shopctl(
        &brokers,
        &["publish"],
        Some(r#"{"event_type":"RestockProduct","payload":{"sku":"LAMP","quantity":4}}"#),
    )
    .await;
    assert!(run.ok(), "{}", run.stderr);
    wait_until!("inventory-svc has 4 LAMPs", stack.stock("LAMP").await.map(|s| s.0) == Some(4));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeline_of_a_confirmed_order() {
    let mut stack = Stack::start(Target::new(BrokerKind::any(), Backend::Sqlite)).await;
    let brokers = stack.broker.addr.clone();
    stack.register_user("tina").await;
    stack.create_product("MUG", 1250, 10).await;
    let run = shopctl(
        &brokers,
        &["order", "place", "--id", "order-t1", "--user", "tina", "--line", "MUG:2", "--token", "tok_visa"],
        None,
    )
    .await;
    assert!(run.ok(), "{}", run.stderr);
    stack.wait_order("order-t1", "CONFIRMED", SAGA).await;

    let run = shopctl(&brokers, &["order", "timeline", "order-t1"], None).await;
    assert!(run.ok(), "{}", run.stderr);
    let order = ["PlaceOrder", "OrderPlaced", "StockReserved", "PaymentAuthorized", "OrderConfirmed"];
    let positions: Vec<usize> = order
        .iter()
        .map(|event| {
            run.stdout.find(&format!(" {event} ")).unwrap_or_else(|| panic!("{event} missing: {}", run.stdout))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "not in saga order: {}", run.stdout);
    assert!(run.stdout.contains("total 25.00"), "{}", run.stdout);
    assert!(run.stdout.trim_end().ends_with("status: CONFIRMED"), "{}", run.stdout);

    // --follow on a finished order returns at once.
    let run = shopctl(&brokers, &["order", "timeline", "order-t1", "--follow", "--timeout", "20s"], None).await;
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stdout.trim_end().ends_with("status: CONFIRMED"), "{}", run.stdout);

    // --follow across a cancellation: watch until CANCELLED.
    let follow = {
        let brokers = brokers.clone();
        tokio::spawn(async move {
            shopctl(&brokers, &["order", "timeline", "order-t2", "--follow", "--timeout", "60s"], None).await
        })
    };
    let run = shopctl(
        &brokers,
        &["order", "place", "--id", "order-t2", "--user", "tina", "--line", "MUG:1", "--token", "tok_visa"],
        None,
    )
    .await;
    assert!(run.ok(), "{}", run.stderr);
    stack.wait_order("order-t2", "CONFIRMED", SAGA).await;
    let followed = follow.await.expect("follow task");
    assert!(followed.ok(), "{}", followed.stderr);
    assert!(followed.stdout.contains("OrderConfirmed"), "{}", followed.stdout);
    assert!(followed.stdout.trim_end().ends_with("status: CONFIRMED"), "{}", followed.stdout);

    let run = shopctl(&brokers, &["order", "cancel", "--id", "order-t2", "--reason", "changed my mind"], None).await;
    assert!(run.ok(), "{}", run.stderr);
    stack.wait_order("order-t2", "CANCELLED", SAGA).await;
    let run = shopctl(&brokers, &["order", "timeline", "order-t2"], None).await;
    for event in ["CancelOrder", "OrderCancellationRequested", "PaymentRefunded", "StockReleased", "OrderCancelled"] {
        assert!(run.stdout.contains(event), "{event} missing: {}", run.stdout);
    }
    assert!(run.stdout.trim_end().ends_with("status: CANCELLED"), "{}", run.stdout);

    let run = shopctl(&brokers, &["order", "timeline", "no-such-order"], None).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("no events for order no-such-order"), "{}", run.stderr);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_inspected_and_replayed() {
    let mut stack = Stack::start(Target::new(BrokerKind::any(), Backend::Sqlite)).await;
    let brokers = stack.broker.addr.clone();

    // A poison record: not even JSON. order-svc dead-letters it as permanent.
    stack.publish_raw("order.commands", "poison-1", b"this is not json", HeaderList::default()).await;
    wait_until!("poison in order-svc.dlq", count(&brokers, "order-svc.dlq").await == 1);

    let run = shopctl(&brokers, &["dlq", "list", "order-svc"], None).await;
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stdout.starts_with("order-svc.dlq: 1 dead letter"), "{}", run.stdout);
    let row = run.stdout.lines().find(|l| l.contains("poison-1")).unwrap_or_else(|| panic!("no row: {}", run.stdout));
    assert!(row.contains("order.commands/"), "{row}");
    assert!(row.contains("permanent"), "{row}");
    assert!(row.contains("not a JSON envelope"), "{row}");
    assert!(run.stdout.contains("permanent    1"), "{}", run.stdout);

    let run = shopctl(&brokers, &["dlq", "inspect", "order-svc.dlq", "--offset", "0"], None).await;
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stdout.contains("key:       poison-1"), "{}", run.stdout);
    assert!(run.stdout.contains("dlq.error.class = permanent"), "{}", run.stdout);
    assert!(run.stdout.contains("value (not JSON, 16 bytes):\nthis is not json"), "{}", run.stdout);

    // --dry-run sends nothing.
    let run = shopctl(&brokers, &["dlq", "replay", "order-svc", "--dry-run"], None).await;
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stdout.contains("dry run: would replay 1 of 1 dead letters from order-svc.dlq"), "{}", run.stdout);
    assert!(run.stdout.contains("order-svc.replay"), "{}", run.stdout);
    assert_eq!(count(&brokers, "order-svc.replay").await, 0);

    // A valid event that fails only because it came too early: a price change of a
    // product order-svc does not know yet.
    stack.publish(PriceChanged { sku: "LATE".into(), old_price_minor: 100, price_minor: 777 }).await;
    wait_until!("PriceChanged in order-svc.dlq", count(&brokers, "order-svc.dlq").await == 2);
    stack.create_product("LATE", 100, 5).await;

    let run = shopctl(&brokers, &["dlq", "replay", "order-svc", "--class", "transient"], None).await;
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stdout.contains("nothing to replay"), "{}", run.stdout);
    assert_eq!(count(&brokers, "order-svc.replay").await, 0);

    let run =
        shopctl(&brokers, &["dlq", "replay", "order-svc", "--key", "LATE", "--error", "UNKNOWN PRODUCT"], None).await;
    assert!(run.ok(), "{}", run.stderr);
    assert!(
        run.stdout.contains("replayed 1 of 2 dead letters from order-svc.dlq (order-svc.replay 1)"),
        "{}",
        run.stdout
    );
    wait_until!(
        "order-svc applied the replayed price",
        stack.scalar_i64("order-svc", "SELECT price_minor FROM products WHERE sku = $1", "LATE").await == Some(777)
    );

    // Replaying the same dead letter again is harmless: the inbox knows the event.
    let run = shopctl(&brokers, &["dlq", "replay", "order-svc", "--key", "LATE", "--rate", "5"], None).await;
    assert!(run.ok(), "{}", run.stderr);
    assert_eq!(count(&brokers, "order-svc.replay").await, 2);
    let kafka = Kafka::connect((&brokers).into(), Duration::from_secs(10)).await.expect("broker");
    let group = GroupOffsets::new(&kafka, "order-svc").expect("group offsets");
    wait_until!("order-svc consumed both replays", {
        let mut consumed = 0;
        for partition in 0..kafka.partitions("order-svc.replay").expect("replay topic") {
            consumed += group.committed("order-svc.replay", partition).await.ok().flatten().unwrap_or(0);
        }
        consumed == 2
    });
    assert_eq!(count(&brokers, "order-svc.dlq").await, 2, "the duplicate must not fail");

    // The poison fails again after a replay; its new dead letter still names the
    // original record.
    let run = shopctl(&brokers, &["dlq", "replay", "order-svc", "--offsets", "0..0", "--key", "poison-1"], None).await;
    assert!(run.ok(), "{}", run.stderr);
    wait_until!("poison dead-lettered again", count(&brokers, "order-svc.dlq").await == 3);
    let run = shopctl(&brokers, &["dlq", "list", "order-svc", "--key", "poison-1", "--since", "1h"], None).await;
    assert!(run.stdout.contains("order-svc.dlq: 3 dead letters, 2 matching the filters"), "{}", run.stdout);
    let originals: Vec<&str> = run.stdout.lines().filter(|l| l.contains("poison-1")).collect();
    assert_eq!(originals.len(), 2, "{}", run.stdout);
    let original = |line: &str| line.split_whitespace().nth(2).map(str::to_owned);
    assert_eq!(original(originals[0]), original(originals[1]), "{}", run.stdout);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_check_passes_against_a_running_system() {
    let stack = Stack::start(Target::new(BrokerKind::any(), Backend::Sqlite)).await;
    let run = shopctl(
        &stack.broker.addr,
        &["demo", "--check", "--gateway-url", &stack.gateway_url, "--timeout", "120s"],
        None,
    )
    .await;
    assert!(run.ok(), "demo failed: {}\n{}", run.stdout, run.stderr);
    for (case, outcome) in [
        ("(a) confirmed", "CONFIRMED"),
        ("(b) rejected: out of stock", "REJECTED"),
        ("(c) cancelled: payment declined", "CANCELLED"),
        ("(d) deferred by a gateway outage, then confirmed", "CONFIRMED"),
    ] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(case) && l.trim_end().ends_with(" ok"))
            .unwrap_or_else(|| panic!("no summary line for {case}: {}", run.stdout));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[words.len() - 3..], [outcome, outcome, "ok"], "{line}");
    }
    assert!(run.stdout.contains("PaymentDeferred"), "{}", run.stdout);
    assert!(run.stdout.contains("StockReservationFailed"), "{}", run.stdout);
    assert!(run.stdout.contains("PaymentDeclined"), "{}", run.stdout);
    assert!(run.stdout.contains("all four orders ended as expected"), "{}", run.stdout);
    // The demo leaves the gateway healthy.
    let control: serde_json::Value = reqwest::get(format!("{}/control", stack.gateway_url))
        .await
        .expect("gateway")
        .json()
        .await
        .expect("control json");
    assert_eq!(control["mode"], "healthy");
    stack.stop().await;
}
