//! Shortcuts for the everyday commands (`user register`, `product create|restock|price`,
//! `order place|cancel`): flags become one catalogue message, sent through the
//! same validated path as `shopctl publish`.

use anyhow::{bail, Result};
use events::{CancelOrder, ChangePrice, CreateProduct, Message, OrderLine, PlaceOrder, RegisterUser, RestockProduct};

use crate::cli::{OrderCommand, ProductCommand, UserCommand};
use crate::{publish, say, Globals};

pub async fn user(globals: &Globals, command: UserCommand) -> Result<()> {
    let UserCommand::Register { id, email, name } = command;
    send(globals, RegisterUser { user_id: id, email, name }.into()).await
}

pub async fn product(globals: &Globals, command: ProductCommand) -> Result<()> {
    let message: Message = match command {
        ProductCommand::Create { sku, name, price, stock } => {
            CreateProduct { sku, name, price_minor: price, initial_stock: stock }.into()
        }
        ProductCommand::Restock { sku, quantity } => RestockProduct { sku, quantity }.into(),
        ProductCommand::Price { sku, price } => ChangePrice { sku, price_minor: price }.into(),
    };
    send(globals, message).await
}

/// `order place` and `order cancel` (the timeline lives in [`crate::timeline`]).
pub async fn order(globals: &Globals, command: OrderCommand) -> Result<()> {
    match command {
        OrderCommand::Place { id, user, lines, token } => {
            let lines = lines.iter().map(|l| parse_line(l)).collect::<Result<Vec<_>>>()?;
            let order_id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            send(globals, place_order(&order_id, &user, lines, &token)).await?;
            say!("order {order_id} placed; follow it with: shopctl order timeline {order_id} --follow");
            Ok(())
        }
        OrderCommand::Cancel { id, reason } => send(globals, CancelOrder { order_id: id, reason }.into()).await,
        OrderCommand::Timeline { .. } => bail!("internal: timeline is not a shortcut"),
    }
}

pub fn place_order(order_id: &str, user_id: &str, lines: Vec<OrderLine>, token: &str) -> Message {
    PlaceOrder { order_id: order_id.into(), user_id: user_id.into(), lines, payment_token: token.into() }.into()
}

/// `SKU:QTY` → an order line, with a message that quotes the flag.
pub fn parse_line(text: &str) -> Result<OrderLine> {
    let Some((sku, quantity)) = text.rsplit_once(':') else {
        bail!("--line \"{text}\": expected SKU:QTY, e.g. --line MUG:2");
    };
    let sku = sku.trim();
    if sku.is_empty() {
        bail!("--line \"{text}\": the SKU before `:` is empty");
    }
    let Ok(quantity) = quantity.trim().parse::<i64>() else {
        bail!("--line \"{text}\": quantity \"{quantity}\" is not a whole number");
    };
    if quantity <= 0 {
        bail!("--line \"{text}\": quantity must be positive, got {quantity}");
    }
    Ok(OrderLine { sku: sku.to_owned(), quantity })
}

/// Validates before connecting, so bad flags fail fast even without a broker.
async fn send(globals: &Globals, message: Message) -> Result<()> {
    message.validate().map_err(|e| anyhow::anyhow!("{} field `{}`: {}", message.event_type(), e.field, e.reason))?;
    let broker = globals.connect().await?;
    let sent = publish::send(&broker, vec![message]).await?;
    publish::report(&sent);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_lines_parse_or_say_why_not() {
        let line = parse_line("MUG:2").expect("valid");
        assert_eq!((line.sku.as_str(), line.quantity), ("MUG", 2));
        let error = |text: &str| parse_line(text).map(|_| ()).expect_err("invalid").to_string();
        assert_eq!(error("MUG:x"), "--line \"MUG:x\": quantity \"x\" is not a whole number");
        assert_eq!(error("MUG"), "--line \"MUG\": expected SKU:QTY, e.g. --line MUG:2");
        assert_eq!(error("MUG:0"), "--line \"MUG:0\": quantity must be positive, got 0");
        assert_eq!(error(":3"), "--line \":3\": the SKU before `:` is empty");
    }
}
