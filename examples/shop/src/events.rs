//! The shop's messages. Every service reacts to the others' events (choreography).

use chassis::messaging::{Event, Message};
use serde::{Deserialize, Serialize};

macro_rules! event {
    ($name:ident, $type:literal { $($field:ident: $ty:ty),* $(,)? }) => {
        #[doc = concat!("`", $type, "`")]
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct $name {
            $(#[allow(missing_docs)] pub $field: $ty,)*
        }
        impl Message for $name {
            const TYPE: &'static str = $type;
        }
        impl Event for $name {}
    };
}

event!(OrderPlaced, "shop.order.placed" { order_id: u64, item: String, quantity: u32, amount_cents: u64 });
event!(StockReserved, "shop.stock.reserved" { order_id: u64 });
event!(StockRejected, "shop.stock.rejected" { order_id: u64, reason: String });
event!(PaymentCaptured, "shop.payment.captured" { order_id: u64, amount_cents: u64 });
event!(PaymentRefunded, "shop.payment.refunded" { order_id: u64, amount_cents: u64 });
