//! Rows by customer (`--group subscriber-id`): the host rows whose addresses one identity held
//! (see [`super::name_subscribers`]) summed into one row, across address changes. Hosts no
//! identity held keep their own rows.

use std::{cmp::Reverse, collections::HashMap};

use super::{ReportOptions, ReportRow, per_minute_active};

/// Merges `rows` (host rows, named) by `subscriber_id`, then keeps those with at least
/// `min_attempts`, most attempts first, at most `top`.
pub fn by_subscriber(rows: Vec<ReportRow>, options: &ReportOptions) -> Vec<ReportRow> {
    let mut merged: Vec<ReportRow> = Vec::with_capacity(rows.len());
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let Some(id) = row.subscriber_id.clone() else {
            merged.push(row);
            continue;
        };
        match by_id.get(&id) {
            Some(&index) => absorb(&mut merged[index], row),
            None => {
                by_id.insert(id, merged.len());
                merged.push(row);
            }
        }
    }
    merged.retain(|row| row.attempts >= options.min_attempts);
    merged.sort_by_key(|row| Reverse(row.attempts));
    merged.truncate(options.top.unwrap_or(usize::MAX));
    merged
}

/// Adds `row` to the customer's row `into`. The row shows the address held last; counts add
/// up; the peak is the busiest member's; the destinations are the most of one member's (at
/// least that many, so marked estimated); the class is the worst member's.
fn absorb(into: &mut ReportRow, row: ReportRow) {
    if row.last_seen > into.last_seen {
        into.host = row.host;
        into.subscriber_prefix = row.subscriber_prefix;
        into.mode = row.mode;
        into.last_seen = row.last_seen;
    }
    into.first_seen = into.first_seen.min(row.first_seen);
    into.hosts += row.hosts;
    into.attempts += row.attempts;
    into.dropped += row.dropped;
    into.segments += row.segments;
    into.judged_mode.merge(row.judged_mode);
    into.attempts_per_minute_peak = into
        .attempts_per_minute_peak
        .max(row.attempts_per_minute_peak);
    into.attempts_per_minute_avg =
        per_minute_active(into.attempts, into.first_seen, into.last_seen);
    into.distinct_destinations = into.distinct_destinations.max(row.distinct_destinations);
    into.distinct_destinations_estimated = true;
    if row.class < into.class {
        into.class = row.class;
        into.class_reason = row.class_reason;
    }
}
