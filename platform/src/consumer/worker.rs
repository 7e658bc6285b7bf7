//! The partition worker: takes its partition's records in order and, for each,
//! decodes it, applies it in one transaction with the inbox (a redelivery is a
//! no-op), retries or dead-letters it, and only then stores its offset.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use backon::Retryable;
use events::Envelope;
use futures::FutureExt as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::producer::FutureProducer;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::rebalance::WorkerDone;
use super::retry::{panicked, sleep_unless_cancelled, Outage};
use super::{ConsumerSettings, GroupConsumer, Handler};
use crate::db::{now_ms, Db};
use crate::kafka::HeaderList;
use crate::outbox::Tx;
use crate::{ErrorClass, HandlerError};

/// What the partition workers of one consumer session share.
pub(super) struct Worker<H> {
    pub(super) settings: ConsumerSettings,
    pub(super) db: Db,
    pub(super) producer: FutureProducer,
    pub(super) relay: Arc<Notify>,
    pub(super) handler: Arc<H>,
    pub(super) consumer: Arc<GroupConsumer>,
    /// Records handed to workers and not finished yet: while any is, the session
    /// is busy, not stalled.
    pub(super) in_flight: AtomicUsize,
}

/// Works through `queue` until it closes or `stop` (shutdown, or the partition
/// revoked) is cancelled; then drops the records not started, which are
/// delivered again to the partition's next owner.
pub(super) async fn partition_worker<H: Handler>(
    worker: Arc<Worker<H>>,
    mut queue: mpsc::Receiver<OwnedMessage>,
    stop: CancellationToken,
    _done: WorkerDone,
) {
    work_through(&worker, &mut queue, &stop).await;
    queue.close();
    while queue.try_recv().is_ok() {
        worker.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn work_through<H: Handler>(
    worker: &Worker<H>,
    queue: &mut mpsc::Receiver<OwnedMessage>,
    stop: &CancellationToken,
) {
    loop {
        let record = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            record = queue.recv() => match record { Some(r) => r, None => return },
        };
        let processed = worker.process(&record, stop).await;
        worker.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Interrupted by shutdown or revoke: the offset is not stored, so the
        // record is delivered again after the restart, or to the new owner.
        let Some(()) = processed else { return };
        if worker.settings.chaos_crash_after_commit > 0.0 && fastrand::f64() < worker.settings.chaos_crash_after_commit
        {
            tracing::error!(
                topic = record.topic(),
                offset = record.offset(),
                "chaos: aborting between commit and offset"
            );
            std::process::abort();
        }
        if let Err(error) = worker.consumer.store_offset(record.topic(), record.partition(), record.offset()) {
            // The partition was lost meanwhile (the session expired, or the
            // hand-over stopped waiting): its new owner gets the record again,
            // and the inbox makes that harmless.
            tracing::debug!(%error, topic = record.topic(), "storing offset");
        }
    }
}

impl<H: Handler> Worker<H> {
    /// Applies or dead-letters one record. `None` means shutdown interrupted it.
    async fn process(&self, record: &OwnedMessage, shutdown: &CancellationToken) -> Option<()> {
        let service = self.settings.service;
        metrics::counter!("messages_consumed_total", "service" => service, "topic" => record.topic().to_owned())
            .increment(1);
        let envelope = match Envelope::from_json(rdkafka::Message::payload(record).unwrap_or_default()) {
            Ok(envelope) => envelope,
            Err(error) => {
                let failure = Failure {
                    class: ErrorClass::Permanent,
                    message: error.to_string(),
                    attempts: 1,
                    first_failure_ms: now_ms(),
                };
                return self.dead_letter(record, failure, shutdown).await;
            }
        };
        if !self.handler.wants(&envelope.message) {
            return Some(());
        }
        let headers = HeaderList::from_kafka(rdkafka::Message::headers(record));
        let trace_id = headers.trace_id();
        let attempts = AtomicUsize::new(0);
        let first_failure = AtomicI64::new(0);
        let apply = || async {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            if attempt > 1 && shutdown.is_cancelled() {
                return Err(HandlerError::transient("shutting down"));
            }
            // The transaction is dropped (rolled back) while unwinding.
            let result = match AssertUnwindSafe(self.apply(&envelope, trace_id)).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Err(panicked(panic.as_ref(), attempt)),
            };
            if result.is_err() {
                let _ = first_failure.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
            }
            result
        };
        let started = std::time::Instant::now();
        let mut outage = Outage::new(service, self.settings.retry);
        let result = loop {
            // Shutdown cuts a back-off short and ends the retries, but never an
            // attempt in progress: the record in hand is finished.
            let stopping = shutdown.clone();
            let result = apply
                .retry(self.settings.retry.backoff())
                .sleep(move |delay| sleep_unless_cancelled(delay, stopping.clone()))
                .when(|error| error.is_transient() && !shutdown.is_cancelled())
                .notify(|error, delay| {
                    metrics::counter!("handler_retries_total", "service" => service).increment(1);
                    tracing::warn!(event_id = %envelope.event_id, event_type = envelope.event_type(), %error, ?delay, "retrying");
                })
                .await;
            match result {
                // An outage is waited out, however long: the record is fine.
                Err(error) if error.is_infrastructure() && !shutdown.is_cancelled() => {
                    let delay = outage.next_delay(&error);
                    sleep_unless_cancelled(delay, shutdown.clone()).await;
                }
                result => break result,
            }
        };
        outage.end();
        if shutdown.is_cancelled() && result.as_ref().is_err_and(|e| e.is_transient() || e.is_infrastructure()) {
            // Retries cut short: not stored, so delivered again after the restart.
            return None;
        }
        metrics::histogram!("handler_duration_seconds", "service" => service, "event_type" => envelope.event_type())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => Some(()),
            Err(error) => {
                let failure = Failure {
                    class: error.class,
                    message: error.message,
                    attempts: attempts.load(Ordering::Relaxed),
                    first_failure_ms: first_failure.load(Ordering::Relaxed),
                };
                self.dead_letter(record, failure, shutdown).await
            }
        }
    }

    async fn apply(&self, envelope: &Envelope, trace_id: Option<&str>) -> Result<(), HandlerError> {
        let mut tx = Tx::begin(&self.db, self.settings.service)
            .await?
            .caused_by(envelope, trace_id)
            .projections_awaited_for(self.settings.projection_wait);
        // The inbox row goes first: on SQLite it takes the write lock up front, so
        // the transaction never has to upgrade from a read lock and fail busy.
        let fresh = sqlx::query(
            "INSERT INTO inbox (event_id, event_type, processed_at) VALUES ($1, $2, $3)
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(envelope.event_id.to_string())
        .bind(envelope.event_type())
        .bind(now_ms())
        .execute(tx.conn())
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tracing::debug!(event_id = %envelope.event_id, "duplicate delivery ignored");
            return Ok(());
        }
        self.handler.handle(envelope, &mut tx).await?;
        tx.commit(&self.relay).await?;
        Ok(())
    }
}

/// Why a record is being dead-lettered.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: ErrorClass,
    pub message: String,
    pub attempts: usize,
    pub first_failure_ms: i64,
}
