//! Serving a [`MethodTable`] on a Unix socket or TCP: binding, the public API and the
//! handle that stops a server.
//!
//! This file owns listening: the socket file (mode 0600, stale-socket removal, removal
//! on stop), the loopback-only rule for TCP, and starting one server, which is one
//! event-loop thread (`event_loop.rs`) plus a fixed pool of
//! workers (`workers.rs`) sized by [`ServerLimits`]. Threads never grow with
//! connections.
use super::event_loop::{EventLoop, Listener};
use super::limits::ServerLimits;
use super::method_table::MethodTable;
use super::shutdown::Shutdown;
use super::workers::Workers;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

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
         so only loopback addresses are allowed unless non-loopback is explicitly allowed"
    )]
    NotLoopback { addr: SocketAddr },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
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
/// early-returning daemon cannot leak threads or the socket file.
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
    /// every connection closed and every worker finished (so in-flight handlers have
    /// returned).
    pub fn join(mut self) {
        self.join_thread();
    }

    fn join_thread(&mut self) {
        if let Some(t) = self.thread.take() {
            // The event loop does not panic; if it did, there is nothing left to stop.
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

/// How to serve: the methods, the stop signal, the limits, and whether TCP may listen
/// beyond loopback. [`serve_unix`] and [`serve_tcp`] are the defaults.
#[derive(Clone)]
pub struct Server {
    table: Arc<MethodTable>,
    shutdown: Shutdown,
    limits: ServerLimits,
    allow_non_loopback: bool,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("limits", &self.limits)
            .field("allow_non_loopback", &self.allow_non_loopback)
            .finish()
    }
}

impl Server {
    pub fn new(table: Arc<MethodTable>, shutdown: Shutdown) -> Self {
        Server {
            table,
            shutdown,
            limits: ServerLimits::default(),
            allow_non_loopback: false,
        }
    }

    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Lets [`Server::serve_tcp`] listen on any address. The RPC has no
    /// authentication: whoever reaches the port can delete every volume.
    pub fn allow_non_loopback(mut self, allow: bool) -> Self {
        self.allow_non_loopback = allow;
        self
    }

    /// Serves on a Unix socket at `path`, readable and writable by the owner only
    /// (0600), until the [`Shutdown`] is triggered.
    ///
    /// A leftover socket file from a crashed daemon is removed; a socket with a live
    /// server behind it, or a path that is not a socket, is an error rather than being
    /// clobbered. The parent directory must exist. Between `bind` and `chmod` the
    /// socket briefly has the umask's mode; with the usual umask (022) nobody else can
    /// connect in that window (connecting needs write permission).
    pub fn serve_unix(&self, path: impl AsRef<Path>) -> Result<ServerHandle, ServerError> {
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
        let file = SocketFile {
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        listener
            .set_nonblocking(true)
            .map_err(io_err("cannot make the listener non-blocking"))?;
        self.start(
            Listener::Unix(listener),
            Box::new(move || file.remove()),
            ListenAddr::Unix(path),
        )
    }

    /// Serves on TCP (`"127.0.0.1:5260"`, port 0 for any) until the [`Shutdown`] is
    /// triggered. Non-loopback addresses are refused unless
    /// [`Server::allow_non_loopback`]: anyone who can reach the port can delete volumes.
    pub fn serve_tcp(&self, addr: impl ToSocketAddrs) -> Result<ServerHandle, ServerError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ServerError::Io {
                context: "cannot resolve the JSON-RPC TCP address".to_string(),
                source,
            })?
            .collect();
        if !self.allow_non_loopback {
            if let Some(&bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(ServerError::NotLoopback { addr: bad });
            }
        }
        let listener = TcpListener::bind(&addrs[..]).map_err(|source| ServerError::Bind {
            addr: format!("{addrs:?}"),
            source,
        })?;
        let io_err = |context: &'static str| {
            move |source| ServerError::Io {
                context: context.to_string(),
                source,
            }
        };
        let local = listener
            .local_addr()
            .map_err(io_err("cannot read the bound TCP address"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("cannot make the TCP listener non-blocking"))?;
        self.start(
            Listener::Tcp(listener),
            Box::new(|| {}),
            ListenAddr::Tcp(local),
        )
    }

    fn start(
        &self,
        listener: Listener,
        on_close: Box<dyn FnOnce() + Send>,
        addr: ListenAddr,
    ) -> Result<ServerHandle, ServerError> {
        let io_err = |context: &str| {
            let context = format!("{context} for {addr}");
            move |source| ServerError::Io { context, source }
        };
        let name = match addr {
            ListenAddr::Unix(_) => "rpc-unix",
            ListenAddr::Tcp(_) => "rpc-tcp",
        };
        let stop_waker = self
            .shutdown
            .waker()
            .map_err(io_err("cannot create the wake-up socket"))?;
        let workers = Workers::start(
            self.limits.workers,
            self.table.clone(),
            self.limits.max_batch,
            name,
        )
        .map_err(io_err("cannot start the worker threads"))?;
        let event_loop = EventLoop::new(
            listener,
            on_close,
            format!("JSON-RPC on {addr}"),
            self.limits.clone(),
            self.shutdown.clone(),
            stop_waker,
            workers,
        );
        let thread = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || event_loop.run())
            .map_err(io_err("cannot spawn the event-loop thread"))?;
        Ok(ServerHandle {
            addr,
            shutdown: self.shutdown.clone(),
            thread: Some(thread),
        })
    }
}

/// Serves `table` on a Unix socket with the default [`ServerLimits`]; see
/// [`Server::serve_unix`].
pub fn serve_unix(
    path: impl AsRef<Path>,
    table: Arc<MethodTable>,
    shutdown: Shutdown,
) -> Result<ServerHandle, ServerError> {
    Server::new(table, shutdown).serve_unix(path)
}

/// Serves `table` on loopback TCP with the default [`ServerLimits`]; see
/// [`Server::serve_tcp`].
pub fn serve_tcp(
    addr: impl ToSocketAddrs,
    table: Arc<MethodTable>,
    shutdown: Shutdown,
) -> Result<ServerHandle, ServerError> {
    Server::new(table, shutdown).serve_tcp(addr)
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
