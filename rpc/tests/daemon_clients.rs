//! The real daemon with real NBD clients: nbdinfo, qemu-io, qemu-img,
//! nbdcopy, fio (verify across restarts, clean and after kill -9).

mod common;
use common::*;
use serde_json::json;

#[test]
fn default_start_exports_vol0() {
    let d = Sluiced::start("default", &[]);
    let size = stdout(&run("nbdinfo", &["--size", &d.uri("vol0")]));
    assert_eq!(size.trim(), (8u64 << 30).to_string());
    let js = stdout(&run("nbdinfo", &["--json", &d.tcp_uri("vol0")]));
    let v: serde_json::Value = serde_json::from_str(&js).expect("nbdinfo --json");
    let e = &v["exports"][0];
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["can_flush"], true);
    assert_eq!(e["can_fua"], true);
    assert_eq!(e["can_trim"], true);
    assert_eq!(e["can_zero"], true);
    assert_eq!(e["can_multi_conn"], true);
    // Any byte offset and length (README, "NBD request sizes").
    assert_eq!(e["block_size_minimum"], 1);
    let pools = d.ok("pool_get_pools", json!({}));
    assert_eq!(pools.as_array().map(|a| a.len()), Some(1));
    assert_eq!(pools[0]["name"], "pool0");
}

#[test]
fn qemu_io_patterns_trim_holes_and_read_only_snapshot_export() {
    let d = Sluiced::start("qemuio", &[]);
    let u = d.uri("vol0");
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0xcd 3M 512k",
            "-c",
            "write -P 0x11 7345032 1024",
            &u,
        ],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "read -P 0xcd 3M 512k",
            "-c",
            "read -P 0x11 7345032 1024",
            "-c",
            "read -P 0 1M 2M",
            &u,
        ],
    );
    // A wrong pattern must be reported as a mismatch (the check can fail).
    let bad = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0xee 0 4k", &u])
        .output()
        .expect("qemu-io");
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("Pattern verification failed"),
        "pattern check did not fail"
    );
    let map = stdout(&run("nbdinfo", &["--map", &u]));
    assert!(
        map.lines().next().is_some_and(|l| l.contains("data")),
        "{map}"
    );
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "discard 0 1M",
            "-c",
            "write -z 3M 512k",
            &u,
        ],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0 0 1M",
            "-c",
            "read -P 0 3M 512k",
            &u,
        ],
    );
    let map = stdout(&run("nbdinfo", &["--map", &u]));
    let first = map.lines().next().unwrap_or("");
    assert!(
        first.contains("hole"),
        "after discard the start must be a hole: {map}"
    );
    // A read-only export of the same volume refuses writes.
    d.ok(
        "nbd_export_add",
        json!({"volume": "vol0", "name": "vol0-ro", "read_only": true}),
    );
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4k", &d.uri("vol0-ro")])
        .output()
        .expect("qemu-io");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success()
            || all.contains("ermission")
            || all.contains("read-only")
            || all.contains("Read-only"),
        "{all}"
    );
    run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x11 7345032 1024",
            &d.uri("vol0-ro"),
        ],
    );
}

#[test]
fn qemu_img_convert_multi_gib_and_compare_back() {
    let d = Sluiced::start("convert", &[]);
    let img = d.dir.join("src.img");
    mixed_image(&img, 2 << 30);
    let img_s = img.display().to_string();
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            &img_s,
            &d.uri("vol0"),
        ],
    );
    // The export is larger than the image; qemu-img compare accepts that
    // when the extra range reads as zeros (it is a hole).
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &img_s,
            &d.tcp_uri("vol0"),
        ],
    );
    let out = d.dir.join("back.img");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &d.uri("vol0"),
            &out.display().to_string(),
        ],
    );
    run(
        "cmp",
        &[
            "-n",
            &(2u64 << 30).to_string(),
            &img_s,
            &out.display().to_string(),
        ],
    );
    let pools = d.ok("pool_get_pools", json!({}));
    let logical = pools[0]["logical_used_bytes"].as_u64().unwrap_or(0);
    let data = pools[0]["data_bytes"].as_u64().unwrap_or(u64::MAX);
    // A quarter is zero (holes), half is text that lz4 packs well.
    assert!(
        logical <= (2u64 << 30) * 3 / 4 + (64 << 20),
        "zero regions must be holes: logical {logical}"
    );
    assert!(
        data < logical * 3 / 4,
        "compression must save space: data {data} logical {logical}"
    );
}

#[test]
fn nbdcopy_in_and_out_multi_conn() {
    let d = Sluiced::start("nbdcopy", &[]);
    let img = d.dir.join("in.img");
    mixed_image(&img, 256 << 20);
    run(
        "nbdcopy",
        &["--flush", &img.display().to_string(), &d.uri("vol0")],
    );
    let out = d.dir.join("out.img");
    run("nbdcopy", &[&d.tcp_uri("vol0"), &out.display().to_string()]);
    run(
        "cmp",
        &[
            "-n",
            &(256u64 << 20).to_string(),
            &img.display().to_string(),
            &out.display().to_string(),
        ],
    );
}

fn fio(args: &[&str]) -> String {
    stdout(&run("fio", args))
}

#[test]
fn fio_verify_survives_clean_restart_and_kill9() {
    let mut d = Sluiced::start("fio", &[]);
    d.ok(
        "volume_create",
        json!({"name": "raw", "size": "1G", "chunk_size": "4K", "compression": "none"}),
    );
    d.ok("nbd_export_add", json!({"volume": "raw"}));
    for (vol, bs) in [("vol0", "4k"), ("raw", "4k")] {
        let uri = d.uri(vol);
        let base = [
            "--name=v",
            "--ioengine=nbd",
            "--rw=randwrite",
            "--bs",
            bs,
            "--iodepth=32",
            "--numjobs=2",
            "--size=256M",
            "--offset_increment=256M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--randrepeat=1",
            "--verify_state_save=0",
            "--group_reporting",
            "--output-format=terse",
        ];
        let mut a: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        a.push(format!("--uri={uri}"));
        let args: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        fio(&args);
        // flush through a FUA-less path: fio's nbd engine issues FLUSH at the end of its writes
        run("nbdsh", &["-u", &uri, "-c", "h.flush()"]);
    }
    let verify_all = |d: &Sluiced| {
        for vol in ["vol0", "raw"] {
            let uri = d.uri(vol);
            let a: Vec<String> = [
                "--name=v",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=32",
                "--numjobs=2",
                "--size=256M",
                "--offset_increment=256M",
                "--verify=crc32c",
                "--verify_only=1",
                "--verify_fatal=1",
                "--randrepeat=1",
                "--verify_state_save=0",
                "--group_reporting",
                "--output-format=terse",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("--uri={uri}")])
            .collect();
            let args: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
            fio(&args);
        }
    };
    verify_all(&d);
    d.stop();
    d.spawn();
    verify_all(&d);
    d.kill9();
    d.spawn();
    verify_all(&d);
    let scrub = d.ok("pool_scrub", json!({"deep": true}));
    assert_eq!(scrub["clean"], true, "{scrub}");
}

#[test]
fn garbage_clients_do_not_hurt_others() {
    use std::io::{Read, Write};
    let mut d = Sluiced::start("garbage", &[]);
    let u = d.uri("vol0");
    run("qemu-io", &["-f", "raw", "-c", "write -P 0x5a 0 64k", &u]);
    for junk in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        &b"NBDMAGIC"[..],
        &[][..],
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(d.nbd_sock()).expect("connect");
        let _ = s.write_all(junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok();
        let _ = s.read_to_end(&mut sink);
    }
    // A client that vanishes mid-transmission.
    let _ = run(
        "nbdsh",
        &[
            "-u",
            &u,
            "-c",
            "b = nbd.Buffer(1 << 20)",
            "-c",
            "[h.aio_pread(b, i << 20) for i in range(16)]",
            "-c",
            "import os",
            "-c",
            "os._exit(0)",
        ],
    );
    assert!(d.alive(), "daemon died");
    run("qemu-io", &["-f", "raw", "-c", "read -P 0x5a 0 64k", &u]);
}

/// fio over NBD against the real daemon: steady 4 KiB I/O does not allocate
/// on the reactor (one reactor: the connection and the zones share it).
/// Connection setup and the odd intent-log growth or B+tree split do, hence
/// a fixed allowance plus a small one per I/O; the code before this test
/// allocated 3 (reads) to 8 (writes) times per request.
#[test]
fn nbd_4k_io_does_not_allocate_on_the_reactor() {
    let d = Sluiced::start("alloc", &["--cores", "0"]);
    d.ok(
        "volume_create",
        json!({"name": "a", "size": "256M", "chunk_size": "4K", "compression": "none"}),
    );
    d.ok("nbd_export_add", json!({"volume": "a"}));
    let uri = format!("--uri={}", d.uri("a"));
    let common = ["--name=a", "--ioengine=nbd", "--size=256M", &uri];
    fio(&[&common[..], &["--rw=write", "--bs=1M", "--iodepth=8"]].concat());
    let allocs = || {
        d.ok("framework_get_reactors", json!({}))[0]["heap_allocs"]
            .as_u64()
            .expect("heap_allocs")
    };
    for (rw, max) in [("randread", 0.01), ("randwrite", 0.05)] {
        let a0 = allocs();
        let out = fio(&[
            &common[..],
            &[
                &format!("--rw={rw}"),
                "--bs=4k",
                "--iodepth=16",
                "--runtime=2",
                "--time_based",
                "--norandommap",
                "--output-format=json",
            ],
        ]
        .concat());
        let a1 = allocs();
        let js: serde_json::Value =
            serde_json::from_str(&out[out.find('{').expect("fio JSON")..]).expect("fio JSON");
        let job = &js["jobs"][0];
        let ios = job["read"]["total_ios"].as_u64().unwrap_or(0)
            + job["write"]["total_ios"].as_u64().unwrap_or(0);
        assert!(ios > 5000, "{rw}: only {ios} I/Os");
        // The connection's setup and teardown and the final flush allocate
        // a few hundred times whatever the I/O count.
        let per = (a1 - a0) as f64 / ios as f64;
        let allowed = 1000.0 + max * ios as f64;
        assert!(
            (a1 - a0) as f64 <= allowed,
            "{rw}: {} heap allocations on the reactor for {ios} I/Os ({per:.3} per I/O; \
             at most 1000 + {max} per I/O)",
            a1 - a0
        );
        assert!(a0 > 0, "the allocation counter is not installed");
    }
}
