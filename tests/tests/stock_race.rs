//! inventory-svc's confirmation and release of one reservation, racing on
//! PostgreSQL (they arrive on different topics, so on different partition
//! workers): whichever wins, the books stay right. After every seed, each SKU's
//! `reserved` is exactly what RESERVED reservations hold and `sold` what
//! COMMITTED ones hold, and `available + reserved + sold = received`.
//!
//! The handlers reach PostgreSQL through a proxy that delays every chunk by a
//! millisecond, as a database across a network would: the windows between a
//! handler's statements, where the other handler's commit can land, are then
//! wide enough to be hit.

use std::time::Duration;

use events::{OrderPlaced, PricedLine};
use inventory_svc::stock;
use platform::{Db, HandlerError, Tx};
use saga_tests::{Backend, Databases};
use tokio::sync::Notify;

const SKUS: [&str; 3] = ["SKU-A", "SKU-B", "SKU-C"];

/// Runs one handler in its own transaction, retrying transient conflicts the
/// way the consumer does.
async fn apply<F, Fut>(db: &Db, relay: &Notify, handler: F)
where
    F: Fn(Tx) -> Fut,
    Fut: std::future::Future<Output = Result<Tx, HandlerError>>,
{
    for attempt in 0..50 {
        let tx = Tx::begin(db, inventory_svc::SERVICE).await.expect("begin");
        match handler(tx).await {
            Ok(tx) => match tx.commit(relay).await {
                Ok(()) => return,
                Err(error) => {
                    let error = HandlerError::from(error);
                    assert!(error.is_transient(), "commit: {error}");
                }
            },
            Err(error) => assert!(error.is_transient(), "attempt {attempt}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1..5))).await;
    }
    panic!("still conflicting after 50 attempts");
}

/// A loopback TCP proxy to `upstream` that holds every chunk for `delay`.
async fn delaying_proxy(upstream: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pipe(client_read, server_write, delay));
            tokio::spawn(pipe(server_read, client_write, delay));
        }
    });
    addr
}

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        tokio::time::sleep(delay).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
}

async fn books_balance(db: &Db, seed: usize) {
    for sku in SKUS {
        let (available, reserved, sold, received): (i64, i64, i64, i64) =
            sqlx::query_as("SELECT available, reserved, sold, received FROM stock WHERE sku = $1")
                .bind(sku)
                .fetch_one(db.pool())
                .await
                .expect("stock");
        let held = |status: &'static str| {
            sqlx::query_scalar::<_, i64>(
                "SELECT CAST(COALESCE(SUM(l.quantity), 0) AS BIGINT) FROM reservation_lines l
                 JOIN reservations r ON r.order_id = l.order_id WHERE l.sku = $1 AND r.status = $2",
            )
            .bind(sku)
            .bind(status)
            .fetch_one(db.pool())
        };
        let (in_reserved, in_sold) = (held("RESERVED").await.expect("sum"), held("COMMITTED").await.expect("sum"));
        assert_eq!(available + reserved + sold, received, "seed {seed}: {sku} conserved");
        assert_eq!((reserved, sold), (in_reserved, in_sold), "seed {seed}: {sku} reserved/sold match the reservations");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_a_confirmation_racing_a_release_keeps_the_books() {
    let dbs = Databases::new(Backend::Postgres);
    let url = dbs.url_for("inventory-svc").await;
    let server = url.trim_start_matches("postgres://").split(['@', '/']).nth(1).expect("host:port in the URL");
    let upstream = tokio::net::lookup_host(server).await.expect("resolve").next().expect("an address");
    let proxy = delaying_proxy(upstream, Duration::from_millis(1)).await;
    let url = url.replacen(server, &proxy.to_string(), 1);
    let db = Db::connect(&url, 16, Duration::from_secs(5)).await.expect("connect");
    db.migrate(&inventory_svc::MIGRATIONS).await.expect("migrate");
    let relay = Notify::new();
    for sku in SKUS {
        apply(&db, &relay, |mut tx| async move {
            stock::receive(sku, 1_000_000, true, &mut tx).await?;
            Ok(tx)
        })
        .await;
    }
    // Each seed races the confirmation and the release of a batch of orders at
    // once, with seeded delays between them, then checks the books.
    let (seeds, batch) = (12, 24);
    for seed in 0..seeds {
        let mut rng = fastrand::Rng::with_seed(seed as u64);
        let orders: Vec<(OrderPlaced, Duration)> = (0..batch)
            .map(|i| {
                let order = OrderPlaced {
                    order_id: format!("order-{seed}-{i}"),
                    user_id: "u".into(),
                    lines: SKUS[..rng.usize(1..=3)]
                        .iter()
                        .map(|sku| PricedLine { sku: (*sku).into(), quantity: rng.i64(1..5), unit_price_minor: 100 })
                        .collect(),
                    total_minor: 100,
                    payment_token: "tok".into(),
                };
                (order, Duration::from_micros(rng.u64(0..3000)))
            })
            .collect();
        for (order, _) in &orders {
            apply(&db, &relay, |mut tx| async move {
                stock::reserve(order, &mut tx).await?;
                Ok(tx)
            })
            .await;
        }
        let races = orders.iter().map(|(order, delay)| {
            let (db, relay, order_id, delay) = (&db, &relay, order.order_id.as_str(), *delay);
            let confirm = apply(db, relay, move |mut tx| async move {
                stock::commit(order_id, &mut tx).await?;
                Ok(tx)
            });
            let release = async move {
                tokio::time::sleep(delay).await;
                apply(db, relay, move |mut tx| async move {
                    stock::release(order_id, "refunded", true, &mut tx).await?;
                    Ok(tx)
                })
                .await
            };
            async move {
                tokio::join!(confirm, release);
            }
        });
        futures::future::join_all(races).await;
        books_balance(&db, seed).await;
    }
    let outcome: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM reservations GROUP BY status ORDER BY status")
            .fetch_all(db.pool())
            .await
            .expect("outcomes");
    println!("{} confirm/release races on PostgreSQL, reservations by final status: {outcome:?}", seeds * batch);
    db.close().await;
    dbs.drop_all().await;
}
