//! The catalog binary killed with SIGKILL in the middle of trades and restarted: it serves no
//! lookup until the leader (the test, standing in) has brought back what its log lost; then
//! every trade of the leader's log is there once, entries sent again change nothing,
//! quantities and volumes add up, and a deliberately torn last log record is dropped.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;
use support::{elect_stand_in, StandIn};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::book::TradeRecord;
use clients::{Applied, CatalogClient};
use common::rpc::ClientConfig;
use common::wire::{
    ApplyItem, ApplyOutcome, ApplyStop, LogEnd, LogPosition, OrderEntry, RequestId, StockName,
    StockQuote, TradeKind, TradeReceipt, TradeRequest,
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

fn request(i: usize) -> TradeRequest {
    TradeRequest {
        request_id: RequestId::new(format!("crash-{i}")).unwrap(),
        name: StockName::new(STOCKS[i % STOCKS.len()]).unwrap(),
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

/// The stand-in leader's log: every entry it numbered (it appends before it sends).
#[derive(Default)]
struct StandInLog {
    entries: Vec<OrderEntry>,
}

impl StandInLog {
    fn known(&self) -> Vec<LogPosition> {
        self.entries
            .last()
            .map(OrderEntry::position)
            .into_iter()
            .collect()
    }

    /// Where the log ends, told to life `incarnation` of the catalog.
    fn end(&self, incarnation: u64) -> Option<LogEnd> {
        Some(LogEnd {
            incarnation,
            last: self.entries.last().map(|e| e.number),
        })
    }

    /// Brings the catalog up to the log, as a leader does: the entries from where its history
    /// ends. Returns how many it had lost.
    async fn bring_back(&self, trader: &CatalogClient) -> usize {
        let seen = trader
            .reconcile(1, &self.known(), 1_000, true, None)
            .await
            .unwrap()
            .expect("epoch 1 leads");
        let lost = self.entries.len() - seen.next as usize;
        for batch in self.entries[seen.next as usize..].chunks(1_000) {
            let items: Vec<ApplyItem> = batch.iter().cloned().map(ApplyItem::Entry).collect();
            let answer = trader
                .apply(1, &items, self.end(seen.incarnation))
                .await
                .unwrap();
            assert!(
                matches!(&answer, Applied::Done { stop: None, outcomes, .. } if outcomes.len() == items.len()),
                "{answer:?}"
            );
        }
        // The next round tells this life where the log ends (as the leader's do).
        trader
            .reconcile(1, &self.known(), 1_000, true, self.end(seen.incarnation))
            .await
            .unwrap()
            .expect("epoch 1 leads");
        lost
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
async fn a_catalog_killed_under_trades_serves_again_only_once_the_leader_brought_back_what_it_lost()
{
    let state = tempfile::tempdir().unwrap();
    let mut catalog = spawn(state.path());
    let trader = client(&catalog.addr);
    elect_stand_in(&trader).await;

    // The stand-in numbers trades (none can be refused: small buys from 100,000) and has the
    // catalog apply them in batches of 50, until the catalog dies under it.
    let log: Arc<Mutex<StandInLog>> = Arc::default();
    let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let feeder = tokio::spawn({
        let (trader, log, applied) = (trader.clone(), log.clone(), applied.clone());
        async move {
            for batch in 0..1_000 {
                let items: Vec<ApplyItem> = {
                    let mut log = log.lock().unwrap();
                    (0..50)
                        .map(|i| {
                            let number = log.entries.len() as u64;
                            let entry = StandIn::entry(number, &request(batch * 50 + i));
                            log.entries.push(entry.clone());
                            ApplyItem::Entry(entry)
                        })
                        .collect()
                };
                match trader.apply(1, &items, None).await {
                    Ok(Applied::Done { stop: None, .. }) => {
                        applied.fetch_add(items.len(), std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(other) => panic!("{other:?}"),
                    Err(_) => return,
                }
            }
        }
    });

    // Kill once a good number of trades were applied and the stand-in is still going.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while applied.load(std::sync::atomic::Ordering::SeqCst) < 1_500 {
        assert!(std::time::Instant::now() < deadline, "trades too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    catalog.child.kill().unwrap();
    catalog.child.wait().unwrap();
    feeder.await.unwrap();
    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(
        log.entries.len() < 50_000,
        "the kill landed after all trades"
    );

    let mut catalog = spawn(state.path());
    let trader = client(&catalog.addr);
    // It may have lost the tail of its log: it shows nothing until the leader has brought
    // it back up to every order it may have acknowledged.
    let early = trader.lookup(&StockName::new("GameStart").unwrap()).await;
    assert!(
        matches!(&early, Err(e) if e.to_string().contains("bring back")),
        "{early:?}"
    );
    let lost = log.bring_back(&trader).await;
    eprintln!(
        "the log holds {} trades; the catalog had lost {lost} of them",
        log.entries.len()
    );
    // Every trade of the log is in the catalog's stocks, once.
    let expected = log.expected();
    for (stock, quote) in STOCKS.iter().zip(quotes(&trader).await) {
        assert_eq!((quote.quantity, quote.volume), expected[stock], "{stock}");
    }
    // Sent again, the whole log changes nothing; a request at another number is not traded.
    for batch in log.entries.chunks(1_000) {
        let items: Vec<ApplyItem> = batch.iter().cloned().map(ApplyItem::Entry).collect();
        let answer = trader.apply(1, &items, None).await.unwrap();
        assert!(
            matches!(&answer, Applied::Done { stop: None, outcomes, .. } if outcomes.iter().all(|o| *o == ApplyOutcome::Applied)),
            "{answer:?}"
        );
    }
    let mut moved = log.entries[0].clone();
    moved.number = log.entries.len() as u64;
    let answer = trader
        .apply(1, &[ApplyItem::Entry(moved)], None)
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            Applied::Done {
                stop: Some(ApplyStop::Traded { number: 0 }),
                ..
            }
        ),
        "{answer:?}"
    );
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
    log.bring_back(&trader).await;
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
