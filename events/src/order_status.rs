//! The order saga's states (DESIGN.md, the saga), named once for the
//! service that owns them (order-svc) and every tool that reports them.

use std::fmt;

/// Where an order stands. REJECTED, CONFIRMED (unless cancelled later) and
/// CANCELLED are where the saga rests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    PaymentDeferred,
    Confirmed,
    Cancelling,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Pending,
        OrderStatus::PaymentDeferred,
        OrderStatus::Confirmed,
        OrderStatus::Cancelling,
        OrderStatus::Rejected,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::PaymentDeferred => "PAYMENT_DEFERRED",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Cancelling => "CANCELLING",
            OrderStatus::Rejected => "REJECTED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(text: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Where the saga rests. CONFIRMED counts: a later cancellation starts anew
    /// with OrderCancellationRequested, which makes the order CANCELLING.
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Confirmed | OrderStatus::Rejected | OrderStatus::Cancelled)
    }

    /// Waiting for payment (possibly deferred by a gateway outage).
    pub fn awaiting_payment(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::PaymentDeferred)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("SHIPPED"), None);
    }
}
