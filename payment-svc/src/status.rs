//! Where a payment stands: payment-svc's own states, one row per order in
//! `payments`. PENDING, DEFERRED and REFUND_PENDING rows are the work queue.
//!
//! ```text
//! PENDING ──charged──────────▶ AUTHORIZED ──cancel──▶ REFUND_PENDING ──▶ REFUNDED
//!    │  └──gateway unavailable──▶ DEFERRED ──(retried)──┘                  └──▶ REFUND_REFUSED
//!    ├──declined, or no charge by the deadline──▶ DECLINED
//!    └──cancelled before any money moved──▶ CANCELLED
//! ```

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// Queued, not tried yet.
    Pending,
    /// Tried, the gateway unavailable: retried with back-off until the deadline.
    Deferred,
    Authorized,
    /// The gateway said no, or the deadline passed with no charge made.
    Declined,
    /// Stopped by a cancellation before any money moved.
    Cancelled,
    /// Charged, and the money is owed back: retried until the gateway takes it.
    RefundPending,
    Refunded,
    /// The gateway refused a refund that is owed: an operator's case.
    RefundRefused,
}

/// The queued states as an SQL list, for the statements (and the partial index
/// of the migration) that select the work queue.
pub const QUEUED_SQL: &str = "('PENDING', 'DEFERRED', 'REFUND_PENDING')";

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 8] = [
        PaymentStatus::Pending,
        PaymentStatus::Deferred,
        PaymentStatus::Authorized,
        PaymentStatus::Declined,
        PaymentStatus::Cancelled,
        PaymentStatus::RefundPending,
        PaymentStatus::Refunded,
        PaymentStatus::RefundRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "PENDING",
            PaymentStatus::Deferred => "DEFERRED",
            PaymentStatus::Authorized => "AUTHORIZED",
            PaymentStatus::Declined => "DECLINED",
            PaymentStatus::Cancelled => "CANCELLED",
            PaymentStatus::RefundPending => "REFUND_PENDING",
            PaymentStatus::Refunded => "REFUNDED",
            PaymentStatus::RefundRefused => "REFUND_REFUSED",
        }
    }

    pub fn parse(text: &str) -> Option<PaymentStatus> {
        PaymentStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// A charge still to be made (or stopped).
    pub fn is_charge_queued(self) -> bool {
        matches!(self, PaymentStatus::Pending | PaymentStatus::Deferred)
    }

    /// In the work queue.
    pub fn is_queued(self) -> bool {
        self.is_charge_queued() || self == PaymentStatus::RefundPending
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_queue_list_matches() {
        for status in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::parse(status.as_str()), Some(status));
        }
        let queued: Vec<String> =
            PaymentStatus::ALL.into_iter().filter(|s| s.is_queued()).map(|s| format!("'{s}'")).collect();
        assert_eq!(QUEUED_SQL, format!("({})", queued.join(", ")));
    }
}
