//! `report --fleet`: the abuse desk's report over every gateway's history in PostgreSQL,
//! built by the same code as a gateway's own report (`report::build`), so the columns, the
//! classifications and the merge of the distinct-destination sketches are the local ones; plus
//! how many gateways saw each row's hosts. A report with `--top` reads the history of its
//! rows' hosts only (see `Reports::intervals_of`).

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use super::postgres::{PostgresError, Reports};
use crate::{
    config::{Config, PostgresConfig},
    report::{self, ReportOptions, ReportRow},
};

/// The fleet report of the window in `options` (of `gateway` only, when given).
pub async fn build(
    postgres: &PostgresConfig,
    config: &Config,
    options: &ReportOptions,
    gateway: Option<&str>,
) -> Result<Vec<ReportRow>, PostgresError> {
    let mut reports = Reports::open(postgres).await?;
    let (from, to) = (options.from, options.to);
    // With `--top`, the rows' hosts are picked from each host's attempts, and only their
    // history is read and summarised: the same rows as from the whole window's history.
    let records = match options.top {
        Some(top) => {
            reports
                .intervals_of(from, to, gateway, |totals| {
                    report::top_hosts(totals, top, config, options)
                })
                .await?
        }
        None => reports.intervals(from, to, gateway).await?,
    };
    let mut names: Vec<String> = Vec::new();
    let mut seen_on: HashMap<IpAddr, BTreeSet<usize>> = HashMap::new();
    let mut intervals = Vec::with_capacity(records.len());
    // The hosts `--prefix` leaves out are no row's, in the records of the whole window (the
    // records of `--top`'s hosts have none).
    let records = records.into_iter().filter(|(_, interval)| {
        options
            .prefix
            .is_none_or(|prefix| prefix.contains(&interval.host_address()))
    });
    for (name, interval) in records {
        let index = match names.iter().position(|known| *known == name) {
            Some(index) => index,
            None => {
                names.push(name);
                names.len() - 1
            }
        };
        seen_on
            .entry(interval.host_address())
            .or_default()
            .insert(index);
        intervals.push(interval);
    }
    let mut rows = report::build_owned(intervals, config, options);
    for row in &mut rows {
        let gateways = match row.host.address() {
            Some(host) => seen_on.get(&host).map_or(0, BTreeSet::len),
            // A group: the gateways of every host in it.
            None => {
                let prefix = row.host.prefix();
                seen_on
                    .iter()
                    .filter(|(host, _)| prefix.contains(*host))
                    .flat_map(|(_, gateways)| gateways.iter())
                    .collect::<BTreeSet<_>>()
                    .len()
            }
        };
        row.gateways = Some(gateways);
    }
    Ok(rows)
}
