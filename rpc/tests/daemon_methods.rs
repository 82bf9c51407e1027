//! The control-plane methods of issue 14 over the real daemon: pool_export,
//! pool_delete, nbd_server_stop, volume_rename, volume_set_read_only,
//! iostat reset, ambiguous volume names; the event log and a saved config
//! with a bad call.

mod common;
use common::*;
use serde_json::json;
use sluice_rpc::jsonrpc::codes;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn nbdsh(script: &str) -> std::process::Output {
    // The system python carries the nbd module (as common::run does).
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    Command::new("nbdsh")
        .env("PATH", path)
        .args(["-c", script])
        .output()
        .expect("run nbdsh (scripts/setup installs it)")
}

#[test]
fn pool_export_delete_and_busy_rule() {
    let d = Sluiced::start("m-pool", &["--no-default-volume"]);
    let path = d.dir.join("p1.img");
    d.ok(
        "pool_create",
        json!({"name": "p1", "path": path, "size": "2G", "zone_size": "128M"}),
    );
    d.ok(
        "volume_create",
        json!({"name": "a", "size": "64M", "pool": "p1"}),
    );
    d.ok(
        "nbd_export_add",
        json!({"volume": "a", "pool": "p1", "name": "ea"}),
    );

    // Busy: the message names the export; nothing changed.
    let e = d.call("pool_export", json!({"name": "p1"})).unwrap_err();
    let r = e.rpc().expect("rpc error");
    assert_eq!(r.code, codes::BUSY);
    assert!(r.message.contains("ea"), "{}", r.message);
    assert_eq!(
        d.ok("nbd_get_exports", json!({})).as_array().unwrap().len(),
        1
    );
    assert_eq!(
        d.err_code("pool_export", json!({"name": "nope"})),
        codes::NOT_FOUND
    );

    // Forced: export gone, pool closed, dropped from the saved config.
    assert_eq!(
        d.ok("pool_export", json!({"name": "p1", "force": true})),
        json!({"name": "p1"})
    );
    assert_eq!(
        d.ok("nbd_get_exports", json!({})).as_array().unwrap().len(),
        0
    );
    let pools = d.ok("pool_get_pools", json!({}));
    assert!(
        pools.as_array().unwrap().iter().all(|p| p["name"] != "p1"),
        "{pools}"
    );
    let saved = std::fs::read_to_string(d.dir.join("config.json")).unwrap();
    assert!(!saved.contains("p1.img"), "{saved}");

    // The device lock is released: it imports again, with its volume.
    let p = d.ok("pool_import", json!({"name": "p1", "path": path}));
    assert_eq!(p["volumes"], 1);

    // Delete: header gone, file removed, import refused.
    let r = d.ok("pool_delete", json!({"name": "p1"}));
    assert_eq!(r["file_removed"], true, "{r}");
    assert!(!path.exists());

    assert!(d
        .call("pool_import", json!({"name": "p1", "path": path}))
        .is_err());

    // The header is erased, not only the name: a hard link made before the
    // delete keeps the data, and is no pool any more.
    let path2 = d.dir.join("p2.img");
    let link = d.dir.join("p2-link.img");
    d.ok(
        "pool_create",
        json!({"name": "p2", "path": path2, "size": "1G", "zone_size": "128M"}),
    );
    std::fs::hard_link(&path2, &link).unwrap();
    d.ok("pool_delete", json!({"name": "p2"}));
    assert!(!path2.exists() && link.exists());
    let e = d
        .call("pool_import", json!({"name": "p2", "path": link}))
        .unwrap_err();
    assert!(
        e.to_string().contains("not a sluice pool") || e.to_string().contains("ot a pool"),
        "{e}"
    );
    assert_eq!(
        d.err_code("pool_delete", json!({"name": "p2"})),
        codes::NOT_FOUND
    );
}

#[test]
fn nbd_server_stop_and_restart() {
    let d = Sluiced::start("m-nbd", &[]);
    run("nbdinfo", &["--size", &d.uri("vol0")]);
    assert_eq!(d.ok("nbd_server_stop", json!({})), json!(true));
    assert!(!Command::new("nbdinfo")
        .args(["--size", &d.uri("vol0")])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success());
    assert_eq!(
        d.err_code("nbd_server_stop", json!({})),
        codes::INVALID_STATE
    );
    // Exports stay defined and are served after a start.
    assert_eq!(
        d.ok("nbd_get_exports", json!({})).as_array().unwrap().len(),
        1
    );
    d.ok("nbd_server_start", json!({}));
    run("nbdinfo", &["--size", &d.uri("vol0")]);
}

#[test]
fn rename_read_only_iostat_and_ambiguity() {
    let d = Sluiced::start("m-vol", &[]);
    // Rename follows the export, which keeps working.
    let v = d.ok(
        "volume_rename",
        json!({"name": "vol0", "new_name": "renamed"}),
    );
    assert_eq!(v["name"], "renamed");
    let ex = d.ok("nbd_get_exports", json!({}));
    assert_eq!(ex[0]["volume"], "renamed", "{ex}");
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 64k", &d.uri("vol0")],
    );
    assert_eq!(
        d.err_code(
            "volume_rename",
            json!({"name": "renamed", "new_name": "bad/name"})
        ),
        codes::INVALID_PARAMS
    );
    assert_eq!(
        d.err_code("volume_rename", json!({"name": "gone", "new_name": "x"})),
        codes::NOT_FOUND
    );
    d.ok("volume_create", json!({"name": "other", "size": "64M"}));
    assert_eq!(
        d.err_code(
            "volume_rename",
            json!({"name": "renamed", "new_name": "other"})
        ),
        codes::EXISTS
    );
    let saved = std::fs::read_to_string(d.dir.join("config.json")).unwrap();
    assert!(saved.contains("\"renamed\""), "{saved}");

    // Read-only: an open connection's writes fail with EPERM from then on;
    // new connections see READ_ONLY.
    let rpc = d.rpc_sock();
    let script = format!(
        r#"
import socket, json, errno, nbd
h.connect_uri("{uri}")
h.pwrite(b"a" * 4096, 0)
s = socket.socket(socket.AF_UNIX); s.connect("{rpc}")
s.sendall(json.dumps({{"jsonrpc": "2.0", "id": 1, "method": "volume_set_read_only", "params": {{"name": "renamed", "read_only": True}}}}).encode())
r = json.loads(s.recv(65536)); assert r["result"]["read_only"] is True, r
try:
    h.pwrite(b"b" * 4096, 0)
    raise SystemExit("write after read-only succeeded")
except nbd.Error as e:
    assert "EPERM" in str(e), e
assert h.pread(4096, 0) == b"a" * 4096
"#,
        uri = d.uri("vol0"),
        rpc = rpc.display()
    );
    let o = nbdsh(&script);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run("nbdinfo", &["--json", &d.uri("vol0")]);
    assert!(
        stdout(&o).contains("\"is_read_only\": true"),
        "{}",
        stdout(&o)
    );
    d.ok(
        "volume_set_read_only",
        json!({"name": "renamed", "read_only": false}),
    );
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x22 0 64k", &d.uri("vol0")],
    );

    // iostat reset returns the values before, then zero.
    let before = d.ok(
        "volume_get_iostat",
        json!({"name": "renamed", "reset": true}),
    );
    assert!(before[0]["write_ops"].as_u64().unwrap() >= 2, "{before}");
    let after = d.ok("volume_get_iostat", json!({"name": "renamed"}));
    assert_eq!(after[0]["write_ops"], 0, "{after}");

    // A name in two pools: volume methods refuse to guess.
    let p2 = d.dir.join("p2.img");
    d.ok(
        "pool_create",
        json!({"name": "p2", "path": p2, "size": "1G", "zone_size": "128M"}),
    );
    d.ok(
        "volume_create",
        json!({"name": "other", "size": "64M", "pool": "p2"}),
    );
    let e = d
        .call("volume_resize", json!({"name": "other", "size": "128M"}))
        .unwrap_err();
    let r = e.rpc().unwrap();
    assert_eq!(r.code, codes::INVALID_PARAMS);
    assert!(
        r.message.contains("pool0") && r.message.contains("p2"),
        "{}",
        r.message
    );
    assert_eq!(
        d.err_code("nbd_export_add", json!({"volume": "other"})),
        codes::INVALID_PARAMS
    );
    d.ok(
        "nbd_export_add",
        json!({"volume": "other", "pool": "p2", "name": "o2"}),
    );
}

/// Start sluiced with stderr to a file; returns (daemon, log path).
fn start_logged(dir: &std::path::Path, extra: &[&str]) -> std::process::Child {
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluiced"))
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--pool-size",
            "2G",
            "--zone-size",
            "128M",
            "--nbd-tcp",
            "none",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sluiced")
}

fn wait_log(dir: &std::path::Path, what: &str) -> String {
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        if s.contains(what) {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no '{what}' in the log:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn events_logged_and_bad_saved_call_skipped() {
    let dir = data_dir("m-log");
    let mut c = start_logged(&dir, &[]);
    let s = wait_log(&dir, "ready: JSON-RPC on");
    assert!(s.contains("NBD listening on unix:"), "{s}");
    assert!(s.contains("volume 'vol0' of pool 'pool0'"), "{s}");
    let call = |m: &str, p: serde_json::Value| {
        sluice_rpc::client::Client::connect(dir.join("rpc.sock"))
            .unwrap()
            .call(m, p)
            .unwrap()
    };
    call("volume_create", json!({"name": "v2", "size": "64M"}));
    call(
        "nbd_export_add",
        json!({"volume": "v2", "name": "&".repeat(5000)}),
    );
    wait_log(&dir, "export '");
    // A huge parameter is cut in the log.
    let s = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    let line = s
        .lines()
        .find(|l| l.contains("rpc nbd_export_add"))
        .unwrap();
    assert!(line.len() < 300 && line.contains(" INFO "), "{line}");
    call("nbd_export_remove", json!({"name": "&".repeat(5000)}));
    wait_log(&dir, "removed (volume 'v2'");
    // Line format: UTC timestamp, level.
    let first = s.lines().next().unwrap();
    assert!(
        first.len() > 25 && &first[4..5] == "-" && first[..24].ends_with('Z'),
        "{first}"
    );

    // Save an export of v2, then delete v2 behind the saved config's back.
    call("nbd_export_add", json!({"volume": "v2"}));
    call("nbd_export_remove", json!({"name": "v2"}));
    call("volume_delete", json!({"name": "v2"}));
    let cfg = dir.join("config.json");
    let mut calls: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    calls
        .as_array_mut()
        .unwrap()
        .push(json!({"method": "nbd_export_add", "params": {"volume": "v2"}}));
    std::fs::write(&cfg, calls.to_string()).unwrap();
    call("shutdown", json!({}));
    let st = c.wait().unwrap();
    assert!(st.success());
    assert!(
        !dir.join("rpc.sock").exists(),
        "the RPC socket must be gone after exit"
    );

    let mut c = start_logged(&dir, &[]);
    let s = wait_log(&dir, "ready: JSON-RPC on");
    assert!(s.contains("ERROR saved config: nbd_export_add"), "{s}");
    // It serves: vol0 is still exported.
    run(
        "nbdinfo",
        &[
            "--size",
            &format!("nbd+unix:///vol0?socket={}", dir.join("nbd.sock").display()),
        ],
    );
    let _ = c.kill();
    let _ = c.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
