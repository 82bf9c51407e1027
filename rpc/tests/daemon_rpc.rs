//! The daemon's JSON-RPC surface: every method and every error code, over
//! the real socket.

mod common;
use common::*;
use serde_json::json;
use sluice_rpc::jsonrpc::codes;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;

#[test]
fn every_method_and_error() {
    let d = Sluiced::start("rpc", &["--no-default-volume"]);
    let mode = std::fs::metadata(d.rpc_sock())
        .expect("rpc socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "rpc socket must be 0600");

    let methods = d.ok("rpc_get_methods", json!({}));
    for m in [
        "pool_create",
        "pool_import",
        "pool_get_pools",
        "volume_create",
        "volume_delete",
        "volume_resize",
        "volume_snapshot",
        "volume_clone",
        "volume_get_volumes",
        "volume_get_iostat",
        "nbd_server_start",
        "nbd_export_add",
        "nbd_export_remove",
        "nbd_get_exports",
        "framework_get_reactors",
        "rpc_get_methods",
        "save_config",
        "shutdown",
    ] {
        assert!(
            methods.as_array().is_some_and(|a| a.iter().any(|x| x == m)),
            "missing {m}"
        );
    }

    // Volumes.
    let v = d.ok(
        "volume_create",
        json!({"name": "a", "size": "1G", "chunk_size": "16K", "compression": "lz4"}),
    );
    assert_eq!(v["size"], 1u64 << 30);
    assert_eq!(v["chunk_size"], 16384);
    assert_eq!(
        d.err_code("volume_create", json!({"name": "a", "size": "1G"})),
        codes::EXISTS
    );
    assert_eq!(
        d.err_code(
            "volume_create",
            json!({"name": "b", "size": "1G", "chunk_size": 3000})
        ),
        codes::INVALID_PARAMS
    );
    assert_eq!(
        d.err_code("volume_create", json!({"name": "b", "size": "lots"})),
        codes::INVALID_PARAMS
    );
    assert_eq!(
        d.err_code(
            "volume_create",
            json!({"name": "b", "size": "1G", "compression": "zstd"})
        ),
        codes::INVALID_PARAMS
    );
    assert_eq!(
        d.err_code("volume_create", json!({"name": "b"})),
        codes::INVALID_PARAMS
    );
    assert_eq!(
        d.err_code(
            "volume_create",
            json!({"name": "b", "size": 4096, "bogus": 1})
        ),
        codes::INVALID_PARAMS
    );
    let r = d.ok("volume_resize", json!({"name": "a", "size": "2G"}));
    assert_eq!(r["size"], 2u64 << 30);
    assert_eq!(
        d.err_code("volume_resize", json!({"name": "zz", "size": "2G"})),
        codes::NOT_FOUND
    );
    let vols = d.ok("volume_get_volumes", json!({}));
    assert_eq!(vols.as_array().map(|a| a.len()), Some(1));
    assert_eq!(
        d.err_code("volume_get_volumes", json!({"name": "zz"})),
        codes::NOT_FOUND
    );

    // Exports.
    d.ok("nbd_export_add", json!({"volume": "a", "name": "ea"}));
    assert_eq!(
        d.err_code("nbd_export_add", json!({"volume": "a", "name": "ea"})),
        codes::EXISTS
    );
    assert_eq!(
        d.err_code("nbd_export_add", json!({"volume": "nope"})),
        codes::NOT_FOUND
    );
    let ex = d.ok("nbd_get_exports", json!({}));
    assert_eq!(ex[0]["name"], "ea");
    assert_eq!(
        d.err_code("volume_delete", json!({"name": "a"})),
        codes::BUSY
    );
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 7 0 1M", &d.uri("ea")],
    );
    let st = d.ok("volume_get_iostat", json!({"name": "a"}));
    assert!(st[0]["write_ops"].as_u64().unwrap_or(0) >= 1, "{st}");
    assert!(
        st[0]["write_bytes"].as_u64().unwrap_or(0) >= 1 << 20,
        "{st}"
    );
    d.ok("nbd_export_remove", json!({"name": "ea"}));
    assert_eq!(
        d.err_code("nbd_export_remove", json!({"name": "ea"})),
        codes::NOT_FOUND
    );
    d.ok("volume_delete", json!({"name": "a"}));
    assert_eq!(
        d.err_code("volume_delete", json!({"name": "a"})),
        codes::NOT_FOUND
    );

    // Pools.
    let p2 = d.dir.join("p2.img");
    d.ok(
        "pool_create",
        json!({"name": "p2", "path": p2, "size": "1G", "zone_size": "64M"}),
    );
    assert_eq!(
        d.err_code(
            "pool_create",
            json!({"name": "p2", "path": p2, "size": "1G"})
        ),
        codes::EXISTS
    );
    assert_eq!(
        d.err_code(
            "pool_import",
            json!({"name": "p3", "path": d.dir.join("missing.img")})
        ),
        codes::IO_ERROR
    );
    let junk = d.dir.join("junk.img");
    std::fs::write(&junk, vec![7u8; 1 << 20]).expect("write junk");
    let code = d.err_code("pool_import", json!({"name": "p4", "path": junk}));
    assert!(
        code == codes::IO_ERROR || code == codes::INVALID_PARAMS,
        "not-a-pool gives {code}"
    );
    assert_eq!(
        d.ok("pool_get_pools", json!({}))
            .as_array()
            .map(|a| a.len()),
        Some(2)
    );
    // Two pools: volume_create must name one.
    assert_eq!(
        d.err_code("volume_create", json!({"name": "x", "size": "1G"})),
        codes::INVALID_PARAMS
    );
    d.ok(
        "volume_create",
        json!({"name": "x", "size": "1G", "pool": "p2"}),
    );
    let full = d.ok("pool_scrub", json!({"pool": "p2", "deep": true}));
    assert_eq!(full["clean"], true);

    let reactors = d.ok("framework_get_reactors", json!({}));
    assert!(!reactors.as_array().map(|a| a.is_empty()).unwrap_or(true));
    assert!(reactors[0].get("busy_iters").is_some());

    let cfg = d.dir.join("saved.json");
    d.ok("save_config", json!({"path": cfg}));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).expect("saved")).expect("json");
    assert!(saved
        .as_array()
        .is_some_and(|a| a.iter().any(|c| c["method"] == "pool_import")));

    // Unknown method and standard errors over raw bytes.
    assert_eq!(
        d.err_code("no_such_method", json!({})),
        codes::METHOD_NOT_FOUND
    );
    let mut s = std::os::unix::net::UnixStream::connect(d.rpc_sock()).expect("connect");
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"pool_get_pools\",\"params\":[1]}")
        .expect("send");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("read");
    assert!(line.contains("-32602"), "{line}");
    let mut s = std::os::unix::net::UnixStream::connect(d.rpc_sock()).expect("connect");
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":}")
        .expect("send");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("read");
    assert!(line.contains("-32700"), "{line}");

    // shutdown answers, then the daemon exits.
    d.ok("shutdown", json!({}));
}

#[test]
fn restart_reopens_pool_and_exports() {
    let mut d = Sluiced::start("restart", &[]);
    d.ok("volume_create", json!({"name": "keep", "size": "64M"}));
    d.ok("nbd_export_add", json!({"volume": "keep", "name": "k"}));
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x42 0 1M", &d.uri("k")],
    );
    d.stop();
    d.spawn();
    run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x42 0 1M", &d.uri("k")],
    );
    let ex = d.ok("nbd_get_exports", json!({}));
    assert!(
        ex.as_array()
            .is_some_and(|a| a.iter().any(|e| e["name"] == "k")),
        "{ex}"
    );
    // kill -9 after an explicit flush: the data survives the log replay.
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x43 1M 1M",
            "-c",
            "flush",
            &d.uri("k"),
        ],
    );
    d.kill9();
    d.spawn();
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x42 0 1M",
            "-c",
            "read -P 0x43 1M 1M",
            &d.uri("k"),
        ],
    );
    let scrub = d.ok("pool_scrub", json!({"deep": true}));
    assert_eq!(scrub["clean"], true, "{scrub}");
}
