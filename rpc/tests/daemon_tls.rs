//! NBD over TLS with the real daemon: `nbd_server_start` with `tls`
//! (X.509 and PSK) serves `nbds://` clients and refuses plaintext ones,
//! the saved config brings TLS back after a restart, and a non-loopback
//! listener without TLS is refused unless `insecure` is passed.

mod common;
#[path = "../../reactor/tests/nbd_tls_common/mod.rs"]
mod nbd_tls_common;

use common::{free_port, stdout, Sluiced};
use nbd_tls_common::{make_psk, make_x509_dir, psk_key};
use serde_json::json;
use std::path::Path;

const VOL: u64 = 64 << 20;

/// A daemon with pool0/vol0 exported and no NBD server running yet.
fn daemon(tag: &str) -> Sluiced {
    let dir = common::data_dir(&format!("{tag}-cfg"));
    let cfg = dir.join("calls.json");
    let calls = json!([
        {"method": "pool_create", "params": {"name": "pool0", "path": dir.join("pool.img"),
            "size": 2u64 << 30, "zone_size": 128u64 << 20}},
        {"method": "volume_create", "params": {"name": "vol0", "size": VOL, "compression": "none"}},
        {"method": "nbd_export_add", "params": {"volume": "vol0"}},
    ]);
    std::fs::write(&cfg, calls.to_string()).expect("write config");
    Sluiced::start(tag, &["--config", cfg.to_str().expect("utf-8 path")])
}

/// Run a client to completion, whatever its exit status.
fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} ({e}); run scripts/setup"))
}

fn nbdinfo_size(uri: &str) -> std::process::Output {
    run("nbdinfo", &["--size", uri])
}

fn x509_uri(port: u16, dir: &Path) -> String {
    format!(
        "nbds://127.0.0.1:{port}/vol0?tls-certificates={}",
        dir.display()
    )
}

#[test]
fn x509_tls_serves_nbds_refuses_plaintext_and_survives_restart() {
    let mut d = daemon("tls-x509");
    let x509 = make_x509_dir(&d.dir);
    let port = free_port();
    d.ok(
        "nbd_server_start",
        json!({"tcp": format!("127.0.0.1:{port}"), "tls": {"mode": "x509", "dir": x509}}),
    );
    let out = nbdinfo_size(&x509_uri(port, &x509));
    assert!(out.status.success(), "nbdinfo over TLS: {out:?}");
    assert_eq!(stdout(&out).trim(), VOL.to_string());
    let plain = format!("nbd://127.0.0.1:{port}/vol0");
    assert!(!nbdinfo_size(&plain).status.success(), "plaintext got in");

    // qemu-io writes and reads back a pattern over TLS.
    let creds = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        x509.display()
    );
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=vol0,tls-creds=tls0"
    );
    let out = run(
        "qemu-io",
        &[
            "--object",
            &creds,
            "--image-opts",
            &opts,
            "-c",
            "write -P 0x3e 0 1M",
            "-c",
            "read -P 0x3e 0 1M",
        ],
    );
    assert!(out.status.success(), "qemu-io over TLS: {out:?}");
    // ... and the data is there through the plain Unix socket too.
    let out = run(
        "qemu-io",
        &["-f", "raw", &d.uri("vol0"), "-c", "read -P 0x3e 0 1M"],
    );
    assert!(out.status.success(), "unix read-back: {out:?}");

    // Restart from the saved config: TLS comes back with it.
    d.stop();
    d.extra.clear();
    d.spawn();
    let out = nbdinfo_size(&x509_uri(port, &x509));
    assert!(
        out.status.success(),
        "nbdinfo over TLS after restart: {out:?}"
    );
    assert!(
        !nbdinfo_size(&plain).status.success(),
        "plaintext got in after restart"
    );
    d.stop();
}

#[test]
fn psk_tls_accepts_the_right_key_only() {
    let mut d = daemon("tls-psk");
    let file = make_psk(&d.dir, "server-psk", "alice", &psk_key(3));
    let port = free_port();
    d.ok(
        "nbd_server_start",
        json!({"tcp": format!("127.0.0.1:{port}"), "tls": {"mode": "psk", "psk_file": file}}),
    );
    let good = make_psk(&d.dir, "client-good", "alice", &psk_key(3));
    let uri = |f: &Path| {
        format!(
            "nbds://alice@127.0.0.1:{port}/vol0?tls-psk-file={}",
            f.display()
        )
    };
    let out = nbdinfo_size(&uri(&good));
    assert!(out.status.success(), "nbdinfo with the right PSK: {out:?}");
    assert_eq!(stdout(&out).trim(), VOL.to_string());
    let wrong = make_psk(&d.dir, "client-wrong", "alice", &psk_key(4));
    assert!(
        !nbdinfo_size(&uri(&wrong)).status.success(),
        "a wrong key got in"
    );
    d.stop();
}

#[test]
fn non_loopback_without_tls_is_refused_unless_insecure() {
    let mut d = daemon("tls-any");
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    let code = d.err_code("nbd_server_start", json!({"tcp": any}));
    assert_eq!(code, -32602, "expected invalid_params");
    // Bad TLS parameters are invalid_params too.
    let code = d.err_code(
        "nbd_server_start",
        json!({"tcp": any, "tls": {"mode": "x509", "dir": d.dir.join("nope")}}),
    );
    assert_eq!(code, -32602);
    let code = d.err_code(
        "nbd_server_start",
        json!({"tcp": any, "tls": {"mode": "psk", "dir": d.dir}}),
    );
    assert_eq!(code, -32602);
    d.ok("nbd_server_start", json!({"tcp": any, "insecure": true}));
    let out = nbdinfo_size(&format!("nbd://127.0.0.1:{port}/vol0"));
    assert!(out.status.success(), "insecure listener: {out:?}");
    d.stop();
}
