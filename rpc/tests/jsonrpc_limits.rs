//! The JSON-RPC limits, held by the real `sluiced`: JSON-RPC over TCP (`--rpc-tcp`,
//! loopback unless `--rpc-tcp-insecure`), idle connections past the cap, half-sent
//! huge values and huge names.
//!
//! Figures come from `/proc/PID/status` of the daemon: `VmRSS`, and the peak
//! `VmHWM` after resetting it through `/proc/PID/clear_refs` ("5") just before the
//! load (sampled `VmRSS` when the reset is not allowed). Threads are counted from
//! `/proc/PID/task`, leaving out the kernel's io_uring workers (`iou-*`), which come
//! and go with storage I/O. Each test prints its figures (`--nocapture`); README.md,
//! "Limits", quotes them.
//!
//! The bounds, with the default `ServerLimits`:
//! * 1,000 idle connections: no thread more, peak RSS at most 4 MiB over the
//!   baseline (64 open connections hold a few hundred bytes each; the other 936 are
//!   refused and closed at once);
//! * 40 clients each half-sending a 15 MB value: peak RSS at most
//!   40 × (1 MiB + 64 KiB) + 16 MiB over the baseline (the server buffers a value
//!   up to the 1 MiB cap plus one 64 KiB read, then refuses it and drops the buffer).

mod common;

use common::{data_dir, free_port, Sluiced};
use serde_json::{json, Value};
use sluice_rpc::client::Client;
use sluice_rpc::jsonrpc::{codes, ServerLimits, DEFAULT_MAX_LEN};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Idle connections opened at once.
const IDLE_CONNECTIONS: usize = 1000;
/// The documented connection cap (README.md, "Limits"; `ServerLimits::default()`).
const CAP: usize = 64;
/// Peak RSS growth allowed while they are open.
const IDLE_RSS_BOUND: u64 = 4 * MIB;
/// Clients half-sending a huge value at once.
const BIG_CLIENTS: usize = 40;
/// The value each of them announces; each sends half of it.
const BIG_VALUE: usize = 15_000_000;
/// Slack for allocator and bookkeeping on top of the buffered input.
const BIG_RSS_SLACK: u64 = 16 * MIB;

// ---------------------------------------------------------------- /proc figures

fn status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status")
}

/// A `kB` line of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, key: &str) -> u64 {
    status(pid)
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix(" kB")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        * 1024
}

fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS")
}

/// `Threads:` of /proc/PID/status: every thread, io_uring workers included.
fn all_threads(pid: u32) -> usize {
    status(pid)
        .lines()
        .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
        .expect("Threads in /proc/PID/status")
}

/// The daemon's own threads: every task but the kernel's io_uring workers.
fn own_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list /proc/PID/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| !comm.starts_with("iou-"))
        .count()
}

/// The highest RSS of `pid` from `start` to `finish`.
struct PeakRss {
    pid: u32,
    hwm_reset: bool,
    stop: Arc<AtomicBool>,
    sampled: Arc<AtomicU64>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn start(pid: u32) -> PeakRss {
        // "5" resets VmHWM to the current RSS (Linux 4.0+).
        let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let stop = Arc::new(AtomicBool::new(false));
        let sampled = Arc::new(AtomicU64::new(rss(pid)));
        let sampler = {
            let (stop, sampled) = (stop.clone(), sampled.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sampled.fetch_max(rss(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        PeakRss {
            pid,
            hwm_reset,
            stop,
            sampled,
            sampler: Some(sampler),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            s.join().expect("sampler");
        }
        let sampled = self.sampled.load(Ordering::Relaxed);
        if self.hwm_reset {
            sampled.max(status_bytes(self.pid, "VmHWM"))
        } else {
            eprintln!("note: cannot reset VmHWM; peak RSS is sampled every 2 ms");
            sampled
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB as f64)
}

/// Assertions collected, so that one broken build shows every check that caught it.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    fn assert_all(self) {
        assert!(self.0.is_empty(), "failed:\n  {}", self.0.join("\n  "));
    }
}

// ---------------------------------------------------------------- helpers

fn daemon_pid(d: &Sluiced) -> u32 {
    d.child.as_ref().expect("sluiced running").id()
}

/// Lets this process hold `n` more descriptors.
fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
        assert!(
            lim.rlim_cur >= n,
            "RLIMIT_NOFILE hard limit {} is below {n}",
            lim.rlim_max
        );
    }
}

/// Polls `f` until it returns `Some`, failing after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `bytes` until done or the server stops reading, then reads what it
/// answered until EOF. Returns (bytes written, answer).
fn send_then_read(stream: &mut (impl Read + Write), bytes: &[u8]) -> (usize, Vec<u8>) {
    let written = write_until_error(stream, bytes);
    (written, read_to_eof(stream))
}

fn write_until_error(stream: &mut impl Write, bytes: &[u8]) -> usize {
    let mut written = 0;
    for chunk in bytes.chunks(64 << 10) {
        match stream.write_all(chunk) {
            Ok(()) => written += chunk.len(),
            Err(_) => break,
        }
    }
    written
}

fn read_to_eof(stream: &mut impl Read) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // ECONNRESET after the answer, or the read timeout.
            Err(_) => break,
        }
    }
    answer
}

/// The JSON values of a reply stream (one per line).
fn values(answer: &[u8]) -> Vec<Value> {
    serde_json::Deserializer::from_slice(answer)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .collect()
}

/// `volume_create` with a `name` of `len` bytes of 'a', up to the name only
/// (`whole`: false) or the whole request.
fn create_request(len: usize, whole: bool) -> Vec<u8> {
    let mut r = br#"{"jsonrpc":"2.0","id":1,"method":"volume_create","params":{"name":""#.to_vec();
    r.resize(r.len() + len, b'a');
    if whole {
        r.extend_from_slice(br#"","size":1073741824}}"#);
    }
    r
}

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("SLUICE_RPC_SOCKET")
        .output()
        .expect("run sluice")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------- (a) TCP

#[test]
fn rpc_over_tcp_from_the_cli_and_a_raw_stream_then_shutdown_over_tcp() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = Sluiced::start("rpc-tcp", &["--rpc-tcp", &addr]);

    // The CLI, `-s HOST:PORT`.
    let o = sluice(&["-s", &addr, "pool_get_pools", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let pools: Value = serde_json::from_slice(&o.stdout).expect("JSON out");
    assert_eq!(pools[0]["name"], "pool0", "{pools}");

    // A raw stream: a request without delimiter, one response line.
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(br#"{"jsonrpc":"2.0","id":7,"method":"rpc_get_methods"}"#)
        .unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut byte).expect("read the response"), 1, "EOF");
        line.push(byte[0]);
    }
    let r: Value = serde_json::from_slice(&line).expect("a JSON response");
    assert_eq!(r["id"], 7, "{r}");
    let methods = r["result"].as_array().expect("a result array");
    assert!(methods.contains(&json!("volume_create")), "{r}");
    drop(s);

    // The Rust client over TCP, and the Unix socket still serves alongside.
    let mut c = Client::connect_tcp(&addr).expect("connect over TCP");
    assert_eq!(c.call("pool_get_pools", json!({})).unwrap(), pools);
    drop(c);
    d.ok("pool_get_pools", json!({}));

    // Nobody on a port: exit status 2, naming the address.
    let nobody = format!("127.0.0.1:{}", free_port());
    let o = sluice(&["-s", &nobody, "pool_get_pools"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains(&format!("cannot connect to {nobody}")),
        "{}",
        text(&o.stderr)
    );

    // `shutdown` over TCP: answered, the daemon exits 0 and the port is closed.
    let o = sluice(&["-s", &addr, "shutdown"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut child = d.child.take().expect("running");
    let st = wait_for("sluiced to exit", Duration::from_secs(60), || {
        child.try_wait().expect("try_wait")
    });
    assert!(st.success(), "sluiced exited with {st}");
    assert!(TcpStream::connect(&addr).is_err(), "{addr} still accepts");
}

#[test]
fn a_non_loopback_rpc_tcp_address_needs_the_insecure_flag() {
    let dir = data_dir("rpc-tcp-public");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluiced"))
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "--nbd-tcp",
            "none",
            "--pool-size",
            "1G",
            "--zone-size",
            "128M",
        ])
        .args(["--rpc-tcp", &format!("0.0.0.0:{}", free_port())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluiced");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let pool_created = dir.join("pool0.img").exists();
    let _ = std::fs::remove_dir_all(&dir);

    let mut checks = Checks::default();
    checks.check(
        status.is_some_and(|st| !st.success()),
        format!("sluiced should exit non-zero at once, got {status:?}: {err}"),
    );
    checks.check(
        err.contains("not a loopback address") && err.contains("--rpc-tcp-insecure"),
        format!("the error should say why and which flag: {err}"),
    );
    checks.check(!pool_created, "refused only after opening the pool");
    checks.assert_all();
}

// ---------------------------------------------------------------- (b) idle connections

#[test]
fn a_thousand_idle_connections_cost_no_thread_and_past_the_cap_are_refused() {
    raise_nofile(IDLE_CONNECTIONS as u64 + 256);
    let d = Sluiced::start("rpc-idle", &[]);
    let pid = daemon_pid(&d);
    d.ok("pool_get_pools", json!({}));
    let threads_before = own_threads(pid);
    let all_before = all_threads(pid);
    let rss_before = rss(pid);
    let peak = PeakRss::start(pid);

    let mut conns: Vec<UnixStream> = (0..IDLE_CONNECTIONS)
        .map(|_| UnixStream::connect(d.rpc_sock()).expect("connect"))
        .collect();
    for c in &conns {
        c.set_nonblocking(true).unwrap();
    }
    // Wait until every connection is either refused (answer, then EOF) or open and
    // silent, with at most CAP open (the rest waits in the backlog until then), or
    // until nothing has changed for 2 s (a daemon that keeps more open).
    let mut answers: Vec<Option<Vec<u8>>> = vec![None; conns.len()];
    let mut partial: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
    let mut last = (IDLE_CONNECTIONS, Instant::now());
    let open = wait_for(
        "the daemon to refuse the connections past the cap",
        Duration::from_secs(60),
        || {
            let mut buf = [0u8; 4096];
            for (i, c) in conns.iter_mut().enumerate() {
                while answers[i].is_none() {
                    match c.read(&mut buf) {
                        Ok(0) => answers[i] = Some(std::mem::take(&mut partial[i])),
                        Ok(n) => partial[i].extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("connection {i}: {e}"),
                    }
                }
            }
            let open = answers.iter().filter(|a| a.is_none()).count();
            if open != last.0 {
                last = (open, Instant::now());
            }
            (open <= CAP || last.1.elapsed() > Duration::from_secs(2)).then_some(open)
        },
    );
    let threads_during = own_threads(pid);
    let all_during = all_threads(pid);
    let rss_during = rss(pid);
    // A new call now is refused too (busy), not queued behind a thread.
    let busy = Client::connect(d.rpc_sock()).and_then(|mut c| c.call("pool_get_pools", json!({})));
    let peak = peak.finish();
    eprintln!(
        "{IDLE_CONNECTIONS} idle connections: {open} open, {} refused; threads {threads_before} -> \
         {threads_during} (with io_uring workers {all_before} -> {all_during}); RSS {} -> {} \
         (peak {}, +{})",
        IDLE_CONNECTIONS - open,
        mib(rss_before),
        mib(rss_during),
        mib(peak),
        mib(peak.saturating_sub(rss_before))
    );

    let mut checks = Checks::default();
    checks.check(
        threads_during <= threads_before,
        format!("threads grew with connections: {threads_before} -> {threads_during}"),
    );
    checks.check(
        peak <= rss_before + IDLE_RSS_BOUND,
        format!(
            "peak RSS {} is more than {} over the baseline {}",
            mib(peak),
            mib(IDLE_RSS_BOUND),
            mib(rss_before)
        ),
    );
    checks.check(
        open == CAP,
        format!("{open} connections open, the cap is {CAP}"),
    );
    let cap = ServerLimits::default().max_connections;
    checks.check(
        cap == CAP,
        format!("ServerLimits::default() has a cap of {cap}; README.md documents {CAP}"),
    );
    let refused_busy = answers
        .iter()
        .flatten()
        .filter(|a| {
            let v = values(a);
            v.len() == 1 && v[0]["error"]["code"] == codes::BUSY && v[0]["id"].is_null()
        })
        .count();
    checks.check(
        refused_busy == IDLE_CONNECTIONS - open,
        format!(
            "{refused_busy} of {} closed connections were told 'busy' (-32004)",
            IDLE_CONNECTIONS - open
        ),
    );
    checks.check(
        busy.as_ref().err().and_then(|e| e.rpc()).map(|e| e.code) == Some(codes::BUSY),
        format!("a call at the cap should be refused as busy: {busy:?}"),
    );
    checks.assert_all();

    // Closed, the connections make room again.
    conns.clear();
    wait_for(
        "the daemon to answer again",
        Duration::from_secs(30),
        || d.call("pool_get_pools", json!({})).ok(),
    );
    assert!(own_threads(pid) <= threads_before);
}

// ---------------------------------------------------------------- (c) half-sent values

#[test]
fn forty_half_sent_15mb_values_are_cut_at_the_cap_and_the_daemon_still_answers() {
    let d = Sluiced::start("rpc-big", &[]);
    let pid = daemon_pid(&d);
    d.ok("pool_get_pools", json!({}));
    let threads_before = own_threads(pid);
    let rss_before = rss(pid);
    let peak = PeakRss::start(pid);

    // Each client announces a 15 MB value, sends half of it and stops: it waits
    // (at the barrier) until every client is there, then reads what it was told.
    let half = Arc::new(create_request(BIG_VALUE / 2, false));
    let barrier = Arc::new(Barrier::new(BIG_CLIENTS));
    let clients: Vec<_> = (0..BIG_CLIENTS)
        .map(|_| {
            let (half, barrier, sock) = (half.clone(), barrier.clone(), d.rpc_sock());
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(sock).expect("connect");
                s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let written = write_until_error(&mut s, &half);
                barrier.wait();
                (written, read_to_eof(&mut s))
            })
        })
        .collect();
    let results: Vec<(usize, Vec<u8>)> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let peak = peak.finish();
    let threads_after = own_threads(pid);
    let max_written = results.iter().map(|r| r.0).max().unwrap_or(0);
    let input_bound = BIG_CLIENTS as u64 * (DEFAULT_MAX_LEN as u64 + (64 << 10));
    let bound = input_bound + BIG_RSS_SLACK;
    eprintln!(
        "{BIG_CLIENTS} clients half-sending {BIG_VALUE}-byte values: at most {max_written} bytes \
         taken from one; RSS {} -> peak {} (+{}, bound +{}); threads {threads_before} -> \
         {threads_after}",
        mib(rss_before),
        mib(peak),
        mib(peak.saturating_sub(rss_before)),
        mib(bound)
    );

    let mut checks = Checks::default();
    checks.check(
        peak <= rss_before + bound,
        format!(
            "peak RSS {} is more than {} over the baseline {}",
            mib(peak),
            mib(bound),
            mib(rss_before)
        ),
    );
    // The cap, one read past it, and what the two socket buffers hold.
    checks.check(
        max_written < 4 << 20,
        format!("the daemon took {max_written} bytes of one value before refusing it"),
    );
    let cut = results
        .iter()
        .filter(|(_, answer)| {
            let v = values(answer);
            v.len() == 1
                && v[0]["error"]["code"] == codes::INVALID_REQUEST
                && v[0]["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("{DEFAULT_MAX_LEN}-byte size limit")))
        })
        .count();
    checks.check(
        cut == BIG_CLIENTS,
        format!(
            "{cut} of {BIG_CLIENTS} were told the size limit; first answer: {}",
            text(&results[0].1)
        ),
    );
    checks.check(
        threads_after <= threads_before,
        format!("threads {threads_before} -> {threads_after}"),
    );
    checks.assert_all();
    // And the daemon serves a normal call.
    assert_eq!(d.ok("pool_get_pools", json!({}))[0]["name"], "pool0");
}

// ---------------------------------------------------------------- (d) huge names

#[test]
fn a_huge_invalid_name_is_not_echoed() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Sluiced::start("rpc-names", &["--rpc-tcp", &addr]);
    let long_run = "a".repeat(200);
    let mut checks = Checks::default();

    // 15 MB: over the value cap, refused while it arrives.
    let mut s = UnixStream::connect(d.rpc_sock()).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (written, answer) = send_then_read(&mut s, &create_request(15_000_000, true));
    eprintln!(
        "15 MB name: {written} bytes taken, {}-byte answer: {}",
        answer.len(),
        text(&answer[..answer.len().min(300)])
    );
    let v = values(&answer);
    checks.check(
        v.len() == 1 && v[0]["error"]["code"] == codes::INVALID_REQUEST,
        format!("one -32600 error expected, got {} bytes", answer.len()),
    );
    checks.check(
        answer.len() < 2048 && !text(&answer).contains(&long_run),
        format!("the 15 MB name was echoed: {}-byte answer", answer.len()),
    );

    // A name of 1,000,001 bytes fits under the cap and reaches volume_create,
    // which names it in its error: a short prefix only. Over TCP, with the client.
    let name = format!("-{}", "a".repeat(1_000_000));
    let mut c = Client::connect_tcp(&addr).expect("connect over TCP");
    let r = c.call("volume_create", json!({"name": name, "size": 1 << 30}));
    match r {
        Err(e) => match e.rpc() {
            Some(e) => {
                eprintln!("1 MB name: {}-byte message: {}", e.message.len(), e.message);
                checks.check(
                    e.code == codes::INVALID_PARAMS,
                    format!("code {} (-32602 expected)", e.code),
                );
                checks.check(
                    e.message.len() <= 1024 && !e.message.contains(&long_run),
                    format!("the 1 MB name was echoed: {}-byte message", e.message.len()),
                );
                checks.check(
                    e.message.contains("'-aaaaaaaaaaaaaaaa"),
                    format!("the message should quote a prefix: {}", e.message),
                );
            }
            None => checks.check(false, format!("not an RPC error: {e}")),
        },
        Ok(v) => checks.check(false, format!("volume_create accepted it: {v}")),
    }
    checks.assert_all();
    d.ok("pool_get_pools", json!({}));
}
