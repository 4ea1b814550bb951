//! The report for people (an aligned table) and tools (JSON, CSV with the same field names).

use std::io::Write;

use comfy_table::{Table, presets::NOTHING};

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
pub const FIELDS: [&str; 17] = [
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
    // Fields added later come last, so that the columns before keep their places for tools
    // that count them.
    "subscriber_id",
    "limited",
];

fn time(value: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(value).to_string()
}

/// The report in `format`: what `smtpguard report` prints, written as it is formed.
pub fn report(
    rows: &[ReportRow],
    format: ReportFormat,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match format {
        ReportFormat::Table => table(rows, out),
        ReportFormat::Json => json(rows, out),
        ReportFormat::Csv => csv(rows, out),
    }?;
    out.flush()
}

/// The table's columns: heading, and whether the cells are right-aligned (numbers).
const COLUMNS: [(&str, bool); 13] = [
    ("HOST", false),
    ("SUBSCRIBER RANGE", false),
    ("MODE", false),
    ("ATTEMPTS", true),
    ("PEAK/MIN", true),
    ("AVG/MIN", true),
    ("DESTINATIONS", true),
    ("DROPPED", true),
    ("LIMITED", true),
    ("FIRST SEEN", false),
    ("LAST SEEN", false),
    ("CLASS", false),
    ("WHY", false),
];

/// The fleet report's extra column: how many gateways saw the row's hosts.
const GATEWAYS: (&str, bool) = ("GATEWAYS", true);
/// The extra column of a report that names customers (see `name_subscribers`).
const SUBSCRIBER: (&str, bool) = ("SUBSCRIBER", false);

/// Whether the rows are a fleet report's (they carry the gateways column).
fn fleet(rows: &[ReportRow]) -> bool {
    rows.first().is_some_and(|row| row.gateways.is_some())
}

/// Whether some row names its customer: only then has the table a SUBSCRIBER column, so a
/// gateway without subscriber bindings shows what it always did.
fn named(rows: &[ReportRow]) -> bool {
    rows.iter().any(|row| row.subscriber_id.is_some())
}

/// The index `cell_text` knows the gateways column by; the subscriber column is the one
/// after it whether or not the gateways column is shown.
const GATEWAYS_COLUMN: usize = COLUMNS.len();

/// Writes `row`'s cell of `column` into `cell`.
fn cell_text(cell: &mut String, row: &ReportRow, column: usize) {
    use std::fmt::Write as _;
    let _ = match column {
        0 => write!(cell, "{}", row.host),
        1 => match &row.subscriber_prefix {
            Some(prefix) => write!(cell, "{prefix}"),
            None => Ok(()),
        },
        2 => write!(cell, "{}", row.judged_mode),
        3 => write!(cell, "{}", row.attempts),
        4 => write!(cell, "{:.1}", row.attempts_per_minute_peak),
        5 => write!(cell, "{:.1}", row.attempts_per_minute_avg),
        6 => write!(cell, "{}", row.distinct()),
        7 => write!(cell, "{}", row.dropped),
        8 => write!(cell, "{}", row.limited),
        9 => write!(
            cell,
            "{}",
            humantime::format_rfc3339_seconds(row.first_seen)
        ),
        10 => write!(cell, "{}", humantime::format_rfc3339_seconds(row.last_seen)),
        11 => write!(cell, "{}", row.class.name()),
        12 => write!(cell, "{}", row.class_reason),
        GATEWAYS_COLUMN => write!(cell, "{}", row.gateways.unwrap_or(0)),
        _ => write!(cell, "{}", row.subscriber_id.as_deref().unwrap_or("")),
    };
}

/// An aligned table in two passes over the rows, the column widths first: each cell is formed
/// in one reused buffer, so a table of a million rows is never held as text (the agent streams
/// it to the CLI as it is written).
pub fn table(rows: &[ReportRow], out: &mut dyn Write) -> std::io::Result<()> {
    // (heading, right-aligned, the column `cell_text` writes)
    let columns: Vec<(&str, bool, usize)> = COLUMNS
        .into_iter()
        .chain([GATEWAYS, SUBSCRIBER])
        .zip(0..)
        .filter(|(_, index)| match *index {
            GATEWAYS_COLUMN => fleet(rows),
            index if index > GATEWAYS_COLUMN => named(rows),
            _ => true,
        })
        .map(|((heading, right), index)| (heading, right, index))
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|(heading, ..)| heading.len()).collect();
    let mut cell = String::new();
    for row in rows {
        for (width, (.., column)) in widths.iter_mut().zip(&columns) {
            cell.clear();
            cell_text(&mut cell, row, *column);
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = String::new();
    let mut emit = |out: &mut dyn Write, cells: &mut dyn FnMut(usize, &mut String)| {
        line.clear();
        for (position, (width, (_, right, _))) in widths.iter().zip(&columns).enumerate() {
            cell.clear();
            cells(position, &mut cell);
            let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
            line.push(' ');
            if *right {
                line.push_str(&pad);
                line.push_str(&cell);
            } else {
                line.push_str(&cell);
                line.push_str(&pad);
            }
            line.push(' ');
        }
        writeln!(out, "{}", line.trim_end())
    };
    emit(out, &mut |position, cell| {
        cell.push_str(columns[position].0)
    })?;
    for row in rows {
        emit(out, &mut |position, cell| {
            cell_text(cell, row, columns[position].2)
        })?;
    }
    writeln!(out, "{} rows", rows.len())
}

pub fn json(rows: &[ReportRow], out: &mut dyn Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, rows)?;
    writeln!(out)
}

pub fn csv(rows: &[ReportRow], out: &mut dyn Write) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    let fleet = fleet(rows);
    writer.write_record(FIELDS.iter().copied().chain(fleet.then_some("gateways")))?;
    // Each field is formed in one reused buffer: a million rows, seventeen fields each.
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
        writer.write_field(row.subscriber_id.as_deref().unwrap_or(""))?;
        field(&mut writer, &row.limited)?;
        if let Some(gateways) = row.gateways.filter(|_| fleet) {
            field(&mut writer, &gateways)?;
        }
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
    let subscriber = |row: &Reoffender| row.subscriber_id.clone().unwrap_or_default();
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
                "subscriber_id",
                "hosts",
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
                    subscriber(row),
                    row.hosts.join(" "),
                ])?;
            }
            writer.flush()
        }
        ReportFormat::Table => {
            // A SUBSCRIBER column only when some row names its customer, as in the report.
            let named = rows.iter().any(|row| row.subscriber_id.is_some());
            let mut table = Table::new();
            let mut header = vec!["HOST"];
            header.extend(named.then_some("SUBSCRIBER"));
            header.extend([
                "CLASSIFIED",
                "FIRST",
                "LAST",
                "ESCALATIONS",
                "HIGHEST LEVEL",
                "HISTORY",
            ]);
            table.load_preset(NOTHING).set_header(header);
            for row in rows {
                let mut cells = vec![row.host.clone()];
                cells.extend(named.then(|| subscriber(row)));
                cells.extend([
                    row.classifications.to_string(),
                    time(row.first_classified),
                    time(row.last_classified),
                    row.escalations.to_string(),
                    level(row),
                    history(row),
                ]);
                table.add_row(cells);
            }
            writeln!(out, "{table}")?;
            writeln!(out, "{} reoffenders", rows.len())
        }
    }
}
