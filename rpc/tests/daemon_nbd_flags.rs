//! sluiced's `--nbd-*` flags shape the default NBD server of a first start:
//! a TCP address that is not loopback is refused without TLS (naming the
//! flags), served with `--nbd-tls-psk`, `--nbd-tls-x509` (a path relative
//! to the user's directory) or `--nbd-insecure`; `--nbd-memory` reaches the
//! server and the saved config; a start that replays the saved config says
//! that the flags are not used. A failed first start can be retried.

mod common;
#[path = "../../reactor/tests/nbd_tls_common/mod.rs"]
mod nbd_tls_common;

use common::{data_dir, free_port};
use nbd_tls_common::{make_psk, make_x509_dir, psk_key};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A sluiced process with its stderr in `<dir>/stderr.log`; killed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Clean stop (SIGTERM), checked.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                assert!(st.success(), "sluiced exited with {st}: {}", log(&self.dir));
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "no exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

/// Start sluiced on `dir` (small pool; `args` after the defaults), from
/// `cwd`. Ok once it answers JSON-RPC; Err(its log) if it exits first.
fn start(dir: &Path, cwd: &Path, args: &[&str]) -> Result<Daemon, String> {
    let stderr = std::fs::File::create(dir.join("stderr.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_sluiced"))
        .current_dir(cwd)
        .arg("--data-dir")
        .arg(dir)
        .args(["--pool-size", "2G", "--zone-size", "128M"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn sluiced");
    let mut d = Daemon {
        child,
        dir: dir.to_path_buf(),
    };
    let t = Instant::now();
    loop {
        if let Ok(Some(st)) = d.child.try_wait() {
            return Err(format!("exited with {st}: {}", log(dir)));
        }
        if let Ok(mut c) = sluice_rpc::client::Client::connect(dir.join("rpc.sock")) {
            if c.call("rpc_get_methods", serde_json::json!({})).is_ok() {
                return Ok(d);
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no start: {}",
            log(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nbdinfo(uri: &str) -> Output {
    Command::new("nbdinfo")
        .args(["--size", uri])
        .output()
        .expect("run nbdinfo (scripts/setup installs it)")
}

/// The saved `nbd_server_start` params.
fn saved_nbd(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("config.json")).expect("saved config");
    let calls: Value = serde_json::from_str(&text).expect("JSON");
    calls
        .as_array()
        .and_then(|a| a.iter().find(|c| c["method"] == "nbd_server_start"))
        .map(|c| c["params"].clone())
        .unwrap_or_else(|| panic!("no nbd_server_start in {text}"))
}

#[test]
fn non_loopback_default_server_needs_tls_and_takes_psk_and_memory() {
    let dir = data_dir("nbdflags-psk");
    let port = free_port();
    let any = format!("0.0.0.0:{port}");

    // Plaintext on 0.0.0.0 is refused, and the message names the flags.
    let e = start(&dir, &dir, &["--nbd-tcp", &any])
        .err()
        .expect("plaintext on 0.0.0.0 must not start");
    assert!(
        e.contains("not a loopback address") && e.contains("--nbd-tls-psk"),
        "{e}"
    );

    // The retry with TLS is a first start again (the pool it made is imported).
    let keys = make_psk(&dir, "server-psk", "alice", &psk_key(5));
    let keys_s = keys.to_str().expect("utf-8");
    let d = start(
        &dir,
        &dir,
        &[
            "--nbd-tcp",
            &any,
            "--nbd-tls-psk",
            keys_s,
            "--nbd-memory",
            "64M",
        ],
    )
    .expect("start with PSK");
    let client = make_psk(&dir, "client-psk", "alice", &psk_key(5));
    let tls_uri = format!(
        "nbds://alice@127.0.0.1:{port}/vol0?tls-psk-file={}",
        client.display()
    );
    let out = nbdinfo(&tls_uri);
    assert!(out.status.success(), "PSK client: {out:?}");
    assert!(
        !nbdinfo(&format!("nbd://127.0.0.1:{port}/vol0"))
            .status
            .success(),
        "plaintext got in"
    );
    let p = saved_nbd(&dir);
    assert_eq!(p["memory"], 64u64 << 20, "{p}");
    assert_eq!(p["tls"]["mode"], "psk", "{p}");
    assert_eq!(p["tcp"], any.as_str(), "{p}");
    assert!(
        log(&dir).contains("in-flight buffer budget 64.0 MiB"),
        "{}",
        log(&dir)
    );
    d.stop();

    // A restart replays the saved config: same server; flags said unused.
    let d = start(
        &dir,
        &dir,
        &["--nbd-tcp", &any, "--nbd-memory", "32M", "--nbd-insecure"],
    )
    .expect("restart");
    let l = log(&dir);
    assert!(
        l.contains("--nbd-tcp, --nbd-memory, --nbd-insecure shape the default NBD server"),
        "{l}"
    );
    assert!(l.contains("in-flight buffer budget 64.0 MiB"), "{l}");
    assert!(nbdinfo(&tls_uri).status.success(), "PSK after restart");
    assert!(!nbdinfo(&format!("nbd://127.0.0.1:{port}/vol0"))
        .status
        .success());
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn x509_from_a_relative_path_insecure_and_bad_memory() {
    // X.509, the directory given relative to the user's working directory.
    let dir = data_dir("nbdflags-x509");
    let x509 = make_x509_dir(&dir);
    let rel = x509.file_name().and_then(|n| n.to_str()).expect("name");
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    let d = start(&dir, &dir, &["--nbd-tcp", &any, "--nbd-tls-x509", rel]).expect("x509");
    let out = nbdinfo(&format!(
        "nbds://127.0.0.1:{port}/vol0?tls-certificates={}",
        x509.display()
    ));
    assert!(out.status.success(), "x509 client: {out:?}");
    assert_eq!(
        saved_nbd(&dir)["tls"]["dir"],
        x509.canonicalize().expect("abs").to_str().expect("utf-8"),
        "saved absolute"
    );
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);

    // --nbd-insecure: plaintext on 0.0.0.0, by choice.
    let dir = data_dir("nbdflags-insecure");
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    let d = start(&dir, &dir, &["--nbd-tcp", &any, "--nbd-insecure"]).expect("insecure");
    let out = nbdinfo(&format!("nbd://127.0.0.1:{port}/vol0"));
    assert!(out.status.success(), "plaintext client: {out:?}");
    assert_eq!(saved_nbd(&dir)["insecure"], true);
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);

    // A budget too small or not a size stops the start with a clear error.
    for (bad, says) in [("512K", "below the minimum"), ("12x", "--nbd-memory")] {
        let dir = data_dir("nbdflags-badmem");
        let e = start(&dir, &dir, &["--nbd-tcp", "none", "--nbd-memory", bad])
            .err()
            .unwrap_or_else(|| panic!("--nbd-memory {bad} must not start"));
        assert!(e.contains(says), "{bad}: {e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
