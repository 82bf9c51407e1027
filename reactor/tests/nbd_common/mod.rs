//! Reference NBD server for tests only, plus helpers shared by the
//! `nbd_*` integration tests.
//!
//! The server is deliberately simple — blocking std sockets, one thread per
//! connection, requests handled one at a time in order — because its job is
//! to prove the sans-IO protocol code in `sluice_reactor::nbd` against real
//! clients (nbdinfo, nbdsh, nbdcopy, qemu-img, qemu-io) before the io_uring
//! driver exists. It listens on a Unix socket and on 127.0.0.1 (ephemeral
//! port) and serves in-memory exports.
//!
//! Each export is sparse: a map of allocated 4 KiB blocks, where a missing
//! block is a hole that reads as zeroes. TRIM and WRITE_ZEROES (without
//! NO_HOLE) drop fully covered blocks, so BLOCK_STATUS and READ's
//! OFFSET_HOLE chunks have real holes to report, and exports larger than
//! 4 GiB cost nothing until written.
//!
//! Every connection thread runs under `catch_unwind`; tests assert that no
//! input made the server panic, and can inspect why connections ended.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sluice_reactor::nbd::proto::*;
use sluice_reactor::nbd::{
    encode_block_status, encode_error_reply, encode_offset_data, encode_offset_hole,
    encode_simple_reply, encode_simple_reply_header, parse_request, validate, Command as NbdCmd,
    ExportCatalog, ExportInfo, Handshake, HandshakeState, Negotiated, ProtocolError, Request,
    StatusExtent,
};

/// Allocation granularity of the in-memory exports.
pub const BLOCK: u64 = 4096;

/// A sparse in-memory export.
pub struct MemExport {
    pub name: String,
    pub size: u64,
    pub read_only: bool,
    pub description: Option<String>,
    blocks: Mutex<HashMap<u64, Box<[u8]>>>,
}

impl MemExport {
    pub fn new(name: &str, size: u64, read_only: bool) -> MemExport {
        MemExport {
            name: name.to_string(),
            size,
            read_only,
            description: Some(format!("in-memory test export {name}")),
            blocks: Mutex::new(HashMap::new()),
        }
    }

    /// Same, pre-filled with `data` (blocks that are all zero stay holes).
    pub fn with_data(name: &str, data: &[u8], read_only: bool) -> MemExport {
        let e = MemExport::new(name, data.len() as u64, read_only);
        e.write(0, data);
        e.punch_zero_blocks();
        e
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Box<[u8]>>> {
        // A panic in another connection thread must not wedge the others.
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Iterate over (block index, start within block, byte count, position
    /// in the caller's range) for the range `[offset, offset+len)`.
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let b = pos / BLOCK;
            let start = (pos % BLOCK) as usize;
            let n = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
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

    /// Zero a range. With `punch`, fully covered blocks become holes;
    /// without it (NO_HOLE) every touched block ends up allocated.
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

    /// Discard: only whole blocks are dropped (the spec lets a server round
    /// the range inwards); partial blocks keep their data.
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

    fn punch_zero_blocks(&self) {
        self.lock().retain(|_, blk| blk.iter().any(|&b| b != 0));
    }

    /// `base:allocation` extents for `[offset, offset+len)`, merged.
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

struct Catalog {
    exports: Vec<Arc<MemExport>>,
}

impl Catalog {
    fn get(&self, name: &str) -> Option<&Arc<MemExport>> {
        if name.is_empty() {
            return self.exports.first();
        }
        self.exports.iter().find(|e| e.name == name)
    }
}

impl ExportCatalog for Catalog {
    fn list(&self) -> Vec<String> {
        self.exports.iter().map(|e| e.name.clone()).collect()
    }

    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        self.get(name).map(|e| ExportInfo {
            name: e.name.clone(),
            size: e.size,
            read_only: e.read_only,
            description: e.description.clone(),
        })
    }
}

/// How a connection ended (recorded for tests to inspect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEnd {
    /// Client closed the socket.
    Eof,
    /// NBD_CMD_DISC.
    Disconnect,
    /// NBD_OPT_ABORT.
    Aborted,
    /// The protocol layer reported a fatal violation.
    Protocol(ProtocolError),
    /// Socket error.
    Io(String),
}

#[derive(Default)]
struct Shared {
    panics: AtomicUsize,
    ends: Mutex<Vec<ConnEnd>>,
    connections: AtomicUsize,
}

/// A running reference server. Dropping it stops the listeners; connection
/// threads end when their clients go away.
pub struct TestServer {
    pub socket_path: PathBuf,
    pub port: u16,
    dir: PathBuf,
    catalog: Arc<Catalog>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    acceptors: Vec<JoinHandle<()>>,
}

static SERVER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh private directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-nbd-{tag}-{}-{}",
        std::process::id(),
        SERVER_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

impl TestServer {
    pub fn start(exports: Vec<MemExport>) -> TestServer {
        let dir = scratch_dir("srv");
        let socket_path = dir.join("nbd.sock");
        let catalog = Arc::new(Catalog {
            exports: exports.into_iter().map(Arc::new).collect(),
        });
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));

        let unix = UnixListener::bind(&socket_path).expect("bind unix socket");
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("local addr").port();

        let mut acceptors = Vec::new();
        {
            let (catalog, shared, stop) = (catalog.clone(), shared.clone(), stop.clone());
            acceptors.push(thread::spawn(move || {
                for conn in unix.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(s) = conn {
                        spawn_connection(s, catalog.clone(), shared.clone());
                    }
                }
            }));
        }
        {
            let (catalog, shared, stop) = (catalog.clone(), shared.clone(), stop.clone());
            acceptors.push(thread::spawn(move || {
                for conn in tcp.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(s) = conn {
                        let _ = s.set_nodelay(true);
                        spawn_connection(s, catalog.clone(), shared.clone());
                    }
                }
            }));
        }
        TestServer {
            socket_path,
            port,
            dir,
            catalog,
            shared,
            stop,
            acceptors,
        }
    }

    /// `nbd+unix:///NAME?socket=PATH`
    pub fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket_path.display())
    }

    /// `nbd://127.0.0.1:PORT/NAME`
    pub fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    pub fn export(&self, name: &str) -> Arc<MemExport> {
        self.catalog.get(name).expect("export exists").clone()
    }

    /// Scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn panics(&self) -> usize {
        self.shared.panics.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How finished connections ended, in order of ending.
    pub fn ends(&self) -> Vec<ConnEnd> {
        self.shared
            .ends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait until at least `n` connections have ended (they end
    /// asynchronously after the client's last byte).
    pub fn wait_for_ends(&self, n: usize) -> Vec<ConnEnd> {
        for _ in 0..500 {
            let ends = self.ends();
            if ends.len() >= n {
                return ends;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("only {:?} connections ended, wanted {n}", self.ends());
    }

    pub fn connect_unix(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket_path).expect("connect unix");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s
    }

    pub fn connect_tcp(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect tcp");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.set_nodelay(true).ok();
        s
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() calls.
        let _ = UnixStream::connect(&self.socket_path);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_connection<S: Read + Write + Send + 'static>(
    stream: S,
    catalog: Arc<Catalog>,
    shared: Arc<Shared>,
) {
    shared.connections.fetch_add(1, Ordering::SeqCst);
    thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve_connection(stream, &catalog)
        }));
        let end = match result {
            Ok(end) => end,
            Err(_) => {
                shared.panics.fetch_add(1, Ordering::SeqCst);
                ConnEnd::Io("panic".into())
            }
        };
        shared
            .ends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(end);
    });
}

/// Read more bytes into `buf`; `Ok(false)` on EOF.
fn read_more<S: Read>(s: &mut S, buf: &mut Vec<u8>, tmp: &mut [u8]) -> io::Result<bool> {
    let n = s.read(tmp)?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n > 0)
}

fn serve_connection<S: Read + Write>(mut s: S, catalog: &Catalog) -> ConnEnd {
    match serve_inner(&mut s, catalog) {
        Ok(end) => end,
        Err(ServeError::Protocol(e)) => ConnEnd::Protocol(e),
        Err(ServeError::Io(e)) => ConnEnd::Io(e.to_string()),
    }
}

enum ServeError {
    Protocol(ProtocolError),
    Io(io::Error),
}

impl From<io::Error> for ServeError {
    fn from(e: io::Error) -> Self {
        ServeError::Io(e)
    }
}

impl From<ProtocolError> for ServeError {
    fn from(e: ProtocolError) -> Self {
        ServeError::Protocol(e)
    }
}

fn serve_inner<S: Read + Write>(s: &mut S, catalog: &Catalog) -> Result<ConnEnd, ServeError> {
    let mut tmp = vec![0u8; 256 * 1024];
    let mut buf: Vec<u8> = Vec::new();

    // --- handshake -------------------------------------------------------
    let mut hs = Handshake::without_extended_headers();
    s.write_all(&hs.greeting())?;
    let neg: Negotiated = loop {
        let consumed = hs.feed(&buf, catalog)?;
        buf.drain(..consumed);
        let out = hs.take_output();
        if !out.is_empty() {
            s.write_all(&out)?;
        }
        match hs.state() {
            HandshakeState::Done(n) => break n.clone(),
            HandshakeState::Closed(_) => return Ok(ConnEnd::Aborted),
            _ => {}
        }
        if !read_more(s, &mut buf, &mut tmp)? {
            return Ok(ConnEnd::Eof);
        }
    };
    let export = catalog
        .get(&neg.export_name)
        .expect("negotiated export exists")
        .clone();

    // --- transmission ----------------------------------------------------
    let mut out = Vec::new();
    loop {
        let Some((req, header_len)) = parse_request(&buf)? else {
            if !read_more(s, &mut buf, &mut tmp)? {
                return Ok(ConnEnd::Eof);
            }
            continue;
        };
        let total = header_len + req.payload_len() as usize;
        while buf.len() < total {
            if !read_more(s, &mut buf, &mut tmp)? {
                return Ok(ConnEnd::Eof);
            }
        }
        if req.cmd == NbdCmd::Disc {
            return Ok(ConnEnd::Disconnect);
        }
        out.clear();
        match validate(&req, &neg) {
            Err(errno) => {
                let msg = format!(
                    "{errno} ({:?} at {} len {})",
                    req.cmd, req.offset, req.length
                );
                encode_error_reply(&mut out, &req, &neg, errno, &msg);
                s.write_all(&out)?;
            }
            Ok(()) => execute(s, &req, &buf[header_len..total], &neg, &export, &mut out)?,
        }
        buf.drain(..total);
    }
}

fn execute<S: Write>(
    s: &mut S,
    req: &Request,
    payload: &[u8],
    neg: &Negotiated,
    export: &MemExport,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let (offset, len) = (req.offset, req.length);
    match req.cmd {
        NbdCmd::Read if !neg.structured_replies => {
            // Header and data as separate writes: the shape a zero-copy
            // driver uses (header buffer + data buffer).
            s.write_all(&encode_simple_reply_header(req.handle, None))?;
            s.write_all(&export.read(offset, len))?;
            return Ok(());
        }
        NbdCmd::Read if req.has_flag(CMD_FLAG_DF) => {
            encode_offset_data(out, req.handle, offset, &export.read(offset, len), true);
        }
        NbdCmd::Read => {
            // One content chunk per run of data or hole; the last one
            // carries DONE.
            let extents = export.extents(offset, len);
            let mut pos = offset;
            for (i, e) in extents.iter().enumerate() {
                let done = i + 1 == extents.len();
                if e.flags & STATE_HOLE != 0 {
                    encode_offset_hole(out, req.handle, pos, e.length, done);
                } else {
                    let data = export.read(pos, u64::from(e.length));
                    encode_offset_data(out, req.handle, pos, &data, done);
                }
                pos += u64::from(e.length);
            }
        }
        NbdCmd::Write => {
            export.write(offset, payload);
            encode_simple_reply(out, req.handle, None, &[]);
        }
        // CACHE is a hint: nothing to prefetch in memory.
        NbdCmd::Flush | NbdCmd::Cache => encode_simple_reply(out, req.handle, None, &[]),
        NbdCmd::Trim => {
            export.trim(offset, len);
            encode_simple_reply(out, req.handle, None, &[]);
        }
        NbdCmd::WriteZeroes => {
            export.zero(offset, len, !req.has_flag(CMD_FLAG_NO_HOLE));
            encode_simple_reply(out, req.handle, None, &[]);
        }
        NbdCmd::BlockStatus => {
            let ctx = neg.base_allocation_context.unwrap_or(0);
            // Report at most 64 MiB per request; clients ask again.
            let len = len.min(64 << 20);
            encode_block_status(out, req, ctx, &export.extents(offset, len));
        }
        NbdCmd::Disc | NbdCmd::Unknown(_) => {
            // validate() rejects Unknown, and Disc never gets here.
            encode_error_reply(
                out,
                req,
                neg,
                sluice_reactor::nbd::Errno::Inval,
                "unsupported",
            );
        }
    }
    s.write_all(out)
}

// ---------------------------------------------------------------------------
// Real-client helpers
// ---------------------------------------------------------------------------

/// Locate an external tool or fail the test with an install hint. Tests
/// never skip silently when a tool is missing.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` not found in PATH: install it (apt-get install -y {package}) to run the NBD client tests");
}

/// Run a command, failing the test with its output if it does not succeed.
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

/// Run a command and return its output whatever the exit status.
pub fn run_any(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a Python script under nbdsh with `URI` in the environment; the
/// script must print `OK` last. The directory of nbdsh (where the system
/// python3 with the `nbd` module lives) goes first on PATH, in case another
/// python3 (pyenv) shadows it.
pub fn nbdsh(uri: &str, script: &str) -> Output {
    let nbdsh = require_tool("nbdsh", "python3-libnbd");
    let dir = nbdsh.parent().expect("nbdsh has a directory");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run_ok(
        Command::new(&nbdsh)
            .env("PATH", path)
            .env("URI", uri)
            .arg("-c")
            .arg(script),
    );
    assert!(
        stdout(&out).trim_end().ends_with("OK"),
        "nbdsh script did not finish:\n{}\n{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deterministic test data: `len` bytes from a xorshift stream.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

// ---------------------------------------------------------------------------
// Raw protocol client for hostile-input tests
// ---------------------------------------------------------------------------

pub fn option_bytes(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

pub fn request_bytes(flags: u16, cmd: u16, handle: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&cmd.to_be_bytes());
    v.extend_from_slice(&handle.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&length.to_be_bytes());
    v
}

/// A minimal hand-rolled client: enough protocol to reach transmission and
/// to decode replies, so tests can send exactly the bytes they want.
pub struct RawClient<S: Read + Write> {
    pub s: S,
    pub structured: bool,
    pub size: u64,
    pub flags: u16,
}

/// A decoded reply: simple (error, data) or a list of structured chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple {
        handle: u64,
        error: u32,
    },
    Chunk {
        flags: u16,
        ty: u16,
        handle: u64,
        payload: Vec<u8>,
    },
}

impl<S: Read + Write> RawClient<S> {
    /// Read and check the greeting, send client flags.
    pub fn greet(mut s: S) -> io::Result<S> {
        let mut g = [0u8; GREETING_LEN];
        s.read_exact(&mut g)?;
        assert_eq!(&g[0..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())?;
        Ok(s)
    }

    /// Full handshake via OPT_GO, optionally with structured replies and
    /// base:allocation.
    pub fn connect(s: S, export: &str, structured: bool) -> io::Result<Self> {
        let mut s = Self::greet(s)?;
        if structured {
            s.write_all(&option_bytes(OPT_STRUCTURED_REPLY, &[]))?;
            let (_, ty, _) = read_opt_reply(&mut s)?;
            assert_eq!(ty, REP_ACK);
            let mut q = (export.len() as u32).to_be_bytes().to_vec();
            q.extend_from_slice(export.as_bytes());
            q.extend_from_slice(&1u32.to_be_bytes());
            q.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
            q.extend_from_slice(BASE_ALLOCATION.as_bytes());
            s.write_all(&option_bytes(OPT_SET_META_CONTEXT, &q))?;
            while read_opt_reply(&mut s)?.1 != REP_ACK {}
        }
        let mut d = (export.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&option_bytes(OPT_GO, &d))?;
        let (mut size, mut flags) = (0, 0);
        loop {
            let (_, ty, data) = read_opt_reply(&mut s)?;
            match ty {
                REP_INFO if data[..2] == INFO_EXPORT.to_be_bytes() => {
                    size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                    flags = u16::from_be_bytes([data[10], data[11]]);
                }
                REP_INFO => {}
                REP_ACK => break,
                other => {
                    return Err(io::Error::other(format!("GO failed with reply {other:#x}")));
                }
            }
        }
        Ok(RawClient {
            s,
            structured,
            size,
            flags,
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Read one reply message. For a simple reply to a READ, the caller
    /// reads the data itself with `read_data`.
    pub fn reply(&mut self) -> io::Result<Reply> {
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m)?;
        match u32::from_be_bytes(m) {
            SIMPLE_REPLY_MAGIC => {
                let mut r = [0u8; 12];
                self.s.read_exact(&mut r)?;
                Ok(Reply::Simple {
                    error: u32::from_be_bytes(r[0..4].try_into().unwrap()),
                    handle: u64::from_be_bytes(r[4..12].try_into().unwrap()),
                })
            }
            STRUCTURED_REPLY_MAGIC => {
                let mut r = [0u8; 16];
                self.s.read_exact(&mut r)?;
                let len = u32::from_be_bytes(r[12..16].try_into().unwrap()) as usize;
                let mut payload = vec![0u8; len];
                self.s.read_exact(&mut payload)?;
                Ok(Reply::Chunk {
                    flags: u16::from_be_bytes([r[0], r[1]]),
                    ty: u16::from_be_bytes([r[2], r[3]]),
                    handle: u64::from_be_bytes(r[4..12].try_into().unwrap()),
                    payload,
                })
            }
            other => Err(io::Error::other(format!("bad reply magic {other:#x}"))),
        }
    }

    pub fn read_data(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.s.read_exact(&mut v)?;
        Ok(v)
    }

    /// Error code of the next reply, which must answer `handle` and carry no
    /// data (a simple reply, or a single structured ERROR chunk with DONE).
    pub fn expect_error(&mut self, handle: u64) -> io::Result<u32> {
        match self.reply()? {
            Reply::Simple { handle: h, error } => {
                assert_eq!(h, handle);
                Ok(error)
            }
            Reply::Chunk {
                flags,
                ty,
                handle: h,
                payload,
            } => {
                assert_eq!(h, handle);
                assert_eq!(ty, REPLY_TYPE_ERROR, "expected an error chunk");
                assert_eq!(flags & REPLY_FLAG_DONE, REPLY_FLAG_DONE);
                Ok(u32::from_be_bytes(payload[0..4].try_into().unwrap()))
            }
        }
    }

    /// Read `len` bytes at `offset` and return them (handles both reply
    /// styles, reassembling data and hole chunks).
    pub fn read_at(&mut self, handle: u64, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        self.send(&request_bytes(0, CMD_READ, handle, offset, len))?;
        if !self.structured {
            match self.reply()? {
                Reply::Simple {
                    handle: h,
                    error: 0,
                } if h == handle => return self.read_data(len as usize),
                other => return Err(io::Error::other(format!("read failed: {other:?}"))),
            }
        }
        let mut data = vec![0u8; len as usize];
        loop {
            match self.reply()? {
                Reply::Chunk {
                    flags,
                    ty,
                    handle: h,
                    payload,
                } if h == handle => {
                    match ty {
                        REPLY_TYPE_OFFSET_DATA => {
                            let off = u64::from_be_bytes(payload[0..8].try_into().unwrap());
                            let at = (off - offset) as usize;
                            data[at..at + payload.len() - 8].copy_from_slice(&payload[8..]);
                        }
                        REPLY_TYPE_OFFSET_HOLE | REPLY_TYPE_NONE => {}
                        other => {
                            return Err(io::Error::other(format!("read chunk type {other:#x}")))
                        }
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        return Ok(data);
                    }
                }
                other => return Err(io::Error::other(format!("unexpected {other:?}"))),
            }
        }
    }

    /// Write `data` at `offset`; returns the error code (0 = success).
    pub fn write_at(&mut self, handle: u64, offset: u64, data: &[u8]) -> io::Result<u32> {
        let mut msg = request_bytes(0, CMD_WRITE, handle, offset, data.len() as u32);
        msg.extend_from_slice(data);
        self.send(&msg)?;
        self.expect_error(handle)
    }

    /// True if the server closed the connection (EOF or reset) within the
    /// read timeout.
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue, // drain leftover replies
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    )
                }
            }
        }
    }
}

/// Read one fixed-newstyle option reply: (option, type, data).
pub fn read_opt_reply<S: Read>(s: &mut S) -> io::Result<(u32, u32, Vec<u8>)> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)?;
    assert_eq!(
        u64::from_be_bytes(h[0..8].try_into().unwrap()),
        OPTION_REPLY_MAGIC
    );
    let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut data = vec![0u8; len];
    s.read_exact(&mut data)?;
    Ok((option, ty, data))
}

/// Half-close helper shared by Unix and TCP streams.
pub trait HalfClose {
    fn close_write(&self);
}

impl HalfClose for UnixStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl HalfClose for TcpStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}
