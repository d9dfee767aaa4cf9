//! The catalog binary killed with SIGKILL in the middle of concurrent trades and restarted:
//! every acknowledged trade is there, retried requests apply once, quantities and volumes add
//! up, and a deliberately torn last log record is dropped.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;
use support::{elect_stand_in, Receipt};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::book::TradeRecord;
use clients::CatalogClient;
use common::rpc::ClientConfig;
use common::wire::{RequestId, StockName, TradeKind, TradeReceipt, TradeRequest};

const STOCKS: [&str; 3] = ["GameStart", "BoarCo", "SkyRoute"];
const INITIAL: u64 = 100_000;

fn seed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/catalog.csv")
}

struct Catalog {
    child: Child,
    addr: String,
}

/// Starts the binary on port 0 and reads the address it bound from its log.
fn spawn(state: &Path) -> Catalog {
    let mut child = Command::new(env!("CARGO_BIN_EXE_catalog"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .arg("--seed")
        .arg(seed())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sender = Some(sender);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let (Some(start), Some(s)) = (line.find("addr="), sender.as_ref()) {
                if line.contains("catalog serving") {
                    let addr = line[start + 5..]
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .to_owned();
                    let _ = s.send(addr);
                    sender = None;
                }
            }
            // Keep draining so the child never blocks on a full pipe.
        }
    });
    let addr = receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("catalog did not report its address");
    Catalog { child, addr }
}

fn request(worker: usize, i: usize) -> TradeRequest {
    TradeRequest {
        request_id: RequestId::new(format!("crash-{worker}-{i}")).unwrap(),
        name: StockName::new(STOCKS[(worker + i) % STOCKS.len()]).unwrap(),
        quantity: (i % 4 + 1) as i64,
        kind: if i.is_multiple_of(3) {
            TradeKind::Sell
        } else {
            TradeKind::Buy
        },
    }
}

fn client(addr: &str) -> CatalogClient {
    let config = ClientConfig {
        call_timeout: Duration::from_secs(5),
        ..ClientConfig::new("crash-test")
    };
    CatalogClient::new(addr, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_trades_survive_sigkill_and_a_torn_tail_is_dropped() {
    let state = tempfile::tempdir().unwrap();
    let mut catalog = spawn(state.path());
    let trader = client(&catalog.addr);
    elect_stand_in(&trader).await;

    // Eight workers trade until the catalog dies under them; every acknowledgement is kept.
    let acked: Arc<Mutex<HashMap<String, (TradeRequest, TradeReceipt)>>> = Arc::default();
    let sent: Arc<Mutex<Vec<TradeRequest>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (trader, acked, sent) = (trader.clone(), acked.clone(), sent.clone());
            tokio::spawn(async move {
                for i in 0..5_000 {
                    let request = request(worker, i);
                    sent.lock().unwrap().push(request.clone());
                    match trader.trade(1, &request).await {
                        Ok(outcome) => {
                            let receipt = outcome.receipt().unwrap();
                            acked
                                .lock()
                                .unwrap()
                                .insert(request.request_id.to_string(), (request, receipt));
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();

    // Kill once a good number of trades were acknowledged and the workers are still going.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 1_500 {
        assert!(std::time::Instant::now() < deadline, "trades too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    catalog.child.kill().unwrap();
    catalog.child.wait().unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    assert!(sent.len() > acked.len(), "the kill landed after all trades");

    let mut catalog = spawn(state.path());
    let trader = client(&catalog.addr);
    // Acknowledged trades are durable: retrying one returns its first receipt.
    for (request, receipt) in acked.values() {
        assert_eq!(
            &trader.trade(1, request).await.unwrap().receipt().unwrap(),
            receipt
        );
    }
    // Trades whose answer was lost are retried with their id: each lands exactly once.
    for request in &sent {
        trader.trade(1, request).await.unwrap().receipt().unwrap();
    }
    let mut expected: HashMap<&str, (u64, u64)> =
        STOCKS.iter().map(|s| (*s, (INITIAL, 0))).collect();
    for request in &sent {
        let (quantity, volume) = expected.get_mut(request.name.as_str()).unwrap();
        let q = request.quantity as u64;
        match request.kind {
            TradeKind::Buy => *quantity -= q,
            TradeKind::Sell => *quantity += q,
        }
        *volume += q;
    }
    let mut quotes = Vec::new();
    for stock in STOCKS {
        let quote = trader
            .lookup(&StockName::new(stock).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((quote.quantity, quote.volume), expected[stock], "{stock}");
        quotes.push(quote);
    }

    // Kill again, then tear the log's last record as a crash mid-write would.
    catalog.child.kill().unwrap();
    catalog.child.wait().unwrap();
    let wal = state.path().join("wal.log");
    let intact = std::fs::metadata(&wal).unwrap().len();
    let torn_record = TradeRecord {
        seq: u64::MAX / 2,
        request_id: RequestId::new("torn").unwrap(),
        name: StockName::new("GameStart").unwrap(),
        kind: TradeKind::Buy,
        quantity: 99,
        after: TradeReceipt {
            quantity: 1,
            volume: 1,
            version: 1,
        },
    };
    let bytes =
        catalog::store::encode_record(&catalog::book::LogRecord::Traded(torn_record)).unwrap();
    let mut file = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
    std::io::Write::write_all(&mut file, &bytes[..bytes.len() - 3]).unwrap();
    drop(file);

    let mut catalog = spawn(state.path());
    let trader = client(&catalog.addr);
    for (stock, before) in STOCKS.iter().zip(&quotes) {
        let after = trader
            .lookup(&StockName::new(*stock).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&after, before, "{stock} changed across a torn record");
    }
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), intact);
    catalog.child.kill().unwrap();
    catalog.child.wait().unwrap();
}
