//! The REST contract (SPEC §2) through the real front end, catalog and replicas: every
//! success and error body, exactly.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use support::*;
use testkit::{Cluster, WriteQuorum};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_with_the_documented_bodies() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    let frontend = Frontend::start(&cluster, |_| {}).await;
    let addr = frontend.addr;

    let stock = get(addr, "/stocks/GameStart").await;
    assert_eq!(stock.status, 200);
    assert_eq!(stock.header("Content-Type"), Some("application/json"));
    assert_eq!(
        stock.body,
        r#"{"data":{"name":"GameStart","price":15.99,"quantity":100000}}"#
    );
    let missing = get(addr, "/stocks/NoSuchCo").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, r#"{"error":{"code":404,"message":"stock not found"}}"#)
    );
    assert_eq!(
        get(addr, "/stocks/gamestart").await.status,
        404,
        "names are case-sensitive"
    );

    let bought = post(addr, "/orders", &trade_body("GameStart", 3, "buy")).await;
    assert_eq!(
        (bought.status, bought.body.as_str()),
        (200, r#"{"data":{"transaction_number":0}}"#)
    );
    let sold = post(addr, "/orders/", &trade_body("GameStart", 1, "sell")).await;
    assert_eq!(
        (sold.status, sold.body.as_str()),
        (200, r#"{"data":{"transaction_number":1}}"#)
    );
    assert_eq!(
        get(addr, "/stocks/GameStart").await.body,
        r#"{"data":{"name":"GameStart","price":15.99,"quantity":99998}}"#
    );

    let order = get(addr, "/orders/0").await;
    assert_eq!(order.status, 200);
    assert_eq!(
        order.body,
        r#"{"data":{"number":0,"name":"GameStart","type":"buy","quantity":3}}"#
    );
    let error = |code: u16, message: &str| {
        format!(r#"{{"error":{{"code":{code},"message":"{message}"}}}}"#)
    };
    let no_order = get(addr, "/orders/99").await;
    assert_eq!(
        (no_order.status, no_order.body),
        (404, error(404, "order not found"))
    );
    for bad in [
        "/orders/-1",
        "/orders/abc",
        "/orders/1.5",
        "/orders/99999999999999999999999",
    ] {
        let reply = get(addr, bad).await;
        assert_eq!(reply.status, 400, "{bad}");
        assert_eq!(reply.json()["error"]["code"], 400);
    }

    let refusals: &[(&str, u16, &str)] = &[
        ("{not json", 400, "malformed JSON"),
        ("[1,2]", 400, "body must be a JSON object"),
        (
            r#"{"quantity":1,"type":"buy"}"#,
            400,
            "name must be a string",
        ),
        (
            r#"{"name":7,"quantity":1,"type":"buy"}"#,
            400,
            "name must be a string",
        ),
        (
            r#"{"name":"GameStart","type":"buy"}"#,
            400,
            "quantity must be a positive integer",
        ),
        (
            r#"{"name":"GameStart","quantity":0,"type":"buy"}"#,
            400,
            "quantity must be a positive integer",
        ),
        (
            r#"{"name":"GameStart","quantity":-2,"type":"buy"}"#,
            400,
            "quantity must be a positive integer",
        ),
        (
            r#"{"name":"GameStart","quantity":1.5,"type":"buy"}"#,
            400,
            "quantity must be a positive integer",
        ),
        (
            r#"{"name":"GameStart","quantity":"1","type":"buy"}"#,
            400,
            "quantity must be a positive integer",
        ),
        (
            r#"{"name":"GameStart","quantity":1000001,"type":"buy"}"#,
            400,
            "quantity is above the per-trade cap of 1000000",
        ),
        (
            r#"{"name":"GameStart","quantity":1,"type":"borrow"}"#,
            400,
            "type must be \"buy\" or \"sell\"",
        ),
        (
            r#"{"name":"GameStart","quantity":1}"#,
            400,
            "type must be \"buy\" or \"sell\"",
        ),
        (
            r#"{"name":"NoSuchCo","quantity":1,"type":"buy"}"#,
            404,
            "stock not found",
        ),
        (
            r#"{"name":"GameStart","quantity":999999,"type":"buy"}"#,
            409,
            "not enough stock",
        ),
    ];
    for (body, status, message) in refusals {
        let reply = post(addr, "/orders", body).await;
        assert_eq!(reply.status, *status, "{body}: {}", reply.body);
        assert_eq!(reply.json()["error"]["message"], *message, "{body}");
        assert_eq!(reply.json()["error"]["code"], *status);
    }
    // Refusals used no transaction numbers.
    let next = post(addr, "/orders", &trade_body("BoarCo", 1, "buy")).await;
    assert_eq!(next.json()["data"]["transaction_number"], 2);

    let health = get(addr, "/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["data"]["status"], "ok");
    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        metrics
            .body
            .contains("bazaar_http_requests_total{route=\"trade\",status=\"200\"} 3"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("bazaar_order_leader_id"));

    let nowhere = get(addr, "/nowhere").await;
    assert_eq!(
        (nowhere.status, nowhere.body),
        (404, error(404, "not found"))
    );
    for (method, path) in [
        ("DELETE", "/orders"),
        ("PUT", "/stocks/GameStart"),
        ("POST", "/orders/1"),
        ("POST", "/health"),
    ] {
        let reply = call(addr, &request(method, path, None, &[])).await;
        assert_eq!(
            (reply.status, reply.body),
            (405, error(405, "method not allowed")),
            "{method} {path}"
        );
    }
    frontend.stop().await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_trades_once() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    let frontend = Frontend::start(&cluster, |_| {}).await;
    let addr = frontend.addr;
    let body = trade_body("SkyRoute", 10, "buy");
    let keyed = request(
        "POST",
        "/orders",
        Some(&body),
        &[("Idempotency-Key", "order-42")],
    );
    let first = call(addr, &keyed).await;
    let again = call(addr, &keyed).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, again.body);
    assert_eq!(
        get(addr, "/stocks/SkyRoute").await.json()["data"]["quantity"],
        99_990,
        "the retry traded again"
    );
    let other = request(
        "POST",
        "/orders",
        Some(&trade_body("SkyRoute", 11, "buy")),
        &[("Idempotency-Key", "order-42")],
    );
    let reused = call(addr, &other).await;
    assert_eq!(reused.status, 409, "{}", reused.body);
    let bad_key = request(
        "POST",
        "/orders",
        Some(&body),
        &[("Idempotency-Key", "has space")],
    );
    assert_eq!(call(addr, &bad_key).await.status, 400);
    frontend.stop().await;
    cluster.stop_all().await;
}
