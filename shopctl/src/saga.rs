//! What an order's events say: a one-line summary of each catalogue message, and
//! the order's status derived from its events, named as order-svc names them
//! (PENDING, PAYMENT_DEFERRED, CONFIRMED, CANCELLING, REJECTED, CANCELLED).

use events::{Message, OrderLine, OrderStatus};

use crate::output::{money, rfc3339_ms};

/// The status an order's events imply, whatever order they are read in: each
/// event proves the saga got at least that far, and later stages win.
pub fn status<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Option<OrderStatus> {
    let mut rank: Option<(u8, OrderStatus)> = None;
    for message in messages {
        let reached = match message {
            Message::OrderCancelled(_) => (6, OrderStatus::Cancelled),
            Message::OrderRejected(_) => (5, OrderStatus::Rejected),
            Message::OrderCancellationRequested(_) => (4, OrderStatus::Cancelling),
            Message::OrderConfirmed(_) => (3, OrderStatus::Confirmed),
            Message::PaymentDeferred(_) => (2, OrderStatus::PaymentDeferred),
            Message::PlaceOrder(_) | Message::OrderPlaced(_) => (1, OrderStatus::Pending),
            _ => continue,
        };
        if rank.is_none_or(|(r, _)| reached.0 > r) {
            rank = Some(reached);
        }
    }
    rank.map(|(_, status)| status)
}

fn lines(lines: &[OrderLine]) -> String {
    lines.iter().map(|l| format!("{} x{}", l.sku, l.quantity)).collect::<Vec<_>>().join(", ")
}

/// One line saying what the message is about.
pub fn summary(message: &Message) -> String {
    use Message as M;
    match message {
        M::RegisterUser(m) => format!("user {} <{}>", m.user_id, m.email),
        M::UserRegistered(m) => format!("user {} <{}>", m.user_id, m.email),
        M::UserRegistrationRejected(m) => format!("user {}: {}", m.user_id, m.reason),
        M::CreateProduct(m) => {
            format!("{} \"{}\" at {}, stock {}", m.sku, m.name, money(m.price_minor), m.initial_stock)
        }
        M::ProductCreated(m) => {
            format!("{} \"{}\" at {}, stock {}", m.sku, m.name, money(m.price_minor), m.initial_stock)
        }
        M::ChangePrice(m) => format!("{} to {}", m.sku, money(m.price_minor)),
        M::PriceChanged(m) => format!("{} {} -> {}", m.sku, money(m.old_price_minor), money(m.price_minor)),
        M::RestockProduct(m) => format!("{} +{}", m.sku, m.quantity),
        M::ProductRestocked(m) => format!("{} +{}", m.sku, m.quantity),
        M::ProductCommandRejected(m) => format!("{} {}: {}", m.sku, m.command, m.reason),
        M::PlaceOrder(m) => format!("user {}: {} (token {})", m.user_id, lines(&m.lines), m.payment_token),
        M::CancelOrder(m) if m.reason.is_empty() => "cancel requested".to_owned(),
        M::CancelOrder(m) => format!("cancel requested: {}", m.reason),
        M::OrderPlaced(m) => {
            let priced: Vec<String> =
                m.lines.iter().map(|l| format!("{} x{} @ {}", l.sku, l.quantity, money(l.unit_price_minor))).collect();
            format!("total {}: {}", money(m.total_minor), priced.join(", "))
        }
        M::OrderRejected(m) => m.reason.clone(),
        M::OrderConfirmed(m) => format!("total {}", money(m.total_minor)),
        M::OrderCancellationRequested(m) => m.reason.clone(),
        M::OrderCancelled(m) => format!("{}{}", m.reason, if m.refunded { " (refunded)" } else { "" }),
        M::StockReserved(m) => format!("{} (total {})", lines(&m.lines), money(m.total_minor)),
        M::StockReservationFailed(m) => {
            let short: Vec<String> = m
                .short_lines
                .iter()
                .map(|l| format!("{}: requested {}, available {}", l.sku, l.requested, l.available))
                .collect();
            format!("short: {}", short.join(", "))
        }
        M::StockCommitted(_) => "reservation committed (sold)".to_owned(),
        M::StockReleased(m) if m.lines.is_empty() => format!("nothing was reserved: {}", m.reason),
        M::StockReleased(m) => format!("{}: {}", lines(&m.lines), m.reason),
        M::StockReceived(m) => format!("{} +{}, available {}", m.sku, m.quantity, m.available),
        M::PaymentAuthorized(m) => format!("{} charged {}", m.charge_id, money(m.amount_minor)),
        M::PaymentDeclined(m) => m.reason.clone(),
        M::PaymentDeferred(m) => format!("{}; retrying until {}", m.reason, rfc3339_ms(m.deadline_ms)),
        M::PaymentRefunded(m) => format!("{} refunded {} of {}", m.refund_id, money(m.amount_minor), m.charge_id),
        M::PaymentRefundFailed(m) => format!("refund of {} refused: {}", m.charge_id, m.reason),
        M::NotificationSent(m) => format!("{} via {} to {}", m.kind, m.channel, m.recipient),
    }
}

#[cfg(test)]
mod tests {
    use events::{OrderCancellationRequested, OrderConfirmed, OrderPlaced, PaymentDeferred};

    use super::*;

    fn placed() -> Message {
        OrderPlaced {
            order_id: "o".into(),
            user_id: "u".into(),
            lines: vec![],
            total_minor: 100,
            payment_token: "t".into(),
        }
        .into()
    }

    #[test]
    fn later_stages_win_whatever_the_reading_order() {
        let deferred: Message = PaymentDeferred { order_id: "o".into(), reason: "r".into(), deadline_ms: 0 }.into();
        let confirmed: Message = OrderConfirmed { order_id: "o".into(), user_id: "u".into(), total_minor: 1 }.into();
        assert_eq!(status([&placed()]), Some(OrderStatus::Pending));
        assert_eq!(status([&placed(), &deferred]), Some(OrderStatus::PaymentDeferred));
        assert_eq!(status([&confirmed, &deferred, &placed()]), Some(OrderStatus::Confirmed));
        let cancel: Message =
            OrderCancellationRequested { order_id: "o".into(), user_id: "u".into(), reason: "r".into() }.into();
        let cancelling = status([&placed(), &confirmed, &cancel]);
        assert_eq!(cancelling, Some(OrderStatus::Cancelling));
        assert!(!OrderStatus::Cancelling.is_terminal());
        assert_eq!(status(std::iter::empty()), None);
    }
}
