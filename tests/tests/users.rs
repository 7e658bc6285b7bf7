//! user-svc end to end: e-mail addresses stay unique under concurrency. Two
//! RegisterUser with one address and different user ids travel on different
//! partitions, so on PostgreSQL their transactions run at the same time; each
//! must still be answered (one UserRegistered, one UserRegistrationRejected),
//! never dead-lettered. Apache Kafka only (the race is the database's), on both
//! databases.

use std::collections::HashMap;
use std::time::Duration;

use events::{Envelope, Message, RegisterUser};
use platform::dead_letter::DeadLetterInfo;
use platform::kafka::HeaderList;
use rdkafka::Message as _;
use saga_tests::{eventually, Stack, Target};

saga_tests::on_kafka!(one_email_registered_twice_at_once_is_answered_not_dead_lettered);

const PAIRS: usize = 40;

/// user-svc's answers on user.events, by user id: (registered, rejected).
async fn answers(stack: &Stack) -> HashMap<String, (usize, usize)> {
    let mut answers: HashMap<String, (usize, usize)> = HashMap::new();
    for record in stack.read_topic(events::topics::USER_EVENTS).await {
        let Some(envelope) = record.payload().and_then(|p| Envelope::from_json(p).ok()) else { continue };
        match &envelope.message {
            Message::UserRegistered(m) => answers.entry(m.user_id.clone()).or_default().0 += 1,
            Message::UserRegistrationRejected(m) => answers.entry(m.user_id.clone()).or_default().1 += 1,
            _ => {}
        }
    }
    answers
}

/// librdkafka's default partitioner (`consistent_random`) for a non-empty key:
/// CRC-32 (IEEE) of the key, modulo the partition count.
fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut crc = !0u32;
    for byte in key.bytes() {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc % partitions
}

/// A user id for `pair` whose commands land on `partition`.
fn user_on(pair: usize, side: &str, partition: u32, partitions: u32) -> String {
    (0..)
        .map(|n| format!("dup{pair}-{side}{n}"))
        .find(|id| partition_of(id, partitions) == partition)
        .unwrap_or_default()
}

/// The reasons user-svc gave for rejecting registrations of `user_id`.
async fn rejections(stack: &Stack, user_id: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    for record in stack.read_topic(events::topics::USER_EVENTS).await {
        let Some(envelope) = record.payload().and_then(|p| Envelope::from_json(p).ok()) else { continue };
        if let Message::UserRegistrationRejected(m) = envelope.message {
            if m.user_id == user_id {
                reasons.push(m.reason);
            }
        }
    }
    reasons
}

async fn one_email_registered_twice_at_once_is_answered_not_dead_lettered(target: Target) {
    let mut stack = Stack::start(target).await;
    let partitions = u32::try_from(platform::PlatformConfig::local("").topic_partitions).expect("partitions");
    let email = |pair: usize| format!("dup{pair}@example.com");
    // Every pair's "a" on partition 0 and its "b" on partition 1, in pair order,
    // all waiting when user-svc starts: the two partitions' workers set off
    // together and reach the two commands of a pair at about the same time, so
    // their transactions overlap.
    let pairs: Vec<(String, String)> =
        (0..PAIRS).map(|pair| (user_on(pair, "a", 0, partitions), user_on(pair, "b", 1, partitions))).collect();
    let commands = pairs.iter().enumerate().flat_map(|(pair, (a, b))| {
        [a, b].map(|user_id| RegisterUser { user_id: user_id.clone(), email: email(pair), name: format!("Dup {pair}") })
    });
    stack.stop_service(user_svc::SERVICE).await;
    let started = std::time::Instant::now();
    futures::future::join_all(commands.map(|command| stack.publish(command))).await;
    stack.start_service(user_svc::SERVICE).await;
    // The race needs them apart: check where the broker put them.
    let placed: HashMap<Vec<u8>, i32> = stack
        .read_topic(events::topics::USER_COMMANDS)
        .await
        .iter()
        .filter_map(|r| Some((r.key()?.to_vec(), r.partition())))
        .collect();
    for (a, b) in &pairs {
        let [pa, pb] = [a, b].map(|u| placed.get(u.as_bytes()).copied());
        assert!(pa.is_some() && pa != pb, "{a} and {b} on different partitions: {pa:?}, {pb:?}");
    }

    let dlq = events::topics::dead_letter(user_svc::SERVICE);
    eventually("every RegisterUser answered or dead-lettered", Duration::from_secs(90), || {
        let (stack, dlq) = (&stack, dlq.clone());
        async move {
            let answered: usize = answers(stack).await.values().map(|(ok, no)| ok + no).sum();
            let dead = stack.read_topic(&dlq).await.len();
            if answered + dead >= 2 * PAIRS {
                Ok(())
            } else {
                Err(format!("{answered} answered, {dead} dead-lettered of {}", 2 * PAIRS))
            }
        }
    })
    .await;

    println!("{} registrations answered in {:?} ({target:?})", 2 * PAIRS, started.elapsed());
    let dead = stack.read_topic(&dlq).await;
    let reasons: Vec<String> = dead
        .iter()
        .filter_map(|r| DeadLetterInfo::from_headers(&HeaderList::from_kafka(r.headers())))
        .map(|info| info.error_message)
        .collect();
    assert!(dead.is_empty(), "{dlq} holds {} records: {reasons:?}", dead.len());
    let answered = answers(&stack).await;
    for (pair, (a, b)) in pairs.iter().enumerate() {
        let [(a_ok, a_no), (b_ok, b_no)] = [a, b].map(|u| answered.get(u).copied().unwrap_or_default());
        assert_eq!(a_ok + a_no, 1, "{a} answered once: {a_ok} registered, {a_no} rejected");
        assert_eq!(b_ok + b_no, 1, "{b} answered once: {b_ok} registered, {b_no} rejected");
        assert_eq!(a_ok + b_ok, 1, "one of {a} and {b} registered");
        let owners =
            stack.scalar_i64(user_svc::SERVICE, "SELECT COUNT(*) FROM users WHERE email = $1", &email(pair)).await;
        assert_eq!(owners, Some(1), "one user owns {}", email(pair));
        let owner = stack
            .scalar_text(user_svc::SERVICE, "SELECT user_id FROM users WHERE email = $1", &email(pair))
            .await
            .unwrap_or_default();
        let registered = if a_ok == 1 { a } else { b };
        assert_eq!(&owner, registered, "the user announced as registered owns {}", email(pair));
    }

    // The other answers, on one key so that they come in order: a registered
    // user id with another address is rejected; the same registration again is
    // a repeat, already announced, and answered with nothing.
    let winner = stack
        .scalar_text(user_svc::SERVICE, "SELECT user_id FROM users WHERE email = $1", &email(0))
        .await
        .expect("pair 0 registered");
    let again = |email: String| RegisterUser { user_id: winner.clone(), email, name: "Again".into() };
    stack.publish(again("elsewhere@example.com".into())).await;
    stack.publish(again(email(0))).await;
    stack.publish(again("elsewhere-too@example.com".into())).await;
    eventually(&format!("{winner}'s later registrations answered"), Duration::from_secs(30), || async {
        let n = rejections(&stack, &winner).await.len();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} rejections"))
        }
    })
    .await;
    let reasons = rejections(&stack, &winner).await;
    assert_eq!(reasons, vec!["user id already registered with another email".to_owned(); 2], "{reasons:?}");
    let registered = answers(&stack).await.get(&winner).map(|(ok, _)| *ok);
    assert_eq!(registered, Some(1), "{winner} still registered once");
    stack.stop().await;
}
