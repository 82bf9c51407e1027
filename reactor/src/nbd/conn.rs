//! One NBD connection on one reactor: the io_uring driver of the sans-IO
//! protocol layer.
//!
//! This file owns everything that happens on an accepted socket:
//!
//! * **Handshake** — send the greeting, then `recv` → [`Handshake::feed`] →
//!   send [`Handshake::take_output`] until the state machine is `Done` (or
//!   `Closed`). Partial input simply stays buffered; bytes after the final
//!   option (pipelined requests) are handed to the transmission phase.
//! * **Reader** (the connection task itself) — bulk `recv`s (through the
//!   [`Transport`], plain or TLS) into one receive buffer and asks the
//!   sans-IO [`Session`] what to do with the bytes: parse and validate a
//!   header, receive or discard a payload, refuse a request (a too-large one
//!   only after its payload is consumed). Every valid request gets its
//!   buffers from the daemon-wide [`MemoryBudget`] and goes to an idle
//!   worker (or a new one) so requests run concurrently against the
//!   backend. When the budget has no room the reader stops reading its
//!   socket until some request completes.
//! * **Request workers** — a pool of local tasks (grown when a request
//!   finds them all busy, so no task is allocated per request) that each
//!   take the next request, call the [`ExportBackend`], encode the reply
//!   (simple or structured: OFFSET_DATA / OFFSET_HOLE / ERROR /
//!   BLOCK_STATUS) and queue it. Replies therefore go out in completion
//!   order, not request order.
//! * **Writer** (one task) — the single place that sends on the socket, so
//!   replies never interleave. Small frames are batched into one buffer;
//!   READ data goes out with [`Transport::send_with_header`] (header +
//!   the backend's buffer, no copy), except that small READ payloads are
//!   copied into the batch when more replies are queued, trading a 4 KiB
//!   memcpy for a whole send.
//!
//! Ending: NBD_CMD_DISC, EOF, a protocol violation or a kill (server stop,
//! export removal) stops the reader; the connection then waits for its
//! in-flight requests (the backend is never abandoned mid-operation), lets
//! the writer drain, and closes. A dead socket only makes the writer drop
//! replies; request workers never touch the socket and cannot fail on it.
//!
//! Copies: WRITE payloads are copied once from the receive buffer into their
//! own [`AlignedBuf`] (the runtime's `recv` cannot target an offset inside a
//! buffer); a payload whose header ends a receive and that is at least
//! [`DIRECT_RECV_MIN`] long is received straight into its buffer instead.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures::future::{select, Either};
use sluice_engine::AlignedBuf;

use super::backend::{
    BackendError, ExportBackend, ExportProvider, ProviderCatalog, ReadSeg, ReadSegs,
};
use super::budget::MemoryBudget;
use super::handshake::{
    Handshake, HandshakeState, Negotiated, TlsPolicy, BASE_ALLOCATION_CONTEXT_ID,
};
use super::io_error_log;
use super::proto::*;
use super::server::ServerConfig;
use super::session::{Action, Session};
use super::tls::TlsServer;
use super::transmission::{
    encode_block_status_reply, encode_error_reply, ok_reply, read_data_header, read_hole_chunk,
    Request, MAX_REPLY_HEADER_LEN,
};
use super::transport::Transport;
use crate::executor::spawn_local;
use crate::net::UringStream;
use crate::ring::MAX_INLINE_HEADER;
use crate::workers::WorkerPool;

/// WRITE payloads at least this long whose bytes have not arrived yet are
/// received directly into their own buffer (no copy).
pub const DIRECT_RECV_MIN: usize = 64 * 1024;
/// Receive size during the handshake (options are small).
const HANDSHAKE_RECV: usize = 16 * 1024;
/// Capacity of the writer's batch buffer.
const BATCH_CAP: usize = 64 * 1024;
/// Reply headers up to this size are stored inline (no allocation): simple
/// reply 16, OFFSET_DATA header 28 (extended 40), OFFSET_HOLE chunk 32
/// (extended 44).
const INLINE_HDR: usize = MAX_REPLY_HEADER_LEN;
/// TRIM and WRITE_ZEROES lengths (64-bit with extended headers) go to the
/// backend in pieces of at most this many bytes.
const ZERO_PIECE: u64 = 1 << 30;

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEnd {
    /// The client closed the socket between messages.
    Eof,
    /// The client closed the socket in the middle of a message.
    Truncated,
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// `NBD_OPT_ABORT` during the handshake.
    Aborted,
    /// A fatal protocol violation (bad magic, oversized write, ...).
    Protocol(ProtocolError),
    /// A socket error.
    Io(String),
    /// Closed by the server (`stop`, `disconnect_export`) or because the
    /// socket failed while sending.
    Killed,
    /// The handshake did not finish within the configured timeout.
    HandshakeTimeout,
    /// The provider could not open the negotiated export (removed while the
    /// client was negotiating).
    NoBackend(String),
    /// The TLS handshake after STARTTLS failed (bad credentials, wrong
    /// PSK, not TLS at all).
    Tls(String),
}

// ---------------------------------------------------------------------------
// Tiny single-threaded sync primitives
// ---------------------------------------------------------------------------

/// A one-way flag that wakes every waiter when set.
#[derive(Default)]
pub(crate) struct Latch {
    set: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Latch {
    pub(crate) fn set(&self) {
        if !self.set.replace(true) {
            let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
            for w in wakers {
                w.wake();
            }
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.get()
    }

    pub(crate) fn wait(&self) -> LatchWait<'_> {
        LatchWait(self)
    }
}

pub(crate) struct LatchWait<'a>(&'a Latch);

impl Future for LatchWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.get() {
            return Poll::Ready(());
        }
        let mut ws = self.0.wakers.borrow_mut();
        if !ws.iter().any(|w| w.will_wake(cx.waker())) {
            ws.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Wake-up for a single waiting task, with a stored permit so a notify that
/// comes before the wait is not lost.
#[derive(Default)]
struct Notify {
    permit: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.permit.set(true);
        let w = self.waker.borrow_mut().take();
        if let Some(w) = w {
            w.wake();
        }
    }

    fn notified(&self) -> Notified<'_> {
        Notified(self)
    }
}

struct Notified<'a>(&'a Notify);

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.permit.replace(false) {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Run `f` unless (or until) `latch` is set; `None` if the latch won. A
/// dropped socket future cancels its op in the kernel.
pub(crate) async fn unless<F: Future>(latch: &Latch, f: F) -> Option<F::Output> {
    if latch.is_set() {
        return None;
    }
    match select(pin!(f), pin!(latch.wait())).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

// ---------------------------------------------------------------------------
// Connection control (shared with the server's kill path)
// ---------------------------------------------------------------------------

/// What the server keeps (weakly) to end a connection from outside.
pub(crate) struct ConnCtl {
    /// The socket, or TLS over it once STARTTLS is done (`nbd/transport.rs`).
    stream: Transport,
    /// TLS credentials offered on this connection (TCP listeners of a
    /// server started with TLS).
    tls: Option<Arc<TlsServer>>,
    killed: Latch,
    /// While negotiating: when the handshake must be done. The server's
    /// per-reactor sweeper enforces it (one timer per reactor instead of a
    /// timer per connection: a dropped `sleep` would stay in the kernel
    /// until it fires).
    handshake_deadline: Cell<Option<Instant>>,
    timed_out: Cell<bool>,
}

impl ConnCtl {
    pub(crate) fn new(stream: UringStream, handshake_deadline: Option<Instant>) -> Self {
        ConnCtl {
            stream: Transport::new(stream),
            tls: None,
            killed: Latch::default(),
            handshake_deadline: Cell::new(handshake_deadline),
            timed_out: Cell::new(false),
        }
    }

    /// Offer TLS with these credentials during the handshake.
    pub(crate) fn with_tls(mut self, tls: Option<Arc<TlsServer>>) -> Self {
        self.tls = tls;
        self
    }

    /// Kill the connection if its handshake deadline has passed. Returns
    /// whether it still has a deadline pending (is still negotiating).
    pub(crate) fn expire_handshake(&self, now: Instant) -> bool {
        match self.handshake_deadline.get() {
            Some(d) if now >= d => {
                self.handshake_deadline.set(None);
                self.timed_out.set(true);
                self.kill();
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// End the connection: the reader and writer stop at their next (or
    /// current) socket operation, and the client sees the socket shut down.
    pub(crate) fn kill(&self) {
        self.killed.set();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// Frame bytes of one reply piece, inline when small.
enum Hdr {
    Inline([u8; INLINE_HDR], u8),
    Heap(Vec<u8>),
}

impl Hdr {
    fn new(b: &[u8]) -> Hdr {
        if b.len() <= INLINE_HDR {
            let mut a = [0u8; INLINE_HDR];
            a[..b.len()].copy_from_slice(b);
            Hdr::Inline(a, b.len() as u8)
        } else {
            Hdr::Heap(b.to_vec())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Hdr::Inline(a, n) => &a[..*n as usize],
            Hdr::Heap(v) => v,
        }
    }
}

/// One piece of output: frame bytes, optionally followed by a data buffer
/// that is sent without copying. The last piece of a reply carries the
/// request's cost (`fin`): the request stops counting against the
/// connection's bounds only once the writer has sent (or dropped) it, so a
/// client that does not read its replies cannot make us queue without end.
struct Out {
    hdr: Hdr,
    data: Option<AlignedBuf>,
    fin: Option<usize>,
}

impl Out {
    fn bytes(b: &[u8]) -> Out {
        Out {
            hdr: Hdr::new(b),
            data: None,
            fin: None,
        }
    }

    fn owned(v: Vec<u8>) -> Out {
        Out {
            hdr: if v.len() <= INLINE_HDR {
                Hdr::new(&v)
            } else {
                Hdr::Heap(v)
            },
            data: None,
            fin: None,
        }
    }

    fn with_data(b: &[u8], data: AlignedBuf) -> Out {
        Out {
            hdr: Hdr::new(b),
            data: Some(data),
            fin: None,
        }
    }

    /// Mark as the last piece of a reply to a request of `cost` bytes.
    fn fin(mut self, cost: usize) -> Out {
        self.fin = Some(cost);
        self
    }
}

/// State shared by the reader, the request workers and the writer of one
/// connection.
struct ConnShared {
    queue: RefCell<VecDeque<Out>>,
    writer_wake: Notify,
    reader_wake: Notify,
    /// No more replies will be queued: the writer drains and exits.
    closing: Cell<bool>,
    /// The writer is gone (socket failed, killed, or finished): replies are
    /// dropped.
    dead: Cell<bool>,
    /// Requests admitted whose reply has not been sent yet (running in the
    /// backend, or queued for the writer).
    inflight: Cell<usize>,
    /// Their cost in buffer bytes.
    inflight_bytes: Cell<usize>,
    /// The request workers.
    workers: WorkerPool<Job>,
    /// The server-wide budget the bytes in `inflight_bytes` are charged to.
    budget: Arc<MemoryBudget>,
    /// The export's name, for log lines.
    export: String,
}

/// An admitted request waiting for a worker.
struct Job {
    req: Request,
    payload: Option<AlignedBuf>,
    cost: usize,
}

/// One request worker (see [`WorkerPool`]).
async fn worker<B: ExportBackend>(
    i: usize,
    sh: Rc<ConnShared>,
    backend: Rc<B>,
    neg: Rc<Negotiated>,
    block_status_max: u32,
) {
    while let Some(j) = sh.workers.next(i).await {
        execute(
            &*backend,
            &sh,
            &j.req,
            &neg,
            j.payload,
            block_status_max,
            j.cost,
        )
        .await;
    }
}

impl ConnShared {
    fn new(budget: Arc<MemoryBudget>, export: String) -> ConnShared {
        ConnShared {
            queue: RefCell::default(),
            writer_wake: Notify::default(),
            reader_wake: Notify::default(),
            closing: Cell::new(false),
            dead: Cell::new(false),
            inflight: Cell::new(0),
            inflight_bytes: Cell::new(0),
            workers: WorkerPool::default(),
            budget,
            export,
        }
    }

    fn push(&self, out: Out) {
        if self.dead.get() {
            if let Some(cost) = out.fin {
                self.retire(cost);
            }
            return;
        }
        self.queue.borrow_mut().push_back(out);
        self.writer_wake.notify();
    }

    fn admit(&self, cost: usize) {
        self.inflight.set(self.inflight.get() + 1);
        self.inflight_bytes.set(self.inflight_bytes.get() + cost);
    }

    /// A request's reply is out (or dropped): wake the reader, which may be
    /// waiting for room or for the last request.
    fn retire(&self, cost: usize) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
        self.inflight_bytes
            .set(self.inflight_bytes.get().saturating_sub(cost));
        self.budget.release(cost);
        self.reader_wake.notify();
    }
}

impl Drop for ConnShared {
    /// A connection torn down with requests still counted (its reactor
    /// stopped under it) gives their bytes back to the shared budget.
    fn drop(&mut self) {
        self.budget.release(self.inflight_bytes.get());
    }
}

// ---------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------

/// Serve one accepted connection to completion. `on_negotiated` is told the
/// negotiation (export, extended headers, ...) as soon as the handshake
/// selected an export (before the final option reply goes out).
pub(crate) async fn run_connection<P: ExportProvider + ?Sized>(
    ctl: Rc<ConnCtl>,
    provider: Arc<P>,
    cfg: &ServerConfig,
    budget: Arc<MemoryBudget>,
    on_negotiated: impl FnOnce(&Negotiated),
) -> ConnEnd {
    let (neg, leftover) = match handshake(&ctl, &*provider, on_negotiated).await {
        Ok(x) => x,
        Err(end) => return end,
    };
    let Some(backend) = provider.open(&neg.export_name) else {
        return ConnEnd::NoBackend(neg.export_name);
    };
    // The export may have changed between lookup and open (resized,
    // turned read-only): enforce the stricter of both views.
    let mut neg = neg;
    neg.read_only |= backend.read_only();
    neg.size = neg.size.min(backend.size());
    let sh = Rc::new(ConnShared::new(budget, neg.export_name.clone()));
    let writer = spawn_local(write_replies(
        ctl.clone(),
        sh.clone(),
        cfg.coalesce_bytes.min(BATCH_CAP / 2),
    ));
    let end = read_requests(&ctl, &sh, Rc::new(backend), Rc::new(neg), leftover, cfg).await;
    // Let every started request finish and its reply go out (or be dropped
    // if the socket is gone), then let the writer exit.
    while sh.inflight.get() > 0 {
        sh.reader_wake.notified().await;
    }
    sh.workers.close();
    sh.closing.set(true);
    sh.writer_wake.notify();
    writer.await;
    end
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

async fn handshake<P: ExportProvider + ?Sized>(
    ctl: &ConnCtl,
    provider: &P,
    on_negotiated: impl FnOnce(&Negotiated),
) -> Result<(Negotiated, Vec<u8>), ConnEnd> {
    let r = handshake_inner(ctl, provider, on_negotiated).await;
    ctl.handshake_deadline.set(None);
    match r {
        Err(ConnEnd::Killed) if ctl.timed_out.get() => Err(ConnEnd::HandshakeTimeout),
        r => r,
    }
}

async fn handshake_inner<P: ExportProvider + ?Sized>(
    ctl: &ConnCtl,
    provider: &P,
    on_negotiated: impl FnOnce(&Negotiated),
) -> Result<(Negotiated, Vec<u8>), ConnEnd> {
    let mut on_negotiated = Some(on_negotiated);
    let mut hs = Handshake::with_tls(match &ctl.tls {
        None => TlsPolicy::Off,
        Some(t) if t.required() => TlsPolicy::Required,
        Some(_) => TlsPolicy::Optional,
    });
    send_bytes(ctl, &hs.greeting()).await?;
    let catalog = ProviderCatalog(provider);
    let mut input: Vec<u8> = Vec::new();
    let mut rbuf = Some(AlignedBuf::zeroed(HANDSHAKE_RECV));
    loop {
        let consumed = hs.feed(&input, &catalog).map_err(ConnEnd::Protocol)?;
        input.drain(..consumed);
        // Account the connection to its export before the client can see
        // the final reply (so counts are exact once a client is connected).
        if let HandshakeState::Done(n) = hs.state() {
            if let Some(f) = on_negotiated.take() {
                f(n);
            }
        }
        if hs.has_output() {
            send_bytes(ctl, &hs.take_output()).await?;
        }
        match hs.state() {
            HandshakeState::Done(n) => return Ok((n.clone(), input)),
            HandshakeState::Closed(_) => return Err(ConnEnd::Aborted),
            // --- TLS: the STARTTLS ACK is out; what follows is TLS.
            HandshakeState::StartTls => {
                let tls = ctl.tls.as_deref().ok_or(ConnEnd::Killed)?;
                match unless(&ctl.killed, ctl.stream.start_tls(tls, &input)).await {
                    None => return Err(ConnEnd::Killed),
                    Some(Err(e)) => return Err(ConnEnd::Tls(e.to_string())),
                    Some(Ok(())) => {}
                }
                input.clear();
                hs.tls_started();
                continue;
            }
            // --- end TLS
            _ => {}
        }
        let mut b = rbuf.take().ok_or(ConnEnd::Killed)?;
        b.set_len(b.capacity());
        match unless(&ctl.killed, ctl.stream.recv(b)).await {
            None => return Err(ConnEnd::Killed),
            Some((_, Ok(0))) if input.is_empty() => return Err(ConnEnd::Eof),
            Some((_, Ok(0))) => return Err(ConnEnd::Truncated),
            Some((b, Ok(n))) => {
                input.extend_from_slice(&b[..n]);
                rbuf = Some(b);
            }
            Some((_, Err(e))) => return Err(ConnEnd::Io(e.to_string())),
        }
    }
}

async fn send_bytes(ctl: &ConnCtl, bytes: &[u8]) -> Result<(), ConnEnd> {
    match unless(
        &ctl.killed,
        ctl.stream.send_all(AlignedBuf::from_slice(bytes)),
    )
    .await
    {
        None => Err(ConnEnd::Killed),
        Some((_, Ok(()))) => Ok(()),
        Some((_, Err(e))) => Err(ConnEnd::Io(e.to_string())),
    }
}

// ---------------------------------------------------------------------------
// Receiving
// ---------------------------------------------------------------------------

/// Why the reader stopped.
enum RxStop {
    Eof,
    Truncated,
    Killed,
    Io(io::Error),
    Protocol(ProtocolError),
}

impl From<RxStop> for ConnEnd {
    fn from(s: RxStop) -> ConnEnd {
        match s {
            RxStop::Eof => ConnEnd::Eof,
            RxStop::Truncated => ConnEnd::Truncated,
            RxStop::Killed => ConnEnd::Killed,
            RxStop::Io(e) => ConnEnd::Io(e.to_string()),
            RxStop::Protocol(e) => ConnEnd::Protocol(e),
        }
    }
}

/// The receive side: one buffer that bulk `recv`s land in (`buf[pos..end]`
/// is unparsed), plus the start of a header split across two receives.
struct Rx {
    /// `None` only after a receive was abandoned (kill).
    buf: Option<AlignedBuf>,
    pos: usize,
    end: usize,
    carry: Vec<u8>,
}

impl Rx {
    fn new(cap: usize, leftover: &[u8]) -> Rx {
        let mut buf = AlignedBuf::zeroed(cap.max(leftover.len()).max(4096));
        buf[..leftover.len()].copy_from_slice(leftover);
        Rx {
            buf: Some(buf),
            pos: 0,
            end: leftover.len(),
            carry: Vec::with_capacity(REQUEST_HEADER_LEN),
        }
    }

    fn avail(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.pos..self.end],
            None => &[],
        }
    }

    /// Replace the (fully consumed) buffer contents with the next receive.
    async fn fill(&mut self, ctl: &ConnCtl) -> Result<(), RxStop> {
        let mut b = self.buf.take().ok_or(RxStop::Killed)?;
        b.set_len(b.capacity());
        match unless(&ctl.killed, ctl.stream.recv(b)).await {
            None => Err(RxStop::Killed),
            Some((b, r)) => {
                self.buf = Some(b);
                self.pos = 0;
                self.end = 0;
                match r {
                    Ok(0) => Err(RxStop::Eof),
                    Ok(n) => {
                        self.end = n;
                        Ok(())
                    }
                    Err(e) => Err(RxStop::Io(e)),
                }
            }
        }
    }

    /// The next request header, judged by the session.
    async fn next_action(&mut self, ctl: &ConnCtl, session: &Session) -> Result<Action, RxStop> {
        let hlen = session.header_len();
        loop {
            if self.carry.is_empty() {
                match session.next(self.avail()).map_err(RxStop::Protocol)? {
                    Some((action, n)) => {
                        self.pos += n;
                        return Ok(action);
                    }
                    None => {
                        let rest = self.avail().to_vec();
                        self.carry.extend_from_slice(&rest);
                        self.pos = self.end;
                    }
                }
            } else {
                let take = (hlen - self.carry.len()).min(self.end - self.pos);
                let (pos, carry) = (self.pos, &mut self.carry);
                if let Some(b) = &self.buf {
                    carry.extend_from_slice(&b[pos..pos + take]);
                }
                self.pos += take;
                if let Some((action, _)) = session.next(&self.carry).map_err(RxStop::Protocol)? {
                    self.carry.clear();
                    return Ok(action);
                }
            }
            match self.fill(ctl).await {
                Err(RxStop::Eof) if !self.carry.is_empty() => return Err(RxStop::Truncated),
                r => r?,
            }
        }
    }

    /// The next `len` bytes, in a buffer of their own.
    async fn payload(&mut self, ctl: &ConnCtl, len: usize) -> Result<AlignedBuf, RxStop> {
        let mut p = AlignedBuf::zeroed(len);
        let mut got = 0;
        loop {
            let take = (len - got).min(self.end - self.pos);
            if take > 0 {
                if let Some(b) = &self.buf {
                    p[got..got + take].copy_from_slice(&b[self.pos..self.pos + take]);
                }
                self.pos += take;
                got += take;
            }
            if got == len {
                return Ok(p);
            }
            if got == 0 && len >= DIRECT_RECV_MIN {
                return match unless(&ctl.killed, ctl.stream.recv_exact(p)).await {
                    None => Err(RxStop::Killed),
                    Some((p, Ok(()))) => Ok(p),
                    Some((_, Err(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        Err(RxStop::Truncated)
                    }
                    Some((_, Err(e))) => Err(RxStop::Io(e)),
                };
            }
            match self.fill(ctl).await {
                Err(RxStop::Eof) => return Err(RxStop::Truncated),
                r => r?,
            }
        }
    }

    /// Consume and discard `len` bytes (the payload of a rejected WRITE).
    /// Bounded memory: the receive buffer is reused for every piece.
    async fn skip(&mut self, ctl: &ConnCtl, mut len: u64) -> Result<(), RxStop> {
        loop {
            let take = len.min((self.end - self.pos) as u64);
            self.pos += take as usize;
            len -= take;
            if len == 0 {
                return Ok(());
            }
            match self.fill(ctl).await {
                Err(RxStop::Eof) => return Err(RxStop::Truncated),
                r => r?,
            }
        }
    }
}

async fn read_requests<B: ExportBackend + 'static>(
    ctl: &ConnCtl,
    sh: &Rc<ConnShared>,
    backend: Rc<B>,
    neg: Rc<Negotiated>,
    leftover: Vec<u8>,
    cfg: &ServerConfig,
) -> ConnEnd {
    let session = Session::new((*neg).clone());
    let mut rx = Rx::new(cfg.recv_buffer, &leftover);
    drop(leftover);
    let max_requests = cfg.max_requests.max(1);
    loop {
        // Bound the work a client can pile up: stop reading until requests
        // complete (at least one is always admitted).
        while sh.inflight.get() >= max_requests
            || (sh.inflight.get() > 0 && sh.inflight_bytes.get() >= cfg.max_inflight_bytes)
        {
            if unless(&ctl.killed, sh.reader_wake.notified())
                .await
                .is_none()
            {
                return ConnEnd::Killed;
            }
        }
        if ctl.killed.is_set() || sh.dead.get() {
            return ConnEnd::Killed;
        }
        let action = match rx.next_action(ctl, &session).await {
            Ok(a) => a,
            Err(e) => return e.into(),
        };
        match action {
            Action::Disconnect => return ConnEnd::Disconnect,
            Action::Refuse {
                req,
                errno,
                discard,
            } => {
                if let Err(e) = rx.skip(ctl, discard).await {
                    return e.into();
                }
                let msg = format!(
                    "request {:?} at offset {} length {} rejected",
                    req.cmd, req.offset, req.length
                );
                let mut v = Vec::new();
                encode_error_reply(&mut v, &req, &neg, errno, &msg);
                // Error replies count too: a flood of bad requests from a
                // client that does not read must not queue without bound.
                sh.admit(0);
                sh.push(Out::owned(v).fin(0));
            }
            Action::Answer(req) => {
                sh.admit(0);
                sh.push(Out::bytes(&ok_reply(&req, &neg)).fin(0));
            }
            Action::Serve(req) => {
                // Wait for room in the server-wide budget before reading the
                // payload or starting the read: a connection that cannot
                // get it stops reading from its socket.
                let Some(cost) = unless(&ctl.killed, sh.budget.acquire(Session::cost(&req))).await
                else {
                    return ConnEnd::Killed;
                };
                let payload = if req.payload_len() > 0 {
                    match rx.payload(ctl, req.payload_len() as usize).await {
                        Ok(p) => Some(p),
                        Err(e) => {
                            sh.budget.release(cost);
                            return e.into();
                        }
                    }
                } else {
                    None
                };
                sh.admit(cost);
                let job = Job { req, payload, cost };
                if let Some(i) = sh.workers.dispatch(job) {
                    let bs_max = cfg.block_status_max.max(4096);
                    let w = worker(i, sh.clone(), backend.clone(), neg.clone(), bs_max);
                    spawn_local(w).detach();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Executing requests
// ---------------------------------------------------------------------------

fn push_error(sh: &ConnShared, req: &Request, neg: &Negotiated, e: &BackendError, cost: usize) {
    io_error_log::returned(&sh.export, req.cmd, req.offset, req.length, e);
    let mut v = Vec::new();
    encode_error_reply(&mut v, req, neg, e.errno, &e.message);
    sh.push(Out::owned(v).fin(cost));
}

fn push_ok(sh: &ConnShared, req: &Request, neg: &Negotiated, cost: usize) {
    sh.push(Out::bytes(&ok_reply(req, neg)).fin(cost));
}

/// Run `f` over `[offset, offset + len)` in pieces of at most
/// [`ZERO_PIECE`] bytes (extended headers allow 64-bit lengths; the
/// backend takes 32-bit ones), stopping at the first error.
async fn in_pieces<F, Fut>(offset: u64, len: u64, mut f: F) -> Result<(), BackendError>
where
    F: FnMut(u64, u32) -> Fut,
    Fut: Future<Output = Result<(), BackendError>>,
{
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = (end - at).min(ZERO_PIECE);
        f(at, n as u32).await?;
        at += n;
    }
    Ok(())
}

/// Run one validated request against the backend and queue its reply
/// (whose last piece retires the request's `cost`).
async fn execute<B: ExportBackend>(
    backend: &B,
    sh: &ConnShared,
    req: &Request,
    neg: &Negotiated,
    payload: Option<AlignedBuf>,
    block_status_max: u32,
    cost: usize,
) {
    let fua = req.has_flag(CMD_FLAG_FUA);
    let (off, len) = (req.offset, req.length);
    let r = match req.cmd {
        // Validated: READ/WRITE lengths are at most MAX_BLOCK_SIZE.
        Command::Read => match backend.read(off, len as u32).await {
            Ok(segs) => match check_segments(req, &segs) {
                Ok(()) => {
                    push_read(sh, req, neg, segs, cost);
                    return;
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        Command::Write => {
            let data = payload.unwrap_or_else(|| AlignedBuf::zeroed(len as usize));
            backend.write(off, data, fua).await
        }
        Command::Flush => backend.flush().await,
        Command::Trim => match in_pieces(off, len, |o, l| backend.trim(o, l)).await {
            Ok(()) if fua => backend.flush().await,
            r => r,
        },
        Command::WriteZeroes => {
            let may_trim = !req.has_flag(CMD_FLAG_NO_HOLE);
            match in_pieces(off, len, |o, l| backend.write_zeroes(o, l, may_trim)).await {
                Ok(()) if fua => backend.flush().await,
                r => r,
            }
        }
        Command::BlockStatus => {
            // Large ranges are answered in parts: the client asks again.
            let ask = len.min(u64::from(block_status_max)) as u32;
            match backend.block_status(off, ask).await {
                Ok(extents) => {
                    let ctx = neg
                        .base_allocation_context
                        .unwrap_or(BASE_ALLOCATION_CONTEXT_ID);
                    let mut v = Vec::new();
                    encode_block_status_reply(&mut v, req, neg, ctx, &extents);
                    sh.push(Out::owned(v).fin(cost));
                    return;
                }
                Err(e) => Err(e),
            }
        }
        // The session answers CACHE itself and never serves the rest.
        Command::Cache | Command::Disc | Command::Unknown(_) => Err(BackendError::new(
            Errno::Inval,
            format!("unsupported command {:?}", req.cmd),
        )),
    };
    match r {
        Ok(()) => push_ok(sh, req, neg, cost),
        Err(e) => push_error(sh, req, neg, &e, cost),
    }
}

/// A backend must return pieces that cover the request exactly, in order.
fn check_segments(req: &Request, segs: &[ReadSeg]) -> Result<(), BackendError> {
    let mut at = req.offset;
    for s in segs {
        if s.offset() != at || s.is_empty() {
            return Err(BackendError::new(
                Errno::Io,
                format!(
                    "backend returned a read piece at {} of {} bytes, expected one at {at}",
                    s.offset(),
                    s.len()
                ),
            ));
        }
        at += s.len();
    }
    if at != req.offset + req.length {
        return Err(BackendError::new(
            Errno::Io,
            format!(
                "backend read pieces end at {at}, request ends at {}",
                req.offset + req.length
            ),
        ));
    }
    Ok(())
}

/// Queue a successful READ reply: one chunk per piece with structured
/// replies (holes cost no payload), else one contiguous payload.
fn push_read(sh: &ConnShared, req: &Request, neg: &Negotiated, segs: ReadSegs, cost: usize) {
    let last = |out: Out, done: bool| if done { out.fin(cost) } else { out };
    if neg.structured_replies && !req.has_flag(CMD_FLAG_DF) {
        let n = segs.len();
        for (i, seg) in segs.into_iter().enumerate() {
            let done = i + 1 == n;
            match seg {
                ReadSeg::Data { offset, buf } => {
                    let h = read_data_header(req, neg, offset, buf.len() as u64, done);
                    sh.push(last(Out::with_data(&h, buf), done));
                }
                ReadSeg::Hole { offset, len } => {
                    let h = read_hole_chunk(req, neg, offset, len, done);
                    sh.push(last(Out::bytes(&h), done));
                }
            }
        }
        return;
    }
    let data = contiguous(req, segs);
    let h = read_data_header(req, neg, req.offset, req.length, true);
    sh.push(Out::with_data(&h, data).fin(cost));
}

/// The pieces as one buffer (holes as zeroes); no copy for a single data
/// piece.
fn contiguous(req: &Request, mut segs: ReadSegs) -> AlignedBuf {
    let len = req.length as usize;
    if segs.len() == 1 {
        if let Some(ReadSeg::Data { buf, .. }) = segs.pop() {
            if buf.len() == len {
                return buf;
            }
            segs.push(ReadSeg::Data {
                offset: req.offset,
                buf,
            });
        }
    }
    let mut out = AlignedBuf::zeroed(len);
    for seg in segs {
        if let ReadSeg::Data { offset, buf } = seg {
            let at = (offset - req.offset) as usize;
            out[at..at + buf.len()].copy_from_slice(&buf);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------

fn append(batch: &mut AlignedBuf, bytes: &[u8]) {
    let at = batch.len();
    batch.set_len(at + bytes.len());
    batch[at..].copy_from_slice(bytes);
}

/// Send the batch and hand the (emptied) buffer back; `None` if the socket
/// failed or the connection was killed.
async fn flush_batch(ctl: &ConnCtl, batch: AlignedBuf) -> Option<AlignedBuf> {
    if batch.is_empty() {
        return Some(batch);
    }
    match unless(&ctl.killed, ctl.stream.send_all(batch)).await {
        Some((mut b, Ok(()))) => {
            b.set_len(0);
            Some(b)
        }
        _ => None,
    }
}

async fn send_data(ctl: &ConnCtl, hdr: &[u8], data: AlignedBuf) -> bool {
    if hdr.len() > MAX_INLINE_HEADER {
        if flush_batch(ctl, AlignedBuf::from_slice(hdr))
            .await
            .is_none()
        {
            return false;
        }
        return flush_batch(ctl, data).await.is_some();
    }
    matches!(
        unless(&ctl.killed, ctl.stream.send_with_header(hdr, data)).await,
        Some((_, Ok(())))
    )
}

/// The connection's only sender. Exits when the connection is closing and
/// the queue is empty, or when a send fails or the connection is killed
/// (then replies are dropped from here on).
async fn write_replies(ctl: Rc<ConnCtl>, sh: Rc<ConnShared>, coalesce: usize) {
    let ok = write_loop(&ctl, &sh, coalesce).await;
    sh.dead.set(true);
    let dropped: Vec<Out> = sh.queue.borrow_mut().drain(..).collect();
    for out in dropped {
        if let Some(cost) = out.fin {
            sh.retire(cost);
        }
    }
    if !ok {
        // The client cannot hear us any more: stop reading from it too.
        ctl.kill();
    }
}

async fn write_loop(ctl: &ConnCtl, sh: &ConnShared, coalesce: usize) -> bool {
    let mut batch = AlignedBuf::zeroed(BATCH_CAP);
    batch.set_len(0);
    let mut batch = Some(batch);
    loop {
        let next = sh.queue.borrow_mut().pop_front();
        let Some(out) = next else {
            if batch.as_ref().is_some_and(|b| !b.is_empty()) {
                if !flush(ctl, &mut batch).await {
                    return false;
                }
                continue;
            }
            if sh.closing.get() {
                return true;
            }
            if unless(&ctl.killed, sh.writer_wake.notified())
                .await
                .is_none()
            {
                return false;
            }
            continue;
        };
        let fin = out.fin;
        let ok = send_out(ctl, sh, &mut batch, out, coalesce).await;
        if let Some(cost) = fin {
            sh.retire(cost);
        }
        if !ok {
            return false;
        }
    }
}

/// Send the batch in `slot` (left in place, emptied); false if the socket
/// failed or the connection was killed.
async fn flush(ctl: &ConnCtl, slot: &mut Option<AlignedBuf>) -> bool {
    match slot.take() {
        Some(b) => {
            *slot = flush_batch(ctl, b).await;
            slot.is_some()
        }
        None => false,
    }
}

/// Queue one piece into the batch or send it (after the batch, keeping
/// order). False if the socket failed or the connection was killed.
async fn send_out(
    ctl: &ConnCtl,
    sh: &ConnShared,
    slot: &mut Option<AlignedBuf>,
    out: Out,
    coalesce: usize,
) -> bool {
    let hdr = out.hdr.as_slice();
    let Some(batch) = slot.as_mut() else {
        return false;
    };
    match out.data {
        None => {
            if batch.len() + hdr.len() > batch.capacity() && !flush(ctl, slot).await {
                return false;
            }
            let Some(batch) = slot.as_mut() else {
                return false;
            };
            if hdr.len() > batch.capacity() {
                return flush_batch(ctl, AlignedBuf::from_slice(hdr))
                    .await
                    .is_some();
            }
            append(batch, hdr);
            true
        }
        Some(data) => {
            let more = !sh.queue.borrow().is_empty();
            let total = hdr.len() + data.len();
            if more && data.len() <= coalesce && batch.len() + total <= batch.capacity() {
                // Cheaper to copy a small payload than to give it its own
                // send when more replies are waiting to go.
                append(batch, hdr);
                append(batch, &data);
                true
            } else if batch.len() + hdr.len() <= MAX_INLINE_HEADER {
                // Batched frames + this header in front of the data: one
                // sendmsg, data not copied.
                let mut h = [0u8; MAX_INLINE_HEADER];
                let b = batch.len();
                h[..b].copy_from_slice(batch);
                h[b..b + hdr.len()].copy_from_slice(hdr);
                batch.set_len(0);
                send_data(ctl, &h[..b + hdr.len()], data).await
            } else {
                flush(ctl, slot).await && send_data(ctl, hdr, data).await
            }
        }
    }
}
