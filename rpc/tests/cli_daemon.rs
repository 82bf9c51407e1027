//! Every subcommand the daemon serves, run from the `sluice` binary against
//! the real daemon: the line saying what was done, tables without raw JSON, the
//! help's limits as the daemon applies them, and `shutdown` returning only after
//! the daemon process has exited.

mod common;

use common::{run, Sluiced};
use std::path::Path;
use std::process::{Command, Output};

fn sluice(d: &Sluiced, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("-s")
        .arg(d.rpc_sock())
        .args(args)
        .env_remove("SLUICE_RPC_SOCKET")
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(d: &Sluiced, args: &[&str]) -> String {
    let o = sluice(d, args);
    assert!(
        o.status.success(),
        "sluice {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A table: a header line and no JSON punctuation anywhere.
fn assert_table(text: &str, header_starts: &str) {
    assert!(text.starts_with(header_starts), "{text}");
    assert!(
        !text.contains('{') && !text.contains('[') && !text.contains('"'),
        "raw JSON in a table:\n{text}"
    );
}

#[test]
fn every_served_subcommand_from_the_cli() {
    let mut d = Sluiced::start("cli-daemon", &[]);
    let dir = d.dir.clone();

    let out = ok(&d, &["pool_get_pools"]);
    assert_table(&out, "NAME ");
    assert!(out.lines().nth(1).unwrap().starts_with("pool0 "), "{out}");

    let p1 = dir.join("p1.img");
    let out = ok(
        &d,
        &[
            "pool_create",
            "p1",
            p1.to_str().unwrap(),
            "--size",
            "1G",
            "--zone-size",
            "128M",
        ],
    );
    assert!(out.starts_with("pool p1 created\nname:"), "{out}");
    assert!(!out.contains('{') && !out.contains('['), "{out}");

    // Help states the chunk-size limits; the daemon applies exactly those.
    let help = ok(&d, &["volume_create", "--help"]);
    assert!(help.contains("from 4K to 1M"), "{help}");
    let out = ok(
        &d,
        &[
            "volume_create",
            "big",
            "16M",
            "--chunk-size",
            "1M",
            "--pool",
            "p1",
        ],
    );
    assert!(out.starts_with("volume big created\n"), "{out}");
    let o = sluice(
        &d,
        &[
            "volume_create",
            "bigger",
            "16M",
            "--chunk-size",
            "2M",
            "--pool",
            "p1",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("from 4 KiB to 1 MiB"), "{err}");

    // The same volume name in two pools: --pool picks.
    ok(
        &d,
        &[
            "volume_create",
            "v1",
            "64M",
            "--chunk-size",
            "16K",
            "--pool",
            "pool0",
        ],
    );
    ok(&d, &["volume_create", "v1", "32M", "--pool", "p1"]);
    let out = ok(&d, &["volume_resize", "v1", "128M", "--pool", "p1"]);
    assert!(out.starts_with("volume v1 resized to 128.0 MiB\n"), "{out}");
    assert!(out.contains("pool:") && out.contains("p1"), "{out}");
    let out = ok(&d, &["volume_get_volumes", "--pool", "p1"]);
    assert_table(&out, "NAME ");
    assert!(out.contains("128.0 MiB") && !out.contains("pool0"), "{out}");

    let out = ok(
        &d,
        &["nbd_export_add", "v1", "--name", "e1", "--pool", "pool0"],
    );
    assert!(out.starts_with("export e1 added\n"), "{out}");
    let out = ok(&d, &["nbd_get_exports"]);
    assert_table(&out, "NAME ");
    assert!(out.contains("e1"), "{out}");
    // Some I/O so that iostat has latencies to show.
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 7 0 1M",
            "-c",
            "read -P 7 0 1M",
            &d.uri("e1"),
        ],
    );
    let out = ok(
        &d,
        &["volume_get_iostat", "--name", "v1", "--pool", "pool0"],
    );
    assert_table(&out, "NAME ");
    // A latency cell reads "p50 1.7ms p99 ...", with a unit.
    let lat = out.split("p50 ").nth(1).unwrap_or_else(|| panic!("{out}"));
    assert!(lat.contains("s p99 "), "{out}");

    let out = ok(&d, &["framework_get_reactors"]);
    assert_table(&out, "INDEX ");
    assert!(out.contains("pool0: 0-"), "{out}");

    let out = ok(&d, &["pool_scrub", "--pool", "pool0"]);
    assert_eq!(out, "pool pool0 scrubbed: clean\n");

    let cfg = dir.join("saved.json");
    let out = ok(&d, &["save_config", "--path", cfg.to_str().unwrap()]);
    assert_eq!(out, format!("configuration saved to {}\n", cfg.display()));
    assert!(cfg.exists());

    assert_eq!(ok(&d, &["nbd_export_remove", "e1"]), "export e1 removed\n");
    assert_eq!(
        ok(&d, &["volume_delete", "v1", "--pool", "pool0"]),
        "volume v1 deleted\n"
    );
    let o = sluice(
        &d,
        &["volume_get_volumes", "--name", "v1", "--pool", "pool0"],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).lines().count() <= 1
            || !String::from_utf8_lossy(&o.stdout).contains("pool0"),
        "v1 of pool0 is gone"
    );

    let out = ok(&d, &["rpc_get_methods"]);
    assert!(out.lines().any(|l| l == "volume_create"), "{out}");

    // shutdown returns only once the process has exited.
    let out = ok(&d, &["shutdown"]);
    assert_eq!(out, "daemon stopped\n");
    let mut child = d.child.take().unwrap();
    let status = child.try_wait().unwrap();
    assert!(
        status.is_some(),
        "sluice shutdown returned while sluiced (pid {}) was still running",
        child.id()
    );
    assert!(status.unwrap().success());
    assert!(!Path::new(&d.rpc_sock()).exists(), "socket removed");
}

/// `pool_import` without --name names the pool pool0, as the help says.
#[test]
fn import_uses_the_default_name_from_the_help() {
    let mut a = Sluiced::start("cli-import-a", &["--no-default-volume"]);
    assert_eq!(ok(&a, &["shutdown"]), "daemon stopped\n");
    a.child.take();
    let help = {
        let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["pool_import", "--help"])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(help.contains("default: pool0"), "{help}");

    let empty = a.dir.join("empty.json");
    std::fs::write(&empty, "[]").unwrap();
    let b = Sluiced::start("cli-import-b", &["--config", empty.to_str().unwrap()]);
    assert_eq!(ok(&b, &["pool_get_pools"]), "(none)\n");
    let img = a.dir.join("pool0.img");
    let out = ok(&b, &["pool_import", img.to_str().unwrap()]);
    assert!(
        out.starts_with(&format!("pool pool0 imported from {}\n", img.display())),
        "{out}"
    );
}

/// The methods added for issue 14, from the CLI against the real daemon:
/// rename, read-only, snapshot and clone, iostat reset, an ambiguous name,
/// NBD server stop and start, pool export, import and delete. Each prints what it did, and the
/// daemon's state says it was done.
#[test]
fn lifecycle_subcommands_from_the_cli() {
    let mut d = Sluiced::start("cli-lifecycle", &["--no-default-volume"]);
    let dir = d.dir.clone();
    let p1 = dir.join("p1.img");
    let p1s = p1.to_str().unwrap();
    ok(&d, &["pool_create", "p1", p1s, "--size", "1G"]);
    ok(&d, &["volume_create", "v", "64M", "--pool", "pool0"]);
    ok(&d, &["volume_create", "v", "64M", "--pool", "p1"]);

    // A name in two pools without --pool is an error naming both, not a pick.
    let o = sluice(&d, &["volume_rename", "v", "w"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("pool0") && err.contains("p1"), "{err}");

    let out = ok(&d, &["volume_rename", "v", "w", "--pool", "pool0"]);
    assert!(out.starts_with("volume v renamed to w\n"), "{out}");
    let out = ok(&d, &["volume_get_volumes", "--pool", "pool0"]);
    assert!(out.contains("w ") && !out.contains("\nv "), "{out}");

    ok(&d, &["nbd_export_add", "w", "--pool", "pool0"]);
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 3 0 64k", &d.uri("w")],
    );
    let out = ok(
        &d,
        &["volume_set_read_only", "w", "true", "--pool", "pool0"],
    );
    assert!(out.starts_with("volume w is now read-only\n"), "{out}");
    // A write is refused now; a read still works.
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 4 0 4k", &d.uri("w")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        text.contains("Permission denied") || text.contains("not permitted"),
        "a write to a read-only volume: {text}"
    );
    run(
        "qemu-io",
        &["-f", "raw", "-r", "-c", "read -P 3 0 64k", &d.uri("w")],
    );
    let out = ok(
        &d,
        &["volume_set_read_only", "w", "false", "--pool", "pool0"],
    );
    assert!(out.starts_with("volume w is now writable\n"), "{out}");

    // A snapshot and a read-only clone of it; the table names their parents.
    let out = ok(&d, &["volume_snapshot", "w", "ws", "--pool", "pool0"]);
    assert!(out.starts_with("volume w snapshotted as ws\n"), "{out}");
    assert!(out.contains("read_only:") && out.contains("true"), "{out}");
    let out = ok(
        &d,
        &["volume_clone", "ws", "wc", "--read-only", "--pool", "pool0"],
    );
    assert!(out.starts_with("volume ws cloned as wc\n"), "{out}");
    let out = ok(&d, &["volume_get_volumes", "--pool", "pool0"]);
    assert_table(&out, "NAME ");
    assert!(out.lines().next().unwrap().ends_with("PARENT"), "{out}");
    let parent_of = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("{name} in {out}"))
            .to_string()
    };
    assert_eq!(
        (parent_of("w"), parent_of("ws"), parent_of("wc")),
        ("-".into(), "w".into(), "ws".into()),
        "{out}"
    );

    // iostat --reset prints the counters before the reset, then they are zero.
    let out = ok(
        &d,
        &[
            "volume_get_iostat",
            "--name",
            "w",
            "--pool",
            "pool0",
            "--reset",
        ],
    );
    assert!(out.contains("counters reset"), "{out}");
    let js = ok(
        &d,
        &[
            "--json",
            "volume_get_iostat",
            "--name",
            "w",
            "--pool",
            "pool0",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&js).unwrap();
    let w = &v.as_array().unwrap()[0];
    assert_eq!(w["read_ops"], 0, "{js}");
    assert_eq!(w["write_ops"], 0, "{js}");

    // NBD server stop: clients are refused; start serves the exports again.
    assert_eq!(ok(&d, &["nbd_server_stop"]), "NBD server stopped\n");
    let o = Command::new("nbdinfo")
        .args(["--size", &d.uri("w")])
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "nbdinfo after nbd_server_stop succeeded"
    );
    let nbd = d.nbd_sock();
    ok(&d, &["nbd_server_start", "--unix", nbd.to_str().unwrap()]);
    let size = String::from_utf8(run("nbdinfo", &["--size", &d.uri("w")]).stdout).unwrap();
    assert_eq!(size.trim(), (64u64 << 20).to_string());

    // Pool export closes p1 and releases its file; import opens it again
    // with its volume; delete removes the file.
    assert_eq!(ok(&d, &["pool_export", "p1"]), "pool p1 closed\n");
    let out = ok(&d, &["pool_get_pools"]);
    assert!(!out.contains("p1"), "{out}");
    let out = ok(&d, &["pool_import", p1s, "--name", "p1"]);
    assert!(
        out.starts_with(&format!("pool p1 imported from {p1s}\n")),
        "{out}"
    );
    let out = ok(&d, &["volume_get_volumes", "--pool", "p1"]);
    assert!(out.contains("v "), "{out}");
    let out = ok(&d, &["pool_delete", "p1"]);
    assert_eq!(out, format!("pool p1 deleted, {p1s} removed\n"));
    assert!(!p1.exists(), "pool file removed");
    d.stop();
}
