//! Output for people (aligned tables) and tools (JSON, CSV), shared by the verbs.

use comfy_table::{Table, presets::NOTHING};
use serde_json::Value;

/// An aligned table without borders, header first.
pub fn print(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(headers.to_vec());
    for row in rows {
        table.add_row(row);
    }
    println!("{table}");
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

/// A JSON value as a cell: strings bare, null empty.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
