//! How long a failing record is tried again: a bounded back-off for transient
//! failures ([`RetryPolicy`]), an unbounded one for infrastructure outages
//! ([`Outage`]), and one more try for a panicking handler ([`panicked`]).
//! Shutdown cuts every back-off short.

use std::time::Duration;

use backon::ExponentialBuilder;
use tokio_util::sync::CancellationToken;

use crate::HandlerError;

/// Bounds of in-process retries for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    pub(super) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1))
            .with_total_delay(Some(self.max_elapsed))
            .with_jitter()
    }
}

pub(super) async fn sleep_unless_cancelled(delay: Duration, cancelled: CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = cancelled.cancelled() => {}
    }
}

/// A partition waiting out an infrastructure outage: capped exponential
/// back-off with jitter, without limit, visible in the log and in metrics
/// (`consumer_partitions_waiting_on_infrastructure`, `infrastructure_retries_total`).
pub(super) struct Outage {
    service: &'static str,
    policy: RetryPolicy,
    delay: Option<Duration>,
}

impl Outage {
    pub(super) fn new(service: &'static str, policy: RetryPolicy) -> Outage {
        Outage { service, policy, delay: None }
    }

    pub(super) fn next_delay(&mut self, error: &HandlerError) -> Duration {
        let service = self.service;
        metrics::counter!("infrastructure_retries_total", "service" => service).increment(1);
        let delay = match self.delay {
            None => {
                metrics::gauge!("consumer_partitions_waiting_on_infrastructure", "service" => service).increment(1.0);
                tracing::warn!(%error, "infrastructure unavailable: this partition waits until it is back");
                self.policy.min_delay
            }
            Some(delay) => (delay * 2).min(self.policy.max_delay),
        };
        self.delay = Some(delay);
        delay.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    pub(super) fn end(self) {
        if self.delay.is_some() {
            metrics::gauge!("consumer_partitions_waiting_on_infrastructure", "service" => self.service).decrement(1.0);
            tracing::info!("infrastructure back: the partition goes on");
        }
    }
}

/// A panicking handler is a bug or data it cannot cope with: worth one more try
/// (the state it read may have moved on), then permanent.
pub(super) fn panicked(panic: &(dyn std::any::Any + Send), attempt: usize) -> HandlerError {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned());
    let message = format!("handler panicked: {text}");
    if attempt < 2 {
        HandlerError::transient(message)
    } else {
        HandlerError::permanent(message)
    }
}
