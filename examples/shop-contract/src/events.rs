//! The shop's messages. Events say what happened and fan out to every group that subscribes
//! (choreography); commands ask one service to do something (the orchestrator uses them).

use chassis::messaging::{Command, Event, Message};
use serde::{Deserialize, Serialize};

macro_rules! message {
    ($kind:ident $name:ident, $type:literal { $($field:ident: $ty:ty),* $(,)? }) => {
        #[doc = concat!("`", $type, "`")]
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct $name {
            $(#[allow(missing_docs)] pub $field: $ty,)*
        }
        impl Message for $name {
            const TYPE: &'static str = $type;
        }
        impl $kind for $name {}
    };
}

message!(Event OrderPlaced, "shop.order.placed" { order_id: u64, item: String, quantity: u32, amount_cents: u64 });
message!(Event StockReserved, "shop.stock.reserved" { order_id: u64 });
message!(Event StockRejected, "shop.stock.rejected" { order_id: u64, reason: String });
message!(Event PaymentCaptured, "shop.payment.captured" { order_id: u64, amount_cents: u64 });
message!(Event PaymentRefunded, "shop.payment.refunded" { order_id: u64, amount_cents: u64 });
message!(Command SendNotification, "shop.notification.send" { text: String });
