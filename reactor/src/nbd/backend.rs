//! The storage seam of the NBD export server.
//!
//! This file owns the two traits the daemon implements so the server can
//! serve its volumes without knowing anything about the engine:
//!
//! * [`ExportProvider`] — shared by every reactor (`Send + Sync`): the export
//!   table the handshake consults ([`ExportProvider::list`] /
//!   [`ExportProvider::lookup`]) and a way to open an export's backend *on
//!   the reactor that serves the connection* ([`ExportProvider::open`]).
//! * [`ExportBackend`] — one value per connection, living on one reactor
//!   (`!Send` is fine): async block I/O in the shapes NBD needs, with owned
//!   [`AlignedBuf`]s so READ data can go to the socket without a copy.
//!
//! plus [`BackendError`] (an NBD errno and a message for structured error
//! chunks), [`ReadSeg`] (data or hole pieces of a READ) and the adapter that
//! lets the sans-IO [`Handshake`](super::Handshake) see a provider as an
//! [`ExportCatalog`].

use sluice_engine::AlignedBuf;

use super::handshake::{ExportCatalog, ExportInfo};
use super::proto::Errno;
use super::transmission::StatusExtent;

/// Why a backend operation failed: the errno the client gets, and a message
/// that goes into the structured error chunk (when structured replies are
/// on) so `nbdsh`/qemu users see more than "EIO".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{errno} ({message})")]
pub struct BackendError {
    pub errno: Errno,
    pub message: String,
}

impl BackendError {
    pub fn new(errno: Errno, message: impl Into<String>) -> Self {
        BackendError {
            errno,
            message: message.into(),
        }
    }
}

/// One piece of a READ result. A backend returns pieces in offset order that
/// exactly cover the requested range.
///
/// `Hole` lets a thin-provisioned backend skip materialising zeroes: with
/// structured replies the server answers it with an `OFFSET_HOLE` chunk (no
/// payload on the wire), otherwise it sends zeroes.
#[derive(Debug)]
pub enum ReadSeg {
    /// `buf.len()` bytes of data starting at `offset` (absolute, in bytes).
    Data { offset: u64, buf: AlignedBuf },
    /// `len` bytes starting at `offset` that read as zeroes.
    Hole { offset: u64, len: u32 },
}

impl ReadSeg {
    /// Absolute byte offset of the piece.
    pub fn offset(&self) -> u64 {
        match self {
            ReadSeg::Data { offset, .. } | ReadSeg::Hole { offset, .. } => *offset,
        }
    }

    /// Length of the piece in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ReadSeg::Data { buf, .. } => buf.len() as u64,
            ReadSeg::Hole { len, .. } => u64::from(*len),
        }
    }

    /// True for a zero-length piece (which a backend should not return).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A READ's pieces; inline for one (every read within one chunk): no heap
/// allocation per request.
pub type ReadSegs = smallvec::SmallVec<[ReadSeg; 1]>;

/// Block I/O for one connection to one export, run on the connection's
/// reactor.
///
/// The server has already validated every request against the negotiated
/// size, alignment (512 B) and read-only flag, so implementations may assume
/// in-range, aligned, non-empty requests. Several calls run concurrently
/// (one request per worker task, several workers per connection), and the
/// server sends each reply as soon as its call returns, so replies go out in
/// completion order.
///
/// `async fn` in a trait is used on purpose: backends are `!Send` (engine
/// state lives on its reactor), so the missing `Send` bound on the returned
/// futures is exactly what we want.
#[allow(async_fn_in_trait)]
pub trait ExportBackend {
    /// Size of the export in bytes. The server validates requests against
    /// the smaller of this and the size announced in the handshake.
    fn size(&self) -> u64;
    /// Whether write-type commands are refused (`EPERM`), in addition to
    /// the read-only flag announced in the handshake.
    fn read_only(&self) -> bool;
    /// Read `[offset, offset + len)`: pieces in order, covering the range.
    async fn read(&self, offset: u64, len: u32) -> Result<ReadSegs, BackendError>;
    /// Write `data` (exactly the request's payload) at `offset`. With `fua`
    /// the data must be durable before this returns.
    async fn write(&self, offset: u64, data: AlignedBuf, fua: bool) -> Result<(), BackendError>;
    /// Make every write that has completed (on any connection) durable.
    /// The server calls this once per NBD_CMD_FLUSH; fanning out to other
    /// reactors is the backend's business.
    async fn flush(&self) -> Result<(), BackendError>;
    /// Discard `[offset, offset + len)` (advisory: the range may keep its
    /// data, but must not read as anything but its old data or zeroes).
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BackendError>;
    /// Make `[offset, offset + len)` read as zeroes; `may_trim` is false for
    /// `NBD_CMD_FLAG_NO_HOLE` (keep the range allocated).
    async fn write_zeroes(&self, offset: u64, len: u32, may_trim: bool)
        -> Result<(), BackendError>;
    /// `base:allocation` extents (flags `STATE_HOLE | STATE_ZERO`) from
    /// `offset` on, covering up to `len` bytes (fewer is fine: the client
    /// asks again; more than `len` in the last extent is fine too).
    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<StatusExtent>, BackendError>;
}

/// The export table, shared by all reactors, and the factory of per-reactor
/// backends.
pub trait ExportProvider: Send + Sync + 'static {
    type Backend: ExportBackend + 'static;
    /// Canonical names of all exports (`NBD_OPT_LIST`).
    fn list(&self) -> Vec<String>;
    /// Look an export up by the name a client sent (`""` = default export,
    /// `None` if there is none).
    fn lookup(&self, name: &str) -> Option<ExportInfo>;
    /// Open the export's backend. Called on the reactor that will serve the
    /// connection, after the handshake selected `name` (the canonical name
    /// from `lookup`). `None` (the export vanished meanwhile) closes the
    /// connection.
    fn open(&self, name: &str) -> Option<Self::Backend>;
}

/// Lets the sans-IO handshake consult a provider.
pub(crate) struct ProviderCatalog<'a, P: ?Sized>(pub &'a P);

impl<P: ExportProvider + ?Sized> ExportCatalog for ProviderCatalog<'_, P> {
    fn list(&self) -> Vec<String> {
        self.0.list()
    }

    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        self.0.lookup(name)
    }
}
