//! Snapshots and clones over the real daemon (`volume_snapshot`,
//! `volume_clone`): a snapshot keeps what its volume held when it was taken
//! while fio overwrites the volume (qemu-img compare against the image
//! written with qemu-img convert), refuses writes and serves reads; a clone
//! of it takes fio's verified writes and leaves the snapshot and the origin
//! as they were; `volume_get_volumes` names each one's parent. All of it
//! holds after a clean restart and after `kill -9`. Deleting origin,
//! snapshot and clone in every order keeps the remaining ones' data and
//! frees every block: the pool's usage comes back to what it was before the
//! first write and a deep scrub is clean. Bad requests get clear errors.

mod common;
use common::*;
use serde_json::{json, Value};
use sluice_rpc::jsonrpc::codes;
use std::path::{Path, PathBuf};
use std::process::Command;

const M: u64 = 1 << 20;

/// `(code, message)` of a call that must fail.
fn rpc_error(d: &Sluiced, method: &str, params: Value) -> (i64, String) {
    match d.call(method, params.clone()) {
        Err(e) => {
            let r = e
                .rpc()
                .unwrap_or_else(|| panic!("{method}: not an RPC error: {e}"));
            (r.code, r.message.clone())
        }
        Ok(v) => panic!("{method} {params} should fail, got {v}"),
    }
}

/// The pool's space figures: (used_bytes, data_bytes, logical_used_bytes).
fn usage(d: &Sluiced) -> (u64, u64, u64) {
    let p = d.ok("pool_get_pools", json!({}));
    let p = &p[0];
    let get = |k: &str| p[k].as_u64().unwrap_or_else(|| panic!("{k} in {p}"));
    (
        get("used_bytes"),
        get("data_bytes"),
        get("logical_used_bytes"),
    )
}

fn scrub_is_clean(d: &Sluiced) {
    let scrub = d.ok("pool_scrub", json!({"deep": true}));
    assert_eq!(scrub["clean"], true, "{scrub}");
    assert_eq!(scrub["problems"], json!([]), "{scrub}");
}

/// Volume name -> its listed `parent` (a name or null), for every volume.
fn parents(d: &Sluiced) -> Vec<(String, Value)> {
    let vols = d.ok("volume_get_volumes", json!({}));
    let mut out: Vec<(String, Value)> = vols
        .as_array()
        .unwrap_or_else(|| panic!("{vols}"))
        .iter()
        .map(|v| {
            let name = v["name"].as_str().unwrap_or_else(|| panic!("{v}"));
            let parent = v.get("parent").unwrap_or_else(|| panic!("no parent: {v}"));
            (name.to_string(), parent.clone())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn expect_parents(d: &Sluiced, want: &[(&str, Option<&str>)]) {
    let mut want: Vec<(String, Value)> = want
        .iter()
        .map(|(n, p)| (n.to_string(), p.map_or(Value::Null, |p| json!(p))))
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(parents(d), want);
}

/// Whether `qemu-img compare` finds the image and the export equal (an
/// export larger than the image must read zeros past its end). Any answer
/// but "equal" or "differ" fails the test.
fn same(d: &Sluiced, img: &Path, export: &str) -> bool {
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(img)
        .arg(d.uri(export))
        .output()
        .expect("run qemu-img (scripts/setup installs it)");
    match o.status.code() {
        Some(0) => true,
        Some(1) => {
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(out.contains("Content mismatch"), "{out}");
            false
        }
        _ => panic!(
            "qemu-img compare {} {export}: {}\n{}",
            img.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// A copy of the whole export in `path` (qemu-img convert).
fn save(d: &Sluiced, export: &str, path: &Path) {
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &d.uri(export),
            path.to_str().unwrap(),
        ],
    );
}

fn read_export(d: &Sluiced, export: &str) -> Vec<u8> {
    let path = d.dir.join(format!("read-{export}.img"));
    save(d, export, &path);
    let data = std::fs::read(&path).expect("read the copy");
    let _ = std::fs::remove_file(&path);
    data
}

/// Reproducible bytes that do not compress.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write `data` at `offset` of an export and FLUSH (libnbd through nbdsh).
fn nbd_write(d: &Sluiced, export: &str, offset: u64, data: &[u8]) {
    let file = d.dir.join(format!("w-{export}-{offset}.bin"));
    std::fs::write(&file, data).expect("write the data file");
    let script = format!(
        "h.connect_uri({uri:?})\nh.pwrite(open({f:?}, 'rb').read(), {offset})\nh.flush()\n",
        uri = d.uri(export),
        f = file.display().to_string(),
    );
    run("nbdsh", &["-c", &script]);
    let _ = std::fs::remove_file(&file);
}

fn fio(args: &[String]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("fio", &args);
}

/// fio's crc32c-verified random writes over the first `size` bytes of an
/// export (`verify_only`: check what an earlier run wrote, write nothing).
fn fio_verify(d: &Sluiced, export: &str, size: &str, verify_only: bool) {
    let mut a: Vec<String> = [
        "--name=clone",
        "--ioengine=nbd",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--randrepeat=1",
        "--verify_state_save=0",
        "--output-format=terse",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("--size={size}"));
    a.push(format!("--uri={}", d.uri(export)));
    if verify_only {
        a.push("--verify_only=1".into());
    }
    fio(&a);
    run("nbdsh", &["-u", &d.uri(export), "-c", "h.flush()"]);
}

/// What a write to a read-only volume's export gets from qemu-io.
fn qemu_io_write_refused(d: &Sluiced, export: &str) -> String {
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5e 0 64k", &d.uri(export)])
        .output()
        .expect("run qemu-io");
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        text.contains("Permission denied")
            || text.contains("not permitted")
            || text.contains("read-only")
            || text.contains("Read-only"),
        "a write to snapshot export {export} was not refused: {text}"
    );
    assert!(
        !text.contains("wrote 65536/65536 bytes"),
        "qemu-io says the write to {export} went through: {text}"
    );
    text
}

fn sluice_cli(d: &Sluiced, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("-s")
        .arg(d.rpc_sock())
        .args(args)
        .env_remove("SLUICE_RPC_SOCKET")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Files the main test keeps to compare the volumes against.
struct Expected {
    /// What `origin` held when `snap` was taken (`snap` must equal it).
    image: PathBuf,
    /// What `origin` holds after fio overwrote part of it.
    origin: PathBuf,
}

/// Every check of what the three volumes hold: the snapshot equals the
/// image, the origin its copy after fio, the clone fio's verified data.
fn check_data(d: &Sluiced, e: &Expected) {
    assert!(same(d, &e.image, "snap"), "the snapshot changed");
    assert!(
        !same(d, &e.image, "origin"),
        "fio's writes did not change origin"
    );
    assert!(same(d, &e.origin, "origin"), "origin changed");
    fio_verify(d, "clone", "32M", true);
    assert!(
        !same(d, &e.image, "clone"),
        "fio's writes did not change the clone"
    );
    expect_parents(
        d,
        &[
            ("origin", None),
            ("snap", Some("origin")),
            ("clone", Some("snap")),
        ],
    );
}

#[test]
fn snapshot_keeps_its_data_clone_writes_and_both_survive_restart_and_kill9() {
    let mut d = Sluiced::start("snapshot", &["--no-default-volume"]);
    d.ok("volume_create", json!({"name": "origin", "size": "128M"}));
    d.ok("nbd_export_add", json!({"volume": "origin"}));
    let baseline = usage(&d);

    // 64 MiB (random, zero and text-like MiBs) into the volume.
    let image = d.dir.join("image.img");
    mixed_image(&image, 64 * M);
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            image.to_str().unwrap(),
            &d.uri("origin"),
        ],
    );
    assert!(same(&d, &image, "origin"));
    let written = usage(&d);
    assert!(written.1 > baseline.1, "{written:?} vs {baseline:?}");

    // The snapshot: a read-only volume of the same size, sharing every
    // block (the pool's data does not grow).
    let s = d.ok(
        "volume_snapshot",
        json!({"volume": "origin", "name": "snap"}),
    );
    assert_eq!(s["name"], "snap", "{s}");
    assert_eq!(s["read_only"], true, "{s}");
    assert_eq!(s["size"], 128 * M, "{s}");
    assert_eq!(s["chunk_size"], 65536, "{s}");
    assert_eq!(s["compression"], "lz4", "{s}");
    assert_eq!(usage(&d).1, written.1, "a snapshot copies no data");
    let listed = d.ok("volume_get_volumes", json!({}));
    let space = |name: &str| -> (u64, u64) {
        let v = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {listed}"));
        (
            v["mapped_bytes"].as_u64().unwrap(),
            v["allocated_bytes"].as_u64().unwrap(),
        )
    };
    assert_eq!(space("snap"), space("origin"), "{listed}");

    // fio overwrites 16 MiB at random over the imaged range of origin.
    fio(&[
        "--name=overwrite".into(),
        "--ioengine=nbd".into(),
        format!("--uri={}", d.uri("origin")),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        "--iodepth=16".into(),
        "--size=64M".into(),
        "--io_size=16M".into(),
        "--randrepeat=1".into(),
        "--output-format=terse".into(),
    ]);
    run("nbdsh", &["-u", &d.uri("origin"), "-c", "h.flush()"]);

    // The snapshot reads what origin held; origin does not any more.
    d.ok("nbd_export_add", json!({"volume": "snap"}));
    assert!(same(&d, &image, "snap"), "the snapshot changed with origin");
    assert!(!same(&d, &image, "origin"), "fio did not change origin");
    let origin_copy = d.dir.join("origin-after-fio.img");
    save(&d, "origin", &origin_copy);

    // The snapshot's export is read-only: nbdinfo says so, a write is
    // refused and changes nothing, reads work.
    let info = stdout(&run("nbdinfo", &["--json", &d.uri("snap")]));
    let info: Value = serde_json::from_str(&info).expect("nbdinfo --json");
    assert_eq!(info["exports"][0]["is_read_only"], true, "{info}");
    qemu_io_write_refused(&d, "snap");
    run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0 1M 1M", &d.uri("snap")],
    );
    assert!(
        same(&d, &image, "snap"),
        "the refused write changed the snapshot"
    );

    // A clone of the snapshot starts with the snapshot's data and takes
    // fio's verified writes; snapshot and origin stay as they were.
    let c = d.ok("volume_clone", json!({"snapshot": "snap", "name": "clone"}));
    assert_eq!(c["read_only"], false, "{c}");
    assert_eq!(c["size"], 128 * M, "{c}");
    d.ok("nbd_export_add", json!({"volume": "clone"}));
    assert!(
        same(&d, &image, "clone"),
        "the clone does not read the snapshot"
    );
    fio_verify(&d, "clone", "32M", false);
    let expected = Expected {
        image: image.clone(),
        origin: origin_copy,
    };
    check_data(&d, &expected);

    // The CLI's table has a PARENT column naming them.
    let table = sluice_cli(&d, &["volume_get_volumes"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header.last(), Some(&"PARENT"), "{table}");
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} in {table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        row("clone").last().map(String::as_str),
        Some("snap"),
        "{table}"
    );
    assert_eq!(
        row("snap").last().map(String::as_str),
        Some("origin"),
        "{table}"
    );
    assert_eq!(
        row("origin").last().map(String::as_str),
        Some("-"),
        "{table}"
    );
    scrub_is_clean(&d);

    // A clean restart: the same volumes, parents and data.
    d.stop();
    d.spawn();
    check_data(&d, &expected);

    // A snapshot of the clone taken through the CLI, then the clone
    // overwritten in part; kill -9 (everything written was flushed) and
    // restart on the same pool file: log replay keeps both.
    let clone_before = d.dir.join("clone-before.img");
    save(&d, "clone", &clone_before);
    let out = sluice_cli(&d, &["volume_snapshot", "clone", "snap2"]);
    assert!(
        out.starts_with("volume clone snapshotted as snap2\n"),
        "{out}"
    );
    d.ok("nbd_export_add", json!({"volume": "snap2"}));
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x77 1M 3M", &d.uri("clone")],
    );
    let clone_after = d.dir.join("clone-after.img");
    save(&d, "clone", &clone_after);
    assert!(!same(&d, &clone_before, "clone"));
    assert!(same(&d, &clone_before, "snap2"));
    d.kill9();
    d.spawn();
    assert!(same(&d, &clone_before, "snap2"), "snap2 after kill -9");
    assert!(same(&d, &clone_after, "clone"), "clone after kill -9");
    run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x77 1M 3M",
            &d.uri("clone"),
        ],
    );
    assert!(same(&d, &image, "snap"), "snap after kill -9");
    assert!(same(&d, &expected.origin, "origin"), "origin after kill -9");
    expect_parents(
        &d,
        &[
            ("origin", None),
            ("snap", Some("origin")),
            ("clone", Some("snap")),
            ("snap2", Some("clone")),
        ],
    );
    qemu_io_write_refused(&d, "snap2");
    scrub_is_clean(&d);

    // Delete origin first: the others keep their data, snap's parent is
    // gone. Then the rest; every block comes back.
    for v in ["origin", "snap", "clone", "snap2"] {
        d.ok("nbd_export_remove", json!({"name": v}));
    }
    d.ok("volume_delete", json!({"name": "origin"}));
    d.ok("nbd_export_add", json!({"volume": "snap"}));
    assert!(same(&d, &image, "snap"), "snap after origin was deleted");
    d.ok("nbd_export_remove", json!({"name": "snap"}));
    expect_parents(
        &d,
        &[
            ("snap", None),
            ("clone", Some("snap")),
            ("snap2", Some("clone")),
        ],
    );
    for v in ["clone", "snap", "snap2"] {
        d.ok("volume_delete", json!({"name": v}));
    }
    assert_eq!(d.ok("volume_get_volumes", json!({})), json!([]));
    assert_eq!(
        usage(&d),
        baseline,
        "(used, data, logical) after deleting all"
    );
    scrub_is_clean(&d);
}

/// Origin, snapshot and clone deleted in each of the six orders, each round
/// on fresh volumes of one pool (4 KiB raw chunks and 64 KiB lz4 chunks in
/// turn): after each delete the remaining volumes read exactly what they
/// should and name their parent only while it exists; after the last the
/// pool's usage is what it was before the round's first write, and a deep
/// scrub is clean.
#[test]
fn deletes_in_every_order_keep_the_rest_and_free_every_block() {
    const SIZE: usize = 32 << 20;
    let d = Sluiced::start("snapshot-orders", &["--no-default-volume"]);
    let baseline = usage(&d);
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for (round, order) in orders.iter().enumerate() {
        let names = [
            format!("o{round}"),
            format!("s{round}"),
            format!("c{round}"),
        ];
        let (o, s, c) = (&names[0], &names[1], &names[2]);
        let (chunk, compression) = if round % 2 == 0 {
            ("4K", "none")
        } else {
            ("64K", "lz4")
        };
        d.ok(
            "volume_create",
            json!({"name": o, "size": SIZE, "chunk_size": chunk, "compression": compression}),
        );
        d.ok("nbd_export_add", json!({"volume": o}));
        assert_eq!(
            usage(&d),
            baseline,
            "round {round} starts from the baseline"
        );

        // Origin: 8 MiB of random data and 2 MiB of a pattern.
        let mut model_o = vec![0u8; SIZE];
        let a = random_bytes(round as u64 * 10 + 1, 8 << 20);
        nbd_write(&d, o, 0, &a);
        model_o[..8 << 20].copy_from_slice(&a);
        let pattern = vec![0x3c_u8; 2 << 20];
        nbd_write(&d, o, 12 << 20, &pattern);
        model_o[12 << 20..14 << 20].copy_from_slice(&pattern);

        d.ok("volume_snapshot", json!({"volume": o, "name": s}));
        let model_s = model_o.clone();
        // Origin overwritten in part (not on a chunk boundary) and written
        // where it held nothing.
        let b = random_bytes(round as u64 * 10 + 2, (2 << 20) + 8192);
        nbd_write(&d, o, (1 << 20) + 4096, &b);
        model_o[(1 << 20) + 4096..(3 << 20) + 12288].copy_from_slice(&b);
        let e = random_bytes(round as u64 * 10 + 3, 1 << 20);
        nbd_write(&d, o, 20 << 20, &e);
        model_o[20 << 20..21 << 20].copy_from_slice(&e);

        d.ok("volume_clone", json!({"snapshot": s, "name": c}));
        d.ok("nbd_export_add", json!({"volume": c}));
        d.ok("nbd_export_add", json!({"volume": s}));
        let mut model_c = model_s.clone();
        let f = random_bytes(round as u64 * 10 + 4, 1 << 20);
        nbd_write(&d, c, 6 << 20, &f);
        model_c[6 << 20..7 << 20].copy_from_slice(&f);
        let g = vec![0xc3_u8; 1 << 20];
        nbd_write(&d, c, 13 << 20, &g);
        model_c[13 << 20..14 << 20].copy_from_slice(&g);

        let models = [model_o, model_s, model_c];
        let parent_of = [None, Some(0), Some(1)];
        let mut alive = [true; 3];
        let check = |alive: &[bool; 3], when: &str| {
            for i in (0..3).filter(|i| alive[*i]) {
                let got = read_export(&d, &names[i]);
                assert!(
                    got == models[i],
                    "round {round} {when}: {} does not read what was written (first difference at byte {:?})",
                    names[i],
                    got.iter().zip(&models[i]).position(|(x, y)| x != y)
                );
            }
            let want: Vec<(&str, Option<&str>)> = (0..3)
                .filter(|i| alive[*i])
                .map(|i| {
                    let p = parent_of[i]
                        .filter(|p: &usize| alive[*p])
                        .map(|p| names[p].as_str());
                    (names[i].as_str(), p)
                })
                .collect();
            expect_parents(&d, &want);
        };
        check(&alive, "before any delete");
        for &i in order {
            d.ok("nbd_export_remove", json!({"name": names[i]}));
            d.ok("volume_delete", json!({"name": names[i]}));
            alive[i] = false;
            check(&alive, &format!("after deleting {}", names[i]));
        }
        assert_eq!(
            usage(&d),
            baseline,
            "round {round} (order {order:?}): (used, data, logical) after deleting all three"
        );
        scrub_is_clean(&d);
    }
}

/// Snapshot of an unknown volume, a name already taken, a clone of a
/// writable volume: each a JSON-RPC error that says what is wrong, and
/// nothing is created.
#[test]
fn bad_snapshot_and_clone_requests_are_clear_errors() {
    let d = Sluiced::start("snapshot-errors", &["--no-default-volume"]);
    d.ok("volume_create", json!({"name": "v", "size": "64M"}));
    d.ok("volume_snapshot", json!({"volume": "v", "name": "s"}));

    let (code, msg) = rpc_error(
        &d,
        "volume_snapshot",
        json!({"volume": "nope", "name": "x"}),
    );
    assert_eq!(code, codes::NOT_FOUND, "{msg}");
    assert!(msg.contains("volume 'nope' not found"), "{msg}");

    for taken in ["v", "s"] {
        let (code, msg) = rpc_error(&d, "volume_snapshot", json!({"volume": "v", "name": taken}));
        assert_eq!(code, codes::EXISTS, "{msg}");
        assert!(
            msg.contains(&format!("'{taken}'")) && msg.contains("already exists"),
            "{msg}"
        );
        let (code, msg) = rpc_error(&d, "volume_clone", json!({"snapshot": "s", "name": taken}));
        assert_eq!(code, codes::EXISTS, "{msg}");
        assert!(
            msg.contains(&format!("'{taken}'")) && msg.contains("already exists"),
            "{msg}"
        );
    }

    let (code, msg) = rpc_error(&d, "volume_clone", json!({"snapshot": "v", "name": "c"}));
    assert_eq!(code, codes::INVALID_PARAMS, "{msg}");
    assert!(msg.contains("'v'") && msg.contains("read-only"), "{msg}");

    let (code, msg) = rpc_error(&d, "volume_clone", json!({"snapshot": "nope", "name": "c"}));
    assert_eq!(code, codes::NOT_FOUND, "{msg}");
    assert!(msg.contains("volume 'nope' not found"), "{msg}");

    let (code, msg) = rpc_error(
        &d,
        "volume_snapshot",
        json!({"volume": "v", "name": "bad/name"}),
    );
    assert_eq!(code, codes::INVALID_PARAMS, "{msg}");
    assert!(msg.contains("bad volume name"), "{msg}");

    let (code, msg) = rpc_error(&d, "volume_snapshot", json!({"volume": "v"}));
    assert_eq!(code, codes::INVALID_PARAMS, "{msg}");
    assert!(msg.contains("name"), "{msg}");
    let (code, msg) = rpc_error(
        &d,
        "volume_clone",
        json!({"snapshot": "s", "name": "c", "size": 1}),
    );
    assert_eq!(code, codes::INVALID_PARAMS, "{msg}");
    assert!(msg.contains("size"), "{msg}");

    // None of that created anything.
    expect_parents(&d, &[("v", None), ("s", Some("v"))]);
    // A read-only clone is refused writes like its snapshot.
    let c = d.ok(
        "volume_clone",
        json!({"snapshot": "s", "name": "rc", "read_only": true}),
    );
    assert_eq!(c["read_only"], true, "{c}");
    d.ok("nbd_export_add", json!({"volume": "rc"}));
    qemu_io_write_refused(&d, "rc");
    expect_parents(&d, &[("v", None), ("s", Some("v")), ("rc", Some("s"))]);
}
