//! Start and drive a real `sluiced` for integration tests.
#![allow(dead_code)]

use serde_json::{json, Value};
use sluice_rpc::client::Client;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Sluiced {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub tcp_port: u16,
    pub extra: Vec<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A fresh data directory on a filesystem that supports O_DIRECT.
pub fn data_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(format!("/var/tmp/sluice-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create data dir");
    d
}

impl Sluiced {
    /// Start with a small default pool (args appended after the defaults).
    pub fn start(tag: &str, extra: &[&str]) -> Sluiced {
        let mut s = Sluiced {
            dir: data_dir(tag),
            child: None,
            tcp_port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluiced"));
        cmd.arg("--data-dir")
            .arg(&self.dir)
            .arg("--pool-size")
            .arg("8G")
            .arg("--zone-size")
            .arg("128M")
            .arg("--nbd-tcp")
            .arg(format!("127.0.0.1:{}", self.tcp_port))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("spawn sluiced");
        self.child = Some(child);
        let t = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("sluiced exited during start-up: {st}");
                }
            }
            if let Ok(mut c) = Client::connect(self.rpc_sock()) {
                if c.call("rpc_get_methods", json!({})).is_ok() {
                    return;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "sluiced did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn rpc_sock(&self) -> PathBuf {
        self.dir.join("rpc.sock")
    }

    pub fn nbd_sock(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.nbd_sock().display())
    }

    pub fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.tcp_port)
    }

    pub fn call(
        &self,
        method: &str,
        params: Value,
    ) -> Result<Value, sluice_rpc::client::ClientError> {
        let mut c = Client::connect(self.rpc_sock())?;
        c.call(method, params)
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.call(method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params}: {e}"))
    }

    /// Error code of a call that must fail.
    pub fn err_code(&self, method: &str, params: Value) -> i64 {
        match self.call(method, params.clone()) {
            Err(e) => e
                .rpc()
                .map(|r| r.code)
                .unwrap_or_else(|| panic!("{method}: not an RPC error: {e}")),
            Ok(v) => panic!("{method} {params} should fail, got {v}"),
        }
    }

    /// Clean stop via SIGTERM; waits for exit and checks the status.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let st = wait_timeout(&mut c, Duration::from_secs(60))
                .expect("sluiced did not stop after SIGTERM");
            assert!(st.success(), "sluiced exited with {st}");
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

fn wait_timeout(c: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < d {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    None
}

impl Drop for Sluiced {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run a tool; panic with its output unless it succeeds. Missing tools fail
/// with a message naming scripts/setup.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {cmd} ({e}); run scripts/setup to install the test tools")
        });
    if !out.status.success() {
        panic!(
            "{cmd} {args:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A file of `size` bytes with mixed content: random, zero and text-like
/// regions, 1 MiB each, reproducible.
pub fn mixed_image(path: &Path, size: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create image"));
    let mut x = 0x2545F4914F6CDD1Du64;
    let mut buf = vec![0u8; 1 << 20];
    for mb in 0..size >> 20 {
        match mb % 4 {
            0 => {
                for c in buf.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c.copy_from_slice(&x.to_le_bytes());
                }
            }
            1 => buf.fill(0),
            _ => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog "[(i + mb as usize) % 44];
                }
            }
        }
        f.write_all(&buf).expect("write image");
    }
    f.flush().expect("flush image");
}
