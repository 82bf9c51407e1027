//! One flipped byte in a data block of an uncompressed 64 KiB-chunk volume,
//! with the real daemon and real clients (nbdsh, qemu-io): every read that
//! touches the chunk fails with EIO (a 4 KiB read of the flipped block and
//! of another block of the chunk alike, never the flipped byte as data),
//! other chunks read as before, and deep scrub names the chunk's blocks.

mod common;
use common::*;
use serde_json::json;
use std::os::unix::fs::FileExt;

const CHUNK: u64 = 64 * 1024;
/// Where the chunk under test starts in the volume (chunk 16).
const AT: u64 = 16 * CHUNK;

/// 64 KiB that no other block of the pool file holds (incompressible).
fn pattern() -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..CHUNK / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Run a Python script in nbdsh connected to `uri`; its stdout.
fn nbdsh(uri: &str, script: &str) -> String {
    stdout(&run("nbdsh", &["-u", uri, "-c", script]))
}

#[test]
fn a_flipped_data_byte_fails_every_read_of_its_chunk_and_scrub_names_it() {
    let mut d = Sluiced::start("datacrc", &["--no-default-volume"]);
    d.ok(
        "volume_create",
        json!({"name": "raw", "size": "16M", "chunk_size": "64K", "compression": "none"}),
    );
    d.ok("nbd_export_add", json!({"volume": "raw"}));
    let p = pattern();
    let pfile = d.dir.join("pattern.bin");
    std::fs::write(&pfile, &p).expect("write the pattern");
    // The chunk under test and its neighbour, both written and flushed.
    nbdsh(
        &d.uri("raw"),
        &format!(
            "p = open('{}', 'rb').read()\nh.pwrite(p, {AT})\nh.pwrite(p[::-1], {})\nh.flush()\n",
            pfile.display(),
            AT + CHUNK
        ),
    );
    d.stop();

    // Find the chunk in the pool file and flip one byte in its third block.
    let pool = d.dir.join("pool0.img");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pool)
        .expect("open the pool file");
    let len = f.metadata().expect("stat").len();
    let mut first = None;
    let mut buf = vec![0u8; 1 << 20];
    for mb in 0..len.div_ceil(1 << 20) {
        let n = ((len - mb * (1 << 20)) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], mb << 20)
            .expect("read pool file");
        for (i, blk) in buf[..n].chunks_exact(4096).enumerate() {
            if blk == &p[..4096] {
                assert!(first.is_none(), "the pattern is stored twice");
                first = Some((mb << 20) / 4096 + i as u64);
            }
        }
    }
    let first = first.expect("the chunk's first block is in the pool file");
    let flipped = (first + 2) * 4096 + 1234;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, flipped).expect("read");
    f.write_all_at(&[byte[0] ^ 0x20], flipped).expect("flip");
    f.sync_all().expect("sync");
    drop(f);

    d.spawn();
    // 4 KiB reads: the flipped block, another block of the same chunk, and
    // a read spanning the chunk's end all fail with EIO; the neighbour
    // chunk and a hole read fine.
    let out = nbdsh(
        &d.uri("raw"),
        &format!(
            r#"
def errno_of(off, n):
    try:
        h.pread(n, off)
        return "ok"
    except nbd.Error as e:
        return str(e.errno)
print("flipped=" + errno_of({AT} + 8192, 4096))
print("same_chunk=" + errno_of({AT}, 4096))
print("spanning=" + errno_of({AT} + {CHUNK} - 4096, 8192))
print("neighbour=" + h.pread({CHUNK}, {AT} + {CHUNK}).hex()[:64])
print("hole=" + h.pread(4096, 0).hex()[:16])
"#
        ),
    );
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in {out}"))
            .to_string()
    };
    let eio = |v: String| v == "EIO" || v == libc::EIO.to_string();
    assert!(eio(field("flipped")), "{out}");
    assert!(eio(field("same_chunk")), "{out}");
    assert!(eio(field("spanning")), "{out}");
    let rev: Vec<u8> = p.iter().rev().copied().collect();
    assert_eq!(field("neighbour"), hex(&rev[..32]), "{out}");
    assert_eq!(field("hole"), "0".repeat(16), "{out}");

    // qemu-io sees an I/O error too, never the data.
    let q = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            &format!("read {} 4k", AT + 8192),
            &d.uri("raw"),
        ])
        .output()
        .expect("run qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&q.stdout),
        String::from_utf8_lossy(&q.stderr)
    );
    assert!(text.contains("Input/output error"), "{text}");

    // Shallow scrub does not read data; deep scrub names the chunk's blocks.
    let shallow = d.ok("pool_scrub", json!({}));
    assert_eq!(shallow["clean"], true, "{shallow}");
    let deep = d.ok("pool_scrub", json!({"deep": true}));
    assert_eq!(deep["clean"], false, "{deep}");
    let problems = deep["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{deep}");
    let msg = problems[0].as_str().unwrap_or_default();
    assert!(
        msg.contains("chunk 16") && msg.contains(&format!("block {first}")),
        "deep scrub should name chunk 16 at block {first}: {msg}"
    );
}
