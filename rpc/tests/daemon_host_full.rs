//! A thin pool file on a host file system that fills up, with the real
//! daemon and a real NBD client (nbdsh): only the writes that do not fit
//! fail, with ENOSPC (never EIO); flushed data still reads while the host is
//! full; no zone shuts down; after space is freed and the daemon restarted,
//! everything flushed is intact and scrub is clean.
//!
//! Needs root and loop mounts (CI has both): a mount that fails fails the
//! test with the reason.

mod common;
use common::*;
use serde_json::json;
use sluice_engine::format::Geometry;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

const MIB: u64 = 1 << 20;
const POOL: u64 = 1 << 30;
const ZONE: u64 = 64 * MIB;
const VOLUME: u64 = 900 * MIB;
/// The pattern written and flushed first: 8 MiB of 0x5a at offset 0.
const PATTERN_LEN: u64 = 8 * MIB;
/// Written before the daemon starts and deleted to free space at the end.
const FILLER: u64 = 16 * MIB;

/// A small ext4 file system on a loop device, mounted; unmounted, detached
/// and deleted on drop (also when the test fails).
struct LoopFs {
    img: PathBuf,
    mnt: PathBuf,
}

impl LoopFs {
    fn new(tag: &str, bytes: u64) -> LoopFs {
        let base = format!("/var/tmp/sluice-test-{tag}-{}", std::process::id());
        let fs = LoopFs {
            img: PathBuf::from(format!("{base}.ext4")),
            mnt: PathBuf::from(format!("{base}-mnt")),
        };
        fs.cleanup();
        let f = std::fs::File::create(&fs.img).expect("create the file system image");
        f.set_len(bytes).expect("size the file system image");
        drop(f);
        std::fs::create_dir_all(&fs.mnt).expect("create the mount point");
        let img = fs.img.to_string_lossy().into_owned();
        let mnt = fs.mnt.to_string_lossy().into_owned();
        run("mkfs.ext4", &["-q", "-F", &img]);
        // `run` panics with mount's own message: this test needs a real
        // loop mount (root, loop devices) and must not pass without one.
        run("mount", &["-o", "loop", &img, &mnt]);
        fs
    }

    /// Bytes the file system has free for root (`f_bfree`).
    fn free_bytes(&self) -> u64 {
        let out = stdout(&run(
            "stat",
            &["-f", "-c", "%f %S", &self.mnt.to_string_lossy()],
        ));
        let v: Vec<u64> = out
            .split_whitespace()
            .map(|s| s.parse().expect("stat -f prints numbers"))
            .collect();
        v[0] * v[1]
    }

    fn cleanup(&self) {
        let mnt = self.mnt.to_string_lossy().into_owned();
        let img = self.img.to_string_lossy().into_owned();
        let _ = Command::new("umount").arg(&mnt).output();
        // `mount -o loop` detaches on unmount; detach whatever is left.
        if let Ok(o) = Command::new("losetup").args(["-j", &img]).output() {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if let Some(dev) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", dev]).output();
                }
            }
        }
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_file(&self.img);
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Run a Python script in nbdsh connected to `uri`; its stdout.
fn nbdsh(uri: &str, script: &str) -> String {
    stdout(&run("nbdsh", &["-u", uri, "-c", script]))
}

/// The 1 MiB of random (incompressible) data written at `off`, in Python.
/// `errname(e)`: an `nbd.Error`'s errno by name (libnbd gives a name or a number).
const BLOCK_AT: &str = "import errno, random\n\
def block_at(off):\n    return random.Random(off).randbytes(1 << 20)\n\
def errname(e):\n    return e.errno if isinstance(e.errno, str) else errno.errorcode.get(e.errno, str(e.errno))\n";

/// Reads the pattern and every MiB written from `PATTERN_LEN` up to `upto`;
/// prints the number of MiB that read back wrong.
fn verify_script(upto: u64) -> String {
    format!(
        "{BLOCK_AT}\
bad = 0\n\
if h.pread({PATTERN_LEN}, 0) != b'\\x5a' * {PATTERN_LEN}:\n    bad += 1\n\
for off in range({PATTERN_LEN}, {upto}, 1 << 20):\n    \
if h.pread(1 << 20, off) != block_at(off):\n        bad += 1\n\
print(f'bad={{bad}}')\n"
    )
}

fn field(out: &str, key: &str) -> String {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in nbdsh output: {out}"))
        .to_string()
}

#[test]
fn full_host_fails_only_writes_that_do_not_fit_with_enospc() {
    let meta: u64 = Geometry::for_device([0; 16], POOL, ZONE)
        .expect("geometry")
        .metadata_ranges()
        .iter()
        .map(|r| r.end - r.start)
        .sum();
    // Room for the metadata, the filler, some data, and ext4's own needs.
    let fs = LoopFs::new("hostfull", (meta + FILLER + 112 * MIB).div_ceil(MIB) * MIB);
    let filler = fs.mnt.join("filler");
    std::fs::write(&filler, vec![0x77u8; FILLER as usize]).expect("write the filler");
    run("sync", &[]);

    let cfg = std::env::temp_dir().join(format!("sluice-hostfull-{}.json", std::process::id()));
    std::fs::write(&cfg, "[]").expect("write an empty start-up config");
    let mut d = Sluiced::start("hostfull", &["--config", &cfg.to_string_lossy()]);
    let _ = std::fs::remove_file(&cfg);
    let pool_path = fs.mnt.join("pool.img");
    assert!(
        fs.free_bytes() < POOL,
        "the pool file must be larger than its file system"
    );
    d.ok(
        "pool_create",
        json!({"name": "hp", "path": pool_path, "size": POOL, "zone_size": ZONE}),
    );
    let allocated = std::fs::metadata(&pool_path).expect("pool file").blocks() * 512;
    assert!(
        allocated >= meta,
        "pool file has {allocated} bytes allocated, its metadata needs {meta}"
    );
    d.ok("nbd_server_start", json!({"unix": d.nbd_sock()}));
    d.ok(
        "volume_create",
        json!({"pool": "hp", "name": "v", "size": VOLUME, "compression": "none"}),
    );
    d.ok("nbd_export_add", json!({"volume": "v"}));
    let uri = d.uri("v");

    nbdsh(
        &uri,
        &format!("h.pwrite(b'\\x5a' * {PATTERN_LEN}, 0)\nh.flush()\n"),
    );

    let free_before = fs.free_bytes();
    assert!(
        free_before > 32 * MIB,
        "only {free_before} bytes free to fill"
    );
    // Random 1 MiB writes until the host is full; then a few more, which
    // must fail the same way; then FLUSH, which must work.
    let fill = nbdsh(
        &uri,
        &format!(
            "{BLOCK_AT}\
written = 0\n\
errs = []\n\
off = {PATTERN_LEN}\n\
while off < {VOLUME} and not errs:\n    \
try:\n        h.pwrite(block_at(off), off)\n        written += 1\n        off += 1 << 20\n    \
except nbd.Error as e:\n        errs.append(errname(e))\n\
for i in range(4):\n    \
try:\n        h.pwrite(block_at(off + (i << 20)), off + (i << 20))\n    \
except nbd.Error as e:\n        errs.append(errname(e))\n\
h.flush()\n\
enospc = errs.count('ENOSPC')\n\
other = [x for x in errs if x != 'ENOSPC']\n\
print(f'written={{written}} upto={{off}} enospc={{enospc}} other={{other}}')\n"
        ),
    );
    let written: u64 = field(&fill, "written").parse().expect("written");
    let upto: u64 = field(&fill, "upto").parse().expect("upto");
    assert_eq!(
        field(&fill, "other"),
        "[]",
        "a write failed with something other than ENOSPC: {fill}"
    );
    assert!(
        field(&fill, "enospc").parse::<u32>().expect("enospc") >= 1,
        "no write got ENOSPC: {fill}"
    );
    assert!(written > 8, "the host filled up too early: {fill}");
    // ext4 keeps a few MiB back (reserved clusters) even for root.
    assert!(
        fs.free_bytes() < 8 * MIB,
        "the host is not full ({} bytes free, {free_before} before): the ENOSPC came from elsewhere",
        fs.free_bytes()
    );

    // While full: flushed data reads, no zone is down.
    assert_eq!(field(&nbdsh(&uri, &verify_script(upto)), "bad"), "0");
    let pools = d.ok("pool_get_pools", json!({}));
    let hp = pools
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "hp"))
        .unwrap_or_else(|| panic!("pool hp not listed: {pools}"));
    assert_eq!(hp["failed_zones"], json!([]), "{hp}");
    let scrub = d.ok("pool_scrub", json!({"pool": "hp"}));
    assert_eq!(scrub["clean"], true, "{scrub}");

    // Clean stop while full (the checkpoint writes only metadata), free
    // space, restart from the saved config: everything flushed is intact.
    d.stop();
    std::fs::remove_file(&filler).expect("delete the filler");
    d.extra.clear();
    d.spawn();
    assert_eq!(field(&nbdsh(&uri, &verify_script(upto)), "bad"), "0");
    nbdsh(&uri, "h.pwrite(b'\\x33' * (1 << 20), 0)\nh.flush()\n");
    let scrub = d.ok("pool_scrub", json!({"pool": "hp", "deep": true}));
    assert_eq!(scrub["clean"], true, "{scrub}");
    d.stop();
}
