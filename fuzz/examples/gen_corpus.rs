//! Writes the committed seed corpus, `fuzz/corpus/<target>/`, from the project's own encoders,
//! so that the seeds are what the services really write and send.
//!
//! `cargo run --example gen_corpus` (from `fuzz/`); rewrites the files it owns and leaves
//! others alone.

use std::fs;
use std::path::{Path, PathBuf};

use catalog::book::{LogRecord, Refusal, TradeRecord};
use common::frame;
use common::wire::{
    ApplyItem, ApplyOutcome, ApplyStop, CatalogRequest, CatalogResponse, Envelope, Hello,
    HelloReply, Leadership, LeadershipChange, LogEnd, LogPosition, OrderEntry, OrderRequest,
    OrderResponse, RemoteError, Reply, RequestId, StockName, StockQuote, TradeKind, TradeReceipt,
    TradeRejection, TradeRequest,
};
use serde::Serialize;
use stock_bazaar_fuzz::{checksummed_line, DEFAULT_MAX_TRADE};

type Error = Box<dyn std::error::Error>;

fn name(s: &str) -> StockName {
    StockName::new(s).expect("a valid stock name")
}

fn id(s: &str) -> RequestId {
    RequestId::new(s).expect("a valid request id")
}

struct Corpus {
    root: PathBuf,
}

impl Corpus {
    fn write(&self, target: &str, file: &str, bytes: impl AsRef<[u8]>) -> Result<(), Error> {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(file), bytes)?;
        Ok(())
    }
}

fn http(c: &Corpus) -> Result<(), Error> {
    let t = "http_head";
    c.write(
        t,
        "get_stock",
        "GET /stocks/GameStart HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
    )?;
    c.write(
        t,
        "head_stock",
        "HEAD /stocks/BoarCo HTTP/1.1\r\nHost: x\r\n\r\n",
    )?;
    let body = r#"{"name":"GameStart","quantity":10,"type":"buy"}"#;
    c.write(
        t,
        "post_order",
        format!(
            "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nIdempotency-Key: 9f2c-1\r\n\r\n{body}",
            body.len()
        ),
    )?;
    c.write(
        t,
        "http10_keep_alive",
        "GET /orders/12 HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    )?;
    c.write(
        t,
        "pipelined",
        "GET /health HTTP/1.1\r\n\r\nPOST /orders HTTP/1.1\r\nContent-Length: 2\r\n\
         Connection: close\r\n\r\n{}GET /metrics HTTP/1.1\r\n\r\n",
    )?;
    c.write(
        t,
        "duplicate_length",
        "POST /orders HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx",
    )?;
    c.write(
        t,
        "conflicting_length",
        "POST /orders HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
    )?;
    c.write(
        t,
        "chunked",
        "POST /orders HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )?;
    c.write(
        t,
        "partial_body",
        "POST /orders HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"na",
    )?;
    c.write(t, "partial_head", "GET /stocks/GameStart HTTP/1.1\r\nHo")?;
    c.write(t, "http2", "GET / HTTP/2.0\r\n\r\n")?;
    c.write(
        t,
        "bad_length",
        "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
    )?;
    let expect = format!(
        "POST /orders HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write(t, "expect_continue_head", &expect)?;
    c.write(t, "expect_continue_whole", format!("{expect}{body}"))?;
    c.write(
        t,
        "expect_other",
        "POST /orders HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx",
    )?;
    c.write(
        t,
        "http10_expect",
        "POST /orders HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )?;
    c.write(
        t,
        "long_target_partial",
        format!("GET /{}", "a".repeat(1100)),
    )?;
    Ok(())
}

fn order_body(c: &Corpus) -> Result<(), Error> {
    let t = "order_body";
    let seeds: &[(&str, &str)] = &[
        ("buy", r#"{"name":"GameStart","quantity":10,"type":"buy"}"#),
        ("sell", r#"{"name":"BoarCo","quantity":1,"type":"sell"}"#),
        (
            "buy_with_key",
            "{\"name\":\"MenhirCo\",\"quantity\":3,\"type\":\"buy\"}\nclient-7f3a-0001",
        ),
        (
            "bad_key",
            "{\"name\":\"MenhirCo\",\"quantity\":3,\"type\":\"buy\"}\nkey with spaces",
        ),
        ("zero", r#"{"name":"GameStart","quantity":0,"type":"buy"}"#),
        (
            "negative",
            r#"{"name":"GameStart","quantity":-5,"type":"sell"}"#,
        ),
        (
            "float",
            r#"{"name":"GameStart","quantity":1.5,"type":"buy"}"#,
        ),
        (
            "exponent",
            r#"{"name":"GameStart","quantity":1e3,"type":"buy"}"#,
        ),
        (
            "over_cap",
            r#"{"name":"GameStart","quantity":1000001,"type":"buy"}"#,
        ),
        (
            "huge",
            r#"{"name":"GameStart","quantity":18446744073709551615,"type":"buy"}"#,
        ),
        (
            "bad_type",
            r#"{"name":"GameStart","quantity":2,"type":"BUY"}"#,
        ),
        (
            "control_name",
            r#"{"name":"Game\u0007Start","quantity":2,"type":"buy"}"#,
        ),
        (
            "unicode_name",
            r#"{"name":"Ünïcødé ☃","quantity":2,"type":"sell"}"#,
        ),
        ("not_object", r#"["GameStart",1,"buy"]"#),
        ("truncated", r#"{"name":"GameStart","quantity":1"#),
    ];
    for (file, body) in seeds {
        c.write(t, file, body)?;
    }
    // The first seeds are orders the front end accepts.
    for (_, body) in &seeds[..3] {
        let body = body.split('\n').next().unwrap_or_default();
        let accepted =
            frontend::api::parse_order(body.as_bytes(), None, DEFAULT_MAX_TRADE, || "fe-0".into());
        assert!(accepted.is_ok(), "{body}: {accepted:?}");
    }
    Ok(())
}

/// Writes a message body raw, and as a framed stream behind the target's two control bytes
/// (maximum frame length 255, pieces of 5 bytes).
fn message<T: Serialize>(c: &Corpus, file: &str, id: u64, body: T) -> Result<Vec<u8>, Error> {
    let bytes = frame::encode(&Envelope { id, body })?;
    c.write("frame", file, &bytes)?;
    if bytes.len() <= 255 {
        let mut stream = vec![255u8, 4];
        stream.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        stream.extend_from_slice(&bytes);
        c.write("frame", &format!("{file}.stream"), &stream)?;
    }
    Ok(bytes.to_vec())
}

fn frames(c: &Corpus) -> Result<(), Error> {
    let hello = message(c, "hello", 0, Hello::new("order-2", Some("s3cret".into())))?;
    message(
        c,
        "welcome",
        0,
        HelloReply::Welcome {
            service: "catalog".into(),
        },
    )?;
    let lookup = message(
        c,
        "catalog_lookup",
        1,
        CatalogRequest::Lookup {
            name: name("GameStart"),
        },
    )?;
    message(
        c,
        "catalog_trade",
        2,
        CatalogRequest::Apply {
            epoch: 3,
            items: vec![ApplyItem::Refuse {
                before: 7,
                trade: TradeRequest {
                    request_id: id("key-abc"),
                    name: name("BoarCo"),
                    quantity: 5,
                    kind: TradeKind::Sell,
                },
            }],
            log: Some(LogEnd {
                incarnation: 3,
                last: Some(6),
            }),
        },
    )?;
    message(
        c,
        "catalog_change_leadership",
        3,
        CatalogRequest::ChangeLeadership {
            expected: 2,
            change: LeadershipChange::Elect {
                leader: 1,
                in_sync: vec![1, 2, 3],
            },
        },
    )?;
    message(
        c,
        "catalog_reconcile",
        4,
        CatalogRequest::Reconcile {
            epoch: 2,
            known: vec![LogPosition {
                epoch: 2,
                number: 40,
            }],
            max: 1_000,
            serving: true,
            log: Some(LogEnd {
                incarnation: 3,
                last: Some(40),
            }),
        },
    )?;
    message(
        c,
        "order_place",
        5,
        OrderRequest::PlaceOrder(TradeRequest {
            request_id: id("fe-0123456789abcdef-7"),
            name: name("GameStart"),
            quantity: 10,
            kind: TradeKind::Buy,
        }),
    )?;
    let entry = OrderEntry {
        number: 41,
        epoch: 2,
        request_id: id("key-abc"),
        name: name("GameStart"),
        kind: TradeKind::Buy,
        quantity: 10,
    };
    message(
        c,
        "order_replicate",
        6,
        OrderRequest::Replicate {
            cuts: 0,
            epoch: 2,
            leader_id: 1,
            prev: Some(LogPosition {
                epoch: 2,
                number: 40,
            }),
            entries: vec![entry.clone()],
        },
    )?;
    message(
        c,
        "order_sync_up",
        7,
        OrderRequest::SyncUp {
            epoch: 2,
            follower_id: 3,
            known: vec![
                LogPosition {
                    epoch: 1,
                    number: 9,
                },
                LogPosition {
                    epoch: 2,
                    number: 40,
                },
            ],
        },
    )?;
    message(
        c,
        "order_read_log",
        8,
        OrderRequest::ReadLog {
            from: 1_000,
            max: 1_000,
        },
    )?;
    let ok: Reply<CatalogResponse> = Ok(CatalogResponse::Stock(StockQuote {
        name: name("GameStart"),
        price: 15.99,
        quantity: 100,
        volume: 7,
        version: 12,
    }));
    message(c, "reply_stock", 1, ok)?;
    let applied: Reply<CatalogResponse> = Ok(CatalogResponse::Reconciled {
        incarnation: 3,
        meet: Some(LogPosition {
            epoch: 2,
            number: 40,
        }),
        next: 42,
        trades: vec![entry.clone()],
        complete: true,
    });
    message(c, "reply_reconciled", 4, applied)?;
    message(
        c,
        "catalog_apply",
        9,
        CatalogRequest::Apply {
            epoch: 2,
            items: vec![ApplyItem::Entry(entry.clone())],
            log: None,
        },
    )?;
    message(
        c,
        "catalog_levels",
        11,
        CatalogRequest::Levels {
            epoch: 2,
            after: Some(name("BoarCo")),
        },
    )?;
    let answered: Reply<CatalogResponse> = Ok(CatalogResponse::Applied {
        incarnation: 3,
        outcomes: vec![ApplyOutcome::Applied],
        stop: Some(ApplyStop::Refused {
            rejection: TradeRejection::NotEnoughStock { available: 2 },
            remembered: true,
        }),
        next: 43,
    });
    message(c, "reply_applied", 9, answered)?;
    message(
        c,
        "order_batch",
        10,
        OrderRequest::Batch(vec![
            OrderRequest::PlaceOrder(TradeRequest {
                request_id: id("fe-0123456789abcdef-8"),
                name: name("GameStart"),
                quantity: 1,
                kind: TradeKind::Sell,
            }),
            OrderRequest::GetOrder { number: 41 },
        ]),
    )?;
    let placed: Reply<OrderResponse> = Ok(OrderResponse::Placed {
        number: 41,
        epoch: 2,
    });
    message(c, "reply_placed", 5, placed)?;
    let failed: Reply<OrderResponse> = Err(RemoteError::unavailable("shutting down"));
    message(c, "reply_error", 5, failed)?;
    // Two frames in one stream, pieces of 3 bytes; and one over a 16-byte maximum.
    let mut stream = vec![255u8, 2];
    for body in [&hello, &lookup] {
        stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
        stream.extend_from_slice(body);
    }
    c.write("frame", "two_frames.stream", &stream)?;
    let mut too_big = vec![16u8, 0];
    too_big.extend_from_slice(&(lookup.len() as u32).to_be_bytes());
    too_big.extend_from_slice(&lookup);
    c.write("frame", "too_big.stream", &too_big)?;
    c.write("frame", "torn.stream", &stream[..stream.len() - 3])?;
    Ok(())
}

fn log_lines(c: &Corpus) -> Result<(), Error> {
    let t = "order_log_line";
    let entries = [
        OrderEntry {
            number: 0,
            epoch: 1,
            request_id: id("fe-0123456789abcdef-0"),
            name: name("GameStart"),
            kind: TradeKind::Buy,
            quantity: 10,
        },
        OrderEntry {
            number: 18446744073709551615,
            epoch: 7,
            request_id: id("key-client-7f3a-0001"),
            name: name("Ünïcødé ☃ Co"),
            kind: TradeKind::Sell,
            quantity: 1,
        },
    ];
    for (i, entry) in entries.iter().enumerate() {
        let line = order::log::format_line(entry);
        let line = line.trim_end_matches('\n');
        c.write(t, &format!("entry{i}"), line)?;
        // The same line with its checksum broken.
        let mut broken = line.to_owned();
        broken.pop();
        broken.push('z');
        c.write(t, &format!("entry{i}_bad_crc"), broken)?;
    }
    // Bodies without a checksum (the target appends a correct one).
    c.write(t, "body_only", "3\tBoarCo\tsell\t5\t2\tkey-abc")?;
    c.write(
        t,
        "body_extra_field",
        "3\tBoarCo\tsell\t5\t2\tkey-abc\textra",
    )?;
    c.write(t, "body_plus_number", "+3\tBoarCo\tsell\t05\t2\tkey-abc")?;
    c.write(
        t,
        "upper_crc",
        checksummed_line("4\tMenhirCo\tbuy\t1\t2\tfe-x-1").to_uppercase(),
    )?;
    Ok(())
}

fn trade_record(seq: u64, kind: TradeKind, quantity: u64) -> TradeRecord {
    TradeRecord {
        number: seq - 1,
        epoch: 1,
        request_id: id(&format!("key-{seq}")),
        name: name("GameStart"),
        kind,
        quantity,
        after: TradeReceipt {
            quantity: 100 - quantity,
            volume: seq * 3,
            version: seq + 1,
        },
    }
}

fn records(c: &Corpus) -> Result<(), Error> {
    let t = "catalog_record";
    let one =
        catalog::store::encode_record(&LogRecord::Traded(trade_record(1, TradeKind::Buy, 3)))?;
    let two =
        catalog::store::encode_record(&LogRecord::Traded(trade_record(2, TradeKind::Sell, 1)))?;
    let refused = catalog::store::encode_record(&LogRecord::Refused(Refusal {
        request_id: id("key-refused"),
        name: name("GameStart"),
        kind: TradeKind::Buy,
        quantity: 500,
        rejection: common::wire::TradeRejection::NotEnoughStock { available: 3 },
    }))?;
    c.write(t, "a_refusal", &[one.clone(), refused].concat())?;
    c.write(t, "one_record", &one)?;
    let log = [one.clone(), two.clone()].concat();
    c.write(t, "two_records", &log)?;
    c.write(t, "torn_tail", &log[..log.len() - 5])?;
    let mut bad_crc = log.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x40;
    c.write(t, "bad_crc", &bad_crc)?;
    // Payloads alone, separated by 0xC1 (the target frames them itself).
    let payload = |r: &[u8]| r[8..].to_vec();
    c.write(
        t,
        "payloads",
        [payload(&one), vec![0xC1], payload(&two)].concat(),
    )?;
    Ok(())
}

fn leadership(c: &Corpus) -> Result<(), Error> {
    let t = "leadership_record";
    let records = [
        ("none", Leadership::default()),
        (
            "elected",
            Leadership {
                epoch: 3,
                leader: Some(2),
                in_sync: vec![1, 2, 3],
            },
        ),
        (
            "alone",
            Leadership {
                epoch: u64::MAX,
                leader: Some(u32::MAX),
                in_sync: vec![u32::MAX],
            },
        ),
    ];
    for (file, record) in &records {
        let image = catalog::store::encode_leadership(record)?;
        c.write(t, file, &image)?;
        // The payload alone (the target seals it itself).
        c.write(t, &format!("{file}.payload"), &image[20..])?;
    }
    let mut truncated = catalog::store::encode_leadership(&records[1].1)?;
    truncated.pop();
    c.write(t, "truncated", truncated)?;
    Ok(())
}

fn main() -> Result<(), Error> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let c = Corpus { root };
    http(&c)?;
    order_body(&c)?;
    frames(&c)?;
    log_lines(&c)?;
    records(&c)?;
    leadership(&c)?;
    println!("seed corpus written to {}", c.root.display());
    Ok(())
}
