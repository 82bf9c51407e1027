//! Serving a [`Registry`] on a Unix socket (and optionally loopback TCP).
//!
//! This file owns sockets and threads: binding (mode 0600, stale-socket removal),
//! one accept thread per listener, one thread per connection, reading bytes into a
//! [`Framer`], writing responses (one JSON value per line), and an orderly stop.
//! The control plane sees a handful of requests per second, so a thread per
//! connection is the simplest correct design; handlers may block.
//!
//! Stopping: a [`Shutdown`] is created first, so that the daemon's `shutdown` method
//! can capture it before the server exists, and may be shared by several servers.
//! [`Shutdown::trigger`] wakes the accept threads (a self-pipe in their `poll`), which
//! close their listeners, remove their socket file, shut down the read side of every
//! connection (so idle readers see EOF while in-flight responses are still written)
//! and join the connection threads. Triggering from inside a handler is fine: the
//! response to that request is still sent.

use super::framer::{FrameError, Framer};
use super::registry::{error_response, Registry};
use super::RpcError;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::Value;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown as SocketShutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// A client that stops reading must not be able to hold a connection thread (and so
/// a stop) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 64 << 10;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("{} is in use by a running server", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error(
        "refusing to serve JSON-RPC on {addr}: the control plane has no authentication, \
         only loopback addresses are allowed"
    )]
    NotLoopback { addr: SocketAddr },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here is left inconsistent by a panic while holding these locks.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stop signal shared by servers and whoever may ask them to stop (the `shutdown`
/// method, a signal handler, tests). Cheap to clone.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    triggered: Mutex<bool>,
    cond: Condvar,
    /// Write ends of the accept threads' self-pipes.
    wakers: Mutex<Vec<UnixStream>>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every server sharing this signal to stop. Returns at once; use
    /// [`ServerHandle::join`] or [`Shutdown::wait`] to wait. Idempotent.
    pub fn trigger(&self) {
        *lock(&self.inner.triggered) = true;
        self.inner.cond.notify_all();
        for waker in lock(&self.inner.wakers).iter() {
            // Non-blocking; a full pipe already holds a wake-up.
            let _ = (&*waker).write(&[1]);
        }
    }

    pub fn is_triggered(&self) -> bool {
        *lock(&self.inner.triggered)
    }

    /// Blocks until [`Shutdown::trigger`] is called (the daemon's main thread).
    pub fn wait(&self) {
        let mut triggered = lock(&self.inner.triggered);
        while !*triggered {
            triggered = self
                .inner
                .cond
                .wait(triggered)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A read end that becomes readable on trigger (after a trigger, immediately).
    fn waker(&self) -> io::Result<UnixStream> {
        let (rx, tx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        lock(&self.inner.wakers).push(tx);
        if self.is_triggered() {
            self.trigger();
        }
        Ok(rx)
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// A running server. Dropping it stops the server and waits for it, so a test or an
/// early-returning daemon cannot leak listener threads or the socket file.
#[derive(Debug)]
pub struct ServerHandle {
    addr: ListenAddr,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The bound address (for TCP port 0, the port actually chosen).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    pub fn shutdown_signal(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Triggers the shared [`Shutdown`] (stopping every server that shares it).
    pub fn stop(&self) {
        self.shutdown.trigger();
    }

    /// Waits until the server has stopped: listener closed, socket file removed,
    /// every connection thread finished (so in-flight handlers have returned).
    pub fn join(mut self) {
        self.join_thread();
    }

    fn join_thread(&mut self) {
        if let Some(t) = self.thread.take() {
            // The accept loop does not panic; if it did, there is nothing left to stop.
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
            self.join_thread();
        }
    }
}

/// Serves `registry` on a Unix socket at `path`, readable and writable by the owner
/// only (0600), until `shutdown` is triggered.
///
/// A leftover socket file from a crashed daemon is removed; a socket with a live
/// server behind it, or a path that is not a socket, is an error rather than being
/// clobbered. The parent directory must exist. Between `bind` and `chmod` the socket
/// briefly has the umask's mode; with the usual umask (022) nobody else can connect
/// in that window (connecting needs write permission).
pub fn serve_unix(
    path: impl AsRef<Path>,
    registry: Arc<Registry>,
    shutdown: Shutdown,
) -> Result<ServerHandle, ServerError> {
    let path = path.as_ref().to_path_buf();
    remove_stale_socket(&path)?;
    let bind_err = |source| ServerError::Bind {
        addr: path.display().to_string(),
        source,
    };
    let listener = UnixListener::bind(&path).map_err(bind_err)?;
    let io_err = |context: &str| {
        let context = format!("{context} {}", path.display());
        move |source| ServerError::Io { context, source }
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot chmod 0600"))?;
    let meta = std::fs::metadata(&path).map_err(io_err("cannot stat"))?;
    let cleanup = SocketFile {
        path: path.clone(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    start(
        Listener::Unix(listener, cleanup),
        ListenAddr::Unix(path),
        registry,
        shutdown,
    )
}

/// Serves `registry` on loopback TCP (`"127.0.0.1:5260"`, port 0 for any) until
/// `shutdown` is triggered. Non-loopback addresses are refused: anyone who can reach
/// the port can delete volumes.
pub fn serve_tcp(
    addr: impl ToSocketAddrs,
    registry: Arc<Registry>,
    shutdown: Shutdown,
) -> Result<ServerHandle, ServerError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| ServerError::Io {
            context: "cannot resolve the JSON-RPC TCP address".to_string(),
            source,
        })?
        .collect();
    if let Some(&bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(ServerError::NotLoopback { addr: bad });
    }
    let listener = TcpListener::bind(&addrs[..]).map_err(|source| ServerError::Bind {
        addr: format!("{addrs:?}"),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| ServerError::Io {
        context: "cannot read the bound TCP address".to_string(),
        source,
    })?;
    start(
        Listener::Tcp(listener),
        ListenAddr::Tcp(local),
        registry,
        shutdown,
    )
}

fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServerError::Io {
            context: format!("cannot stat {}", path.display()),
            source,
        }),
        Ok(meta) if !meta.file_type().is_socket() => Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        }),
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(|source| ServerError::Io {
                context: format!("cannot remove stale socket {}", path.display()),
                source,
            })
        }
    }
}

/// The socket file we created, identified by inode so that stopping never removes
/// a socket some newer server has since bound at the same path.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

enum Listener {
    Unix(UnixListener, SocketFile),
    Tcp(TcpListener),
}

/// What a connection thread needs from its stream beyond `Read + Write`.
trait Connection: Read + Write + CloseRead + Send + 'static {
    /// Another handle to the same socket, kept by the accept thread to stop it.
    fn closer(&self) -> io::Result<Box<dyn CloseRead>>;
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

trait CloseRead: Send {
    /// Makes blocked and future reads return EOF; writes still work.
    fn close_read(&self);
    /// Ends the connection for the peer even though the accept thread still holds a
    /// duplicate of the descriptor (dropping ours alone would not).
    fn close(&self);
}

impl Connection for UnixStream {
    fn closer(&self) -> io::Result<Box<dyn CloseRead>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, timeout)
    }
}

impl CloseRead for UnixStream {
    fn close_read(&self) {
        let _ = self.shutdown(SocketShutdown::Read);
    }
    fn close(&self) {
        let _ = self.shutdown(SocketShutdown::Both);
    }
}

impl Connection for TcpStream {
    fn closer(&self) -> io::Result<Box<dyn CloseRead>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
}

impl CloseRead for TcpStream {
    fn close_read(&self) {
        let _ = self.shutdown(SocketShutdown::Read);
    }
    fn close(&self) {
        let _ = self.shutdown(SocketShutdown::Both);
    }
}

fn start(
    listener: Listener,
    addr: ListenAddr,
    registry: Arc<Registry>,
    shutdown: Shutdown,
) -> Result<ServerHandle, ServerError> {
    let io_err = |context: &str| {
        let context = format!("{context} for {addr}");
        move |source| ServerError::Io { context, source }
    };
    match &listener {
        Listener::Unix(l, _) => l.set_nonblocking(true),
        Listener::Tcp(l) => l.set_nonblocking(true),
    }
    .map_err(io_err("cannot make the listener non-blocking"))?;
    let waker = shutdown
        .waker()
        .map_err(io_err("cannot create the wake-up pipe"))?;
    let name = match addr {
        ListenAddr::Unix(_) => "rpc-unix",
        ListenAddr::Tcp(_) => "rpc-tcp",
    };
    let signal = shutdown.clone();
    let thread = thread::Builder::new()
        .name(name.to_string())
        .spawn(move || accept_loop(listener, waker, registry, signal))
        .map_err(io_err("cannot spawn the accept thread"))?;
    Ok(ServerHandle {
        addr,
        shutdown,
        thread: Some(thread),
    })
}

struct Live {
    closer: Box<dyn CloseRead>,
    thread: JoinHandle<()>,
}

fn accept_loop(listener: Listener, waker: UnixStream, registry: Arc<Registry>, shutdown: Shutdown) {
    // Only this thread touches the table: no lock.
    let mut conns: Vec<Live> = Vec::new();
    let mut next_id = 0u64;
    while !shutdown.is_triggered() {
        let readable = {
            let listen_fd = match &listener {
                Listener::Unix(l, _) => l.as_fd(),
                Listener::Tcp(l) => l.as_fd(),
            };
            let mut fds = [
                PollFd::new(listen_fd, PollFlags::POLLIN),
                PollFd::new(waker.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => fds[0].revents().is_some_and(|r| !r.is_empty()),
                Err(nix::errno::Errno::EINTR) => false,
                Err(e) => {
                    eprintln!("sluice-rpc: poll on the JSON-RPC listener failed, stopping it: {e}");
                    break;
                }
            }
        };
        if !readable || shutdown.is_triggered() {
            continue;
        }
        let accepted = match &listener {
            Listener::Unix(l, _) => l
                .accept()
                .and_then(|(s, _)| spawn_connection(s, next_id, &registry, &shutdown)),
            Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                let _ = s.set_nodelay(true);
                spawn_connection(s, next_id, &registry, &shutdown)
            }),
        };
        match accepted {
            Ok(live) => {
                next_id += 1;
                // Reap finished connections so the table does not grow forever.
                let (done, running) = conns.drain(..).partition(|l| l.thread.is_finished());
                conns = running;
                conns.push(live);
                for l in done {
                    let _ = l.thread.join();
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: keep serving the connections we have, retry later.
                eprintln!("sluice-rpc: accepting a JSON-RPC connection failed: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    if let Listener::Unix(_, file) = &listener {
        file.remove();
    }
    drop(listener);
    for l in &conns {
        l.closer.close_read();
    }
    for l in conns {
        let _ = l.thread.join();
    }
}

/// Starts the thread serving one accepted connection.
fn spawn_connection<S: Connection>(
    stream: S,
    id: u64,
    registry: &Arc<Registry>,
    shutdown: &Shutdown,
) -> io::Result<Live> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let closer = stream.closer()?;
    let registry = registry.clone();
    let shutdown = shutdown.clone();
    let thread = thread::Builder::new()
        .name(format!("rpc-conn-{id}"))
        .spawn(move || {
            let mut stream = stream;
            serve_connection(&mut stream, &registry, &shutdown);
            stream.close();
        })?;
    Ok(Live { closer, thread })
}

/// Reads requests from one connection until EOF, an I/O error, unframeable input, or
/// shutdown, answering each in order.
fn serve_connection(stream: &mut impl Connection, registry: &Registry, shutdown: &Shutdown) {
    let mut framer = Framer::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        loop {
            match framer.next_value() {
                Ok(Some(message)) => {
                    if let Some(response) = registry.handle(message) {
                        if write_value(stream, &response).is_err() {
                            return;
                        }
                    }
                    if shutdown.is_triggered() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = write_value(stream, &frame_error_response(&e));
                    return;
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                if shutdown.is_triggered() {
                    return;
                }
                let response = match framer.finish() {
                    Ok(Some(message)) => registry.handle(message),
                    Ok(None) => None,
                    Err(e) => Some(frame_error_response(&e)),
                };
                if let Some(response) = response {
                    let _ = write_value(stream, &response);
                }
                return;
            }
            Ok(n) => framer.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The last word on a connection whose byte stream cannot be parsed: id is null
/// because no request could be read (JSON-RPC 2.0 section 5).
fn frame_error_response(error: &FrameError) -> Value {
    let error = match error {
        FrameError::TooLarge { .. } => RpcError::invalid_request(error),
        _ => RpcError::parse_error(error),
    };
    error_response(Value::Null, error)
}

/// Writes one response followed by a newline, so that line-oriented tools
/// (`nc -U`, `socat`, `jq`) see one response per line.
fn write_value(stream: &mut impl Write, value: &Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)?;
    stream.flush()
}
