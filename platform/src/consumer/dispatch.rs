//! Hands each record to its partition's worker without ever waiting for one.
//!
//! Every partition has a bounded queue in front of its worker. When a queue is
//! full (the worker is retrying, or its handler is slow), the partition is
//! paused at the client, so librdkafka stops fetching it, and the records that
//! had already arrived for it are held here, in order, until the worker makes
//! room; then they go in and the partition is resumed. The receive loop thus
//! always goes on with the other partitions, and keeps polling the consumer, so
//! `max.poll.interval.ms` is never exceeded.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use futures::stream::{FuturesUnordered, StreamExt as _};
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::mpsc::{OwnedPermit, Sender};

/// A partition: (topic, partition).
pub(super) type Key = (String, i32);

type Room = Pin<Box<dyn Future<Output = (Key, Result<OwnedPermit<OwnedMessage>, SendError<()>>)> + Send>>;

struct Queue {
    sender: Sender<OwnedMessage>,
    /// Records that arrived while the queue was full; non-empty means paused.
    held: VecDeque<OwnedMessage>,
}

#[derive(Default)]
pub(super) struct Dispatcher {
    queues: HashMap<Key, Queue>,
    /// One future per paused partition, ready when its worker has room.
    room: FuturesUnordered<Room>,
}

impl Dispatcher {
    /// Queues `record` for its partition's worker (started with `spawn` if it has
    /// none, or if it is gone), or holds it and pauses the partition.
    pub(super) fn dispatch<C, X>(
        &mut self,
        record: OwnedMessage,
        consumer: &C,
        spawn: &mut dyn FnMut(&Key) -> Sender<OwnedMessage>,
    ) where
        C: Consumer<X>,
        X: ConsumerContext,
    {
        let key = (record.topic().to_owned(), record.partition());
        let queue =
            self.queues.entry(key.clone()).or_insert_with(|| Queue { sender: spawn(&key), held: VecDeque::new() });
        if !queue.held.is_empty() {
            // Already paused: after the records held before it.
            queue.held.push_back(record);
            return;
        }
        if let Some(record) = offer(&key, queue, record, spawn) {
            queue.held.push_back(record);
            set_paused(consumer, &key, true);
            self.room.push(wait_for_room(key, queue.sender.clone()));
        }
    }

    /// The next paused partition whose worker has room; `None` at once when no
    /// partition is paused (so a `select!` branch on it stays quiet).
    pub(super) async fn room(&mut self) -> Option<(Key, Result<OwnedPermit<OwnedMessage>, SendError<()>>)> {
        self.room.next().await
    }

    /// Moves held records of `key` into its queue, from `permit` on; resumes the
    /// partition once none is held.
    pub(super) fn fill<C, X>(
        &mut self,
        key: Key,
        permit: Result<OwnedPermit<OwnedMessage>, SendError<()>>,
        consumer: &C,
        spawn: &mut dyn FnMut(&Key) -> Sender<OwnedMessage>,
    ) where
        C: Consumer<X>,
        X: ConsumerContext,
    {
        let Some(queue) = self.queues.get_mut(&key) else { return };
        match (permit, queue.held.pop_front()) {
            (Ok(permit), Some(record)) => {
                permit.send(record);
            }
            // The worker ended; a new one takes the held records.
            (Err(_), Some(record)) => queue.held.push_front(record),
            (_, None) => {}
        }
        while let Some(record) = queue.held.pop_front() {
            if let Some(record) = offer(&key, queue, record, spawn) {
                queue.held.push_front(record);
                self.room.push(wait_for_room(key, queue.sender.clone()));
                return;
            }
        }
        set_paused(consumer, &key, false);
    }

    /// Drops the queue of a revoked partition and the records held for it (they
    /// are its new owner's now); returns how many were held.
    pub(super) fn forget(&mut self, key: &Key) -> usize {
        self.queues.remove(key).map_or(0, |queue| queue.held.len())
    }
}

/// Tries to queue `record`; gives it back when the queue is full. A closed queue
/// (its worker ended) is replaced by a new worker's.
fn offer(
    key: &Key,
    queue: &mut Queue,
    record: OwnedMessage,
    spawn: &mut dyn FnMut(&Key) -> Sender<OwnedMessage>,
) -> Option<OwnedMessage> {
    match queue.sender.try_send(record) {
        Ok(()) => None,
        Err(TrySendError::Full(record)) => Some(record),
        Err(TrySendError::Closed(record)) => {
            tracing::error!(
                topic = record.topic(),
                partition = record.partition(),
                "partition worker ended; starting a new one"
            );
            queue.sender = spawn(key);
            queue.sender.try_send(record).err().map(|e| e.into_inner())
        }
    }
}

fn wait_for_room(key: Key, sender: Sender<OwnedMessage>) -> Room {
    Box::pin(async move { (key, sender.reserve_owned().await) })
}

fn set_paused<C: Consumer<X>, X: ConsumerContext>(consumer: &C, (topic, partition): &Key, paused: bool) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, *partition);
    let result = if paused { consumer.pause(&list) } else { consumer.resume(&list) };
    match result {
        Ok(()) => tracing::debug!(topic, partition, paused, "partition fetching"),
        // Revoked meanwhile: nothing to pause or resume.
        Err(error) => tracing::debug!(topic, partition, paused, %error, "pausing or resuming a partition"),
    }
}
