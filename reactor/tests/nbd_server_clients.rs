//! Real NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy, nbdsh) against
//! the io_uring NBD server (`sluice_reactor::nbd::NbdServer`) on two
//! reactors, with the in-memory backend of `nbd_server_common`.
//!
//! A missing tool fails the test with an install hint; nothing is skipped.

mod nbd_common;
mod nbd_server_common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nbd_common::{nbdsh, random_bytes, require_tool, stdout};
use nbd_server_common::*;

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

/// `nbdinfo --map` lines as (offset, length, type, description).
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

/// Mixed content: random, zero, and 4 KiB-interleaved runs.
fn mixed_image(len: usize) -> Vec<u8> {
    let seg = 256 * 1024;
    let mut img = vec![0u8; len];
    for (i, chunk) in img.chunks_mut(seg).enumerate() {
        match i % 4 {
            0 => chunk.copy_from_slice(&random_bytes(i as u64 + 1, chunk.len())),
            1 => {}
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

/// A delay on every op, so requests overlap and finish out of order.
fn jitter() -> DelayFn {
    Arc::new(|_, offset, _| Some(Duration::from_micros(50 + (offset / 4096 % 7) * 150)))
}

#[test]
fn nbd_server_qemu_io_write_read_verify_unix_and_tcp() {
    let f = Fixture::start(vec![MemStore::new("disk", 8 * MIB, false)]);
    f.provider.set_delay(Some(jitter()));
    for uri in [f.unix_uri("disk"), f.tcp_uri("disk")] {
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
            // 16 MiB of pipelined 64k writes/reads through aio.
            "aio_write -P 0x44 5M 64k",
            "aio_write -P 0x45 6M 2M",
            "aio_flush",
            "read -P 0x44 5M 64k",
            "read -P 0x45 6M 2M",
            "flush",
        ];
        let mut cmd = qemu_io();
        cmd.args(["-f", "raw"]);
        for c in cmds {
            cmd.args(["-c", c]);
        }
        let text = stdout(&run_ok(cmd.arg(&uri)));
        assert!(!text.contains("failed"), "{uri}: {text}");

        let s = f.store("disk");
        assert_eq!(s.read(0, MIB), vec![0xab; MIB as usize]);
        assert!(!s.is_allocated(MIB), "discard made a hole");
        assert!(s.is_allocated(2 * MIB), "write -z keeps blocks allocated");
        assert!(!s.is_allocated(3 * MIB), "write -z -u punches a hole");
        assert_eq!(s.read(4 * MIB, 64 << 10), vec![0x33; 64 << 10]);
        assert_eq!(s.read(6 * MIB, 2 * MIB), vec![0x45; 2 * MIB as usize]);
        assert!(s.counters.fua_writes.load(Ordering::Relaxed) >= 1);
        assert!(s.counters.flushes.load(Ordering::Relaxed) >= 1);

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
    f.assert_reactors_alive();
}

#[test]
fn nbd_server_nbdinfo_size_flags_and_map_after_trim() {
    let f = Fixture::start(vec![
        MemStore::new("disk", 4 * MIB, false),
        MemStore::new("snap", MIB, true),
    ]);
    let out = run_ok(nbdinfo().arg("--size").arg(f.unix_uri("disk")));
    assert_eq!(stdout(&out).trim(), (4 * MIB).to_string());
    let json = stdout(&run_ok(nbdinfo().arg("--json").arg(f.tcp_uri("disk"))));
    for needle in [
        "\"export-size\": 4194304",
        "\"is_read_only\": false",
        "\"structured\": true",
        "\"can_flush\": true",
        "\"can_fua\": true",
        "\"can_trim\": true",
        "\"can_zero\": true",
        "\"can_multi_conn\": true",
        "\"block_size_preferred\": 4096",
    ] {
        assert!(json.contains(needle), "missing {needle} in:\n{json}");
    }
    let ro = run_any(
        nbdinfo()
            .args(["--is", "read-only"])
            .arg(f.unix_uri("snap")),
    );
    assert_eq!(ro.status.code(), Some(0), "snap should be read-only");
    let list = stdout(&run_ok(nbdinfo().arg("--list").arg(f.unix_uri(""))));
    assert!(
        list.contains("export=\"disk\"") && list.contains("export=\"snap\""),
        "{list}"
    );
    assert!(!run_any(nbdinfo().arg(f.unix_uri("nope"))).status.success());

    f.store("disk").write(0, &vec![0xab; 2 * MIB as usize]);
    let uri = f.unix_uri("disk");
    let map = parse_map(&stdout(&run_ok(nbdinfo().arg("--map").arg(&uri))));
    assert_eq!(
        map,
        vec![
            (0, 2 * MIB, 0, "data".into()),
            (2 * MIB, 2 * MIB, 3, "hole,zero".into())
        ]
    );
    run_ok(
        qemu_io()
            .args(["-f", "raw", "-c", "discard 1M 512k"])
            .arg(&uri),
    );
    let map = parse_map(&stdout(&run_ok(
        nbdinfo().arg("--map").arg(f.tcp_uri("disk")),
    )));
    assert_eq!(
        map,
        vec![
            (0, MIB, 0, "data".into()),
            (MIB, MIB / 2, 3, "hole,zero".into()),
            (MIB + MIB / 2, MIB / 2, 0, "data".into()),
            (2 * MIB, 2 * MIB, 3, "hole,zero".into()),
        ]
    );
    f.assert_reactors_alive();
}

#[test]
fn nbd_server_qemu_img_convert_in_out_and_compare() {
    let len = 6 * MIB as usize;
    let img = mixed_image(len);
    let f = Fixture::start(vec![MemStore::new("disk", len as u64, false)]);
    f.provider.set_delay(Some(jitter()));
    let input = f.dir().join("in.img");
    let output = f.dir().join("out.img");
    std::fs::write(&input, &img).expect("write input image");

    run_ok(
        qemu_img()
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&input)
            .arg(f.tcp_uri("disk")),
    );
    assert!(
        f.store("disk").read(0, len as u64) == img,
        "server content differs"
    );
    run_ok(
        qemu_img()
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&input)
            .arg(f.unix_uri("disk")),
    );
    run_ok(
        qemu_img()
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(f.unix_uri("disk"))
            .arg(&output),
    );
    assert!(
        std::fs::read(&output).expect("read output") == img,
        "out.img differs"
    );
    // compare really compares: flip one byte on the server.
    f.store("disk")
        .write(5 * MIB, &[img[5 * MIB as usize] ^ 0xff]);
    let diff = run_any(
        qemu_img()
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&input)
            .arg(f.tcp_uri("disk")),
    );
    assert_eq!(diff.status.code(), Some(1), "{}", stdout(&diff));
    f.assert_reactors_alive();
}

#[test]
fn nbd_server_nbdcopy_in_and_out_multi_conn() {
    let len = 8 * MIB as usize;
    let img = mixed_image(len);
    let f = Fixture::start(vec![MemStore::new("disk", len as u64, false)]);
    f.provider.set_delay(Some(jitter()));
    let input = f.dir().join("in.img");
    let output = f.dir().join("out.img");
    std::fs::write(&input, &img).expect("write input image");

    run_ok(
        nbdcopy()
            .args(["--flush", "--threads=4", "--connections=4", "--requests=16"])
            .arg(&input)
            .arg(f.unix_uri("disk")),
    );
    assert!(
        f.store("disk").read(0, len as u64) == img,
        "server content differs"
    );
    let after_in = f.server.total_connections();
    assert!(after_in >= 4, "nbdcopy used {after_in} connections");
    run_ok(
        nbdcopy()
            .args(["--threads=4", "--connections=4", "--requests=16"])
            .arg(f.tcp_uri("disk"))
            .arg(&output),
    );
    assert!(
        std::fs::read(&output).expect("read output") == img,
        "out.img differs"
    );
    assert!(f.server.total_connections() >= after_in + 4);
    assert!(f.store("disk").counters.flushes.load(Ordering::Relaxed) >= 1);
    f.wait_connections_at_most(0);
    f.assert_reactors_alive();
}

/// Connections are spread round-robin over the reactors and counted per
/// export.
#[test]
fn nbd_server_spreads_connections_over_reactors() {
    let f = Fixture::start(vec![
        MemStore::new("a", MIB, false),
        MemStore::new("b", MIB, false),
    ]);
    let mut clients = Vec::new();
    for i in 0..6 {
        let name = if i % 3 == 0 { "b" } else { "a" };
        let s = std::os::unix::net::UnixStream::connect(&f.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        clients.push(nbd_common::RawClient::connect(s, name, true).expect("handshake"));
    }
    let info = f.server.connection_info();
    assert_eq!(info.len(), 6, "{info:?}");
    let on0 = info.iter().filter(|c| c.reactor == 0).count();
    let on1 = info.iter().filter(|c| c.reactor == 1).count();
    assert_eq!((on0, on1), (3, 3), "{info:?}");
    assert_eq!(f.server.export_connections("a"), 4);
    assert_eq!(f.server.export_connections("b"), 2);
    // Every connection works, whichever reactor serves it.
    for (i, c) in clients.iter_mut().enumerate() {
        let data = vec![i as u8 + 1; 4096];
        assert_eq!(c.write_at(1, 4096 * i as u64, &data).unwrap(), 0);
        assert_eq!(c.read_at(2, 4096 * i as u64, 4096).unwrap(), data);
    }
    // Removing an export closes exactly its connections.
    assert_eq!(f.server.disconnect_export("b"), 2);
    for _ in 0..500 {
        if f.server.export_connections("b") == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(f.server.export_connections("b"), 0);
    assert_eq!(f.server.export_connections("a"), 4);
    assert!(clients[0].is_closed_by_server());
    assert_eq!(clients[1].write_at(9, 0, &[7u8; 512]).unwrap(), 0);
    drop(clients);
    f.wait_connections_at_most(0);
}

const NBDSH_RW_SCRIPT: &str = r#"
import os
h.add_meta_context("base:allocation")
h.connect_uri(os.environ["URI"])
assert h.get_structured_replies_negotiated()
assert h.can_meta_context("base:allocation")
assert h.get_size() == 4 << 20
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
        got.extend(zip(entries[0::2], entries[1::2]))
        return 0
    h.block_status(count, offset, cb, flags)
    return got

assert extents() == [(256 * K, 0), (256 * K, 3), (512 * K, 0), (2 << 20, 3),
                     (64 * K, 0), (960 * K, 3)], extents()
assert extents(nbd.CMD_FLAG_REQ_ONE) == [(256 * K, 0)]

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

h.set_strict_mode(0)
def server_error(f):
    try:
        f()
    except nbd.Error as e:
        assert "command failed" in e.string, e.string
        return e.errno
    raise AssertionError("no error")
assert server_error(lambda: h.pread(512, (4 << 20) - 100)) == "EINVAL"
assert server_error(lambda: h.pwrite(b"x" * 1024, (4 << 20) - 512)) == "ENOSPC"
assert server_error(lambda: h.trim(4096, 4 << 20)) == "EINVAL"
assert h.pread(512, 0) == b"\xab" * 512
h.shutdown()
print("OK")
"#;

#[test]
fn nbd_server_nbdsh_structured_replies_block_status_and_errors() {
    let f = Fixture::start(vec![MemStore::new("disk", 4 * MIB, false)]);
    nbdsh(&f.unix_uri("disk"), NBDSH_RW_SCRIPT);
    let s = f.store("disk");
    assert!(s.is_allocated(3 * MIB), "NO_HOLE zero allocates");
    assert!(s.counters.fua_writes.load(Ordering::Relaxed) >= 1);
    assert!(s.counters.flushes.load(Ordering::Relaxed) >= 1);
    // Simple replies (no structured reply negotiation) over TCP.
    nbdsh(
        &f.tcp_uri("disk"),
        r#"
import os
h.set_request_structured_replies(False)
h.connect_uri(os.environ["URI"])
assert not h.get_structured_replies_negotiated()
assert h.pread(1 << 20, 0) == b"\xab" * (256 * 1024) + bytes(256 * 1024) + b"\xab" * (512 * 1024)
h.pwrite(b"\x5a" * 8192, 4096)
assert h.pread(8192, 4096) == b"\x5a" * 8192
h.shutdown()
print("OK")
"#,
    );
    f.wait_connections_at_most(0);
    assert!(
        f.server
            .ended()
            .iter()
            .all(|e| *e == sluice_reactor::nbd::ConnEnd::Disconnect),
        "{:?}",
        f.server.ended()
    );
}

/// N pipelined reads where read i is delayed by (N - i) * 3 ms: the replies
/// must come back in reverse order, each with its own data.
#[test]
fn nbd_server_replies_out_of_order() {
    const N: u64 = 16;
    let f = Fixture::start(vec![MemStore::new("disk", MIB, false)]);
    let s = f.store("disk");
    for i in 0..N {
        s.write(i * 4096, &vec![i as u8 + 1; 4096]);
    }
    f.provider.set_delay(Some(Arc::new(|op, offset, _| {
        (op == Op::Read).then(|| Duration::from_millis((N - offset / 4096) * 3))
    })));
    for structured in ["True", "False"] {
        let script = format!(
            r#"
import os
N = {N}
h.set_request_structured_replies({structured})
h.connect_uri(os.environ["URI"])
order = []
bufs = []
for i in range(N):
    b = nbd.Buffer(4096)
    bufs.append(b)
    def done(err, i=i):
        order.append(i)
        return 1
    h.aio_pread(b, i * 4096, completion=done)
while h.aio_in_flight() > 0:
    h.poll(-1)
assert order == list(reversed(range(N))), order
for i, b in enumerate(bufs):
    assert b.to_bytearray() == bytes([i + 1]) * 4096, i
h.shutdown()
print("OK")
"#
        );
        nbdsh(&f.unix_uri("disk"), &script);
    }
    assert_eq!(s.counters.reads.load(Ordering::Relaxed), 2 * N);
}
