//! Any NBD request size through the real daemon and the engine: byte-offset
//! reads and writes checked against a model (nbdsh), the issue's 1,048,590
//! bytes at offset 1, and 64 MiB requests (nbdsh and qemu-io), on an
//! uncompressed 4 KiB-chunk volume and an lz4 64 KiB-chunk one, before and
//! after a restart.

mod common;
use common::*;
use serde_json::json;

const SCRIPT: &str = r#"
import random
size = h.get_size()
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 64 << 20
model = bytearray(size)
rng = random.Random(19)
data = rng.randbytes(1048590)
h.pwrite(data, 1)
model[1:1 + len(data)] = data
assert h.pread(1048590, 1) == data
for i in range(300):
    n = rng.randint(1, 300000)
    off = rng.randint(0, size - n)
    if i % 3 == 0:
        assert h.pread(n, off) == model[off:off + n], ("read", off, n)
    else:
        d = rng.randbytes(n) if i % 2 else bytes([i % 251]) * n
        h.pwrite(d, off)
        model[off:off + n] = d
h.zero(1001, 3)
model[3:1004] = bytes(1001)
big = rng.randbytes(64 << 20)
h.pwrite(big, 12345)
model[12345:12345 + len(big)] = big
assert h.pread(64 << 20, 12345) == big
h.flush()
for at in range(0, size, 32 << 20):
    n = min(32 << 20, size - at)
    assert h.pread(n, at) == model[at:at + n], ("whole", at)
open(OUT, "wb").write(model)
print("OK")
"#;

fn nbdsh_script(uri: &str, out: &std::path::Path) -> String {
    let script = format!("OUT = {:?}\n{SCRIPT}", out.display().to_string());
    stdout(&run("nbdsh", &["-u", uri, "-c", &script]))
}

#[test]
fn byte_offsets_and_64_mib_requests_through_the_engine() {
    let mut d = Sluiced::start("nbdsizes", &["--no-default-volume"]);
    for (name, chunk, comp) in [("raw4k", "4K", "none"), ("lz64k", "64K", "lz4")] {
        d.ok(
            "volume_create",
            json!({"name": name, "size": "96M", "chunk_size": chunk, "compression": comp}),
        );
        d.ok("nbd_export_add", json!({"volume": name}));
    }
    for name in ["raw4k", "lz64k"] {
        let model = d.dir.join(format!("{name}.model"));
        let out = nbdsh_script(&d.uri(name), &model);
        assert_eq!(out.trim(), "OK", "{name}: {out}");
        // qemu-io: a 64 MiB write and read at an odd offset, over TCP.
        let q = stdout(&run(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0x5a 4097 64M",
                "-c",
                "read -P 0x5a 4097 64M",
                &d.tcp_uri(name),
            ],
        ));
        assert!(
            q.contains("wrote 67108864/67108864") && q.contains("read 67108864/67108864"),
            "{name}: qemu-io:\n{q}"
        );
        assert!(!q.to_lowercase().contains("fail"), "{name}: qemu-io:\n{q}");
    }
    d.stop();
    d.spawn();
    for name in ["raw4k", "lz64k"] {
        // After a restart: qemu-io's range, and nbdsh's bytes around it.
        let q = stdout(&run(
            "qemu-io",
            &["-f", "raw", "-c", "read -P 0x5a 4097 64M", &d.uri(name)],
        ));
        assert!(
            q.contains("read 67108864/67108864") && !q.to_lowercase().contains("fail"),
            "{name} after restart: qemu-io:\n{q}"
        );
        let model = std::fs::read(d.dir.join(format!("{name}.model"))).expect("model");
        let check = format!(
            "m = open({:?}, 'rb').read()\n\
             assert h.pread(4097, 0) == m[:4097]\n\
             end = 4097 + (64 << 20)\n\
             assert h.pread(len(m) - end, end) == m[end:]\n\
             print('OK')",
            d.dir.join(format!("{name}.model")).display().to_string()
        );
        assert_eq!(model.len(), 96 << 20);
        let out = stdout(&run("nbdsh", &["-u", &d.uri(name), "-c", &check]));
        assert_eq!(out.trim(), "OK", "{name} after restart: {out}");
    }
}
