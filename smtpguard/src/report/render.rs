//! The report for people (an aligned table) and tools (JSON, CSV with the same field names).

use std::io::Write;

use comfy_table::{CellAlignment, Table, presets::NOTHING};

use super::ReportRow;

/// The columns of the JSON and CSV forms, in order.
pub const FIELDS: [&str; 14] = [
    "host",
    "hosts",
    "subscriber_prefix",
    "mode",
    "attempts",
    "attempts_per_minute_peak",
    "attempts_per_minute_avg",
    "distinct_destinations",
    "dropped",
    "segments",
    "first_seen",
    "last_seen",
    "class",
    "class_reason",
];

fn time(value: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(value).to_string()
}

pub fn table(rows: &[ReportRow], out: &mut dyn Write) -> std::io::Result<()> {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(vec![
        "HOST",
        "SUBSCRIBER RANGE",
        "MODE",
        "ATTEMPTS",
        "PEAK/MIN",
        "AVG/MIN",
        "DESTINATIONS",
        "DROPPED",
        "FIRST SEEN",
        "LAST SEEN",
        "CLASS",
        "WHY",
    ]);
    for row in rows {
        table.add_row(vec![
            row.host.clone(),
            row.subscriber_prefix.clone().unwrap_or_default(),
            row.mode.unwrap_or_default().to_owned(),
            row.attempts.to_string(),
            format!("{:.1}", row.attempts_per_minute_peak),
            format!("{:.1}", row.attempts_per_minute_avg),
            row.distinct_destinations.to_string(),
            row.dropped.to_string(),
            time(row.first_seen),
            time(row.last_seen),
            row.class.name().to_owned(),
            row.class_reason.clone(),
        ]);
    }
    for column in [3, 4, 5, 6, 7] {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    writeln!(out, "{table}")?;
    writeln!(out, "{} rows", rows.len())
}

pub fn json(rows: &[ReportRow], out: &mut dyn Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, rows)?;
    writeln!(out)
}

pub fn csv(rows: &[ReportRow], out: &mut dyn Write) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(FIELDS)?;
    for row in rows {
        writer.write_record([
            row.host.clone(),
            row.hosts.to_string(),
            row.subscriber_prefix.clone().unwrap_or_default(),
            row.mode.unwrap_or_default().to_owned(),
            row.attempts.to_string(),
            row.attempts_per_minute_peak.to_string(),
            row.attempts_per_minute_avg.to_string(),
            row.distinct_destinations.to_string(),
            row.dropped.to_string(),
            row.segments.to_string(),
            time(row.first_seen),
            time(row.last_seen),
            row.class.name().to_owned(),
            row.class_reason.clone(),
        ])?;
    }
    writer.flush()
}
