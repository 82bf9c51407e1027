//! Rendering a JSON-RPC result for a person (the default; `--json` bypasses this).
//!
//! Generic on purpose: the CLI does not know the shape of each method's result, so
//! new fields and methods show up without CLI changes. Rules:
//! * an array of objects is a table, columns in order of first appearance, headers
//!   upper-cased with a `_bytes` suffix dropped, numeric columns right-aligned;
//! * an object is `key: value` lines (nested objects indented, nested arrays of
//!   objects as indented tables);
//! * an array of scalars is one per line (`rpc_get_methods`);
//! * `true` and `null` (the result of most mutating methods) print nothing;
//! * byte counts (keys `size`, `*_size`, `*_bytes`) are shown as `16.0 GiB`; other
//!   floats with two decimals; `null` cells as `-`.

use crate::size::format_size;
use serde_json::{Map, Value};

/// The text to print for `result` (empty, or ending in a newline).
pub fn render(result: &Value) -> String {
    match result {
        Value::Null | Value::Bool(true) => String::new(),
        Value::Array(items) if items.is_empty() => "(none)\n".to_string(),
        Value::Array(items) if items.iter().all(Value::is_object) => table(items, 0),
        Value::Array(items) => items.iter().map(|v| cell(None, v) + "\n").collect(),
        Value::Object(map) => object(map, 0),
        other => cell(None, other) + "\n",
    }
}

/// Whether a key holds a byte count.
fn is_size_key(key: &str) -> bool {
    key == "size" || key.ends_with("_size") || key.ends_with("_bytes")
}

/// One value on one line.
fn cell(key: Option<&str>, value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(bytes), _) if key.is_some_and(is_size_key) => format_size(bytes),
            (None, Some(f)) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => items
            .iter()
            .map(|v| cell(key, v))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn table(rows: &[Value], indent: usize) -> String {
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        for key in row.as_object().into_iter().flat_map(Map::keys) {
            if !columns.contains(&key.as_str()) {
                columns.push(key);
            }
        }
    }
    let header: Vec<String> = columns
        .iter()
        .map(|c| c.strip_suffix("_bytes").unwrap_or(c).to_uppercase())
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|&c| row.get(c).map_or_else(String::new, |v| cell(Some(c), v)))
                .collect()
        })
        .collect();
    let numeric: Vec<bool> = columns
        .iter()
        .map(|&c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .all(|v| v.is_number() || v.is_null())
        })
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| width(&r[i]))
                .chain([width(&header[i])])
                .max()
                .unwrap_or(0)
        })
        .collect();

    let mut out = String::new();
    for line in std::iter::once(&header).chain(&cells) {
        let mut text = " ".repeat(indent);
        for (i, value) in line.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - width(value));
            if numeric[i] {
                text.push_str(&pad);
                text.push_str(value);
            } else {
                text.push_str(value);
                text.push_str(&pad);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn object(map: &Map<String, Value>, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let key_width = map.keys().map(|k| width(k) + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in map {
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                out.push_str(&format!("{pad}{key}:\n"));
                out.push_str(&object(inner, indent + 2));
            }
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
                out.push_str(&format!("{pad}{key}:\n"));
                out.push_str(&table(items, indent + 2));
            }
            _ => {
                let label = format!("{key}:");
                let line = format!("{pad}{label:<key_width$} {}", cell(Some(key), value));
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn silent_for_true_and_null() {
        assert_eq!(render(&json!(true)), "");
        assert_eq!(render(&json!(null)), "");
        assert_eq!(render(&json!(false)), "false\n");
        assert_eq!(render(&json!("done")), "done\n");
        assert_eq!(render(&json!(42)), "42\n");
    }

    #[test]
    fn arrays_of_objects_are_aligned_tables() {
        let pools = json!([
            {"name": "p0", "size_bytes": 17179869184u64, "used_bytes": 1536, "compression_ratio": 2.134, "zones": 64},
            {"name": "longer-name", "size_bytes": 1024, "used_bytes": 0, "compression_ratio": 1.0, "zones": 8, "note": null},
        ]);
        let expected = "\
NAME             SIZE     USED  COMPRESSION_RATIO  ZONES  NOTE
p0           16.0 GiB  1.5 KiB               2.13     64
longer-name   1.0 KiB      0 B               1.00      8     -
";
        assert_eq!(render(&pools), expected);
    }

    #[test]
    fn objects_are_key_value_lines() {
        let job = json!({"id": 3, "state": "running", "progress": {"done_bytes": 1048576, "total_bytes": 4194304},
                         "zones": [{"zone": 0, "ok": true}, {"zone": 1, "ok": false}], "trees": ["lmap", "rmap"]});
        let expected = "\
id:       3
state:    running
progress:
  done_bytes:  1.0 MiB
  total_bytes: 4.0 MiB
zones:
  ZONE  OK
     0  true
     1  false
trees:    lmap, rmap
";
        assert_eq!(render(&job), expected);
    }

    #[test]
    fn scalar_arrays_one_per_line_and_empty_arrays_say_so() {
        assert_eq!(render(&json!(["a", "b"])), "a\nb\n");
        assert_eq!(render(&json!([])), "(none)\n");
        assert_eq!(render(&json!([{"a": 1}, 2])), "{\"a\":1}\n2\n");
    }

    #[test]
    fn size_keys_only() {
        assert_eq!(
            render(&json!({"size": 4096, "count": 4096, "chunk_size": 65536})),
            "size:       4.0 KiB\ncount:      4096\nchunk_size: 64.0 KiB\n"
        );
    }
}
