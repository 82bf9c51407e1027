//! A pool has one owner: over the real daemon and sockets, a pool device is
//! opened by one pool object in one process, `pool_create` never formats a
//! pool in use and formats a closed one only with `force`, and data written
//! before all the refused attempts is still there afterwards.

mod common;
use common::*;
use serde_json::{json, Value};
use sluice_engine::dev::FileDev;
use sluice_engine::format::{probe_file, Probe};
use sluice_rpc::jsonrpc::codes;
use std::path::Path;

/// Code and message of a call that must fail.
fn refused(d: &Sluiced, method: &str, params: Value) -> (i64, String) {
    match d.call(method, params.clone()) {
        Err(e) => match e.rpc() {
            Some(r) => (r.code, r.message.clone()),
            None => panic!("{method} {params}: not an RPC error: {e}"),
        },
        Ok(v) => panic!("{method} {params} should fail, got {v}"),
    }
}

/// The UUID in a device's pool header; panics unless it holds a valid pool.
fn pool_uuid(path: &Path) -> [u8; 16] {
    let f = std::fs::File::open(path).expect("open pool file");
    match probe_file(&f).expect("probe") {
        Probe::Pool { uuid, .. } => uuid,
        p => panic!("{} does not hold a valid pool: {p:?}", path.display()),
    }
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

fn pool_names(d: &Sluiced) -> Vec<String> {
    let pools = d.ok("pool_get_pools", json!({}));
    pools
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `pool_create` over a pool in use is refused as busy, with or without
/// force (asking for a smaller size, which must not be applied either);
/// returns the message of the forced attempt.
fn create_is_busy(d: &Sluiced, path: &Path) -> String {
    let mut msg = String::new();
    for force in [false, true] {
        let (code, m) = refused(
            d,
            "pool_create",
            json!({"name": "p2", "path": path, "size": "1G", "zone_size": "128M", "force": force}),
        );
        assert_eq!(code, codes::BUSY, "force {force}: {m}");
        msg = m;
    }
    msg
}

fn qemu_io(uri: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(uri);
    run("qemu-io", &args);
}

#[test]
fn one_daemon_opens_a_pool_once() {
    let mut d = Sluiced::start("owner-once", &[]);
    let pool = d.dir.join("pool0.img");
    qemu_io(&d.uri("vol0"), &["write -P 0x5a 0 1M", "flush"]);
    let (uuid, size) = (pool_uuid(&pool), len(&pool));

    // The same path under a second name, spelled differently, and through a
    // hard link (same UUID, another path): all the pool already open.
    let dotted = d.dir.join(".").join("pool0.img");
    let link = d.dir.join("pool0-link.img");
    std::fs::hard_link(&pool, &link).expect("hard link");
    for path in [&pool, &dotted, &link] {
        let (code, msg) = refused(&d, "pool_import", json!({"name": "again", "path": path}));
        assert_eq!(code, codes::EXISTS, "{msg}");
        assert!(msg.contains("already open as pool 'pool0'"), "{msg}");
    }
    assert_eq!(
        refused(&d, "pool_import", json!({"name": "pool0", "path": pool})).0,
        codes::EXISTS
    );

    // pool_create over the live pool: refused even with force, and the file
    // keeps its size (a smaller size is asked for) and its header.
    let msg = create_is_busy(&d, &pool);
    assert!(msg.contains("already open as pool 'pool0'"), "{msg}");
    // Through the hard link the daemon's table sees another path: the lock
    // refuses it.
    let msg = create_is_busy(&d, &link);
    assert!(msg.contains("in use"), "{msg}");
    assert_eq!(len(&pool), size, "a refused pool_create resized the pool");
    assert_eq!(pool_uuid(&pool), uuid);
    assert_eq!(pool_names(&d), ["pool0"]);

    // A restart replays its own pool_import: the lock went with the old process.
    d.stop();
    d.spawn();
    assert_eq!(pool_names(&d), ["pool0"]);
    qemu_io(&d.uri("vol0"), &["read -P 0x5a 0 1M"]);
    let scrub = d.ok("pool_scrub", json!({"deep": true}));
    assert_eq!(scrub["clean"], true, "{scrub}");
}

#[test]
fn a_second_daemon_waits_for_the_first_to_exit() {
    let mut first = Sluiced::start("owner-first", &[]);
    let pool = first.dir.join("pool0.img");
    qemu_io(&first.uri("vol0"), &["write -P 0x6b 1M 1M", "flush"]);
    let (uuid, size) = (pool_uuid(&pool), len(&pool));

    let second = Sluiced::start("owner-second", &["--no-default-volume"]);
    let (code, msg) = refused(
        &second,
        "pool_import",
        json!({"name": "shared", "path": pool}),
    );
    assert_eq!(code, codes::BUSY, "{msg}");
    assert!(
        msg.contains("in use by another process") && msg.contains(&pool.display().to_string()),
        "{msg}"
    );
    create_is_busy(&second, &pool);
    assert_eq!(len(&pool), size);
    assert_eq!(pool_uuid(&pool), uuid);
    assert_eq!(pool_names(&second), ["pool0"]);
    // The first daemon never noticed.
    qemu_io(&first.uri("vol0"), &["read -P 0x6b 1M 1M"]);

    first.stop();
    let p = second.ok("pool_import", json!({"name": "shared", "path": pool}));
    assert_eq!(p["name"], "shared");
    second.ok(
        "nbd_export_add",
        json!({"volume": "vol0", "pool": "shared", "name": "v"}),
    );
    qemu_io(&second.uri("v"), &["read -P 0x6b 1M 1M", "read -P 0 0 1M"]);
}

#[test]
fn pool_create_over_a_closed_pool_needs_force() {
    let mut old = Sluiced::start("owner-old", &["--no-default-volume"]);
    old.stop();
    let pool = old.dir.join("pool0.img");
    let (uuid, size) = (pool_uuid(&pool), len(&pool));
    let d = Sluiced::start("owner-new", &["--no-default-volume"]);
    let create = |force: bool| json!({"name": "p", "path": pool, "size": "1G", "zone_size": "128M", "force": force});

    // Held by this test process through the engine's FileDev: in use.
    let held = FileDev::open(&pool, false).expect("engine opens the closed pool");
    let (code, msg) = refused(&d, "pool_create", create(true));
    assert_eq!(code, codes::BUSY, "{msg}");
    assert_eq!(
        refused(&d, "pool_import", json!({"name": "p", "path": pool})).0,
        codes::BUSY
    );
    drop(held);

    let (code, msg) = refused(&d, "pool_create", create(false));
    assert_eq!(code, codes::EXISTS, "{msg}");
    assert!(
        msg.contains("holds sluice pool") && msg.contains("force"),
        "{msg}"
    );
    assert_eq!((pool_uuid(&pool), len(&pool)), (uuid, size), "touched");

    let p = d.ok("pool_create", create(true));
    assert_eq!(p["name"], "p");
    assert_eq!(len(&pool), 1 << 30);
    assert_ne!(pool_uuid(&pool), uuid, "force formats a new pool");
    assert_eq!(pool_names(&d), ["p", "pool0"]);
    // The new pool is now the one in use.
    assert!(FileDev::open(&pool, false).is_err());
}

#[test]
fn failed_pool_create_removes_only_a_file_it_made() {
    let d = Sluiced::start("owner-fail", &["--no-default-volume"]);
    let new = d.dir.join("new.img");
    for (size, zone) in [("64M", "512K"), ("1M", "128M")] {
        let (code, msg) = refused(
            &d,
            "pool_create",
            json!({"name": "p", "path": new, "size": size, "zone_size": zone}),
        );
        assert_eq!(code, codes::INVALID_PARAMS, "{msg}");
        assert!(!new.exists(), "failed pool_create left {}", new.display());
    }

    // A file that was there before stays, contents and all.
    let old = d.dir.join("old.img");
    let bytes = vec![7u8; 4 << 20];
    std::fs::write(&old, &bytes).expect("write");
    let (code, msg) = refused(
        &d,
        "pool_create",
        json!({"name": "p", "path": old, "zone_size": "128M"}),
    );
    assert_eq!(code, codes::INVALID_PARAMS, "{msg}");
    assert_eq!(std::fs::read(&old).expect("read"), bytes);

    // Import errors say what is wrong, and where.
    let missing = d.dir.join("missing.img");
    let (_, msg) = refused(&d, "pool_import", json!({"name": "m", "path": missing}));
    assert!(
        msg.contains("missing.img") && msg.contains("No such file"),
        "{msg}"
    );
    let (_, msg) = refused(&d, "pool_import", json!({"name": "m", "path": old}));
    assert!(
        msg.contains("not a sluice pool") && msg.contains("old.img"),
        "{msg}"
    );

    // A damaged header (of a pool another daemon made and closed): named by
    // structure and block, and still a pool to pool_create.
    let mut maker = Sluiced::start("owner-damaged", &["--no-default-volume"]);
    maker.stop();
    let damaged = maker.dir.join("pool0.img");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&damaged)
            .expect("open");
        // Both copies of the header (block 0 and its backup): one alone
        // is survived.
        let backup = sluice_engine::format::header::HEADER_BACKUP_BLK * 4096;
        for at in [100, backup + 100] {
            f.write_all_at(&[0xff], at).expect("damage header");
        }
    }
    let (code, msg) = refused(&d, "pool_import", json!({"name": "c", "path": damaged}));
    assert_eq!(code, codes::IO_ERROR, "{msg}");
    assert!(msg.contains("corrupt pool header at block 0"), "{msg}");
    let create =
        |force: bool| json!({"name": "c", "path": damaged, "zone_size": "128M", "force": force});
    let (code, msg) = refused(&d, "pool_create", create(false));
    assert_eq!(code, codes::EXISTS, "{msg}");
    assert!(msg.contains("damaged sluice pool"), "{msg}");
    d.ok("pool_create", create(true));
    assert_eq!(pool_names(&d), ["c", "pool0"]);
}
