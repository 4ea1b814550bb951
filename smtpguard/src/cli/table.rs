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

/// A JSON value as a cell: strings bare, null empty.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
