//! Observability on the real binaries: every service's metrics pass the official OpenMetrics
//! parser and show what they promise, the backends' metrics ports refuse a scrape without the
//! cluster token, and the front end's cluster page, rendered in headless Chromium, shows the
//! leader and, after the leader is SIGKILLed under load, the new one within seconds. The
//! history of the load is checked as in every chaos test.
//!
//! Without Chromium or the Python client `prometheus_client` it prints `SKIPPED`, unless
//! `BAZAAR_REQUIRE_BROWSER` is set (CI sets it; `chaos/setup.sh` installs both). With
//! `BAZAAR_STATUS_SCREENSHOT=<file.png>` it also keeps a screenshot of the page after the
//! failover there (how `docs/status.png` is made).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chaos::cluster::{frontend_name, order_name, CATALOG};
use chaos::http::HttpClient;
use chaos::observe::{self, element_text, Browser};
use chaos::{check, Cluster, ClusterOptions, History, Load, Verdict, WriteQuorum};

const SECOND: Duration = Duration::from_secs(1);

/// Families each service must show (OpenMetrics names: counters without `_total`).
const CATALOG_FAMILIES: &[&str] = &[
    "bazaar_catalog_trades",
    "bazaar_catalog_lookups",
    "bazaar_catalog_wal_fsync_seconds",
    "bazaar_catalog_wal_batch_size",
    "bazaar_catalog_subscribers",
    "bazaar_catalog_leadership_epoch",
];
const REPLICA_FAMILIES: &[&str] = &[
    "bazaar_order_role",
    "bazaar_order_epoch",
    "bazaar_order_log_last",
    "bazaar_order_in_sync",
    "bazaar_order_commit_seconds",
    "bazaar_order_place_seconds",
    "bazaar_order_catch_ups",
    "bazaar_order_set_aside_entries",
    "bazaar_order_log_fsync_seconds",
    "bazaar_order_log_batch_size",
    "bazaar_order_follower_lag_entries",
    "bazaar_order_follower_lag_seconds",
];
const FRONTEND_FAMILIES: &[&str] = &[
    "bazaar_http_requests",
    "bazaar_http_request_duration_seconds",
    "bazaar_cache_hits",
    "bazaar_cache_entries",
    "bazaar_order_leader_id",
    "bazaar_order_failovers",
    "bazaar_order_failover_seconds",
];

/// Parses `text` with the official parser and checks it holds `expected`; the family names.
fn families(service: &str, text: &str, expected: &[&str]) -> BTreeSet<String> {
    let parsed = observe::parse(text)
        .unwrap()
        .unwrap_or_else(|e| panic!("{service}'s metrics fail the OpenMetrics parser: {e}\n{text}"));
    let names: BTreeSet<String> = parsed.into_iter().map(|f| f.name).collect();
    for name in expected {
        assert!(
            names.contains(*name),
            "{service}'s metrics lack {name}; they have {names:?}"
        );
    }
    names
}

/// The value of the sample `line_start` (e.g. `bazaar_order_role{role="leader"}`).
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
}

async fn status_json(cluster: &Cluster) -> serde_json::Value {
    let mut client = HttpClient::new(cluster.frontend_addr(0).unwrap());
    let answer = client.get("/status.json", 5 * SECOND).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json().expect("status.json is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_is_observable_and_the_page_follows_a_failover() {
    let _serial = chaos::serial().await;
    let required = std::env::var_os(observe::REQUIRE_ENV).is_some();
    if let Some(missing) = observe::parser_unavailable() {
        assert!(!required, "{missing}");
        eprintln!("SKIPPED: {missing}");
        return;
    }
    let mut verdict = Verdict::new("observability", WriteQuorum::All);
    let mut cluster = Cluster::start(ClusterOptions::new("observe", WriteQuorum::All))
        .await
        .unwrap();
    let browser = Browser::find(cluster.root());
    if browser.is_none() {
        assert!(!required, "no chromium to render the cluster page");
        eprintln!("SKIPPED (the page part): no chromium");
    }
    let history = History::new();
    let load = history
        .start(&cluster, Load::keyed("observe", &[0]).workers(2))
        .unwrap();
    verdict.expect(
        history
            .wait_acknowledged(Duration::ZERO, 200, 30 * SECOND)
            .await,
        "trading before the scrapes",
    );
    let leader = cluster.health(0).await.and_then(|h| h.leader).unwrap();
    let token = cluster.token().to_owned();

    // Every backend: the parser accepts its exposition, which shows what it promises.
    let (status, text) = observe::scrape(cluster.metrics_addr(CATALOG).unwrap(), Some(&token))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    families(CATALOG, &text, CATALOG_FAMILIES);
    assert!(sample(&text, "bazaar_catalog_trades_total{outcome=\"traded\"}").unwrap() >= 200.0);
    assert_eq!(
        sample(&text, "bazaar_catalog_subscribers{kind=\"replica\"}"),
        Some(3.0),
        "{text}"
    );
    for id in 1..=3 {
        let name = order_name(id);
        // The lag families are a leader's alone.
        let expected = if id == leader {
            REPLICA_FAMILIES
        } else {
            &REPLICA_FAMILIES[..REPLICA_FAMILIES.len() - 2]
        };
        let (status, text) = observe::scrape(cluster.metrics_addr(&name).unwrap(), Some(&token))
            .await
            .unwrap();
        assert_eq!(status, 200, "{text}");
        families(&name, &text, expected);
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(
            sample(&text, &format!("bazaar_order_role{{role=\"{role}\"}}")),
            Some(1.0),
            "{name}: {text}"
        );
        if id == leader {
            assert!(sample(&text, "bazaar_order_commit_seconds_count").unwrap() >= 200.0);
            assert_eq!(sample(&text, "bazaar_order_in_sync"), Some(3.0), "{text}");
        }
        // Closed by default: no token, no metrics.
        let (refused, _) = observe::scrape(cluster.metrics_addr(&name).unwrap(), None)
            .await
            .unwrap();
        assert_eq!(refused, 401, "{name} served its metrics without the token");
    }
    // The checker itself refuses a broken exposition (so that its passes mean something).
    let (_, text) = observe::scrape(cluster.metrics_addr(CATALOG).unwrap(), Some(&token))
        .await
        .unwrap();
    let broken = text.replace("# EOF\n", "");
    assert!(observe::parse(&broken).unwrap().is_err());
    let broken = text.replacen(
        "\nbazaar_catalog_history_next ",
        "\nbazaar_catalog_history_next x",
        1,
    );
    assert_ne!(broken, text);
    assert!(observe::parse(&broken).unwrap().is_err());

    // The front end's cluster page, as a browser renders it.
    let json = status_json(&cluster).await;
    assert_eq!(json["leadership"]["leader"], leader, "{json}");
    assert_eq!(json["catalog"]["up"], true, "{json}");
    for replica in json["replicas"].as_array().unwrap() {
        assert_eq!(replica["up"], true, "{json}");
    }
    let url = format!("http://{}/status", cluster.frontend_addr(0).unwrap());
    let shows = |dom: &str| element_text(dom, "leader").map(str::to_owned);
    if let Some(browser) = &browser {
        let dom = browser.dump_dom(&url).unwrap();
        assert_eq!(
            shows(&dom).as_deref(),
            Some(format!("order-{leader}").as_str()),
            "the page does not show the leader:\n{dom}"
        );
        assert!(dom.contains("id=\"replica-1\""), "{dom}");
    }

    // Kill the leader under load: the page shows the new leader within seconds.
    let killed_at = Instant::now();
    cluster.kill(&order_name(leader)).unwrap();
    let new_leader = chaos::poll(
        "a new leader",
        30 * SECOND,
        Duration::from_millis(100),
        || async {
            cluster
                .health(0)
                .await
                .and_then(|h| h.leader)
                .filter(|&l| l != leader)
        },
    )
    .await
    .unwrap();
    if let Some(browser) = &browser {
        let expected = format!("order-{new_leader}");
        let mut seen = None;
        for _ in 0..20 {
            let dom = browser.dump_dom(&url).unwrap();
            seen = shows(&dom);
            if seen.as_deref() == Some(expected.as_str()) {
                break;
            }
        }
        let took = killed_at.elapsed();
        assert_eq!(seen.as_deref(), Some(expected.as_str()), "after {took:?}");
        eprintln!("the page showed {expected} {took:?} after the kill");
        assert!(
            took < 20 * SECOND,
            "the page took {took:?} to show the new leader"
        );
        let shot = cluster.root().join("status.png");
        browser.screenshot(&url, &shot).unwrap();
        if let Some(keep) = std::env::var_os("BAZAAR_STATUS_SCREENSHOT") {
            std::fs::copy(&shot, keep).unwrap();
        }
    }
    let json = status_json(&cluster).await;
    let killed = json["replicas"][(leader - 1) as usize].clone();
    assert_eq!(killed["up"], false, "{json}");
    assert_eq!(json["elections"][0]["leader"], new_leader, "{json}");
    assert!(json["elections"][0]["took_ms"].is_u64(), "{json}");
    let (_, text) = observe::scrape(&cluster.frontend_addr(0).unwrap(), None)
        .await
        .unwrap();
    families(&frontend_name(0), &text, FRONTEND_FAMILIES);
    assert!(sample(&text, "bazaar_order_failover_seconds_count").unwrap() >= 1.0);

    // The killed replica comes back and catches up; the history holds.
    cluster.restart(&order_name(leader)).unwrap();
    let since = history.now();
    verdict.expect(
        history.wait_acknowledged(since, 100, 30 * SECOND).await,
        "trading after the failover",
    );
    load.finish().await.unwrap();
    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}

/// The spans of a JSON log line that name `request`.
fn names_request(line: &str, request: &str) -> bool {
    let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
        return false;
    };
    event["spans"]
        .as_array()
        .is_some_and(|spans| spans.iter().any(|span| span["request"] == request))
}

/// One trade, followed with `grep` through every hop: its request id is a span field of log
/// lines at the front end, the leader, the catalog and both followers, here in the JSON
/// format for collectors (each line one JSON object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trade_is_followed_through_every_hop_by_its_request_id() {
    let _serial = chaos::serial().await;
    let mut options = ClusterOptions::new("trace", WriteQuorum::All);
    options.log_filter = "info,frontend=debug,order=debug,catalog=debug".into();
    options
        .env
        .push(("BAZAAR_LOG_FORMAT".into(), "json".into()));
    let mut cluster = Cluster::start(options).await.unwrap();
    let leader = cluster.health(0).await.and_then(|h| h.leader).unwrap();
    let mut client = HttpClient::new(cluster.frontend_addr(0).unwrap());
    let answer = client
        .send(
            "POST",
            "/orders",
            &[("Idempotency-Key", "trace-0042")],
            Some(r#"{"name":"GameStart","quantity":1,"type":"buy"}"#),
            5 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let request = "key-trace-0042";
    let mut hops = vec![frontend_name(0), CATALOG.to_owned()];
    hops.extend((1..=3).map(order_name));
    let found = chaos::poll(
        "the request id in every service's log",
        10 * SECOND,
        Duration::from_millis(100),
        || {
            let missing: Vec<String> = hops
                .iter()
                .filter(|name| {
                    let log = std::fs::read_to_string(cluster.log_path(name)).unwrap_or_default();
                    !log.lines().any(|line| names_request(line, request))
                })
                .cloned()
                .collect();
            async move { missing.is_empty().then_some(()) }
        },
    )
    .await;
    if found.is_err() {
        cluster.keep_state();
    }
    found.unwrap();
    // Every line is JSON, and the leader's lines for it are its own placement.
    for name in &hops {
        let log = std::fs::read_to_string(cluster.log_path(name)).unwrap();
        for line in log.lines().filter(|l| l.starts_with('{')) {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "{name}: {line}"
            );
        }
    }
    let leader_log = std::fs::read_to_string(cluster.log_path(&order_name(leader))).unwrap();
    assert!(
        leader_log
            .lines()
            .any(|l| names_request(l, request) && l.contains("\"placed\"")),
        "{leader_log}"
    );
}
