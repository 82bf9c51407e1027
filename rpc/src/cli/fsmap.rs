//! `sluice pool_get_fsmap`: fetch every page (passing the last record back
//! as `after`), then print the records as `xfs_io -c 'fsmap -v'` does, or
//! the raw records (`--json`), or the occupancy ([`super::fsmap_picture`]).

use crate::fsmap_json::parse_record;
use serde_json::{json, Value};
use sluice_engine::fsmap::{FsmapOwner, FsmapRecord};
use std::fmt::Write;

/// Every record of the range, as one `{"records": [...]}` answer: one call
/// per page, each continuing after the last record of the one before,
/// until a page comes back empty. A page without records is returned as it
/// came, for the printer to refuse. `call` sends one `pool_get_fsmap`.
pub fn fetch_all<E>(
    params: &Value,
    mut call: impl FnMut(Value) -> Result<Value, E>,
) -> Result<Value, E> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let mut p = match params {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        if let Some(last) = all.last() {
            p.insert("after".into(), last.clone());
        }
        let page = call(Value::Object(p))?;
        let Some(recs) = page.get("records").and_then(Value::as_array) else {
            return Ok(page);
        };
        if recs.is_empty() {
            return Ok(json!({ "records": all }));
        }
        all.extend(recs.iter().cloned());
    }
}

/// The records, decoded (the error names the record and the field).
pub fn decode(all: &[Value]) -> Result<Vec<FsmapRecord>, String> {
    all.iter()
        .enumerate()
        .map(|(i, v)| parse_record(v).map_err(|e| format!("record {i}: {e}")))
        .collect()
}

const FLAG_SHARED: u32 = 0o100;
const FLAG_COMPRESSED: u32 = 0o010;
const FLAG_SPECIAL: u32 = 0o001;

/// The `xfs_io -c 'fsmap -v'` table: numbered extents, `[first..last]` in
/// 512-byte units, owner, offset range in the owner, total, flags, and the
/// flags legend.
pub fn table(recs: &[FsmapRecord]) -> String {
    let sec = |b: u64| b / 512;
    let rows: Vec<[String; 6]> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let range = format!("[{}..{}]:", sec(r.physical), sec(r.physical + r.length) - 1);
            let (owner, offset) = match &r.owner {
                FsmapOwner::Special(s) => (s.name().to_string(), String::new()),
                // Compressed bytes have no per-sector offset: the chunk's start.
                FsmapOwner::Volume { name, offset } if r.compressed => {
                    (name.clone(), format!("[{}..]", sec(*offset)))
                }
                FsmapOwner::Volume { name, offset } => (
                    name.clone(),
                    format!("[{}..{}]", sec(*offset), sec(offset + r.length) - 1),
                ),
            };
            let mut f = 0;
            for (on, bit) in [
                (r.shared, FLAG_SHARED),
                (r.compressed, FLAG_COMPRESSED),
                (matches!(r.owner, FsmapOwner::Special(_)), FLAG_SPECIAL),
            ] {
                if on {
                    f |= bit;
                }
            }
            [
                format!("{i}:"),
                range,
                owner,
                offset,
                sec(r.length).to_string(),
                format!("{f:03o}"),
            ]
        })
        .collect();
    let head = [
        "EXT:",
        "BLOCK-RANGE",
        "OWNER",
        "FILE-OFFSET",
        "TOTAL",
        "FLAGS",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, c: [&str; 6]| {
        let _ = writeln!(
            out,
            " {:>w0$} {:<w1$} {:<w2$} {:<w3$} {:>w4$} {:>w5$}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4],
            w5 = w[5],
        );
    };
    line(&mut out, head);
    for r in &rows {
        line(
            &mut out,
            [&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]].map(|s| s.as_str()),
        );
    }
    out.push_str(" FLAG Values:\n");
    out.push_str("    100 Shared extent (another owner maps a block of it)\n");
    out.push_str("    010 Compressed extent (offset is its chunk's start)\n");
    out.push_str("    001 Special owner (pool or zone metadata, or free space)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::fsmap::Special;

    #[test]
    fn pages_are_fetched_until_an_empty_one_each_after_the_last() {
        let rec = |p: u64| json!({"physical": p, "length": 4096, "owner": {"special": "free"}, "flags": ["special"]});
        let pages = [
            json!({"records": [rec(0), rec(4096)]}),
            json!({"records": [rec(8192)]}),
            json!({"records": []}),
        ];
        let mut sent = Vec::new();
        let got = fetch_all::<()>(&json!({"pool": "p"}), |p| {
            sent.push(p);
            Ok(pages[sent.len() - 1].clone())
        })
        .unwrap();
        assert_eq!(got["records"].as_array().map(Vec::len), Some(3));
        assert_eq!(sent[0], json!({"pool": "p"}));
        assert_eq!(sent[1]["after"], rec(4096));
        assert_eq!(sent[2]["after"], rec(8192));
    }

    #[test]
    fn table_is_in_sectors_with_flags_and_legend() {
        let recs = [
            FsmapRecord {
                physical: 0,
                length: 4096,
                owner: FsmapOwner::Special(Special::PoolHeader),
                shared: false,
                compressed: false,
            },
            FsmapRecord {
                physical: 1 << 20,
                length: 8192,
                owner: FsmapOwner::Volume {
                    name: "vol1".into(),
                    offset: 65536,
                },
                shared: true,
                compressed: false,
            },
        ];
        let t = table(&recs);
        assert!(t.contains("0: [0..7]:"), "{t}");
        assert!(t.contains("1: [2048..2063]:"), "{t}");
        assert!(t.contains("vol1") && t.contains("[128..143]"), "{t}");
        assert!(t.contains(" 100\n") && t.contains(" 001\n"), "{t}");
        assert!(t.contains("FLAG Values:"));
    }
}
