//! Output for people (aligned tables) and tools (JSON, CSV), shared by the verbs.

use comfy_table::{CellAlignment, Table, presets::NOTHING};
use serde_json::Value;

/// An aligned table without borders, header first.
pub fn print(headers: &[&str], rows: Vec<Vec<String>>) {
    println!("{}", render(headers, rows));
}

/// The text of [`print`]: no header line when every header is empty (a label/value table),
/// columns holding only numbers right-aligned, no trailing spaces (the padding of the last
/// column would leave them, and they stick to copied lines).
pub fn render(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING);
    if headers.iter().any(|header| !header.is_empty()) {
        table.set_header(headers.to_vec());
    }
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let numeric: Vec<bool> = (0..columns)
        .map(|column| {
            let mut cells = rows
                .iter()
                .filter_map(|row| row.get(column))
                .filter(|cell| !cell.is_empty())
                .peekable();
            cells.peek().is_some() && cells.all(|cell| cell.parse::<f64>().is_ok())
        })
        .collect();
    for row in rows {
        table.add_row(row);
    }
    for (column, numeric) in numeric.into_iter().enumerate() {
        if let (true, Some(column)) = (numeric, table.column_mut(column)) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
        .to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One JSON document, as the agent sent it (stable field names).
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// CSV with the given columns, taken from each object's fields of those names.
pub fn print_csv(columns: &[&str], rows: &[Value]) -> anyhow::Result<()> {
    let mut writer = csv::Writer::from_writer(std::io::stdout());
    writer.write_record(columns)?;
    for row in rows {
        writer.write_record(columns.iter().map(|column| text(&row[*column])))?;
    }
    writer.flush()?;
    Ok(())
}

/// A list the agent sent (an array of objects) in `format`: `columns` names each field with
/// its table header.
pub fn print_list(
    format: super::ListFormat,
    body: &Value,
    columns: &[(&str, &str)],
) -> anyhow::Result<()> {
    let rows = body.as_array().map(Vec::as_slice).unwrap_or_default();
    let fields: Vec<&str> = columns.iter().map(|(field, _)| *field).collect();
    match format {
        super::ListFormat::Json => print_json(body)?,
        super::ListFormat::Csv => print_csv(&fields, rows)?,
        super::ListFormat::Table => {
            let headers: Vec<&str> = columns.iter().map(|(_, header)| *header).collect();
            print(
                &headers,
                rows.iter()
                    .map(|row| fields.iter().map(|field| text(&row[*field])).collect())
                    .collect(),
            );
        }
    }
    Ok(())
}

/// `columns` and, when some row says which gateway made it (fleet mode), a GATEWAY column:
/// a gateway on its own lists what it always did.
pub fn with_gateway<'a>(body: &Value, columns: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    with_present(body, columns, ("gateway", "GATEWAY"))
}

/// `columns` and `column` after them when some row has a value for it.
pub fn with_present<'a>(
    body: &Value,
    columns: &[(&'a str, &'a str)],
    column: (&'a str, &'a str),
) -> Vec<(&'a str, &'a str)> {
    let mut columns = columns.to_vec();
    let present = body
        .as_array()
        .is_some_and(|rows| rows.iter().any(|row| !row[column.0].is_null()));
    if present {
        columns.push(column);
    }
    columns
}

/// A JSON value as a cell: strings bare, null empty.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|cell| (*cell).to_owned()).collect()
    }

    #[test]
    fn numbers_are_right_aligned_without_a_blank_first_line_or_trailing_spaces() {
        let text = render(
            &["REASON", "PACKETS"],
            vec![row(&["dropped", "7"]), row(&["not-subscriber", "12345"])],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                " REASON          PACKETS",
                " dropped               7",
                " not-subscriber    12345",
            ]
        );
        let labels = render(
            &["", ""],
            vec![row(&["version", "0.1.0"]), row(&["uptime", "5s"])],
        );
        assert_eq!(
            labels.lines().collect::<Vec<_>>(),
            [" version  0.1.0", " uptime   5s"]
        );
    }
}
