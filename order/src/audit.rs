//! The audit: reads the replicas' order logs, from their state directories on this disk or
//! over the internal protocol from the replicas themselves (`--peers`, for replicas on other
//! hosts), reports whether they are identical and where they differ, and checks the catalog's
//! quantities and volumes against the log (guarantee 4: quantity = initial - buys + sells,
//! volume = all traded shares, per stock).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use catalog::book::Book;
use clients::{CatalogClient, ReplicaClient};
use common::rpc::ClientConfig;
use common::wire::{OrderEntry, OrderRequest, OrderResponse, StockName, TradeKind, READ_LOG_MAX};

use crate::log::{count_set_aside, log_file, read_entries, side_file};

/// Flags of `order audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// A replica's state directory; give one per replica.
    #[arg(
        long = "state-dir",
        required_unless_present = "peers",
        conflicts_with = "peers"
    )]
    pub state_dirs: Vec<PathBuf>,
    /// Read the logs from the replicas themselves instead: `1=host:port,2=host:port,...`.
    #[arg(long, value_parser = common::config::parse_peers)]
    pub peers: Option<BTreeMap<common::wire::ReplicaId, String>>,
    /// Entries asked for per call with `--peers` (a replica answers at most 1,000).
    #[arg(long, default_value_t = READ_LOG_MAX,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(READ_LOG_MAX)))]
    pub page: u32,
    /// The catalog to check against; without it only the logs are compared.
    #[arg(long)]
    pub catalog: Option<String>,
    /// The catalog's initial stock (for initial quantities).
    #[arg(long, default_value = "data/catalog.csv")]
    pub seed: PathBuf,
    /// Cluster token, if the services require one.
    #[command(flatten)]
    pub token: common::config::TokenArgs,
}

/// What the audit found.
#[derive(Debug, Default)]
pub struct AuditReport {
    /// Human-readable findings, one per line.
    pub lines: Vec<String>,
    /// True when every check passed.
    pub clean: bool,
}

/// Where each log differs from the longest one; empty when all are identical.
pub fn compare_logs(logs: &[(String, Vec<OrderEntry>)]) -> Vec<String> {
    let Some((reference_name, reference)) = logs.iter().max_by_key(|(_, entries)| entries.len())
    else {
        return Vec::new();
    };
    let mut differences = Vec::new();
    for (name, entries) in logs {
        if let Some(at) = entries
            .iter()
            .zip(reference)
            .position(|(ours, theirs)| ours != theirs)
        {
            differences.push(format!(
                "{name} differs from {reference_name} at order #{at}: {:?} vs {:?}",
                entries[at], reference[at]
            ));
        } else if entries.len() != reference.len() {
            differences.push(format!(
                "{name} has {} orders, {reference_name} has {} (missing #{}..)",
                entries.len(),
                reference.len(),
                entries.len()
            ));
        }
    }
    differences
}

/// Expected (quantity, volume) of every stock after `entries`, from the initial quantities;
/// an error when the log buys more than there is or overflows.
pub fn expected_stock(
    initial: &BTreeMap<StockName, u64>,
    entries: &[OrderEntry],
) -> Result<BTreeMap<StockName, (u64, u64)>, String> {
    let mut stock: BTreeMap<StockName, (u64, u64)> = initial
        .iter()
        .map(|(name, &q)| (name.clone(), (q, 0)))
        .collect();
    for entry in entries {
        let (quantity, volume) = stock.get_mut(&entry.name).ok_or_else(|| {
            format!(
                "order #{} trades unknown stock {}",
                entry.number, entry.name
            )
        })?;
        *quantity = match entry.kind {
            TradeKind::Buy => quantity.checked_sub(entry.quantity),
            TradeKind::Sell => quantity.checked_add(entry.quantity),
        }
        .ok_or_else(|| format!("order #{} takes {} out of range", entry.number, entry.name))?;
        *volume = volume.checked_add(entry.quantity).ok_or_else(|| {
            format!(
                "order #{} overflows the volume of {}",
                entry.number, entry.name
            )
        })?;
    }
    Ok(stock)
}

/// One replica's log as the audit found it.
struct FoundLog {
    /// Where it was read (a directory, or a replica and its address).
    name: String,
    entries: Vec<OrderEntry>,
    /// Entries it set aside.
    set_aside: u64,
    /// Where those are, when known.
    side: Option<String>,
}

/// Reads a replica's durable log over the internal protocol, `page` entries at a time; an
/// error if a page does not continue the log where the last one ended.
async fn read_remote_log(
    replica: &ReplicaClient,
    page: u32,
) -> anyhow::Result<(Vec<OrderEntry>, u64)> {
    let timeout = std::time::Duration::from_secs(5);
    let mut entries: Vec<OrderEntry> = Vec::new();
    loop {
        let from = entries.len() as u64;
        let request = OrderRequest::ReadLog { from, max: page };
        match replica.call_within(&request, timeout).await? {
            OrderResponse::Log {
                entries: got,
                last,
                set_aside,
            } => {
                if got.len() > page as usize {
                    anyhow::bail!("asked for {page} entries, got {}", got.len());
                }
                if let Some((i, entry)) = got
                    .iter()
                    .enumerate()
                    .find(|(i, entry)| entry.number != from + *i as u64)
                {
                    anyhow::bail!(
                        "asked for entries from #{from}, got #{} in place {i}",
                        entry.number
                    );
                }
                let end = last.map_or(0, |p| p.number + 1);
                let empty = got.is_empty();
                entries.extend(got);
                if entries.len() as u64 >= end || empty {
                    return Ok((entries, set_aside));
                }
            }
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }
}

/// Every replica's log, with a finding for each one that cannot be read.
async fn find_logs(args: &AuditArgs, report: &mut AuditReport) -> anyhow::Result<Vec<FoundLog>> {
    let mut logs = Vec::new();
    if let Some(peers) = &args.peers {
        let config = ClientConfig {
            cluster_token: args.token.cluster_token.clone(),
            ..ClientConfig::new("audit")
        };
        for (&id, addr) in peers {
            let name = format!("replica {id} at {addr}");
            let replica = ReplicaClient::new(addr.clone(), config.clone());
            match read_remote_log(&replica, args.page).await {
                Ok((entries, set_aside)) => logs.push(FoundLog {
                    name,
                    entries,
                    set_aside,
                    side: None,
                }),
                Err(e) => {
                    report.clean = false;
                    report
                        .lines
                        .push(format!("{name}: cannot read its log: {e}"));
                }
            }
        }
        return Ok(logs);
    }
    for dir in &args.state_dirs {
        if !dir.is_dir() {
            report.clean = false;
            report
                .lines
                .push(format!("{}: no such state directory", dir.display()));
            continue;
        }
        let (entries, _) = read_entries(&log_file(dir))?;
        logs.push(FoundLog {
            name: dir.display().to_string(),
            entries,
            set_aside: count_set_aside(dir)?,
            side: Some(side_file(dir).display().to_string()),
        });
    }
    Ok(logs)
}

/// Runs the audit.
pub async fn audit(args: &AuditArgs) -> anyhow::Result<AuditReport> {
    let mut report = AuditReport {
        clean: true,
        ..AuditReport::default()
    };
    let found = find_logs(args, &mut report).await?;
    for log in &found {
        report
            .lines
            .push(format!("{}: {} orders", log.name, log.entries.len()));
        if log.set_aside > 0 {
            let place = log.side.as_deref().unwrap_or("its diverged.log");
            report.lines.push(format!(
                "{}: {} orders set aside in {place}",
                log.name, log.set_aside
            ));
        }
    }
    let logs: Vec<(String, Vec<OrderEntry>)> = found
        .into_iter()
        .map(|log| (log.name, log.entries))
        .collect();
    let differences = compare_logs(&logs);
    if differences.is_empty() {
        report.lines.push("order logs: identical".into());
    } else {
        report.clean = false;
        report.lines.extend(differences);
    }
    let Some(addr) = &args.catalog else {
        return Ok(report);
    };
    let longest = logs
        .iter()
        .max_by_key(|(_, entries)| entries.len())
        .map(|(_, entries)| entries.as_slice())
        .unwrap_or_default();
    let seed = std::fs::read_to_string(&args.seed)?;
    let initial: BTreeMap<StockName, u64> = Book::parse_seed(&seed)?
        .into_iter()
        .map(|s| (s.name, s.quantity))
        .collect();
    let expected = match expected_stock(&initial, longest) {
        Ok(expected) => expected,
        Err(problem) => {
            report.clean = false;
            report.lines.push(problem);
            return Ok(report);
        }
    };
    let config = ClientConfig {
        cluster_token: args.token.cluster_token.clone(),
        ..ClientConfig::new("audit")
    };
    let catalog = CatalogClient::new(addr.clone(), config);
    let mut mismatches = 0;
    for (name, (quantity, volume)) in &expected {
        let Some(quote) = catalog.lookup(name).await? else {
            report.clean = false;
            report.lines.push(format!("catalog lacks {name}"));
            continue;
        };
        if (quote.quantity, quote.volume) != (*quantity, *volume) {
            mismatches += 1;
            report.clean = false;
            let mut line = String::new();
            let _ = write!(
                line,
                "{name}: catalog has quantity {} volume {}, the log implies {quantity} and {volume}",
                quote.quantity, quote.volume
            );
            report.lines.push(line);
        }
    }
    if mismatches == 0 {
        report.lines.push(format!(
            "catalog: all {} stocks agree with the order log",
            expected.len()
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::RequestId;

    fn entry(number: u64, name: &str, kind: TradeKind, quantity: u64) -> OrderEntry {
        OrderEntry {
            number,
            epoch: 1,
            request_id: RequestId::new(format!("r{number}")).unwrap(),
            name: StockName::new(name).unwrap(),
            kind,
            quantity,
        }
    }

    #[test]
    fn identical_logs_report_nothing_and_differences_are_located() {
        let a = vec![
            entry(0, "A", TradeKind::Buy, 1),
            entry(1, "A", TradeKind::Sell, 2),
        ];
        let mut b = a.clone();
        assert!(compare_logs(&[("a".into(), a.clone()), ("b".into(), b.clone())]).is_empty());
        b[1].quantity = 3;
        let found = compare_logs(&[("a".into(), a.clone()), ("b".into(), b)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("#1"));
        let short = compare_logs(&[("a".into(), a.clone()), ("c".into(), a[..1].to_vec())]);
        assert_eq!(short.len(), 1);
        assert!(short[0].contains("missing #1"), "{short:?}");
    }

    #[test]
    fn conservation_from_the_log() {
        let initial = BTreeMap::from([(StockName::new("A").unwrap(), 10)]);
        let log = [
            entry(0, "A", TradeKind::Buy, 4),
            entry(1, "A", TradeKind::Sell, 1),
            entry(2, "A", TradeKind::Buy, 7),
        ];
        let expected = expected_stock(&initial, &log).unwrap();
        assert_eq!(expected[&StockName::new("A").unwrap()], (0, 12));
        assert!(expected_stock(&initial, &[entry(0, "A", TradeKind::Buy, 11)]).is_err());
        assert!(expected_stock(&initial, &[entry(0, "B", TradeKind::Buy, 1)]).is_err());
    }
}
