//! Resizing a volume while libnbd clients are connected to its export, on
//! the real daemon: after a shrink an open connection's requests past the
//! new end fail (ENOSPC for writes, EINVAL for reads) and it keeps working
//! below it; new connections see the new size; writes racing the shrink
//! leave nothing behind: after growing back, everything past the shrink
//! reads as zeros, and a deep scrub is clean.

mod common;
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A libnbd client (python `nbd` module) driven line by line: one command
/// in, one reply out (`ok [bytes]` or `err <errno name>`).
const CLIENT: &str = r#"
import nbd, sys, threading
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("size", h.get_size(), flush=True)
hammer = None
counts = {"ok": 0, "err": 0}
stop = threading.Event()
def hammer_loop(lo, hi, byte):
    buf = bytes([byte]) * 65536
    off = lo
    while not stop.is_set():
        try:
            h.pwrite(buf, off)
            counts["ok"] += 1
        except nbd.Error:
            counts["err"] += 1
        off = off + 65536 if off + 65536 < hi else lo
for line in sys.stdin:
    cmd, *a = line.split()
    try:
        if cmd == "write":
            h.pwrite(bytes([int(a[2], 16)]) * int(a[1]), int(a[0]))
            print("ok", flush=True)
        elif cmd == "read":
            d = h.pread(int(a[1]), int(a[0]))
            print("ok", " ".join(sorted("%02x" % b for b in set(d))), flush=True)
        elif cmd == "flush":
            h.flush()
            print("ok", flush=True)
        elif cmd == "hammer":
            hammer = threading.Thread(target=hammer_loop, args=(int(a[0]), int(a[1]), int(a[2], 16)))
            hammer.start()
            print("ok", flush=True)
        elif cmd == "unhammer":
            stop.set()
            hammer.join()
            print("ok", counts["ok"], counts["err"], flush=True)
    except nbd.Error as e:
        print("err", e.errno, flush=True)
"#;

struct Client {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    size: u64,
}

impl Client {
    fn connect(uri: &str) -> Client {
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", CLIENT, uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run /usr/bin/python3 with the nbd module (scripts/setup)");
        let input = child.stdin.take().expect("stdin");
        let mut output = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        output.read_line(&mut line).expect("client greeting");
        let size = line
            .strip_prefix("size ")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("client did not connect: {line:?}"));
        Client {
            child,
            input,
            output,
            size,
        }
    }

    fn cmd(&mut self, c: &str) -> String {
        writeln!(self.input, "{c}").expect("send to client");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("client reply");
        assert!(!line.is_empty(), "client died on {c:?}");
        line.trim().to_string()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn shrink_under_a_connected_client() {
    let d = Sluiced::start("resize", &[]);
    d.ok(
        "volume_create",
        json!({"name": "rs", "size": 64 * MIB, "chunk_size": 65536}),
    );
    d.ok("nbd_export_add", json!({"volume": "rs"}));
    let mut old = Client::connect(&d.uri("rs"));
    assert_eq!(old.size, 64 * MIB);
    assert_eq!(old.cmd(&format!("write {} {} 5a", 10 * MIB, MIB)), "ok");
    assert_eq!(old.cmd(&format!("write {} {} 5a", 40 * MIB, MIB)), "ok");
    assert_eq!(old.cmd("flush"), "ok");

    // Shrink to 16 MiB + 1.5 KiB (cuts a 64 KiB chunk) while `old` is
    // connected and another client keeps writing past the new end.
    let new_size = 16 * MIB + 1536;
    let mut writer = Client::connect(&d.uri("rs"));
    assert_eq!(
        writer.cmd(&format!("hammer {} {} 77", 16 * MIB, 64 * MIB)),
        "ok"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let v = d.ok("volume_resize", json!({"name": "rs", "size": new_size}));
    assert_eq!(v["size"], new_size);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let counts = writer.cmd("unhammer");
    let n: Vec<u64> = counts
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().expect("count"))
        .collect();
    assert!(
        n[0] > 0 && n[1] > 0,
        "writes past the new end succeeded before the shrink and failed after it: {counts}"
    );

    // The old connection: past the new end refused, below it served.
    let (enospc, einval) = ("err ENOSPC", "err EINVAL");
    assert_eq!(old.cmd(&format!("write {} 65536 5a", 40 * MIB)), enospc);
    assert_eq!(
        old.cmd(&format!("write {} 4096 5a", 16 * MIB + 4096)),
        enospc
    );
    assert_eq!(old.cmd(&format!("read {} 65536", 40 * MIB)), einval);
    assert_eq!(old.cmd(&format!("read {} 4096", 16 * MIB + 1024)), einval);
    assert_eq!(old.cmd(&format!("read {} {}", 10 * MIB, MIB)), "ok 5a");
    assert_eq!(old.cmd(&format!("write {} 4096 6b", 12 * MIB)), "ok");
    assert_eq!(old.cmd("flush"), "ok");
    assert_eq!(Client::connect(&d.uri("rs")).size, new_size);

    // Grow back: a new client reads zeros everywhere past the shrink.
    d.ok("volume_resize", json!({"name": "rs", "size": 64 * MIB}));
    let mut new = Client::connect(&d.uri("rs"));
    assert_eq!(new.size, 64 * MIB);
    assert_eq!(new.cmd(&format!("read {} {}", 10 * MIB, MIB)), "ok 5a");
    assert_eq!(new.cmd(&format!("read {} 4096", 12 * MIB)), "ok 6b");
    let below = new.cmd(&format!("read {} 1536", 16 * MIB));
    assert!(below == "ok 77" || below == "ok 00", "{below}");
    let past = new_size;
    let mut off = past;
    while off < 64 * MIB {
        let len = (64 * MIB - off).min(4 * MIB);
        let r = new.cmd(&format!("read {off} {len}"));
        assert_eq!(r, "ok 00", "bytes {off}..+{len} past the shrink came back");
        off += len;
    }
    let scrub = d.ok("pool_scrub", json!({"deep": true}));
    assert_eq!(scrub["clean"], true, "{scrub}");
}
