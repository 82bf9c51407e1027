//! Real NBD clients (libnbd's nbdinfo/nbdsh/nbdcopy, qemu-img, qemu-io)
//! against the reference server built on `sluice_reactor::nbd`.
//!
//! A missing tool fails the test with an install hint; nothing is skipped.

mod nbd_common;

use std::process::Command;

use nbd_common::*;

const MIB: u64 = 1 << 20;

fn nbdinfo() -> Command {
    Command::new(require_tool("nbdinfo", "libnbd-bin"))
}

fn qemu_io() -> Command {
    Command::new(require_tool("qemu-io", "qemu-utils"))
}

fn qemu_img() -> Command {
    Command::new(require_tool("qemu-img", "qemu-utils"))
}

fn nbdcopy() -> Command {
    Command::new(require_tool("nbdcopy", "libnbd-bin"))
}

/// Parse `nbdinfo --map` output into (offset, length, type, description).
fn parse_map(out: &str) -> Vec<(u64, u64, u32, String)> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 4, "bad map line {l:?}");
            (
                f[0].parse().expect("offset"),
                f[1].parse().expect("length"),
                f[2].parse().expect("type"),
                f[3].to_string(),
            )
        })
        .collect()
}

/// A few MiB of mixed content: random, zero, and 4 KiB-interleaved runs, so
/// zero detection, holes and data all get exercised.
fn mixed_image(len: usize) -> Vec<u8> {
    let seg = 256 * 1024;
    let mut img = vec![0u8; len];
    for (i, chunk) in img.chunks_mut(seg).enumerate() {
        match i % 4 {
            0 => chunk.copy_from_slice(&random_bytes(i as u64 + 1, chunk.len())),
            1 => {} // all zero
            2 => {
                for (j, blk) in chunk.chunks_mut(4096).enumerate() {
                    if j % 2 == 0 {
                        blk.copy_from_slice(&random_bytes((i * 1000 + j) as u64, blk.len()));
                    }
                }
            }
            _ => {
                chunk.copy_from_slice(&random_bytes(i as u64 * 77, chunk.len()));
                chunk[64 * 1024..68 * 1024].fill(0);
            }
        }
    }
    img
}

fn assert_no_panics(server: &TestServer) {
    assert_eq!(server.panics(), 0, "server connection thread panicked");
}

#[test]
fn nbdinfo_size_read_only_and_block_sizes() {
    let server = TestServer::start(vec![
        MemExport::new("disk", 8 * MIB, false),
        MemExport::new("snap", MIB, true),
    ]);
    let out = run_ok(nbdinfo().arg("--size").arg(server.unix_uri("disk")));
    assert_eq!(stdout(&out).trim(), (8 * MIB).to_string());

    // `--is read-only` exits 0 when true, 2 when false.
    let ro = run_any(
        nbdinfo()
            .args(["--is", "read-only"])
            .arg(server.unix_uri("snap")),
    );
    assert_eq!(ro.status.code(), Some(0), "snap should be read-only");
    let rw = run_any(
        nbdinfo()
            .args(["--is", "read-only"])
            .arg(server.tcp_uri("disk")),
    );
    assert_eq!(rw.status.code(), Some(2), "disk should be writable");

    let json = stdout(&run_ok(
        nbdinfo().arg("--json").arg(server.unix_uri("disk")),
    ));
    for needle in [
        "\"export-name\": \"disk\"",
        "\"export-size\": 8388608",
        "\"is_read_only\": false",
        "\"structured\": true",
        "\"base:allocation\"",
        "\"can_flush\": true",
        "\"can_fua\": true",
        "\"can_trim\": true",
        "\"can_zero\": true",
        "\"can_fast_zero\": true",
        "\"can_multi_conn\": true",
        "\"can_df\": true",
        "\"block_size_minimum\": 1",
        "\"block_size_preferred\": 4096",
        "\"block_size_maximum\": 67108864",
        "\"description\": \"in-memory test export disk\"",
    ] {
        assert!(json.contains(needle), "missing {needle} in:\n{json}");
    }
    let json = stdout(&run_ok(nbdinfo().arg("--json").arg(server.tcp_uri("snap"))));
    for needle in [
        "\"is_read_only\": true",
        "\"can_trim\": false",
        "\"can_zero\": false",
        "\"can_fua\": false",
    ] {
        assert!(json.contains(needle), "missing {needle} in:\n{json}");
    }
    // Unknown export: GO gets ERR_UNKNOWN and nbdinfo fails cleanly.
    let bad = run_any(nbdinfo().arg(server.unix_uri("nope")));
    assert!(!bad.status.success());
    assert_no_panics(&server);
}

#[test]
fn nbdinfo_list_over_tcp() {
    let server = TestServer::start(vec![
        MemExport::new("disk", 8 * MIB, false),
        MemExport::new("snap", MIB, true),
    ]);
    let out = stdout(&run_ok(nbdinfo().arg("--list").arg(server.tcp_uri(""))));
    assert!(out.contains("export=\"disk\""), "{out}");
    assert!(out.contains("export=\"snap\""), "{out}");
    assert!(out.contains("in-memory test export snap"), "{out}");
    assert_no_panics(&server);
}

#[test]
fn nbdinfo_map_shows_hole_after_trim() {
    let server = TestServer::start(vec![MemExport::new("disk", 4 * MIB, false)]);
    let export = server.export("disk");
    export.write(0, &vec![0xab; 2 * MIB as usize]);
    let uri = server.unix_uri("disk");

    let map = parse_map(&stdout(&run_ok(nbdinfo().arg("--map").arg(&uri))));
    assert_eq!(
        map,
        vec![
            (0, 2 * MIB, 0, "data".into()),
            (2 * MIB, 2 * MIB, 3, "hole,zero".into())
        ]
    );

    // Trim through a different client, then look again.
    run_ok(
        qemu_io()
            .args(["-f", "raw", "-c", "discard 1M 512k"])
            .arg(&uri),
    );
    let map = parse_map(&stdout(&run_ok(nbdinfo().arg("--map").arg(&uri))));
    assert_eq!(
        map,
        vec![
            (0, MIB, 0, "data".into()),
            (MIB, MIB / 2, 3, "hole,zero".into()),
            (MIB + MIB / 2, MIB / 2, 0, "data".into()),
            (2 * MIB, 2 * MIB, 3, "hole,zero".into()),
        ]
    );
    assert!(!export.is_allocated(MIB));
    assert_no_panics(&server);
}

#[test]
fn nbd_qemu_io_write_read_verify_unix_and_tcp() {
    let server = TestServer::start(vec![MemExport::new("disk", 8 * MIB, false)]);
    for uri in [server.unix_uri("disk"), server.tcp_uri("disk")] {
        let cmds = [
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -P 0xcd 1M 512k",
            "read -P 0xcd 1M 512k",
            "read -P 0xab 0 1M",
            "discard 1M 512k",
            "write -P 0x11 2M 1M",
            "write -z 2M 1M",
            "read -P 0 2M 1M",
            "write -P 0x22 3M 1M",
            "write -z -u 3M 1M",
            "read -P 0 3M 1M",
            "write -f -P 0x33 4M 64k",
            "read -P 0x33 4M 64k",
            "flush",
        ];
        let mut cmd = qemu_io();
        cmd.args(["-f", "raw"]);
        for c in cmds {
            cmd.args(["-c", c]);
        }
        let out = run_ok(cmd.arg(&uri));
        let text = stdout(&out);
        assert!(!text.contains("failed"), "{uri}: {text}");

        let e = server.export("disk");
        assert_eq!(e.read(0, MIB), vec![0xab; MIB as usize]);
        assert!(!e.is_allocated(MIB), "discard made a hole");
        assert!(
            e.is_allocated(2 * MIB),
            "write -z without -u keeps blocks allocated"
        );
        assert!(!e.is_allocated(3 * MIB), "write -z -u punches a hole");
        assert_eq!(e.read(4 * MIB, 64 << 10), vec![0x33; 64 << 10]);

        // The verification is real: a wrong pattern fails.
        let bad = run_any(
            qemu_io()
                .args(["-f", "raw", "-c", "read -P 0xee 0 4k"])
                .arg(&uri),
        );
        assert!(
            !bad.status.success() || stdout(&bad).contains("Pattern verification failed"),
            "{}",
            stdout(&bad)
        );
    }
    assert_no_panics(&server);
}

#[test]
fn nbd_qemu_img_convert_and_compare_roundtrip() {
    let len = 6 * MIB as usize;
    let img = mixed_image(len);
    let server = TestServer::start(vec![MemExport::new("disk", len as u64, false)]);
    let dir = server.dir().to_path_buf();
    let input = dir.join("in.img");
    let output = dir.join("out.img");
    std::fs::write(&input, &img).expect("write input image");

    // In over TCP, compare over Unix, out over Unix.
    run_ok(
        qemu_img()
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&input)
            .arg(server.tcp_uri("disk")),
    );
    assert!(
        server.export("disk").read(0, len as u64) == img,
        "server content differs"
    );
    run_ok(
        qemu_img()
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&input)
            .arg(server.unix_uri("disk")),
    );
    run_ok(
        qemu_img()
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(server.unix_uri("disk"))
            .arg(&output),
    );
    assert!(
        std::fs::read(&output).expect("read output") == img,
        "out.img differs"
    );

    // qemu-img map goes through BLOCK_STATUS.
    let map = stdout(&run_ok(
        qemu_img()
            .args(["map", "--output=json", "-f", "raw"])
            .arg(server.unix_uri("disk")),
    ));
    assert!(map.contains("\"data\": true"), "{map}");

    // compare really compares: flip one byte on the server.
    server
        .export("disk")
        .write(5 * MIB, &[img[5 * MIB as usize] ^ 0xff]);
    let diff = run_any(
        qemu_img()
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&input)
            .arg(server.tcp_uri("disk")),
    );
    assert_eq!(diff.status.code(), Some(1), "{}", stdout(&diff));
    assert_no_panics(&server);
}

#[test]
fn nbdcopy_in_and_out() {
    let len = 6 * MIB as usize;
    let img = mixed_image(len);
    let server = TestServer::start(vec![MemExport::new("disk", len as u64, false)]);
    let dir = server.dir().to_path_buf();
    let input = dir.join("in.img");
    let output = dir.join("out.img");
    std::fs::write(&input, &img).expect("write input image");

    run_ok(
        nbdcopy()
            .arg("--flush")
            .arg(&input)
            .arg(server.unix_uri("disk")),
    );
    assert!(
        server.export("disk").read(0, len as u64) == img,
        "server content differs"
    );
    run_ok(nbdcopy().arg(server.tcp_uri("disk")).arg(&output));
    assert!(
        std::fs::read(&output).expect("read output") == img,
        "out.img differs"
    );
    // nbdcopy uses several connections when CAN_MULTI_CONN is set.
    assert!(server.connections() >= 2, "{}", server.connections());
    assert_no_panics(&server);
}

const NBDSH_RW_SCRIPT: &str = r#"
import os
h.add_meta_context("base:allocation")
h.connect_uri(os.environ["URI"])
assert h.get_structured_replies_negotiated()
assert h.can_meta_context("base:allocation")
for f in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero",
          "can_multi_conn", "can_df"):
    assert getattr(h, f)(), f
assert not h.is_read_only()
assert h.get_size() == 4 << 20
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 64 << 20

K = 1024
h.pwrite(b"\xab" * (1 << 20), 0, nbd.CMD_FLAG_FUA)
h.flush()
assert h.pread(1 << 20, 0) == b"\xab" * (1 << 20)
h.trim(256 * K, 256 * K)
h.zero(512 * K, 2 << 20, nbd.CMD_FLAG_FAST_ZERO)
h.zero(64 * K, 3 << 20, nbd.CMD_FLAG_NO_HOLE)

def extents(flags=0, count=4 << 20, offset=0):
    got = []
    def cb(ctx, off, entries, err):
        assert ctx == "base:allocation", ctx
        assert off == offset
        got.extend(zip(entries[0::2], entries[1::2]))
        return 0
    h.block_status(count, offset, cb, flags)
    return got

assert extents() == [(256 * K, 0), (256 * K, 3), (512 * K, 0), (2 << 20, 3),
                     (64 * K, 0), (960 * K, 3)], extents()
assert extents(nbd.CMD_FLAG_REQ_ONE) == [(256 * K, 0)], extents(nbd.CMD_FLAG_REQ_ONE)
assert extents(nbd.CMD_FLAG_REQ_ONE, 4096, 256 * K) == [(4096, 3)]

def chunks(flags=0):
    got = []
    def cb(buf, off, status, err):
        got.append((off, len(buf), status, bytes(buf)))
        return 0
    h.pread_structured(1 << 20, 0, cb, flags)
    return got

c = chunks()
assert [(o, n, s) for o, n, s, _ in c] == [
    (0, 256 * K, nbd.READ_DATA), (256 * K, 256 * K, nbd.READ_HOLE),
    (512 * K, 512 * K, nbd.READ_DATA)], [(o, n, s) for o, n, s, _ in c]
c = chunks(nbd.CMD_FLAG_DF)
assert len(c) == 1 and c[0][2] == nbd.READ_DATA and c[0][1] == 1 << 20
assert c[0][3] == b"\xab" * (256 * K) + bytes(256 * K) + b"\xab" * (512 * K)

# Errors the server (not libnbd) must report: turn off client-side checks.
h.set_strict_mode(0)
def server_error(f):
    try:
        f()
    except nbd.Error as e:
        assert "command failed" in e.string, e.string
        return e.errno
    raise AssertionError("no error")
assert server_error(lambda: h.pread(512, (4 << 20) - 100)) == "EINVAL"
assert server_error(lambda: h.pread(512, 4 << 20)) == "EINVAL"
assert server_error(lambda: h.pwrite(b"x" * 1024, (4 << 20) - 512)) == "ENOSPC"
assert server_error(lambda: h.zero(4096, 4 << 20)) == "ENOSPC"
assert server_error(lambda: h.trim(4096, 4 << 20)) == "EINVAL"
assert h.pread(512, 0) == b"\xab" * 512
h.shutdown()
print("OK")
"#;

#[test]
fn nbdsh_block_status_flush_fua_df_and_errors() {
    let server = TestServer::start(vec![MemExport::new("disk", 4 * MIB, false)]);
    nbdsh(&server.unix_uri("disk"), NBDSH_RW_SCRIPT);
    let e = server.export("disk");
    assert!(e.is_allocated(3 * MIB), "NO_HOLE zero allocates");
    assert!(!e.is_allocated(3 * MIB + (64 << 10)));
    assert_eq!(server.wait_for_ends(1), vec![ConnEnd::Disconnect]);
    assert_no_panics(&server);
}

const NBDSH_RO_SCRIPT: &str = r#"
import os
h.connect_uri(os.environ["URI"])
assert h.is_read_only()
assert not h.can_trim() and not h.can_zero() and not h.can_fua()
h.set_strict_mode(0)   # let the writes reach the server
for name, f in (("pwrite", lambda: h.pwrite(b"x" * 4096, 0)),
                ("trim", lambda: h.trim(4096, 0)),
                ("zero", lambda: h.zero(4096, 0))):
    try:
        f()
        raise AssertionError(name + " succeeded on a read-only export")
    except nbd.Error as e:
        assert e.errno == "EPERM", (name, e.errno, e.string)
        assert "command failed" in e.string, e.string
assert h.pread(4096, 0) == b"\x5a" * 4096
h.flush()
h.shutdown()
print("OK")
"#;

#[test]
fn nbdsh_write_to_read_only_export_fails_with_eperm() {
    let server = TestServer::start(vec![MemExport::with_data(
        "snap",
        &vec![0x5a; MIB as usize],
        true,
    )]);
    nbdsh(&server.tcp_uri("snap"), NBDSH_RO_SCRIPT);
    assert_eq!(server.export("snap").read(0, MIB), vec![0x5a; MIB as usize]);
    assert_no_panics(&server);
}

#[test]
fn nbd_large_sparse_export_map_beyond_4g() {
    // 8 GiB: BLOCK_STATUS requests near 32-bit lengths and offsets > 4 GiB.
    let size = 8u64 << 30;
    let server = TestServer::start(vec![MemExport::new("big", size, false)]);
    let uri = server.unix_uri("big");
    run_ok(
        qemu_io()
            .args(["-f", "raw", "-c", "write -P 0x5a 5G 1M"])
            .arg(&uri),
    );
    let map = parse_map(&stdout(&run_ok(nbdinfo().arg("--map").arg(&uri))));
    assert_eq!(
        map,
        vec![
            (0, 5 << 30, 3, "hole,zero".into()),
            (5 << 30, MIB, 0, "data".into()),
            (
                (5 << 30) + MIB,
                size - (5 << 30) - MIB,
                3,
                "hole,zero".into()
            ),
        ]
    );
    let qmap = stdout(&run_ok(
        qemu_img()
            .args(["map", "--output=json", "-f", "raw"])
            .arg(server.tcp_uri("big")),
    ));
    assert!(
        qmap.contains("\"start\": 5368709120, \"length\": 1048576")
            && qmap.contains("\"data\": true"),
        "{qmap}"
    );
    run_ok(
        qemu_io()
            .args(["-f", "raw", "-c", "read -P 0x5a 5G 1M"])
            .arg(&uri),
    );
    assert_no_panics(&server);
}
