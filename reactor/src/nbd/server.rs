//! The NBD export server: listeners, connection placement, lifecycle.
//!
//! This file owns the server as a whole: binding the Unix and TCP
//! listeners, running their accept loops on reactors, spreading accepted
//! connections round-robin over all reactors, the registry of live
//! connections (for counts, per-export disconnects and `stop`), and
//! [`NbdServer::stop`]. What happens on a connection is in `nbd/conn.rs`.
//!
//! TLS ([`ServerConfig::tls`]) is offered on the TCP listeners; the Unix
//! socket stays plain (its file permissions are its access control). A TCP
//! listener on a non-loopback address is refused unless TLS is required
//! there or [`ServerConfig::insecure`] says plaintext exposure is wanted.
//!
//! Placement: listener `i` accepts on reactor `i % n`. Each accepted socket
//! goes to the next reactor in round-robin order; when that is another
//! reactor the descriptor travels in a message (a `dup` of it — the
//! runtime's `UringStream` cannot give its descriptor up) and the
//! connection task is spawned there. From then on the connection lives on
//! that reactor only, and so does its backend.
//!
//! Ending connections from outside (stop, export removal) is a message to
//! the owning reactor, which looks the connection up in a thread-local
//! table and kills it there — never a `shutdown` on a raw descriptor number
//! from another thread, which could hit a recycled descriptor.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::backend::ExportProvider;
use super::budget::MemoryBudget;
use super::conn::{run_connection, unless, ConnCtl, ConnEnd, Latch};
use super::tls::TlsServer;
use crate::error::{CallError, SendError};
use crate::executor::spawn_local;
use crate::net::{ListenAddr, UringListener, UringStream};
use crate::reactor::{current, ReactorsHandle};

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// A Unix socket path. A stale socket file (nobody listening) is
    /// removed first; a live one or a non-socket file is an error.
    Unix(PathBuf),
    /// A TCP address such as `127.0.0.1:10809` (port 0 picks one; see
    /// [`NbdServer::local_addrs`]). Beyond loopback it needs required TLS
    /// or [`ServerConfig::insecure`].
    Tcp(String),
}

/// Tuning of the server and its connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests one connection may have in flight; at the bound the server
    /// stops reading from that socket until some complete.
    pub max_requests: usize,
    /// Buffer bytes (READ lengths + WRITE payloads) one connection may have
    /// in flight before reading pauses (one request is always admitted, so
    /// a single 64 MiB request still works).
    pub max_inflight_bytes: usize,
    /// Buffer bytes (READ reply data + WRITE payloads) all connections of
    /// the server together may have in flight: one [`MemoryBudget`] shared
    /// by every reactor. A connection that cannot get its request's bytes
    /// stops reading until others are answered. A request larger than the
    /// budget is charged the whole budget (it runs alone).
    pub memory_budget: usize,
    /// Receive buffer per connection: one `recv` takes up to this much, so
    /// many pipelined requests cost one receive.
    pub recv_buffer: usize,
    /// READ payloads up to this size are copied into the writer's batch when
    /// more replies are waiting (one send for many replies) instead of each
    /// getting its own zero-copy `sendmsg`. 0 disables coalescing.
    pub coalesce_bytes: usize,
    /// A connection that has not finished its handshake after this long is
    /// closed (slow or idle clients must not hold sockets forever).
    pub handshake_timeout: Option<Duration>,
    /// BLOCK_STATUS asks the backend about at most this many bytes per
    /// request; clients continue from where the reply ends.
    pub block_status_max: u32,
    /// How long [`NbdServer::stop`] waits for connections to finish.
    pub stop_timeout: Duration,
    /// TLS credentials offered (or required) on the TCP listeners.
    pub tls: Option<Arc<TlsServer>>,
    /// Allow a TCP listener on a non-loopback address without required
    /// TLS (anyone who can reach it can read and write the exports).
    pub insecure: bool,
}

/// Default [`ServerConfig::memory_budget`]: 256 MiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 << 20;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_requests: 128,
            max_inflight_bytes: 64 << 20,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            recv_buffer: 256 << 10,
            coalesce_bytes: 16 << 10,
            handshake_timeout: Some(Duration::from_secs(30)),
            block_status_max: 1 << 30,
            stop_timeout: Duration::from_secs(10),
            tls: None,
            insecure: false,
        }
    }
}

/// Errors from starting the server.
#[derive(Debug, thiserror::Error)]
pub enum NbdServerError {
    #[error("no listen address given")]
    NoListeners,
    #[error("the reactors are stopped")]
    ReactorsStopped,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("another server is listening on {0}")]
    SocketInUse(PathBuf),
    #[error("cannot start the accept loop: {0}")]
    Reactor(#[from] CallError),
    #[error(
        "refusing to serve NBD on {0} without TLS: it is not a loopback address \
         (configure required TLS, or pass insecure to allow plaintext)"
    )]
    Insecure(SocketAddr),
}

impl From<SendError> for NbdServerError {
    fn from(e: SendError) -> Self {
        NbdServerError::Reactor(CallError::Send(e))
    }
}

/// A live connection, as [`NbdServer::connection_info`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Server-unique id.
    pub id: u64,
    /// Index of the reactor serving it.
    pub reactor: usize,
    /// The export, once the handshake selected one.
    pub export: Option<String>,
}

/// How many ended connections [`NbdServer::ended`] remembers.
const END_HISTORY: usize = 256;

struct ConnRecord {
    reactor: usize,
    export: Option<String>,
}

/// The server's table of live connections, recent ends and counters.
#[derive(Default)]
struct ConnTable {
    stopping: bool,
    next_id: u64,
    conns: HashMap<u64, ConnRecord>,
    ends: VecDeque<ConnEnd>,
    total: u64,
    /// Connections so far that negotiated extended headers.
    extended_total: u64,
}

/// The thread-safe part of a server, shared with every reactor.
struct ServerShared {
    id: u64,
    config: ServerConfig,
    /// The budget every connection's in-flight buffers are charged to.
    budget: Arc<MemoryBudget>,
    reg: Mutex<ConnTable>,
    drained: Condvar,
    rr: AtomicUsize,
}

impl ServerShared {
    fn reg(&self) -> MutexGuard<'_, ConnTable> {
        // A panic elsewhere must not wedge stop() or the counters.
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a new connection on `reactor`; `None` once stopping.
    fn register(&self, reactor: usize) -> Option<u64> {
        let mut r = self.reg();
        if r.stopping {
            return None;
        }
        r.next_id += 1;
        r.total += 1;
        let id = r.next_id;
        r.conns.insert(
            id,
            ConnRecord {
                reactor,
                export: None,
            },
        );
        Some(id)
    }

    fn unregister(&self, id: u64) {
        let mut r = self.reg();
        r.conns.remove(&id);
        if r.conns.is_empty() {
            self.drained.notify_all();
        }
    }

    fn set_export(&self, id: u64, name: &str) {
        if let Some(c) = self.reg().conns.get_mut(&id) {
            c.export = Some(name.to_string());
        }
    }

    fn record_end(&self, end: ConnEnd) {
        let mut r = self.reg();
        if r.ends.len() == END_HISTORY {
            r.ends.pop_front();
        }
        r.ends.push_back(end);
    }
}

static NEXT_SERVER: AtomicU64 = AtomicU64::new(1);

/// Per-reactor handles of this thread's connections and accept loops, by
/// (server id, connection id / listener index). Weak: the tasks own them.
#[derive(Default)]
struct ReactorConns {
    conns: HashMap<(u64, u64), Weak<ConnCtl>>,
    acceptors: HashMap<(u64, usize), Weak<AcceptorCtl>>,
    /// Servers whose handshake-timeout sweeper runs on this reactor.
    sweepers: HashSet<u64>,
}

thread_local! {
    static LOCAL: RefCell<ReactorConns> = RefCell::new(ReactorConns::default());
}

fn with_local<R>(f: impl FnOnce(&mut ReactorConns) -> R) -> Option<R> {
    LOCAL.try_with(|l| f(&mut l.borrow_mut())).ok()
}

/// Kill connection `conn` of server `server` if it lives on this thread.
fn kill_local(server: u64, conn: u64) {
    let ctl = with_local(|l| l.conns.get(&(server, conn)).and_then(Weak::upgrade)).flatten();
    if let Some(c) = ctl {
        c.kill();
    }
}

#[derive(Default)]
struct AcceptorCtl {
    stop: Latch,
    done: Latch,
}

/// Removes a connection from the registries when its task ends or is
/// dropped (reactor shutdown).
struct ConnGuard {
    shared: Arc<ServerShared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let key = (self.shared.id, self.id);
        with_local(|l| l.conns.remove(&key));
        self.shared.unregister(self.id);
    }
}

/// A running NBD server. Dropping it stops it (see [`NbdServer::stop`]).
pub struct NbdServer {
    shared: Arc<ServerShared>,
    reactors: ReactorsHandle,
    addrs: Vec<ListenAddr>,
    /// Reactor index of each listener's accept loop.
    acceptors: Vec<usize>,
    stopped: Mutex<bool>,
}

impl NbdServer {
    /// Bind `listeners` and serve `provider`'s exports on `reactors` with
    /// the default [`ServerConfig`].
    pub fn start<P: ExportProvider>(
        reactors: &ReactorsHandle,
        listeners: Vec<ListenSpec>,
        provider: Arc<P>,
    ) -> Result<NbdServer, NbdServerError> {
        Self::start_with(reactors, listeners, provider, ServerConfig::default())
    }

    /// [`Self::start`] with explicit settings. Binds on the calling thread
    /// (so address errors come back here), then starts one accept loop per
    /// listener; returns once they run (when called off a reactor).
    pub fn start_with<P: ExportProvider>(
        reactors: &ReactorsHandle,
        listeners: Vec<ListenSpec>,
        provider: Arc<P>,
        config: ServerConfig,
    ) -> Result<NbdServer, NbdServerError> {
        if listeners.is_empty() {
            return Err(NbdServerError::NoListeners);
        }
        if reactors.is_stopped() || reactors.is_empty() {
            return Err(NbdServerError::ReactorsStopped);
        }
        let mut bound = Vec::with_capacity(listeners.len());
        for spec in &listeners {
            bound.push(bind(spec)?);
        }
        // Checked on the bound address, so names and 0.0.0.0 are judged
        // by what the socket really listens on.
        let tls_required = config.tls.as_ref().is_some_and(|t| t.required());
        if !tls_required && !config.insecure {
            for l in &bound {
                if let ListenAddr::Tcp(a) = l.local_addr() {
                    if !a.ip().is_loopback() {
                        return Err(NbdServerError::Insecure(*a));
                    }
                }
            }
        }
        let shared = Arc::new(ServerShared {
            id: NEXT_SERVER.fetch_add(1, Ordering::Relaxed),
            budget: MemoryBudget::new(config.memory_budget),
            config,
            reg: Mutex::new(ConnTable::default()),
            drained: Condvar::new(),
            rr: AtomicUsize::new(0),
        });
        let addrs: Vec<ListenAddr> = bound.iter().map(|l| l.local_addr().clone()).collect();
        let server = NbdServer {
            shared: shared.clone(),
            reactors: reactors.clone(),
            addrs,
            acceptors: (0..bound.len()).map(|i| i % reactors.len()).collect(),
            stopped: Mutex::new(false),
        };
        let on_reactor = current().is_some();
        for (i, listener) in bound.into_iter().enumerate() {
            let idx = i % reactors.len();
            let (shared, provider, handle) = (shared.clone(), provider.clone(), reactors.clone());
            let setup = move || start_acceptor(i, listener, shared, provider, handle);
            let r = if on_reactor {
                reactors.send(idx, setup).map_err(NbdServerError::from)
            } else {
                reactors
                    .call(idx, move || {
                        setup();
                        async {}
                    })
                    .map_err(NbdServerError::from)
            };
            if let Err(e) = r {
                server.stop();
                return Err(e);
            }
        }
        Ok(server)
    }

    /// The bound addresses, in the order of the listen specs (TCP with the
    /// actual port).
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.addrs
    }

    /// The budget in-flight request and reply buffers of all connections
    /// are charged to (for monitoring and tests).
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.shared.budget
    }

    /// Connections so far (ended ones included) that negotiated extended
    /// headers.
    pub fn extended_header_connections(&self) -> u64 {
        self.shared.reg().extended_total
    }

    /// Live connections (including ones still negotiating).
    pub fn connections(&self) -> usize {
        self.shared.reg().conns.len()
    }

    /// Live connections that negotiated export `name`.
    pub fn export_connections(&self, name: &str) -> usize {
        self.shared
            .reg()
            .conns
            .values()
            .filter(|c| c.export.as_deref() == Some(name))
            .count()
    }

    /// Every live connection: id, reactor, export.
    pub fn connection_info(&self) -> Vec<ConnectionInfo> {
        let mut v: Vec<ConnectionInfo> = self
            .shared
            .reg()
            .conns
            .iter()
            .map(|(&id, c)| ConnectionInfo {
                id,
                reactor: c.reactor,
                export: c.export.clone(),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Connections accepted since start.
    pub fn total_connections(&self) -> u64 {
        self.shared.reg().total
    }

    /// How the most recent connections ended (oldest first, last 256).
    pub fn ended(&self) -> Vec<ConnEnd> {
        self.shared.reg().ends.iter().cloned().collect()
    }

    /// Close every connection to export `name` (after `nbd_export_remove`).
    /// Returns how many were asked to close; they finish their in-flight
    /// requests first.
    pub fn disconnect_export(&self, name: &str) -> usize {
        let victims: Vec<(u64, usize)> = self
            .shared
            .reg()
            .conns
            .iter()
            .filter(|(_, c)| c.export.as_deref() == Some(name))
            .map(|(&id, c)| (id, c.reactor))
            .collect();
        for &(id, reactor) in &victims {
            let sid = self.shared.id;
            let _ = self.reactors.send(reactor, move || kill_local(sid, id));
        }
        victims.len()
    }

    /// Stop: close the listeners (removing Unix socket files), close every
    /// connection, and wait — up to [`ServerConfig::stop_timeout`] — until
    /// all connection tasks have finished (each first completes its
    /// in-flight backend calls). Idempotent. Called on a reactor thread it
    /// only starts all that (a reactor must not block).
    pub fn stop(&self) {
        {
            let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
            if *stopped {
                return;
            }
            *stopped = true;
        }
        self.shared.reg().stopping = true;
        let sid = self.shared.id;
        let on_reactor = current().is_some();
        // 1. Accept loops: no new connections, listeners closed.
        for (i, &idx) in self.acceptors.iter().enumerate() {
            let stop_it = move || {
                with_local(|l| l.acceptors.remove(&(sid, i)))
                    .flatten()
                    .and_then(|w| w.upgrade())
            };
            if on_reactor {
                let _ = self.reactors.send(idx, move || {
                    if let Some(a) = stop_it() {
                        a.stop.set();
                    }
                });
            } else {
                let _ = self.reactors.call(idx, move || {
                    let a = stop_it();
                    async move {
                        if let Some(a) = a {
                            a.stop.set();
                            a.done.wait().await;
                        }
                    }
                });
            }
        }
        // 2. Connections (none can register any more).
        let conns: Vec<(u64, usize)> = self
            .shared
            .reg()
            .conns
            .iter()
            .map(|(&id, c)| (id, c.reactor))
            .collect();
        for (id, reactor) in conns {
            let _ = self.reactors.send(reactor, move || kill_local(sid, id));
        }
        if on_reactor {
            return;
        }
        // 3. Wait for them.
        let deadline = Instant::now() + self.shared.config.stop_timeout;
        let mut r = self.shared.reg();
        while !r.conns.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            r = self
                .shared
                .drained
                .wait_timeout(r, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bind one listener on the calling thread.
fn bind(spec: &ListenSpec) -> Result<UringListener, NbdServerError> {
    match spec {
        ListenSpec::Unix(path) => {
            clear_stale_socket(path)?;
            UringListener::bind_unix(path).map_err(|source| NbdServerError::Bind {
                addr: path.display().to_string(),
                source,
            })
        }
        ListenSpec::Tcp(addr) => {
            UringListener::bind_tcp(addr.as_str()).map_err(|source| NbdServerError::Bind {
                addr: addr.clone(),
                source,
            })
        }
    }
}

/// Remove a socket file nobody listens on (left by a crashed daemon).
fn clear_stale_socket(path: &Path) -> Result<(), NbdServerError> {
    let bind_err = |source| NbdServerError::Bind {
        addr: path.display().to_string(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(bind_err(e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(NbdServerError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => {}
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(NbdServerError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(bind_err(e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bind_err(e)),
    }
}

/// Runs on the acceptor's reactor: spawn the accept loop and make it
/// stoppable.
fn start_acceptor<P: ExportProvider>(
    index: usize,
    listener: UringListener,
    shared: Arc<ServerShared>,
    provider: Arc<P>,
    reactors: ReactorsHandle,
) {
    let ctl = Rc::new(AcceptorCtl::default());
    let key = (shared.id, index);
    with_local(|l| l.acceptors.insert(key, Rc::downgrade(&ctl)));
    // TLS is offered on TCP only.
    let tls = match listener.local_addr() {
        ListenAddr::Tcp(_) => shared.config.tls.clone(),
        ListenAddr::Unix(_) => None,
    };
    spawn_local(accept_loop(listener, ctl, shared, provider, reactors, tls)).detach();
}

async fn accept_loop<P: ExportProvider>(
    listener: UringListener,
    ctl: Rc<AcceptorCtl>,
    shared: Arc<ServerShared>,
    provider: Arc<P>,
    reactors: ReactorsHandle,
    tls: Option<Arc<TlsServer>>,
) {
    loop {
        match unless(&ctl.stop, listener.accept()).await {
            None => break,
            Some(Ok(stream)) => place(stream, &shared, &provider, &reactors, &tls),
            Some(Err(e)) => {
                let transient = matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO)
                );
                if !transient {
                    // Out of descriptors or memory (or something odd):
                    // back off instead of spinning on the error.
                    match unless(&ctl.stop, crate::ring::sleep(Duration::from_millis(20))).await {
                        Some(Ok(())) => {}
                        _ => break,
                    }
                }
            }
        }
    }
    // Closes the socket and removes a Unix socket file.
    drop(listener);
    ctl.done.set();
}

/// Hand an accepted connection to the next reactor in round-robin order.
fn place<P: ExportProvider>(
    stream: UringStream,
    shared: &Arc<ServerShared>,
    provider: &Arc<P>,
    reactors: &ReactorsHandle,
    tls: &Option<Arc<TlsServer>>,
) {
    let target = shared.rr.fetch_add(1, Ordering::Relaxed) % reactors.len();
    let here = current().map(|c| c.index);
    if here != Some(target) {
        if let Ok(fd) = dup_fd(&stream) {
            drop(stream);
            let (shared, provider, tls) = (shared.clone(), provider.clone(), tls.clone());
            // If the target is stopped the message, and with it the
            // descriptor, is dropped: the client sees the socket close.
            let _ = reactors.send(target, move || {
                start_connection(UringStream::from_fd(fd), shared, provider, target, tls)
            });
            return;
        }
    }
    let (shared, provider, tls) = (shared.clone(), provider.clone(), tls.clone());
    start_connection(stream, shared, provider, here.unwrap_or(0), tls);
}

fn dup_fd(s: &UringStream) -> io::Result<OwnedFd> {
    // SAFETY: plain fcntl on a descriptor we hold open; the result is
    // checked and then owned.
    let fd = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs on the serving reactor: register and spawn the connection task.
fn start_connection<P: ExportProvider>(
    stream: UringStream,
    shared: Arc<ServerShared>,
    provider: Arc<P>,
    reactor: usize,
    tls: Option<Arc<TlsServer>>,
) {
    let Some(id) = shared.register(reactor) else {
        return; // stopping: dropping the stream closes it
    };
    let timeout = shared.config.handshake_timeout;
    let ctl = Rc::new(ConnCtl::new(stream, timeout.map(|t| Instant::now() + t)).with_tls(tls));
    with_local(|l| l.conns.insert((shared.id, id), Rc::downgrade(&ctl)));
    if let Some(t) = timeout {
        ensure_sweeper(shared.id, t);
    }
    let guard = ConnGuard {
        shared: shared.clone(),
        id,
    };
    spawn_local(async move {
        let guard = guard;
        let shared = &guard.shared;
        let end = run_connection(
            ctl,
            provider,
            &shared.config,
            shared.budget.clone(),
            |neg| {
                shared.set_export(id, &neg.export_name);
                if neg.extended_headers {
                    shared.reg().extended_total += 1;
                }
            },
        )
        .await;
        shared.record_end(end);
        drop(guard);
    })
    .detach();
}

/// Start this reactor's handshake-timeout sweeper for server `sid` unless
/// it runs already. It wakes a few times per timeout period, kills the
/// connections past their deadline, and exits once none of the server's
/// connections here is negotiating (the next one starts it again).
fn ensure_sweeper(sid: u64, timeout: Duration) {
    if with_local(|l| l.sweepers.insert(sid)) != Some(true) {
        return;
    }
    let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    spawn_local(async move {
        loop {
            if crate::ring::sleep(period).await.is_err() {
                break;
            }
            let now = Instant::now();
            let ctls: Vec<Rc<ConnCtl>> = with_local(|l| {
                l.conns
                    .iter()
                    .filter(|((s, _), _)| *s == sid)
                    .filter_map(|(_, w)| w.upgrade())
                    .collect()
            })
            .unwrap_or_default();
            let mut pending = false;
            for c in ctls {
                pending |= c.expire_handshake(now);
            }
            if !pending {
                break;
            }
        }
        with_local(|l| l.sweepers.remove(&sid));
    })
    .detach();
}
