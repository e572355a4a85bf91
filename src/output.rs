//! Tables for people, JSON for scripts.

use serde::Serialize;
use tabled::settings::Style;
use tabled::{Table, Tabled};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Print rows as a table, or `json` (already shaped for scripts) as JSON.
pub fn print<R: Tabled, J: Serialize>(format: Format, rows: &[R], json: &J) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(json)?),
        Format::Table => {
            let mut t = Table::new(rows);
            t.with(Style::sharp());
            println!("{t}");
        }
    }
    Ok(())
}

/// An optional value in a table cell.
pub fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}
