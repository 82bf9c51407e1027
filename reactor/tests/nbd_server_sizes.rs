//! Request sizes and shapes on the io_uring NBD server, with real clients
//! (nbdsh with strict mode off, qemu-io) and a raw socket client where no
//! installed client can send the request (libnbd 1.14 predates extended
//! headers and caps requests at 64 MiB itself):
//!
//! * any byte offset and length (minimum block size 1), checked against a
//!   model;
//! * 64 MiB reads and writes; larger ones refused with EOVERFLOW after the
//!   payload is consumed, the connection still usable;
//! * extended headers (negotiated by qemu 8.2+, and by the raw client with
//!   64-bit lengths and extended replies);
//! * NBD_CMD_CACHE.
//!
//! The memory budget has its own file (`nbd_server_memory.rs`): it
//! measures the RSS of the process, which other tests would disturb.
//!
//! A missing tool fails the test with an install hint; nothing is skipped.

mod nbd_common;
mod nbd_server_common;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

use nbd_common::{
    nbdsh, option_bytes, random_bytes, read_opt_reply, request_bytes, require_tool, stdout,
    RawClient,
};
use nbd_server_common::*;
use sluice_reactor::nbd::proto::*;

const EOVERFLOW: u32 = 75;

fn qemu_io() -> Command {
    Command::new(require_tool("qemu-io", "qemu-utils"))
}

const UNALIGNED_SCRIPT: &str = r#"
import os, random
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(os.environ["URI"])
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 64 << 20
size = h.get_size()
model = bytearray(size)
rng = random.Random(14)
# The issue's request: offset 1, 1,048,590 bytes.
data = rng.randbytes(1048590)
h.pwrite(data, 1)
model[1:1 + len(data)] = data
assert h.pread(1048590, 1) == data
for i in range(400):
    n = rng.randint(1, 200000)
    off = rng.randint(0, size - n)
    if i % 2:
        got = h.pread(n, off)
        assert got == model[off:off + n], (off, n)
    else:
        d = rng.randbytes(n)
        h.pwrite(d, off)
        model[off:off + n] = d
# Odd trims and zeroes read back as zeroes, neighbours untouched.
h.zero(1001, 3)
model[3:1004] = bytes(1001)
h.trim(77, 4099)
assert h.pread(200, 4000) == model[4000:4200]
assert h.pread(size, 0) == model
h.shutdown()
print("OK")
"#;

#[test]
fn unaligned_reads_and_writes_with_libnbd_match_a_model() {
    let f = Fixture::start(vec![MemStore::new("disk", 4 * MIB, false)]);
    nbdsh(&f.unix_uri("disk"), UNALIGNED_SCRIPT);
    f.assert_reactors_alive();
}

const BIG_SCRIPT: &str = r#"
import os
h = nbd.NBD()
h.connect_uri(os.environ["URI"])
M = 1 << 20
data = bytes(range(256)) * (64 * M // 256)
h.pwrite(data, 3)
assert h.pread(64 * M, 3) == data
assert h.pread(1, 3 + 64 * M) == b"\0"
h.shutdown()
print("OK")
"#;

#[test]
fn sixty_four_mib_requests_with_nbdsh_and_qemu_io() {
    let f = Fixture::start(vec![MemStore::new("disk", 80 * MIB, false)]);
    nbdsh(&f.unix_uri("disk"), BIG_SCRIPT);
    let out = run_ok(qemu_io().args([
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 4096 64M",
        "-c",
        "read -P 0x5a 4096 64M",
        &f.tcp_uri("disk"),
    ]));
    let text = stdout(&out);
    assert!(
        !text.contains("fail") && !text.contains("error"),
        "qemu-io:\n{text}"
    );
    assert_eq!(f.store("disk").read(4096, 64 * MIB), vec![0x5a; 64 << 20]);
    // The byte before qemu's range is still nbdsh's pattern.
    assert_eq!(
        f.store("disk").read(4095, 1),
        vec![((4095 - 3) % 256) as u8]
    );
    f.assert_reactors_alive();
}

#[test]
fn oversized_requests_are_refused_after_their_payload_and_the_connection_goes_on() {
    let f = Fixture::start(vec![MemStore::new("disk", 80 * MIB, false)]);
    for structured in [false, true] {
        let s = UnixStream::connect(&f.socket).unwrap();
        let mut c = RawClient::connect(s, "disk", structured).unwrap();
        let over = (64 << 20) + 1;
        // A WRITE one byte over the maximum, payload and all.
        let mut m = request_bytes(0, CMD_WRITE, 1, 0, over);
        m.extend(vec![0xee; over as usize]);
        c.send(&m).unwrap();
        assert_eq!(c.expect_error(1).unwrap(), EOVERFLOW);
        // A READ over the maximum.
        c.send(&request_bytes(0, CMD_READ, 2, 0, 65 << 20)).unwrap();
        assert_eq!(c.expect_error(2).unwrap(), EOVERFLOW);
        // In sync: a full-size write and read still work.
        let data = random_bytes(3, 64 << 20);
        assert_eq!(c.write_at(3, 5, &data).unwrap(), 0);
        assert_eq!(c.read_at(4, 5, 64 << 20).unwrap(), data);
    }
    assert!(
        !f.store("disk").read(0, 5).contains(&0xee),
        "the refused write landed"
    );
    f.assert_reactors_alive();
}

const CACHE_SCRIPT: &str = r#"
import os
h = nbd.NBD()
h.connect_uri(os.environ["URI"])
assert h.can_cache()
h.pwrite(b"abc", 4097)
h.cache(4096, 1)
h.cache(7, 4093)
assert h.pread(3, 4097) == b"abc"
h.set_strict_mode(0)
try:
    h.cache(2, h.get_size() - 1)
    raise AssertionError("cache past the end succeeded")
except nbd.Error as e:
    assert e.errno == "EINVAL", e.errno
h.shutdown()
print("OK")
"#;

#[test]
fn cache_is_advertised_validated_and_answered() {
    let f = Fixture::start(vec![MemStore::new("disk", MIB, false)]);
    nbdsh(&f.unix_uri("disk"), CACHE_SCRIPT);
    // Nothing reached storage for CACHE: one write and one read only.
    let s = f.store("disk");
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(
        (
            s.counters.writes.load(SeqCst),
            s.counters.reads.load(SeqCst)
        ),
        (1, 1)
    );
}

#[test]
fn qemu_negotiates_extended_headers() {
    let f = Fixture::start(vec![MemStore::new("disk", 8 * MIB, false)]);
    let before = f.server.extended_header_connections();
    run_ok(qemu_io().args([
        "-f",
        "raw",
        "-c",
        "write -P 0x33 1 70000",
        "-c",
        "read -P 0x33 1 70000",
        "-c",
        "write -z 100000 3",
        "-c",
        "read -P 0 100000 3",
        &f.unix_uri("disk"),
    ]));
    assert_eq!(f.store("disk").read(1, 70000), vec![0x33; 70000]);
    assert!(
        f.server.extended_header_connections() > before,
        "qemu-io ({}) did not negotiate extended headers",
        stdout(&run_ok(qemu_io().arg("--version")))
            .lines()
            .next()
            .unwrap_or("")
    );
}

// ---------------------------------------------------------------------------
// A raw client with extended headers
// ---------------------------------------------------------------------------

struct ExtClient {
    s: UnixStream,
}

/// (flags, type, cookie, offset, payload) of an extended reply chunk.
type Chunk = (u16, u16, u64, u64, Vec<u8>);

impl ExtClient {
    fn connect(f: &Fixture, export: &str) -> ExtClient {
        let mut s =
            RawClient::<UnixStream>::greet(UnixStream::connect(&f.socket).unwrap()).unwrap();
        s.write_all(&option_bytes(OPT_EXTENDED_HEADERS, &[]))
            .unwrap();
        assert_eq!(read_opt_reply(&mut s).unwrap().1, REP_ACK);
        let mut q = (export.len() as u32).to_be_bytes().to_vec();
        q.extend_from_slice(export.as_bytes());
        q.extend_from_slice(&1u32.to_be_bytes());
        q.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
        q.extend_from_slice(BASE_ALLOCATION.as_bytes());
        s.write_all(&option_bytes(OPT_SET_META_CONTEXT, &q))
            .unwrap();
        while read_opt_reply(&mut s).unwrap().1 != REP_ACK {}
        let mut d = (export.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&option_bytes(OPT_GO, &d)).unwrap();
        while read_opt_reply(&mut s).unwrap().1 != REP_ACK {}
        ExtClient { s }
    }

    fn request(
        &mut self,
        flags: u16,
        cmd: u16,
        cookie: u64,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) {
        let mut h = EXTENDED_REQUEST_MAGIC.to_be_bytes().to_vec();
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&cmd.to_be_bytes());
        h.extend_from_slice(&cookie.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(payload);
        self.s.write_all(&h).unwrap();
    }

    fn chunk(&mut self) -> io::Result<Chunk> {
        let mut h = [0u8; EXTENDED_REPLY_HEADER_LEN];
        self.s.read_exact(&mut h)?;
        assert_eq!(
            u32::from_be_bytes(h[0..4].try_into().unwrap()),
            EXTENDED_REPLY_MAGIC,
            "every reply is an extended chunk"
        );
        let len = u64::from_be_bytes(h[24..32].try_into().unwrap());
        let mut p = vec![0u8; len as usize];
        self.s.read_exact(&mut p)?;
        Ok((
            u16::from_be_bytes([h[4], h[5]]),
            u16::from_be_bytes([h[6], h[7]]),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
            u64::from_be_bytes(h[16..24].try_into().unwrap()),
            p,
        ))
    }

    /// All chunks of one reply (up to the DONE one).
    fn reply(&mut self, cookie: u64) -> Vec<Chunk> {
        let mut out = Vec::new();
        loop {
            let c = self.chunk().unwrap();
            assert_eq!(c.2, cookie);
            let done = c.0 & REPLY_FLAG_DONE != 0;
            out.push(c);
            if done {
                return out;
            }
        }
    }
}

#[test]
fn extended_headers_carry_64_bit_lengths_and_extended_replies() {
    const SIZE: u64 = 6 << 30; // sparse: only what is written takes memory
    let f = Fixture::start(vec![MemStore::new("big", SIZE, false)]);
    let mut c = ExtClient::connect(&f, "big");
    assert_eq!(f.server.extended_header_connections(), 1);

    // Unaligned write and read across the 4 GiB line.
    let at = (4 << 30) - 3;
    let data = random_bytes(7, 10_000);
    c.request(0, CMD_WRITE, 1, at, data.len() as u64, &data);
    let r = c.reply(1);
    assert_eq!((r.len(), r[0].1, r[0].3), (1, REPLY_TYPE_NONE, at));
    c.request(0, CMD_READ, 2, at, data.len() as u64, &[]);
    let mut got = Vec::new();
    for (_, ty, _, _, p) in c.reply(2) {
        assert_eq!(ty, REPLY_TYPE_OFFSET_DATA);
        got.extend_from_slice(&p[8..]);
    }
    assert_eq!(got, data);

    // A zeroing request longer than 4 GiB: only extended headers can say it.
    c.request(0, CMD_WRITE_ZEROES, 3, 0, SIZE, &[]);
    let r = c.reply(3);
    assert_eq!(r[0].1, REPLY_TYPE_NONE, "{r:?}");
    assert_eq!(f.store("big").read(at, 4), vec![0; 4]);

    // BLOCK_STATUS answers with 64-bit descriptors.
    c.request(0, CMD_BLOCK_STATUS, 4, 0, 1 << 20, &[]);
    let r = c.reply(4);
    assert_eq!(r[0].1, REPLY_TYPE_BLOCK_STATUS_EXT);
    let p = &r[0].4;
    let count = u32::from_be_bytes(p[4..8].try_into().unwrap()) as usize;
    assert_eq!(p.len(), 8 + 16 * count);
    let first_len = u64::from_be_bytes(p[8..16].try_into().unwrap());
    let first_flags = u64::from_be_bytes(p[16..24].try_into().unwrap());
    assert!(first_len > 0 && first_flags == u64::from(STATE_HOLE | STATE_ZERO));

    // Errors are extended chunks too; an oversized write's payload is eaten.
    let over = (64 << 20) + 1;
    c.request(0, CMD_WRITE, 5, 0, over, &vec![1u8; over as usize]);
    let r = c.reply(5);
    assert_eq!(r[0].1, REPLY_TYPE_ERROR);
    assert_eq!(
        u32::from_be_bytes(r[0].4[0..4].try_into().unwrap()),
        EOVERFLOW
    );
    c.request(0, CMD_CACHE, 6, 5, 7, &[]);
    assert_eq!(c.reply(6)[0].1, REPLY_TYPE_NONE);
    f.assert_reactors_alive();
}
