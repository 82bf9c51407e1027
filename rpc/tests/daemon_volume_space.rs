//! `volume_get_volumes`' `mapped_bytes` and `allocated_bytes` over the real
//! daemon: written with qemu-io and nbdsh, the figures grow; discards and
//! zeroes make them drop; a restart and a crash (kill -9 after a FLUSH)
//! give the same figures; the CLI shows them as readable sizes.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::Command;

const M: u64 = 1 << 20;

fn nbdsh(script: &str) {
    // The system python carries the nbd module (as common::run does).
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let o = Command::new("nbdsh")
        .env("PATH", path)
        .args(["-c", script])
        .output()
        .expect("run nbdsh (scripts/setup installs it)");
    assert!(
        o.status.success(),
        "nbdsh failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// (mapped_bytes, allocated_bytes) of a volume.
fn space(d: &Sluiced, name: &str) -> (u64, u64) {
    let v = d.ok("volume_get_volumes", json!({"name": name}));
    let v: &Value = &v[0];
    let get = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {v}"))
    };
    (get("mapped_bytes"), get("allocated_bytes"))
}

fn qemu_io(d: &Sluiced, export: &str, cmd: &str) {
    run("qemu-io", &["-f", "raw", "-c", cmd, &d.uri(export)]);
}

#[test]
fn allocated_bytes_follow_writes_and_discards_and_survive_restarts() {
    let mut d = Sluiced::start("space", &[]);
    // An uncompressed volume: every mapped 64 KiB chunk takes 64 KiB.
    d.ok(
        "volume_create",
        json!({"name": "raw", "size": "256M", "chunk_size": "64K", "compression": "none"}),
    );
    d.ok("nbd_export_add", json!({"volume": "raw"}));
    assert_eq!(space(&d, "raw"), (0, 0));
    assert_eq!(space(&d, "vol0"), (0, 0));

    // 4 MiB of a pattern on the raw volume: 4 MiB mapped, 4 MiB on disk.
    qemu_io(&d, "raw", "write -P 0xab 0 4M");
    assert_eq!(space(&d, "raw"), (4 * M, 4 * M));
    // 4 KiB in another chunk: the chunk counts whole.
    qemu_io(&d, "raw", "write -P 0xcd 100M 4k");
    assert_eq!(space(&d, "raw"), (4 * M + 64 * 1024, 4 * M + 64 * 1024));
    // Overwriting changes nothing.
    qemu_io(&d, "raw", "write -P 0x17 0 4M");
    assert_eq!(space(&d, "raw"), (4 * M + 64 * 1024, 4 * M + 64 * 1024));

    // vol0 (lz4, 64 KiB chunks): a pattern compresses to a block per chunk;
    // random data does not compress.
    qemu_io(&d, "vol0", "write -P 0x5a 0 8M");
    let (m, a) = space(&d, "vol0");
    assert_eq!((m, a), (8 * M, 128 * 4096), "one block per chunk");
    nbdsh(&format!(
        r#"
import os
h.connect_uri("{uri}")
h.pwrite(os.urandom(8 << 20), 16 << 20)
h.flush()
"#,
        uri = d.uri("vol0")
    ));
    // Random chunks are stored raw: 16 blocks each.
    let grown = space(&d, "vol0");
    assert_eq!(grown, (16 * M, 8 * M + 128 * 4096));

    // Discard: qemu-io's discard and nbdsh's trim and zero free whole chunks.
    qemu_io(&d, "raw", "discard 0 2M");
    assert_eq!(space(&d, "raw"), (2 * M + 64 * 1024, 2 * M + 64 * 1024));
    nbdsh(&format!(
        r#"
h.connect_uri("{uri}")
h.trim(4 << 20, 16 << 20)
h.zero(1 << 20, 0)
h.flush()
"#,
        uri = d.uri("vol0")
    ));
    // 64 random chunks trimmed, 16 pattern chunks zeroed.
    assert_eq!(space(&d, "vol0"), (11 * M, 4 * M + 112 * 4096));

    // The CLI shows both as sizes, next to the size.
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("-s")
        .arg(d.rpc_sock())
        .args(["volume_get_volumes", "--name", "raw"])
        .env_remove("SLUICE_RPC_SOCKET")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(
        header
            .windows(3)
            .any(|w| w == ["SIZE", "MAPPED", "ALLOCATED"]),
        "columns after SIZE: {text}"
    );
    assert!(text.contains("2.1 MiB"), "readable size: {text}");

    // A clean restart and a crash after FLUSH: the same figures.
    let before = (space(&d, "raw"), space(&d, "vol0"));
    d.stop();
    d.spawn();
    assert_eq!((space(&d, "raw"), space(&d, "vol0")), before, "restart");
    qemu_io(&d, "raw", "write -P 0x99 8M 1M"); // qemu-io flushes on close
    nbdsh(&format!(
        r#"
h.connect_uri("{uri}")
h.flush()
"#,
        uri = d.uri("raw")
    ));
    let before = (space(&d, "raw"), space(&d, "vol0"));
    assert_eq!(before.0, (3 * M + 64 * 1024, 3 * M + 64 * 1024));
    d.kill9();
    d.spawn();
    assert_eq!(
        (space(&d, "raw"), space(&d, "vol0")),
        before,
        "after kill -9 and log replay"
    );
    let scrub = d.ok("pool_scrub", json!({}));
    assert_eq!(scrub["clean"], true, "{scrub}");
}
