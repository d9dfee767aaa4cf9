//! The JSON body of POST /orders: `frontend::api::parse_order`, the pure function that
//! `App::parse_order` (what the trade handler calls) delegates to: `serde_json::from_slice`
//! into a `Value`, then the checks of name, quantity and type, and the request id.
//!
//! Checks: no panic; an accepted order has a valid name and request id, a quantity in
//! 1..=max_trade, and survives the trip to the order leader (MessagePack frame) unchanged;
//! every refusal is a 400 or 404 with a JSON error body (never a 500, which would mean the
//! front end built a bad request id of its own).
#![no_main]

use common::frame;
use common::wire::{Envelope, OrderRequest, RequestId, StockName};
use frontend::api::parse_order;
use libfuzzer_sys::fuzz_target;
use stock_bazaar_fuzz::DEFAULT_MAX_TRADE;

/// The longest id the front end generates: `fe-<16 hex digits>-<u64::MAX>`.
fn generated_id() -> String {
    format!("fe-{:016x}-{}", u64::MAX, u64::MAX)
}

fn check(body: &[u8], key: Option<&str>, max_trade: u64) {
    match parse_order(body, key, max_trade, generated_id) {
        Ok(order) => {
            assert!(order.quantity >= 1, "{order:?}");
            assert!(order.quantity as u64 <= max_trade, "{order:?}");
            assert_eq!(
                StockName::new(order.name.as_str()).as_ref(),
                Ok(&order.name)
            );
            assert_eq!(
                RequestId::new(order.request_id.as_str()).as_ref(),
                Ok(&order.request_id)
            );
            if key.is_none() {
                assert_eq!(order.request_id.as_str(), generated_id());
            }
            let envelope = Envelope {
                id: 7,
                body: OrderRequest::PlaceOrder(order),
            };
            let bytes = frame::encode(&envelope).expect("an order encodes");
            let back: Envelope<OrderRequest> = frame::decode(&bytes).expect("an order decodes");
            assert_eq!(back, envelope);
        }
        Err(response) => {
            assert!(
                response.status == 400 || response.status == 404,
                "{response:?}"
            );
            assert_eq!(response.content_type, "application/json");
            let _: serde_json::Value =
                serde_json::from_slice(&response.body).expect("the error body is JSON");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The body alone, with the front end's own request id (the longest one it can make).
    check(data, None, DEFAULT_MAX_TRADE);
    check(data, None, i64::MAX as u64);
    // With an Idempotency-Key as the HTTP parser hands it over (UTF-8, trimmed): taken from
    // the last line of the input, the body being what comes before it.
    if let Some(split) = data.iter().rposition(|&b| b == b'\n') {
        if let Ok(key) = std::str::from_utf8(&data[split + 1..]) {
            check(&data[..split], Some(key.trim()), DEFAULT_MAX_TRADE);
        }
    }
});
