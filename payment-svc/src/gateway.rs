//! The payment gateway's HTTP API as payment-svc sees it, guarded: every call has
//! a timeout, goes through the circuit breaker, and takes a bulkhead slot so a
//! slow gateway cannot tie up more than a fixed number of calls.
//!
//! Calls carry an idempotency key (the order id, or `refund:<order id>`), so a call
//! repeated after a crash or a timeout never moves money twice, and a charge
//! whose outcome is unknown can be looked up by its key ([`Gateway::find_charge`]).

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
        /// The request may have reached the gateway and moved money: it timed
        /// out, or got a 5xx other than 503 (which means the gateway took no
        /// work), or an answer that could not be read. A refused connection or
        /// an open breaker is not ambiguous: nothing was sent.
        ambiguous: bool,
    },
    /// The gateway answered that it has nothing under this key or id (404): an
    /// answer about the money, not a failure of the gateway.
    NotFound,
}

/// What the gateway knows about a charge, by idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Charged {
        id: String,
    },
    /// No charge under this key, or a declined one: no money moved.
    NotCharged,
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
        self.post("/v1/charges", request).await
    }

    pub async fn refund(&self, request: &RefundRequest) -> Outcome {
        self.post("/v1/refunds", request).await
    }

    /// Looks a charge up by its idempotency key, to settle a call whose outcome
    /// was unknown before the payment is compensated.
    pub async fn find_charge(&self, idempotency_key: &str) -> Lookup {
        let request =
            self.http.get(format!("{}/v1/charges", self.base_url)).query(&[("idempotency_key", idempotency_key)]);
        match self.call(request).await {
            Outcome::Approved { id } => Lookup::Charged { id },
            Outcome::Declined { .. } | Outcome::NotFound => Lookup::NotCharged,
            Outcome::Unavailable { reason, .. } => Lookup::Unavailable { reason },
        }
    }

    async fn post<T: Serialize>(&self, path: &str, body: &T) -> Outcome {
        self.call(self.http.post(format!("{}{path}", self.base_url)).json(body)).await
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Outcome {
        let Ok(permit) = self.breaker.try_acquire() else {
            return Outcome::Unavailable { reason: "circuit breaker open".into(), ambiguous: false };
        };
        let outcome = match request.timeout(self.timeout).send().await {
            Ok(response) => {
                let status = response.status();
                match response.json::<GatewayReply>().await {
                    Ok(reply) if status.is_success() && reply.status == "approved" => match reply.id {
                        Some(id) => Outcome::Approved { id },
                        None => {
                            Outcome::Unavailable { reason: "gateway approved without an id".into(), ambiguous: true }
                        }
                    },
                    Ok(reply) if status.as_u16() == 402 || reply.status == "declined" => {
                        Outcome::Declined { reason: reply.reason.unwrap_or_else(|| "declined".into()) }
                    }
                    _ if status == reqwest::StatusCode::NOT_FOUND => Outcome::NotFound,
                    _ => Outcome::Unavailable {
                        reason: format!("gateway answered {status}"),
                        ambiguous: status != reqwest::StatusCode::SERVICE_UNAVAILABLE,
                    },
                }
            }
            Err(error) if error.is_timeout() => {
                Outcome::Unavailable { reason: format!("gateway timed out after {:?}", self.timeout), ambiguous: true }
            }
            Err(error) => {
                Outcome::Unavailable { reason: format!("gateway unreachable: {error}"), ambiguous: !error.is_connect() }
            }
        };
        permit.record(match outcome {
            Outcome::Unavailable { .. } => CallOutcome::Failure,
            Outcome::Approved { .. } | Outcome::Declined { .. } | Outcome::NotFound => CallOutcome::Success,
        });
        outcome
    }
}
