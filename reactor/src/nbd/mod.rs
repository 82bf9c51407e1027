//! NBD protocol layer of the export server, written sans-IO.
//!
//! This module owns the NetworkBlockDevice protocol (`doc/proto.md`) and
//! nothing else: it turns received bytes into decisions and decisions into
//! bytes to send, and never touches a socket, a thread or storage. The
//! io_uring reactors drive it (and so does the blocking reference server in
//! `reactor/tests/nbd_common`), in the same spirit as crucible's synchronous
//! `apply()`: the state machine is a plain value the driver feeds.
//!
//! * [`proto`] — wire constants (magics, flags, option/reply/info codes,
//!   commands, structured reply types, errno values), [`Errno`],
//!   [`Command`] and the fatal [`ProtocolError`].
//! * [`handshake`] — the fixed-newstyle negotiation state machine
//!   ([`Handshake`]) over an [`ExportCatalog`], ending in [`Negotiated`].
//! * [`transmission`] — request header parsing (compact and extended),
//!   request validation, and encoding of simple, structured and extended
//!   replies (with header-only variants for zero-copy sends).
//! * [`session`] — the transmission phase as a sans-IO state machine: the
//!   action for each request (serve, refuse after discarding its payload,
//!   answer at once, disconnect).
//! * [`budget`] — [`MemoryBudget`], the server-wide bound on in-flight
//!   request and reply buffers.
//! * [`io_error_log`] — rate-limited warnings for I/O errors returned to
//!   clients.
//!
//! The server that drives it on the io_uring reactors:
//!
//! * [`backend`] — the storage seam: [`ExportProvider`] (export table,
//!   shared) and [`ExportBackend`] (per-connection async block I/O).
//! * `conn` — one connection: handshake driver, request reader, one task
//!   per request, serialized reply writer.
//! * [`server`] — [`NbdServer`]: listeners, round-robin placement of
//!   connections on reactors, connection registry, `stop`.
//! * [`tls`] — TLS credentials (X.509 directory or PSK file) and the
//!   sans-IO TLS session; `transport` — a connection's byte stream, plain
//!   or switched to TLS after `NBD_OPT_STARTTLS`.
//!
//! A connection's life: send [`Handshake::greeting`]; loop `feed` /
//! `take_output` until [`HandshakeState::Done`]; then loop
//! [`Session::next`] → (acquire budget, read the WRITE payload | discard a
//! refused payload) → do the I/O → encode the reply. Replies may go out in any order; each carries its
//! request's handle.

pub mod backend;
pub mod budget;
mod conn;
pub mod handshake;
pub mod io_error_log;
pub mod proto;
pub mod server;
pub mod session;
pub mod tls;
pub mod transmission;
mod transport;

pub use backend::{BackendError, ExportBackend, ExportProvider, ReadSeg, ReadSegs};
pub use conn::{ConnEnd, DIRECT_RECV_MIN};
pub use proto::{STATE_HOLE, STATE_ZERO};
pub use server::{ConnectionInfo, ListenSpec, NbdServer, NbdServerError, ServerConfig};

pub use budget::MemoryBudget;
pub use handshake::{
    transmission_flags, CloseReason, ExportCatalog, ExportInfo, Handshake, HandshakeState,
    Negotiated, TlsPolicy, BASE_ALLOCATION_CONTEXT_ID,
};
pub use proto::{Command, Errno, ProtocolError};
pub use session::{Action, Session};
pub use tls::{TlsConfig, TlsCredentials, TlsError, TlsServer};
pub use transmission::{
    encode_block_status, encode_block_status_reply, encode_chunk_header, encode_error_chunk,
    encode_error_offset_chunk, encode_error_reply, encode_none, encode_offset_data,
    encode_offset_data_header, encode_offset_hole, encode_simple_reply, encode_simple_reply_header,
    ok_reply, parse_header, parse_request, read_data_header, read_hole_chunk, reply_chunk_header,
    validate, ReplyHeader, Request, StatusExtent, OFFSET_DATA_HEADER_LEN,
};
