//! Partition hand-over on a rebalance. The group uses cooperative-sticky
//! assignment, so a rebalance revokes only the partitions that move, and the
//! others keep flowing. Before a revoke returns to librdkafka, each revoked
//! partition's worker finishes the record in hand (a back-off is cut short, the
//! record left for the new owner) and stops, and the stored offsets are
//! committed: the new owner starts exactly after the last record this member
//! applied, so a graceful hand-over delivers nothing twice. The queues and held
//! records of revoked partitions are then dropped by the dispatcher, not
//! processed: they belong to the new owner.
//!
//! The revoke callback runs inside the receive loop's `recv`, so it waits for
//! the workers with the blocking section of tokio's multi-thread runtime.

use std::collections::HashMap;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use super::dispatch::Key;
use super::lock;

/// How long a revoke waits for a worker to finish its record in hand. Well
/// inside the group's rebalance timeout (`max.poll.interval.ms`); past it, the
/// new owner gets that record again, which the inbox makes harmless.
const HAND_OVER_WAIT: Duration = Duration::from_secs(30);

/// Dropped when a partition worker ends, however it ends.
pub(super) struct WorkerDone {
    _done: mpsc::Sender<()>,
}

struct Owned {
    stop: CancellationToken,
    done: mpsc::Receiver<()>,
}

/// The client context of a consumer session: logs group membership (a consumer
/// that silently holds no partitions looks exactly like an idle one) and hands
/// revoked partitions over.
pub(super) struct GroupContext {
    group_id: String,
    workers: Mutex<HashMap<Key, Owned>>,
    /// Revoked partitions the dispatcher has yet to forget.
    revoked: Mutex<Vec<Key>>,
}

impl GroupContext {
    pub(super) fn new(group_id: String) -> GroupContext {
        GroupContext { group_id, workers: Mutex::default(), revoked: Mutex::default() }
    }

    /// Registers the worker of `key`, which stops when `stop` is cancelled and
    /// holds the returned guard until it ends.
    pub(super) fn worker_started(&self, key: Key, stop: CancellationToken) -> WorkerDone {
        let (sender, done) = mpsc::channel();
        lock(&self.workers).insert(key, Owned { stop, done });
        WorkerDone { _done: sender }
    }

    /// The partitions revoked since the last call.
    pub(super) fn take_revoked(&self) -> Vec<Key> {
        std::mem::take(&mut *lock(&self.revoked))
    }

    /// Stops the workers of `list`'s partitions and waits (bounded) for each to
    /// finish the record in hand.
    fn stop_workers(&self, list: &TopicPartitionList) {
        let keys: Vec<Key> = list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        let stopping: Vec<(Key, Owned)> = {
            let mut workers = lock(&self.workers);
            keys.iter().filter_map(|key| Some((key.clone(), workers.remove(key)?))).collect()
        };
        stopping.iter().for_each(|(_, owned)| owned.stop.cancel());
        let deadline = std::time::Instant::now() + HAND_OVER_WAIT;
        in_blocking_section(|| {
            for ((topic, partition), owned) in &stopping {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if let Err(mpsc::RecvTimeoutError::Timeout) = owned.done.recv_timeout(left) {
                    tracing::warn!(
                        group = %self.group_id, topic, partition, wait = ?HAND_OVER_WAIT,
                        "revoked partition's worker still busy; its new owner gets the record in hand again"
                    );
                }
            }
        });
        lock(&self.revoked).extend(keys);
    }
}

impl ClientContext for GroupContext {
    // The consumer loop logs what `recv` returns; this adds librdkafka's reason.
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(group = %self.group_id, %error, reason, "kafka client error");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else { return };
        tracing::info!(group = %self.group_id, count = list.count(), partitions = %names(list), "partitions revoked");
        self.stop_workers(list);
        // A paused partition would stay paused in librdkafka when it is assigned
        // to this member again; its dispatcher queue, which resumes it, is gone.
        if let Err(error) = consumer.resume(list) {
            tracing::debug!(%error, "resuming revoked partitions");
        }
        // A lost assignment (session expired) is already someone else's: its
        // offsets cannot be committed any more.
        if consumer.assignment_lost() {
            return;
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
            Err(error) => tracing::warn!(
                group = %self.group_id, %error,
                "committing before a revoke failed; the new owner gets the last records again"
            ),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                tracing::info!(group = %self.group_id, count = list.count(), partitions = %names(list), "partitions assigned")
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(group = %self.group_id, %error, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        // NoOffset: nothing was stored since the last commit, the common case.
        // Others (broker away, rebalance) are retried by the next auto-commit.
        if let Err(error) = result {
            if error.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                tracing::info!(group = %self.group_id, %error, "offset commit failed; the next one retries");
            }
        }
    }
}

fn names(list: &TopicPartitionList) -> String {
    list.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(" ")
}

/// Runs `wait` so that the runtime moves this thread's other tasks elsewhere
/// (the workers being waited for among them). On a current-thread runtime the
/// workers cannot run meanwhile and the wait runs out.
fn in_blocking_section(wait: impl FnOnce()) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}
