//! Shared fixture of the `nbd_server_*` tests: an in-memory export
//! provider for the io_uring NBD server, and a running server on two
//! reactors (Unix socket + loopback TCP).
//!
//! Each export is a sparse map of 4 KiB blocks (a missing block is a hole
//! that reads as zeroes), so READ answers with real OFFSET_HOLE pieces and
//! BLOCK_STATUS has holes to report. Every backend call can be delayed by a
//! test-chosen function through the runtime's `sleep` (an io_uring timeout),
//! so requests really complete out of order. Counters record what reached
//! the backend (flushes, FUA writes, ...) so tests can check pass-through.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sluice_engine::AlignedBuf;
use sluice_reactor::nbd::handshake::ExportInfo;
use sluice_reactor::nbd::proto::{STATE_HOLE, STATE_ZERO};
use sluice_reactor::nbd::{
    BackendError, Errno, ExportBackend, ExportProvider, ListenSpec, NbdServer, ReadSeg, ReadSegs,
    ServerConfig, StatusExtent,
};
use sluice_reactor::net::ListenAddr;
use sluice_reactor::{sleep, Reactors, RingConfig};

use crate::nbd_common::scratch_dir;

pub const BLOCK: u64 = 4096;
pub const MIB: u64 = 1 << 20;

/// Which backend call a delay applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Trim,
    Zero,
    BlockStatus,
}

/// Delay for (op, offset, length); `None` = answer at once.
pub type DelayFn = Arc<dyn Fn(Op, u64, u32) -> Option<Duration> + Send + Sync>;

/// What reached the backend.
#[derive(Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub fua_writes: AtomicU64,
    pub flushes: AtomicU64,
    pub trims: AtomicU64,
    pub zeroes: AtomicU64,
    pub block_status: AtomicU64,
    /// Backend calls started and not yet finished.
    pub active: AtomicU64,
    /// Highest `active` seen.
    pub max_active: AtomicU64,
}

/// A sparse in-memory export.
pub struct MemStore {
    pub name: String,
    pub size: u64,
    pub read_only: bool,
    blocks: Mutex<HashMap<u64, Box<[u8]>>>,
    pub counters: Counters,
}

impl MemStore {
    pub fn new(name: &str, size: u64, read_only: bool) -> MemStore {
        MemStore {
            name: name.into(),
            size,
            read_only,
            blocks: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Box<[u8]>>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (block, start in block, bytes, position in range) pieces of a range.
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let b = pos / BLOCK;
            let start = (pos % BLOCK) as usize;
            let n = (BLOCK - pos % BLOCK).min(end - pos) as usize;
            let at = (pos - offset) as usize;
            pos += n as u64;
            Some((b, start, n, at))
        })
    }

    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        let blocks = self.lock();
        for (b, start, n, at) in Self::pieces(offset, len) {
            if let Some(blk) = blocks.get(&b) {
                out[at..at + n].copy_from_slice(&blk[start..start + n]);
            }
        }
        out
    }

    pub fn write(&self, offset: u64, data: &[u8]) {
        let mut blocks = self.lock();
        for (b, start, n, at) in Self::pieces(offset, data.len() as u64) {
            let blk = blocks
                .entry(b)
                .or_insert_with(|| vec![0u8; BLOCK as usize].into_boxed_slice());
            blk[start..start + n].copy_from_slice(&data[at..at + n]);
        }
    }

    pub fn zero(&self, offset: u64, len: u64, punch: bool) {
        let mut blocks = self.lock();
        for (b, start, n, _) in Self::pieces(offset, len) {
            if punch && n as u64 == BLOCK {
                blocks.remove(&b);
            } else if let Some(blk) = blocks.get_mut(&b) {
                blk[start..start + n].fill(0);
            } else if !punch {
                blocks.insert(b, vec![0u8; BLOCK as usize].into_boxed_slice());
            }
        }
    }

    pub fn trim(&self, offset: u64, len: u64) {
        let mut blocks = self.lock();
        for (b, _, n, _) in Self::pieces(offset, len) {
            if n as u64 == BLOCK {
                blocks.remove(&b);
            }
        }
    }

    pub fn is_allocated(&self, offset: u64) -> bool {
        self.lock().contains_key(&(offset / BLOCK))
    }

    pub fn allocated_blocks(&self) -> usize {
        self.lock().len()
    }

    /// Read as pieces: runs of allocated blocks become data, runs of
    /// missing blocks holes.
    fn read_segs(&self, offset: u64, len: u32) -> Vec<ReadSeg> {
        let blocks = self.lock();
        let mut runs: Vec<(bool, u64, u64)> = Vec::new(); // (data?, start, len)
        for (b, _, n, at) in Self::pieces(offset, u64::from(len)) {
            let data = blocks.contains_key(&b);
            match runs.last_mut() {
                Some(r) if r.0 == data => r.2 += n as u64,
                _ => runs.push((data, offset + at as u64, n as u64)),
            }
        }
        runs.into_iter()
            .map(|(data, start, n)| {
                if data {
                    let mut buf = AlignedBuf::zeroed(n as usize);
                    for (b, s, k, at) in Self::pieces(start, n) {
                        if let Some(blk) = blocks.get(&b) {
                            buf[at..at + k].copy_from_slice(&blk[s..s + k]);
                        }
                    }
                    ReadSeg::Data { offset: start, buf }
                } else {
                    ReadSeg::Hole {
                        offset: start,
                        len: n as u32,
                    }
                }
            })
            .collect()
    }

    pub fn extents(&self, offset: u64, len: u64) -> Vec<StatusExtent> {
        let blocks = self.lock();
        let mut out: Vec<StatusExtent> = Vec::new();
        for (b, _, n, _) in Self::pieces(offset, len) {
            let flags = if blocks.contains_key(&b) {
                0
            } else {
                STATE_HOLE | STATE_ZERO
            };
            match out.last_mut() {
                Some(last) if last.flags == flags => last.length += n as u32,
                _ => out.push(StatusExtent {
                    length: n as u32,
                    flags,
                }),
            }
        }
        out
    }
}

/// The provider: a table of stores plus an optional delay.
pub struct MemProvider {
    exports: Mutex<BTreeMap<String, Arc<MemStore>>>,
    delay: Mutex<Option<DelayFn>>,
}

impl MemProvider {
    pub fn new(stores: Vec<MemStore>) -> MemProvider {
        MemProvider {
            exports: Mutex::new(
                stores
                    .into_iter()
                    .map(|s| (s.name.clone(), Arc::new(s)))
                    .collect(),
            ),
            delay: Mutex::new(None),
        }
    }

    pub fn store(&self, name: &str) -> Arc<MemStore> {
        self.exports
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no export {name}"))
    }

    /// Delay backend calls of connections opened from now on.
    pub fn set_delay(&self, d: Option<DelayFn>) {
        *self.delay.lock().unwrap() = d;
    }

    pub fn remove(&self, name: &str) {
        self.exports.lock().unwrap().remove(name);
    }
}

impl ExportProvider for MemProvider {
    type Backend = MemBackend;

    fn list(&self) -> Vec<String> {
        self.exports.lock().unwrap().keys().cloned().collect()
    }

    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        let ex = self.exports.lock().unwrap();
        let s = if name.is_empty() {
            ex.values().next()?
        } else {
            ex.get(name)?
        };
        Some(ExportInfo {
            name: s.name.clone(),
            size: s.size,
            read_only: s.read_only,
            description: Some(format!("in-memory export {}", s.name)),
        })
    }

    fn open(&self, name: &str) -> Option<MemBackend> {
        let store = self.exports.lock().unwrap().get(name)?.clone();
        Some(MemBackend {
            store,
            delay: self.delay.lock().unwrap().clone(),
        })
    }
}

/// One connection's backend: a store plus the delay in force at open.
pub struct MemBackend {
    store: Arc<MemStore>,
    delay: Option<DelayFn>,
}

/// Counts a backend call as active while it lives.
struct Active<'a>(&'a Counters);

impl<'a> Active<'a> {
    fn new(c: &'a Counters) -> Self {
        let now = c.active.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_active.fetch_max(now, Ordering::SeqCst);
        Active(c)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MemBackend {
    async fn pause(&self, op: Op, offset: u64, len: u32) {
        if let Some(d) = self.delay.as_ref().and_then(|f| f(op, offset, len)) {
            sleep(d).await.expect("sleep on the reactor ring");
        }
    }
}

impl ExportBackend for MemBackend {
    fn size(&self) -> u64 {
        self.store.size
    }

    fn read_only(&self) -> bool {
        self.store.read_only
    }

    async fn read(&self, offset: u64, len: u32) -> Result<ReadSegs, BackendError> {
        let _a = Active::new(&self.store.counters);
        self.pause(Op::Read, offset, len).await;
        self.store.counters.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self.store.read_segs(offset, len).into())
    }

    async fn write(&self, offset: u64, data: AlignedBuf, fua: bool) -> Result<(), BackendError> {
        let _a = Active::new(&self.store.counters);
        self.pause(Op::Write, offset, data.len() as u32).await;
        if self.store.read_only {
            return Err(BackendError::new(Errno::Perm, "read-only"));
        }
        self.store.write(offset, &data);
        self.store.counters.writes.fetch_add(1, Ordering::Relaxed);
        if fua {
            self.store
                .counters
                .fua_writes
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BackendError> {
        let _a = Active::new(&self.store.counters);
        self.pause(Op::Flush, 0, 0).await;
        self.store.counters.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BackendError> {
        let _a = Active::new(&self.store.counters);
        self.pause(Op::Trim, offset, len).await;
        self.store.trim(offset, u64::from(len));
        self.store.counters.trims.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
    ) -> Result<(), BackendError> {
        let _a = Active::new(&self.store.counters);
        self.pause(Op::Zero, offset, len).await;
        self.store.zero(offset, u64::from(len), may_trim);
        self.store.counters.zeroes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<StatusExtent>, BackendError> {
        let _a = Active::new(&self.store.counters);
        self.pause(Op::BlockStatus, offset, len).await;
        self.store
            .counters
            .block_status
            .fetch_add(1, Ordering::Relaxed);
        let end = (offset + u64::from(len)).min(self.store.size);
        Ok(self.store.extents(offset, end - offset))
    }
}

/// Two reactors (cores 0 and 1, or 0 twice on a one-CPU machine).
pub fn reactors() -> Reactors {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = if n >= 2 { vec![0, 1] } else { vec![0, 0] };
    Reactors::start(&cores, RingConfig::default()).expect("start reactors")
}

/// A running server on two reactors, Unix socket + loopback TCP.
/// Field order matters: the server stops before the reactors.
pub struct Fixture {
    pub server: NbdServer,
    pub reactors: Reactors,
    pub provider: Arc<MemProvider>,
    pub socket: PathBuf,
    pub port: u16,
    pub dir: PathBuf,
}

impl Fixture {
    pub fn start(stores: Vec<MemStore>) -> Fixture {
        Self::start_with(stores, ServerConfig::default())
    }

    pub fn start_with(stores: Vec<MemStore>, config: ServerConfig) -> Fixture {
        let dir = scratch_dir("srv2");
        let socket = dir.join("nbd.sock");
        let reactors = reactors();
        let provider = Arc::new(MemProvider::new(stores));
        let server = NbdServer::start_with(
            &reactors,
            vec![
                ListenSpec::Unix(socket.clone()),
                ListenSpec::Tcp("127.0.0.1:0".into()),
            ],
            provider.clone(),
            config,
        )
        .expect("start NBD server");
        let port = match &server.local_addrs()[1] {
            ListenAddr::Tcp(a) => a.port(),
            other => panic!("second listener is {other:?}"),
        };
        Fixture {
            server,
            reactors,
            provider,
            socket,
            port,
            dir,
        }
    }

    pub fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    pub fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    pub fn store(&self, name: &str) -> Arc<MemStore> {
        self.provider.store(name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Wait (up to 5 s) until the server has at most `n` live connections.
    pub fn wait_connections_at_most(&self, n: usize) {
        for _ in 0..500 {
            if self.server.connections() <= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "server still has {} connections: {:?}",
            self.server.connections(),
            self.server.connection_info()
        );
    }

    /// Both reactor threads are alive and answer calls (a panic in a
    /// connection task would have killed one).
    pub fn assert_reactors_alive(&self) {
        for i in 0..self.reactors.len() {
            let v = self
                .reactors
                .call(i, || async { 7u32 })
                .unwrap_or_else(|e| panic!("reactor {i} does not answer: {e}"));
            assert_eq!(v, 7);
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long an external client may run before the test fails (a hung
/// client must fail the test, not hang it).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Run a command to completion (killing it after [`CLIENT_TIMEOUT`]) and
/// return its output whatever the exit status.
pub fn run_any(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, fired) = (done.clone(), fired.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + CLIENT_TIMEOUT;
            while !done.load(Ordering::SeqCst) {
                if Instant::now() >= deadline {
                    fired.store(true, Ordering::SeqCst);
                    // SAFETY: signals our own child, which has not been
                    // reaped yet (`done` is set only after the wait).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    assert!(
        !fired.load(Ordering::SeqCst),
        "{cmd:?} did not finish within {CLIENT_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`run_any`], failing the test with the output unless the command
/// succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run_any(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
