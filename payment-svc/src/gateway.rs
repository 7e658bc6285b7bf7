//! The payment gateway's HTTP API as payment-svc sees it, guarded: every call has
//! a timeout, goes through the circuit breaker, and takes a bulkhead slot so a
//! slow gateway cannot tie up more than a fixed number of calls.
//!
//! Calls carry an idempotency key (the order id, or `refund:<order id>`), so a call
//! repeated after a crash or a timeout never moves money twice.

use std::sync::Arc;
use std::time::Duration;

use platform::breaker::{CallOutcome, CircuitBreaker};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeRequest {
    pub idempotency_key: String,
    pub amount_minor: i64,
    pub payment_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefundRequest {
    pub idempotency_key: String,
    pub charge_id: String,
    pub amount_minor: i64,
}

/// The gateway's answer body for both charges and refunds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayReply {
    /// `approved` or `declined`.
    pub status: String,
    /// charge or refund id when approved.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// What a guarded call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved {
        id: String,
    },
    /// A business "no": final, not retried.
    Declined {
        reason: String,
    },
    /// Not attempted (breaker open) or no usable answer (timeout, refused, 5xx):
    /// the payment stays queued and is tried again later.
    Unavailable {
        reason: String,
    },
}

pub struct Gateway {
    base_url: String,
    http: reqwest::Client,
    timeout: Duration,
    breaker: Arc<CircuitBreaker>,
    bulkhead: Arc<Semaphore>,
}

impl Gateway {
    pub fn new(base_url: &str, timeout: Duration, max_concurrent: usize, breaker: Arc<CircuitBreaker>) -> Self {
        Gateway {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            timeout,
            breaker,
            bulkhead: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    pub fn bulkhead(&self) -> Arc<Semaphore> {
        self.bulkhead.clone()
    }

    pub async fn charge(&self, request: &ChargeRequest) -> Outcome {
        self.call("/v1/charges", request).await
    }

    pub async fn refund(&self, request: &RefundRequest) -> Outcome {
        self.call("/v1/refunds", request).await
    }

    async fn call<T: Serialize>(&self, path: &str, body: &T) -> Outcome {
        let Ok(permit) = self.breaker.try_acquire() else {
            return Outcome::Unavailable { reason: "circuit breaker open".into() };
        };
        let request = self.http.post(format!("{}{path}", self.base_url)).json(body).timeout(self.timeout).send();
        let outcome = match request.await {
            Ok(response) => {
                let status = response.status();
                match response.json::<GatewayReply>().await {
                    Ok(reply) if status.is_success() && reply.status == "approved" => match reply.id {
                        Some(id) => Outcome::Approved { id },
                        None => Outcome::Unavailable { reason: "gateway approved without an id".into() },
                    },
                    Ok(reply) if status.as_u16() == 402 || reply.status == "declined" => {
                        Outcome::Declined { reason: reply.reason.unwrap_or_else(|| "declined".into()) }
                    }
                    Ok(_) | Err(_) => Outcome::Unavailable { reason: format!("gateway answered {status}") },
                }
            }
            Err(error) if error.is_timeout() => {
                Outcome::Unavailable { reason: format!("gateway timed out after {:?}", self.timeout) }
            }
            Err(error) => Outcome::Unavailable { reason: format!("gateway unreachable: {error}") },
        };
        permit.record(match outcome {
            Outcome::Unavailable { .. } => CallOutcome::Failure,
            Outcome::Approved { .. } | Outcome::Declined { .. } => CallOutcome::Success,
        });
        outcome
    }
}
