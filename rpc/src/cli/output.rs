//! Rendering a JSON-RPC result for a person (the default; `--json` bypasses this).
//!
//! Generic on purpose: the CLI does not know the shape of each method's result, so
//! new fields and methods show up without CLI changes. Rules:
//! * an array of objects is a table, columns in order of first appearance, headers
//!   upper-cased with a `_bytes` or `_us` suffix dropped, numeric columns right-aligned;
//! * an object is `key: value` lines (nested objects indented, nested arrays of
//!   objects as indented tables);
//! * an array of scalars is one per line (`rpc_get_methods`);
//! * `true` and `null` (the result of most mutating methods) print nothing here; what
//!   a command did is said by [`super::report`];
//! * byte counts (keys `size`, `*_size`, `*_bytes`) are shown as `16.0 GiB`; other
//!   floats with two decimals; `null` and empty cells as `-`.
//!
//! No cell ever shows raw JSON: a nested value gets a one-line form. Latency maps
//! (`{p50, p99, p999, max}` under a `*_us` key) read `p50 120us p99 1.3ms ...`; zone
//! lists are ranges (`0-31, 64`); other objects are `key: value` pairs, or `label:
//! value` for a two-field object led by a string (`pool0: 0-63`); lists are joined.
//! In a table, a `failed_zones` list is folded into the `zones` count (`64 (2
//! failed: 3, 7)`) and each failure's reason printed under the table.

use crate::size::format_size;
use serde_json::{Map, Number, Value};

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

/// Whether a key holds a list of zone indexes (shown as ranges).
fn is_zone_list_key(key: &str) -> bool {
    key == "zones" || key.ends_with("_zones")
}

/// One value on one line, never as JSON.
fn cell(key: Option<&str>, value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number(key, n),
        Value::Array(items) if items.is_empty() => "-".to_string(),
        Value::Array(items) => {
            let indexes: Option<Vec<u64>> = items.iter().map(Value::as_u64).collect();
            match indexes {
                Some(ix) if key.is_some_and(is_zone_list_key) => ranges(&ix),
                _ => {
                    let nested = items.iter().any(|v| v.is_object() || v.is_array());
                    let parts: Vec<String> = items.iter().map(|v| cell(key, v)).collect();
                    parts.join(if nested { "; " } else { ", " })
                }
            }
        }
        Value::Object(map) if map.is_empty() => "-".to_string(),
        Value::Object(map) if is_latency(map) => latency(key, map),
        Value::Object(map) => compact_object(map),
    }
}

fn number(key: Option<&str>, n: &Number) -> String {
    match (n.as_u64(), n.as_f64()) {
        (Some(bytes), _) if key.is_some_and(is_size_key) => format_size(bytes),
        (None, Some(f)) if n.is_f64() => format!("{f:.2}"),
        _ => n.to_string(),
    }
}

/// `0, 1, 2, 3, 8` as `0-3, 8`.
fn ranges(ix: &[u64]) -> String {
    let mut sorted = ix.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", sorted[i], sorted[j])
        } else {
            sorted[i].to_string()
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// Quantile keys of a latency map, in the order printed, with their labels.
const QUANTILES: [(&str, &str); 7] = [
    ("min", "min"),
    ("p50", "p50"),
    ("p90", "p90"),
    ("p99", "p99"),
    ("p999", "p99.9"),
    ("p9999", "p99.99"),
    ("max", "max"),
];

fn is_latency(map: &Map<String, Value>) -> bool {
    map.iter()
        .all(|(k, v)| QUANTILES.iter().any(|(q, _)| q == k) && (v.is_number() || v.is_null()))
}

/// `p50 120us p99 1.3ms p99.9 2.0ms max 5.1ms`, or `-` when nothing was recorded.
fn latency(key: Option<&str>, map: &Map<String, Value>) -> String {
    let micros = key.is_some_and(|k| k.ends_with("_us"));
    let parts: Vec<String> = QUANTILES
        .iter()
        .filter_map(|(q, label)| {
            let v = map.get(*q)?;
            let text = match v.as_u64() {
                Some(us) if micros => duration_us(us),
                _ if v.is_null() => return None,
                _ => cell(None, v),
            };
            Some(format!("{label} {text}"))
        })
        .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

/// Microseconds with a unit that keeps two or three significant digits.
fn duration_us(us: u64) -> String {
    let scaled = |v: f64, unit: &str| {
        if v < 10.0 {
            format!("{v:.1}{unit}")
        } else {
            format!("{v:.0}{unit}")
        }
    };
    match us {
        0..1_000 => format!("{us}us"),
        1_000..1_000_000 => scaled(us as f64 / 1e3, "ms"),
        _ => scaled(us as f64 / 1e6, "s"),
    }
}

/// An object in one cell: `label: value` for `{pool: "p0", zones: [..]}`-like pairs,
/// else `key: value, key: value`.
fn compact_object(map: &Map<String, Value>) -> String {
    let mut fields = map.iter();
    if let (2, Some((_, Value::String(label)))) = (map.len(), fields.next()) {
        if let Some((k, v)) = fields.next() {
            return format!("{label}: {}", cell(Some(k), v));
        }
    }
    map.iter()
        .map(|(k, v)| format!("{k}: {}", cell(Some(k), v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Folds `failed_zones` into `zones` (`64 (2 failed: 3, 7)`) so that the table has no
/// list of objects in it; returns the rows and one note per failure, with its reason.
fn fold_failed_zones(rows: &[Value]) -> (Vec<Map<String, Value>>, Vec<String>) {
    let mut notes = Vec::new();
    let rows = rows
        .iter()
        .map(|row| {
            let mut row = row.as_object().cloned().unwrap_or_default();
            let total = row.get("zones").and_then(Value::as_u64);
            let failed = match (total, row.get("failed_zones")) {
                (Some(_), Some(Value::Array(f))) => f.clone(),
                _ => return row,
            };
            row.remove("failed_zones");
            let label = ["name", "pool"]
                .iter()
                .find_map(|k| row.get(*k).and_then(Value::as_str))
                .unwrap_or("?")
                .to_string();
            let ids: Vec<String> = failed
                .iter()
                .map(|f| cell(None, f.get("zone").unwrap_or(f)))
                .collect();
            for f in &failed {
                let zone = cell(None, f.get("zone").unwrap_or(&Value::Null));
                let reason = cell(Some("reason"), f.get("reason").unwrap_or(&Value::Null));
                notes.push(format!("{label}: zone {zone} failed: {reason}"));
            }
            if let (Some(total), false) = (total, failed.is_empty()) {
                let text = format!("{total} ({} failed: {})", failed.len(), ids.join(", "));
                row.insert("zones".to_string(), Value::String(text));
            }
            row
        })
        .collect();
    (rows, notes)
}

fn table(rows: &[Value], indent: usize) -> String {
    let (rows, notes) = fold_failed_zones(rows);
    let mut columns: Vec<&str> = Vec::new();
    for row in &rows {
        for key in row.keys() {
            if !columns.contains(&key.as_str()) {
                columns.push(key);
            }
        }
    }
    let header: Vec<String> = columns
        .iter()
        .map(|c| {
            let c = c.strip_suffix("_bytes").unwrap_or(c);
            c.strip_suffix("_us").unwrap_or(c).to_uppercase()
        })
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
    for note in notes {
        out.push_str(&format!("{}{note}\n", " ".repeat(indent)));
    }
    out
}

fn object(map: &Map<String, Value>, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let key_width = map.keys().map(|k| width(k) + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in map {
        match value {
            Value::Object(inner) if !inner.is_empty() && !is_latency(inner) => {
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
        assert_eq!(render(&json!([{"a": 1}, 2])), "a: 1\n2\n");
    }

    #[test]
    fn size_keys_only() {
        assert_eq!(
            render(&json!({"size": 4096, "count": 4096, "chunk_size": 65536})),
            "size:       4.0 KiB\ncount:      4096\nchunk_size: 64.0 KiB\n"
        );
    }

    /// No table cell or value line holds JSON punctuation.
    fn assert_no_json(text: &str) {
        assert!(
            !text.contains('{') && !text.contains('[') && !text.contains('"'),
            "raw JSON in:\n{text}"
        );
    }

    #[test]
    fn reactor_zones_are_ranges_per_pool() {
        let reactors = json!([
            {"index": 0, "core": 0, "zones": [{"pool": "pool0", "zones": [0, 1, 2, 3, 8]}, {"pool": "p1", "zones": []}]},
            {"index": 1, "core": 1, "zones": [{"pool": "pool0", "zones": [4, 5, 6, 7]}, {"pool": "p1", "zones": [0]}]},
        ]);
        let expected = "\
INDEX  CORE  ZONES
    0     0  pool0: 0-3, 8; p1: -
    1     1  pool0: 4-7; p1: 0
";
        assert_eq!(render(&reactors), expected);
    }

    #[test]
    fn latency_maps_read_as_quantiles_with_units() {
        let iostat = json!([
            {"name": "v1", "read_ops": 10, "read_lat_us": {"p50": 120, "p99": 1300, "p999": 25_000, "max": 2_500_000}},
            {"name": "v2", "read_ops": 0, "read_lat_us": {"p50": null, "p99": null, "p999": null, "max": null}},
        ]);
        let expected = "\
NAME  READ_OPS  READ_LAT
v1          10  p50 120us p99 1.3ms p99.9 25ms max 2.5s
v2           0  -
";
        assert_eq!(render(&iostat), expected);
        // In an object, a latency map stays on one line too.
        assert_eq!(
            render(&json!({"write_lat_us": {"p50": 7, "max": 999}})),
            "write_lat_us: p50 7us max 999us\n"
        );
    }

    #[test]
    fn failed_zones_fold_into_the_zone_count_with_reasons_below() {
        let pools = json!([
            {"name": "p0", "zones": 12, "failed_zones": [{"zone": 3, "reason": "log unreadable"}, {"zone": 7, "reason": "EIO"}]},
            {"name": "p1", "zones": 4, "failed_zones": []},
        ]);
        let expected = "\
NAME  ZONES
p0    12 (2 failed: 3, 7)
p1    4
p0: zone 3 failed: log unreadable
p0: zone 7 failed: EIO
";
        assert_eq!(render(&pools), expected);
    }

    #[test]
    fn unknown_nesting_is_still_readable() {
        let rows = json!([
            {"name": "x", "deep": {"a": {"b": [1, 2]}, "c": [[1], {"d": null}]}, "list": [{"k": 1, "v": "s"}], "empty": {}},
        ]);
        let text = render(&rows);
        assert_no_json(&text);
        assert!(text.contains("a: b: 1, 2, c: 1; d: -"), "{text}");
        assert!(text.contains("k: 1, v: s"), "{text}");
    }

    #[test]
    fn parent_names_and_none_in_the_volume_table() {
        let vols = json!([
            {"name": "vol0", "size": 1073741824u64, "read_only": false, "parent": null},
            {"name": "snap", "size": 1073741824u64, "read_only": true, "parent": "vol0"},
        ]);
        assert_eq!(
            render(&vols),
            "NAME     SIZE  READ_ONLY  PARENT\nvol0  1.0 GiB  false      -\nsnap  1.0 GiB  true       vol0\n"
        );
    }

    #[test]
    fn sizes_in_new_columns_are_human() {
        let vols = json!([{"name": "v", "size": 1073741824u64, "allocated_bytes": 3145728}]);
        assert_eq!(
            render(&vols),
            "NAME     SIZE  ALLOCATED\nv     1.0 GiB    3.0 MiB\n"
        );
    }
}
