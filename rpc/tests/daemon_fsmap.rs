//! `pool_get_fsmap` over the real daemon: volumes written with qemu-io,
//! then the map read through the CLI (`--json`, every page fetched with
//! `after`) and page by page over JSON-RPC: every block of the pool once,
//! the volumes' records where they wrote, compressed where lz4 packed;
//! bad params refused; the CLI's table, text map and PNG.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::Command;

const M: u64 = 1 << 20;
const K: u64 = 1024;

fn qemu_io(d: &Sluiced, export: &str, cmd: &str) {
    run("qemu-io", &["-f", "raw", "-c", cmd, &d.uri(export)]);
}

fn sluice(d: &Sluiced, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("-s")
        .arg(d.rpc_sock())
        .args(args)
        .output()
        .expect("run sluice");
    assert!(
        o.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn records(v: &Value) -> Vec<Value> {
    v["records"]
        .as_array()
        .unwrap_or_else(|| panic!("no records in {v}"))
        .clone()
}

fn num(r: &Value, k: &str) -> u64 {
    r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"))
}

/// Records in order cover `[0, size)` exactly once (nothing is shared).
fn assert_tiles(recs: &[Value], size: u64) {
    let mut at = 0;
    for r in recs {
        assert_eq!(num(r, "physical"), at, "gap or overlap at {r}");
        assert!(num(r, "length") > 0);
        at += num(r, "length");
        let flags = r["flags"].as_array().unwrap();
        assert!(!flags.contains(&json!("shared")), "{r}");
        assert_eq!(
            flags.contains(&json!("special")),
            r["owner"].get("special").is_some(),
            "{r}"
        );
    }
    assert_eq!(at, size, "records end before the pool does");
}

/// The records of one volume: (offset, length, compressed).
fn of_volume(recs: &[Value], name: &str) -> Vec<(u64, u64, bool)> {
    recs.iter()
        .filter(|r| r["owner"]["volume"] == json!(name))
        .map(|r| {
            let c = r["flags"]
                .as_array()
                .unwrap()
                .contains(&json!("compressed"));
            (num(&r["owner"], "offset"), num(r, "length"), c)
        })
        .collect()
}

#[test]
fn fsmap_covers_the_pool_and_names_the_writers() {
    let d = Sluiced::start("fsmap", &[]);
    d.ok(
        "volume_create",
        json!({"name": "raw", "size": "64M", "chunk_size": "64K", "compression": "none"}),
    );
    d.ok("nbd_export_add", json!({"volume": "raw"}));
    qemu_io(&d, "raw", "write -P 0xab 0 4M");
    qemu_io(&d, "raw", "discard 1M 512k");
    qemu_io(&d, "vol0", "write -P 0xcd 8M 2M");
    let size = num(&d.ok("pool_get_pools", json!({}))[0], "size_bytes");

    // The CLI fetches every page (7 records a call) and prints them all.
    let cli: Value =
        serde_json::from_str(&sluice(&d, &["pool_get_fsmap", "--json", "--count", "7"]))
            .expect("CLI --json output is JSON");
    let cli = records(&cli);
    assert_tiles(&cli, size);
    // One big call and a walk with another page size give the same records.
    let big = records(&d.ok("pool_get_fsmap", json!({"count": 10000})));
    assert_eq!(cli, big, "CLI pages vs one call");
    let mut walked: Vec<Value> = Vec::new();
    loop {
        let mut p = json!({"pool": "pool0", "count": 13});
        if let Some(last) = walked.last() {
            p["after"] = last.clone();
        }
        let page = records(&d.ok("pool_get_fsmap", p));
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 13);
        walked.extend(page);
    }
    assert_eq!(walked, big, "RPC pages vs one call");

    // Owners: raw has its 4 MiB minus the discarded 512 KiB, chunk by chunk
    // and stored raw; vol0 its 2 MiB at 8M, compressed.
    let raw = of_volume(&big, "raw");
    let want: Vec<u64> = (0..64u64)
        .filter(|c| !(16..24).contains(c))
        .map(|c| c * 64 * K)
        .collect();
    let mut got: Vec<u64> = raw.iter().map(|r| r.0).collect();
    got.sort();
    assert_eq!(got, want);
    assert!(raw.iter().all(|r| r.1 == 64 * K && !r.2), "{raw:?}");
    let v0 = of_volume(&big, "vol0");
    assert_eq!(v0.len(), 32, "{v0:?}");
    assert!(v0
        .iter()
        .all(|r| r.2 && r.1 < 64 * K && (8 * M..10 * M).contains(&r.0)));
    let specials: std::collections::BTreeSet<String> = big
        .iter()
        .filter_map(|r| r["owner"]["special"].as_str().map(str::to_string))
        .collect();
    for s in [
        "pool-header",
        "catalog",
        "superblock",
        "bitmap",
        "log",
        "metadata",
        "free",
    ] {
        assert!(specials.contains(s), "no {s} record");
    }

    // A window: widened to whole blocks, records clipped to it.
    let w = records(&d.ok("pool_get_fsmap", json!({"start": 4097, "end": "1M"})));
    assert_eq!(num(&w[0], "physical"), 4096);
    let last = w.last().unwrap();
    assert_eq!(num(last, "physical") + num(last, "length"), M);

    // Bad params and an unknown pool are refused with the right codes.
    for p in [
        json!({"start": "8G", "end": "4G"}),
        json!({"end": size + 4096}),
        json!({"count": 0}),
        json!({"count": 10001}),
        json!({"after": {"physical": 1, "length": 4096, "owner": {"special": "free"}}}),
        json!({"after": {"physical": 0, "length": 4096, "owner": {"special": "nothing"}}}),
        json!({"after": {"physical": 0, "length": 4096, "owner": {"volume": "gone", "offset": 0}}}),
        json!({"bogus": 1}),
    ] {
        assert_eq!(d.err_code("pool_get_fsmap", p.clone()), -32602, "{p}");
    }
    assert_eq!(
        d.err_code("pool_get_fsmap", json!({"pool": "nope"})),
        -32001
    );

    // The table: numbered extents in 512-byte units, owners, the legend.
    let t = sluice(&d, &["pool_get_fsmap", "--end", "1M"]);
    assert!(
        t.contains("EXT:") && t.contains("BLOCK-RANGE") && t.contains("FLAG Values:"),
        "{t}"
    );
    assert!(t.contains("0: [0..7]:") && t.contains("pool-header"), "{t}");
    let full = sluice(&d, &["pool_get_fsmap"]);
    assert!(
        full.contains(" raw ") && full.contains(" vol0 "),
        "no volume rows"
    );
    assert_eq!(
        full.lines()
            .filter(|l| l
                .split_whitespace()
                .next()
                .and_then(|w| w.strip_suffix(':'))
                .is_some_and(|n| n.parse::<u64>().is_ok()))
            .count(),
        big.len(),
        "one table row per record: {full}"
    );

    // The text map: a line per zone (and the header area), and the legend.
    let m = sluice(&d, &["pool_get_fsmap", "--map"]);
    let zones = num(&d.ok("pool_get_pools", json!({}))[0], "zones");
    assert_eq!(
        m.lines().filter(|l| l.contains('|')).count() as u64,
        zones + 1,
        "{m}"
    );
    assert!(m.contains("   z0 |") && m.contains("legend:"), "{m}");

    // The PNG: its signature, and it decodes to the size the CLI states.
    let png_path = d.rpc_sock().with_file_name("map.png");
    let png_arg = png_path.to_str().unwrap();
    let said = sluice(&d, &["pool_get_fsmap", "--picture", png_arg]);
    let bytes = std::fs::read(&png_path).expect("picture written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = dec.read_info().expect("PNG decodes");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG frame decodes");
    assert!(said.trim_end().ends_with("pixels"), "{said}");
    assert!(
        said.contains(&format!("{}x{}", info.width, info.height)),
        "CLI said {said:?}, PNG is {}x{}",
        info.width,
        info.height
    );
    assert!(info.height as u64 > zones * 10, "a band per zone");
}
