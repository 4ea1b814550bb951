//! The report for people (an aligned table) and tools (JSON, CSV with the same field names).

use std::io::Write;

use comfy_table::{CellAlignment, Table, presets::NOTHING};

use super::{Reoffender, ReportRow};

/// Output forms of the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// A JSON array with stable field names.
    Json,
    /// CSV with the same field names, for spreadsheets.
    Csv,
}

/// The columns of the JSON and CSV forms, in order.
pub const FIELDS: [&str; 15] = [
    "host",
    "hosts",
    "subscriber_prefix",
    "mode",
    "attempts",
    "attempts_per_minute_peak",
    "attempts_per_minute_avg",
    "distinct_destinations",
    "distinct_destinations_estimated",
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
            row.host.to_string(),
            row.subscriber_prefix
                .map(|p| p.to_string())
                .unwrap_or_default(),
            row.judged_mode.to_string(),
            row.attempts.to_string(),
            format!("{:.1}", row.attempts_per_minute_peak),
            format!("{:.1}", row.attempts_per_minute_avg),
            row.distinct().to_string(),
            row.dropped.to_string(),
            time(row.first_seen),
            time(row.last_seen),
            row.class.name().to_owned(),
            row.class_reason.to_string(),
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
    // Each field is formed in one reused buffer: a million rows, fifteen fields each.
    let mut buffer = String::new();
    let mut field = |writer: &mut csv::Writer<_>, value: &dyn std::fmt::Display| {
        buffer.clear();
        let _ = std::fmt::Write::write_fmt(&mut buffer, format_args!("{value}"));
        writer.write_field(&buffer)
    };
    for row in rows {
        field(&mut writer, &row.host)?;
        field(&mut writer, &row.hosts)?;
        match &row.subscriber_prefix {
            Some(prefix) => field(&mut writer, prefix)?,
            None => writer.write_field("")?,
        }
        field(&mut writer, &row.judged_mode)?;
        field(&mut writer, &row.attempts)?;
        field(&mut writer, &row.attempts_per_minute_peak)?;
        field(&mut writer, &row.attempts_per_minute_avg)?;
        field(&mut writer, &row.distinct_destinations)?;
        field(&mut writer, &row.distinct_destinations_estimated)?;
        field(&mut writer, &row.dropped)?;
        field(&mut writer, &row.segments)?;
        field(
            &mut writer,
            &humantime::format_rfc3339_seconds(row.first_seen),
        )?;
        field(
            &mut writer,
            &humantime::format_rfc3339_seconds(row.last_seen),
        )?;
        writer.write_field(row.class.name())?;
        field(&mut writer, &row.class_reason)?;
        writer.write_record(None::<&[u8]>)?;
    }
    writer.flush()
}

/// The reoffenders, in the same three forms.
pub fn reoffenders(
    rows: &[Reoffender],
    format: ReportFormat,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let history = |row: &Reoffender| {
        row.history
            .iter()
            .map(|t| time(*t))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let level = |row: &Reoffender| row.highest_level.map(|l| l.to_string()).unwrap_or_default();
    match format {
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            writeln!(out)
        }
        ReportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            writer.write_record([
                "host",
                "classifications",
                "first_classified",
                "last_classified",
                "history",
                "escalations",
                "highest_level",
            ])?;
            for row in rows {
                writer.write_record([
                    row.host.clone(),
                    row.classifications.to_string(),
                    time(row.first_classified),
                    time(row.last_classified),
                    history(row),
                    row.escalations.to_string(),
                    level(row),
                ])?;
            }
            writer.flush()
        }
        ReportFormat::Table => {
            let mut table = Table::new();
            table.load_preset(NOTHING).set_header(vec![
                "HOST",
                "CLASSIFIED",
                "FIRST",
                "LAST",
                "ESCALATIONS",
                "HIGHEST LEVEL",
                "HISTORY",
            ]);
            for row in rows {
                table.add_row(vec![
                    row.host.clone(),
                    row.classifications.to_string(),
                    time(row.first_classified),
                    time(row.last_classified),
                    row.escalations.to_string(),
                    level(row),
                    history(row),
                ]);
            }
            writeln!(out, "{table}")?;
            writeln!(out, "{} reoffenders", rows.len())
        }
    }
}
