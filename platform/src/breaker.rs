//! A circuit breaker, small enough to own and test.
//!
//! Closed: calls flow; outcomes go into a sliding window of the last `window`
//! calls. Once the window holds at least `min_calls`, a failure rate or a slow-call
//! rate at or above its threshold opens the breaker. Open: calls are refused
//! without being attempted, for `open_for`. Half-open: up to `half_open_probes`
//! calls go through; one failure re-opens, that many successes close it.
//!
//! Time is `tokio::time::Instant`, so tests drive it with paused time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub window: usize,
    pub min_calls: usize,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub slow_call: Duration,
    pub open_for: Duration,
    pub half_open_probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: 20,
            min_calls: 5,
            failure_rate: 0.5,
            slow_call_rate: 0.8,
            slow_call: Duration::from_millis(1000),
            open_for: Duration::from_secs(2),
            half_open_probes: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// How a guarded call ended, from the breaker's point of view. A business "no"
/// (card declined) is a `Success`: the gateway answered correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Success,
    Failure,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: usize, successes: usize },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// (failed, slow) of the most recent calls while closed.
    window: VecDeque<(bool, bool)>,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// The call was not attempted because the breaker is open (or half-open with all
/// probe slots taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open")]
pub struct Rejected;

/// Permission for one call. Record its outcome with [`Permit::record`]; a permit
/// dropped unrecorded frees its probe slot and counts for nothing.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    started: Instant,
    probe: bool,
    recorded: bool,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            inner: Mutex::new(Inner { phase: Phase::Closed, window: VecDeque::with_capacity(config.window) }),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the breaker's small state
        // half-updated in a harmful way, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        Self::refresh(&mut inner);
        match inner.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Time until an open breaker lets probes through (zero if not open).
    pub fn retry_after(&self) -> Duration {
        match self.lock().phase {
            Phase::Open { until } => until.saturating_duration_since(Instant::now()),
            _ => Duration::ZERO,
        }
    }

    fn refresh(inner: &mut Inner) {
        if let Phase::Open { until } = inner.phase {
            if Instant::now() >= until {
                inner.phase = Phase::HalfOpen { in_flight: 0, successes: 0 };
            }
        }
    }

    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        let mut inner = self.lock();
        Self::refresh(&mut inner);
        let probe = match &mut inner.phase {
            Phase::Closed => false,
            Phase::Open { .. } => return Err(Rejected),
            Phase::HalfOpen { in_flight, successes } => {
                if *in_flight + *successes >= self.config.half_open_probes {
                    return Err(Rejected);
                }
                *in_flight += 1;
                true
            }
        };
        Ok(Permit { breaker: self, started: Instant::now(), probe, recorded: false })
    }

    fn record(&self, probe: bool, outcome: CallOutcome, elapsed: Duration) {
        let mut inner = self.lock();
        let failed = outcome == CallOutcome::Failure;
        let slow = elapsed >= self.config.slow_call;
        match &mut inner.phase {
            Phase::HalfOpen { in_flight, successes } if probe => {
                *in_flight = in_flight.saturating_sub(1);
                if failed || slow {
                    tracing::warn!("circuit breaker: probe failed, open again");
                    inner.phase = Phase::Open { until: Instant::now() + self.config.open_for };
                } else {
                    *successes += 1;
                    if *successes >= self.config.half_open_probes {
                        tracing::info!("circuit breaker: closed");
                        inner.phase = Phase::Closed;
                        inner.window.clear();
                    }
                }
            }
            Phase::Closed => {
                if inner.window.len() == self.config.window {
                    inner.window.pop_front();
                }
                inner.window.push_back((failed, slow));
                let calls = inner.window.len();
                if calls >= self.config.min_calls {
                    let failures = inner.window.iter().filter(|(f, _)| *f).count();
                    let slows = inner.window.iter().filter(|(_, s)| *s).count();
                    let failure_rate = failures as f64 / calls as f64;
                    let slow_rate = slows as f64 / calls as f64;
                    if failure_rate >= self.config.failure_rate || slow_rate >= self.config.slow_call_rate {
                        tracing::warn!(failure_rate, slow_rate, calls, "circuit breaker: open");
                        inner.phase = Phase::Open { until: Instant::now() + self.config.open_for };
                        inner.window.clear();
                    }
                }
            }
            // A call that started before the breaker opened: its outcome is stale.
            _ => {}
        }
    }

    fn release_probe(&self) {
        if let Phase::HalfOpen { in_flight, .. } = &mut self.lock().phase {
            *in_flight = in_flight.saturating_sub(1);
        }
    }
}

impl Permit<'_> {
    pub fn record(mut self, outcome: CallOutcome) {
        self.recorded = true;
        self.breaker.record(self.probe, outcome, self.started.elapsed());
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            slow_call_rate: 0.5,
            slow_call: Duration::from_millis(500),
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        })
    }

    fn call(b: &CircuitBreaker, outcome: CallOutcome) {
        b.try_acquire().expect("breaker lets the call through").record(outcome);
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_below_min_calls() {
        let b = breaker();
        for _ in 0..3 {
            call(&b, CallOutcome::Failure);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        call(&b, CallOutcome::Failure);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_failure_rate_and_refuses_calls() {
        let b = breaker();
        for outcome in [CallOutcome::Success, CallOutcome::Success, CallOutcome::Failure] {
            call(&b, outcome);
        }
        call(&b, CallOutcome::Success);
        assert_eq!(b.state(), BreakerState::Closed, "1 of 4 failed: below 50%");
        call(&b, CallOutcome::Failure);
        call(&b, CallOutcome::Failure);
        assert_eq!(b.state(), BreakerState::Open, "3 of 6 failed");
        assert_eq!(b.try_acquire().err(), Some(Rejected));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_successes_open_it_too() {
        let b = breaker();
        for _ in 0..4 {
            let permit = b.try_acquire().expect("closed");
            tokio::time::advance(Duration::from_millis(600)).await;
            permit.record(CallOutcome::Success);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_cool_down_with_limited_probes() {
        let b = breaker();
        for _ in 0..4 {
            call(&b, CallOutcome::Failure);
        }
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let first = b.try_acquire().expect("probe 1");
        let second = b.try_acquire().expect("probe 2");
        assert_eq!(b.try_acquire().err(), Some(Rejected), "only two probes");
        first.record(CallOutcome::Success);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        second.record(CallOutcome::Success);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again() {
        let b = breaker();
        for _ in 0..4 {
            call(&b, CallOutcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        call(&b, CallOutcome::Failure);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.retry_after(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_its_slot() {
        let b = breaker();
        for _ in 0..4 {
            call(&b, CallOutcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b.try_acquire().expect("probe"));
        drop(b.try_acquire().expect("probe slot freed"));
        call(&b, CallOutcome::Success);
        call(&b, CallOutcome::Success);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_slide_out_of_the_window() {
        let b = breaker();
        for _ in 0..12 {
            call(&b, CallOutcome::Success);
        }
        // The window keeps the last ten calls: 6 successes and 4 failures is 40%.
        for _ in 0..4 {
            call(&b, CallOutcome::Failure);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // 5 of the last 10 failed: 50%.
        call(&b, CallOutcome::Failure);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
