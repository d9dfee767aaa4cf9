//! The catalog binary killed with SIGKILL in the middle of concurrent trades and restarted: it
//! serves nothing until the leader (the test, standing in) has replayed what its log lost;
//! then every recorded trade is there, retried requests apply once (at the number they had),
//! quantities and volumes add up, and a deliberately torn last log record is dropped.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;
use support::elect_stand_in;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::book::TradeRecord;
use clients::{CatalogClient, TradeOutcome};
use common::rpc::ClientConfig;
use common::wire::{
    CatalogRequest, CatalogResponse, LogPosition, OrderEntry, RequestId, StockName, StockQuote,
    TradeKind, TradeReceipt, TradeRequest,
};

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

/// What the test keeps as the order leader would: the catalog's trades it learnt, by number.
/// Only the run from 0 without a gap counts as recorded (a leader appends in order, and
/// answers nothing it could not append).
#[derive(Default)]
struct StandInLog {
    entries: Vec<OrderEntry>,
}

impl StandInLog {
    fn from_answers(answers: &BTreeMap<u64, OrderEntry>) -> Self {
        let entries = answers
            .values()
            .enumerate()
            .take_while(|(at, e)| e.number == *at as u64)
            .map(|(_, e)| e.clone())
            .collect();
        StandInLog { entries }
    }

    fn known(&self) -> Vec<LogPosition> {
        self.entries
            .last()
            .map(OrderEntry::position)
            .into_iter()
            .collect()
    }

    /// Makes the catalog's history and this log equal, as a leader's reconciliation does:
    /// replays what the catalog lost, records what it applied beyond the log.
    async fn reconcile(&mut self, trader: &CatalogClient) -> usize {
        let mut replayed = 0;
        loop {
            let seen = trader
                .reconcile(1, &self.known(), 1_000, true)
                .await
                .unwrap()
                .expect("epoch 1 leads");
            let ours = self.entries.len() as u64;
            if seen.next < ours {
                let from = seen.next as usize;
                let entries = self.entries[from..(from + 1_000).min(self.entries.len())].to_vec();
                replayed += entries.len();
                let request = CatalogRequest::Replay { epoch: 1, entries };
                let answer = trader
                    .call_within(&request, Duration::from_secs(5))
                    .await
                    .unwrap();
                assert!(
                    matches!(answer, CatalogResponse::Replayed { .. }),
                    "{answer:?}"
                );
            } else if seen.next > ours {
                assert!(seen.complete);
                for entry in seen.trades.into_iter().filter(|t| t.number >= ours) {
                    assert_eq!(entry.number, self.entries.len() as u64);
                    self.entries.push(entry);
                }
            } else if self.known().last().copied() == seen.meet || ours == 0 {
                // Equal, and the catalog was told so.
                return replayed;
            }
        }
    }

    fn expected(&self) -> HashMap<&str, (u64, u64)> {
        let mut expected: HashMap<&str, (u64, u64)> =
            STOCKS.iter().map(|s| (*s, (INITIAL, 0))).collect();
        for entry in &self.entries {
            let (quantity, volume) = expected.get_mut(entry.name.as_str()).unwrap();
            match entry.kind {
                TradeKind::Buy => *quantity -= entry.quantity,
                TradeKind::Sell => *quantity += entry.quantity,
            }
            *volume += entry.quantity;
        }
        expected
    }
}

async fn quotes(trader: &CatalogClient) -> Vec<StockQuote> {
    let mut quotes = Vec::new();
    for stock in STOCKS {
        let name = StockName::new(stock).unwrap();
        quotes.push(trader.lookup(&name).await.unwrap().unwrap());
    }
    quotes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_killed_under_trades_serves_again_only_once_the_log_replayed_what_it_lost() {
    let state = tempfile::tempdir().unwrap();
    let mut catalog = spawn(state.path());
    let trader = client(&catalog.addr);
    elect_stand_in(&trader).await;

    // Eight workers trade until the catalog dies under them; every answer is kept.
    let answers: Arc<Mutex<BTreeMap<u64, OrderEntry>>> = Arc::default();
    let sent: Arc<Mutex<Vec<TradeRequest>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (trader, answers, sent) = (trader.clone(), answers.clone(), sent.clone());
            tokio::spawn(async move {
                for i in 0..5_000 {
                    let request = request(worker, i);
                    sent.lock().unwrap().push(request.clone());
                    match trader.trade(1, &request).await {
                        Ok(TradeOutcome::Traded { number, .. }) => {
                            answers
                                .lock()
                                .unwrap()
                                .insert(number, entry(number, &request));
                        }
                        Ok(other) => panic!("{other:?}"),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();

    // Kill once a good number of trades were answered and the workers are still going.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while answers.lock().unwrap().len() < 1_500 {
        assert!(std::time::Instant::now() < deadline, "trades too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    catalog.child.kill().unwrap();
    catalog.child.wait().unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    let mut log = StandInLog::from_answers(&answers.lock().unwrap());
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    assert!(
        sent.len() > log.entries.len(),
        "the kill landed after all trades"
    );

    let mut catalog = spawn(state.path());
    let trader = client(&catalog.addr);
    // It may have lost the tail of its log: it shows and trades nothing until the leader
    // has reconciled with it.
    let early = trader.lookup(&StockName::new("GameStart").unwrap()).await;
    assert!(
        matches!(&early, Err(e) if e.to_string().contains("replay")),
        "{early:?}"
    );
    assert!(trader.trade(1, &request(99, 0)).await.is_err());
    let replayed = log.reconcile(&trader).await;
    eprintln!(
        "recorded {} trades; the catalog had lost {replayed} of them",
        log.entries.len()
    );
    // Every recorded trade is in the catalog's stocks, once.
    let expected = log.expected();
    for (stock, quote) in STOCKS.iter().zip(quotes(&trader).await) {
        assert_eq!((quote.quantity, quote.volume), expected[stock], "{stock}");
    }
    // Trades whose answer was lost are retried with their id: each lands exactly once, at
    // the number it already had if it had one.
    for request in &sent {
        match trader.trade(1, request).await.unwrap() {
            TradeOutcome::Traded { number, .. } => match log.entries.get(number as usize) {
                Some(held) => assert_eq!(held.request_id, request.request_id),
                None => {
                    assert_eq!(number, log.entries.len() as u64);
                    log.entries.push(entry(number, request));
                }
            },
            other => panic!("{other:?}"),
        }
    }
    let expected = log.expected();
    let held = quotes(&trader).await;
    for (stock, quote) in STOCKS.iter().zip(&held) {
        assert_eq!((quote.quantity, quote.volume), expected[stock], "{stock}");
    }

    // Kill again, then tear the log's last record as a crash mid-write would.
    catalog.child.kill().unwrap();
    catalog.child.wait().unwrap();
    let wal = state.path().join("wal.log");
    let image = std::fs::read(&wal).unwrap();
    let (records, intact) = catalog::store::decode_records(&image);
    let torn_record = TradeRecord {
        number: u64::MAX / 2,
        epoch: 1,
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
    // Written where the records end, over the zeros the log keeps ahead of its end.
    let file = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &bytes[..bytes.len() - 3], intact as u64)
        .unwrap();
    drop(file);

    let mut catalog = spawn(state.path());
    let trader = client(&catalog.addr);
    log.reconcile(&trader).await;
    for (stock, (after, before)) in STOCKS.iter().zip(quotes(&trader).await.iter().zip(&held)) {
        assert_eq!(after, before, "{stock} changed across a torn record");
    }
    let after = std::fs::read(&wal).unwrap();
    assert_eq!(catalog::store::decode_records(&after), (records, intact));
    assert!(
        after[intact..].iter().all(|&b| b == 0),
        "the torn record is zeroed"
    );
    catalog.child.kill().unwrap();
    catalog.child.wait().unwrap();
}

fn entry(number: u64, request: &TradeRequest) -> OrderEntry {
    OrderEntry {
        number,
        epoch: 1,
        request_id: request.request_id.clone(),
        name: request.name.clone(),
        kind: request.kind,
        quantity: request.quantity as u64,
    }
}
