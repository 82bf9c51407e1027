//! The one thread that owns a server's listener and all its connections.
//!
//! A single `poll` covers the listener, the [`Shutdown`] waker, the workers' wake-up
//! socket and every connection, so threads do not grow with connections. Sockets are
//! non-blocking. Each connection is a small state machine: read bytes into its
//! [`Framer`]; when a value is complete, hand it to the [`Workers`] and stop reading
//! until its reply has been written (so at most one request per connection is in
//! flight, and a peer that pipelines requests is held back by TCP/Unix flow control
//! instead of by our memory); write the reply; repeat.
//!
//! This file owns the [`ServerLimits`] policy: refusing connections past the cap,
//! closing idle ones, dropping requests that do not arrive whole in time or are too
//! big, and disconnecting peers that do not read their replies.
//!
//! Stopping: on trigger the listener is closed and its socket file removed; idle
//! connections are closed at once (peers see EOF), buffered but not started requests
//! are not run, and a connection with a request in flight is closed once its reply
//! has been written. The loop returns when no connection is left; a request that
//! triggers the stop (the `shutdown` method) is still answered.

use super::framer::{FrameError, Framer};
use super::limits::ServerLimits;
use super::method_table::error_response;
use super::shutdown::Shutdown;
use super::workers::{line, Done, Workers};
use super::{codes, RpcError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown as SocketShutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Bytes read per `read` call; also what the framer may hold beyond the size cap.
pub(super) const READ_CHUNK: usize = 64 << 10;
/// Connections accepted per loop turn, so a flood cannot starve served connections.
const ACCEPT_BATCH: usize = 64;
/// After `accept` fails (EMFILE), leave the listener alone this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Refusals are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

pub(super) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => s.set_nonblocking(true),
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    /// Ends the connection for the peer: it reads what was written, then EOF.
    fn close(self) {
        let _ = match &self {
            Stream::Unix(s) => s.shutdown(SocketShutdown::Both),
            Stream::Tcp(s) => s.shutdown(SocketShutdown::Both),
        };
    }
}

struct Conn {
    stream: Stream,
    framer: Framer,
    /// The reply being written, and how much of it has been.
    out: Vec<u8>,
    written: usize,
    /// A request of this connection is with the workers.
    busy: bool,
    /// No further request will be run: close once `out` is written.
    closing: bool,
    last_active: Instant,
    /// When the first byte of the value still incomplete in `framer` was seen.
    partial_since: Option<Instant>,
    /// Last time the pending reply made progress.
    write_since: Instant,
}

impl Conn {
    fn writing(&self) -> bool {
        self.written < self.out.len()
    }

    fn interest(&self) -> PollFlags {
        if self.writing() {
            PollFlags::POLLOUT
        } else if !self.busy && !self.closing {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        }
    }

    /// When this connection must be dropped if nothing happens (`None`: running a
    /// request, which may take as long as the method takes).
    fn deadline(&self, limits: &ServerLimits) -> Option<Instant> {
        if self.writing() {
            Some(self.write_since + limits.write_timeout)
        } else if self.busy {
            None
        } else if let Some(since) = self.partial_since {
            Some(since + limits.request_timeout)
        } else {
            Some(self.last_active + limits.idle_timeout)
        }
    }
}

/// What a turn found ready.
struct Ready {
    stop: bool,
    done: bool,
    listener: bool,
    conns: Vec<(u64, PollFlags)>,
}

pub(super) struct EventLoop {
    pub listener: Option<Listener>,
    /// Called once the listener is closed (removes the Unix socket file).
    pub on_close: Box<dyn FnOnce() + Send>,
    pub name: String,
    pub limits: ServerLimits,
    pub shutdown: Shutdown,
    pub stop_waker: UnixStream,
    pub workers: Workers,
    conns: BTreeMap<u64, Conn>,
    next_id: u64,
    accept_paused_until: Option<Instant>,
    refused_unlogged: u64,
    refusal_logged_at: Option<Instant>,
    read_buf: Vec<u8>,
}

impl EventLoop {
    pub fn new(
        listener: Listener,
        on_close: Box<dyn FnOnce() + Send>,
        name: String,
        limits: ServerLimits,
        shutdown: Shutdown,
        stop_waker: UnixStream,
        workers: Workers,
    ) -> Self {
        EventLoop {
            listener: Some(listener),
            on_close,
            name,
            limits,
            shutdown,
            stop_waker,
            workers,
            conns: BTreeMap::new(),
            next_id: 0,
            accept_paused_until: None,
            refused_unlogged: 0,
            refusal_logged_at: None,
            read_buf: vec![0; READ_CHUNK],
        }
    }

    pub fn run(mut self) {
        let mut stopping = false;
        loop {
            if !stopping && self.shutdown.is_triggered() {
                stopping = true;
                self.begin_stop();
            }
            if stopping && self.conns.is_empty() {
                break;
            }
            let ready = match self.wait() {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("JSON-RPC {}: poll failed, stopping: {e}", self.name);
                    self.shutdown.trigger();
                    break;
                }
            };
            if ready.stop {
                let mut buf = [0u8; 64];
                while matches!((&self.stop_waker).read(&mut buf), Ok(n) if n > 0) {}
            }
            if ready.done {
                for done in self.workers.take_done() {
                    self.complete(done);
                }
            }
            if ready.listener && !self.shutdown.is_triggered() {
                self.accept_some();
            }
            for (id, events) in ready.conns {
                self.service(id, events);
            }
            let now = Instant::now();
            self.expire(now);
            self.log_refusals(now);
        }
        if !stopping {
            self.begin_stop();
        }
        for (_, c) in std::mem::take(&mut self.conns) {
            c.stream.close();
        }
        self.workers.stop();
    }

    /// One `poll`, until something is ready or the nearest deadline.
    fn wait(&self) -> nix::Result<Ready> {
        let now = Instant::now();
        let mut fds = vec![
            PollFd::new(self.stop_waker.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.workers.wake_fd(), PollFlags::POLLIN),
        ];
        let accepting = self.accept_paused_until.is_none_or(|t| t <= now);
        let listener_at = match (&self.listener, accepting) {
            (Some(l), true) => {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let mut ids = Vec::with_capacity(self.conns.len());
        let mut deadline = self.accept_paused_until.filter(|_| !accepting);
        if self.refused_unlogged > 0 {
            let d = self
                .refusal_logged_at
                .map_or(now, |t| t + REFUSAL_LOG_INTERVAL);
            deadline = Some(deadline.map_or(d, |e| e.min(d)));
        }
        for (&id, c) in &self.conns {
            let interest = c.interest();
            if !interest.is_empty() {
                fds.push(PollFd::new(c.stream.as_fd(), interest));
                ids.push(id);
            }
            if let Some(d) = c.deadline(&self.limits) {
                deadline = Some(deadline.map_or(d, |e| e.min(d)));
            }
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                // Round up: waking a millisecond early would only spin.
                let ms = d.saturating_duration_since(now).as_micros().div_ceil(1000);
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {
                return Ok(Ready {
                    stop: false,
                    done: false,
                    listener: false,
                    conns: Vec::new(),
                })
            }
            Err(e) => return Err(e),
        }
        let is_ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let base = 2 + usize::from(listener_at.is_some());
        Ok(Ready {
            stop: is_ready(&fds[0]),
            done: is_ready(&fds[1]),
            listener: listener_at.is_some_and(|i| is_ready(&fds[i])),
            conns: ids
                .into_iter()
                .zip(&fds[base..])
                .filter_map(|(id, fd)| fd.revents().filter(|r| !r.is_empty()).map(|r| (id, r)))
                .collect(),
        })
    }

    fn begin_stop(&mut self) {
        if self.listener.take().is_some() {
            let on_close = std::mem::replace(&mut self.on_close, Box::new(|| {}));
            on_close();
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.closing = true;
                if !c.busy && !c.writing() {
                    self.close(id);
                }
            }
        }
    }

    fn accept_some(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let mut accepted = Vec::new();
        for _ in 0..ACCEPT_BATCH {
            match listener.accept() {
                Ok(stream) => accepted.push(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    log::warn!("JSON-RPC {}: accepting a connection failed: {e}", self.name);
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    break;
                }
            }
        }
        for stream in accepted {
            if stream.set_nonblocking().is_err() {
                continue;
            }
            if self.conns.len() >= self.limits.max_connections {
                self.refuse(stream);
                continue;
            }
            let now = Instant::now();
            self.next_id += 1;
            self.conns.insert(
                self.next_id,
                Conn {
                    stream,
                    framer: Framer::with_max_len(self.limits.max_request_len),
                    out: Vec::new(),
                    written: 0,
                    busy: false,
                    closing: false,
                    last_active: now,
                    partial_since: None,
                    write_since: now,
                },
            );
        }
    }

    /// Over the cap: one error object (it fits in any socket buffer, so the
    /// non-blocking write does not come up short), then close.
    fn refuse(&mut self, mut stream: Stream) {
        let max = self.limits.max_connections;
        let error = RpcError::new(
            codes::BUSY,
            format!(
                "Server busy: {max} JSON-RPC connections are open, the limit; \
                 this one is closed. Retry later."
            ),
        );
        let _ = stream.write(&line(&error_response(Value::Null, error)));
        stream.close();
        self.refused_unlogged += 1;
        self.log_refusals(Instant::now());
    }

    /// Log the refusals not yet logged, at most once per
    /// `REFUSAL_LOG_INTERVAL`; the event loop wakes at the end of the
    /// interval for the rest of a burst, so every refusal is counted in
    /// the log.
    fn log_refusals(&mut self, now: Instant) {
        if self.refused_unlogged == 0 {
            return;
        }
        if self
            .refusal_logged_at
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL)
        {
            log::warn!(
                "JSON-RPC {}: refused {} connection(s): {} open, the limit",
                self.name,
                self.refused_unlogged,
                self.limits.max_connections
            );
            self.refused_unlogged = 0;
            self.refusal_logged_at = Some(now);
        }
    }

    fn service(&mut self, id: u64, events: PollFlags) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        if c.writing() {
            self.flush(id);
        } else if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            self.read(id);
        }
    }

    fn read(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match c.stream.read(&mut self.read_buf) {
            Ok(0) => {
                c.closing = true;
                match c.framer.finish_frame() {
                    Ok(Some(frame)) => {
                        c.busy = true;
                        self.workers.submit(id, frame);
                    }
                    Ok(None) => self.close(id),
                    Err(e) => self.reply(id, &frame_error_response(&e)),
                }
            }
            Ok(n) => {
                c.framer.feed(&self.read_buf[..n]);
                c.last_active = Instant::now();
                self.pump(id);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.close(id),
        }
    }

    /// Starts the next buffered request, if the connection is free for one.
    fn pump(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.busy || c.writing() || c.closing {
            return;
        }
        match c.framer.next_frame() {
            Ok(Some(frame)) => {
                c.partial_since = None;
                c.busy = true;
                self.workers.submit(id, frame);
            }
            Ok(None) => {
                c.partial_since = if c.framer.has_partial() {
                    c.partial_since.or(Some(Instant::now()))
                } else {
                    None
                };
            }
            Err(e) => {
                c.closing = true;
                self.reply(id, &frame_error_response(&e));
            }
        }
    }

    fn complete(&mut self, done: Done) {
        let Some(c) = self.conns.get_mut(&done.conn) else {
            return;
        };
        c.busy = false;
        c.closing |= done.close;
        c.last_active = Instant::now();
        match done.reply {
            Some(reply) => self.send(done.conn, reply),
            None if c.closing => self.close(done.conn),
            None => self.pump(done.conn),
        }
    }

    fn reply(&mut self, id: u64, response: &Value) {
        self.send(id, line(response));
    }

    fn send(&mut self, id: u64, bytes: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.out = bytes;
            c.written = 0;
            c.write_since = Instant::now();
            self.flush(id);
        }
    }

    fn flush(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while c.writing() {
            match c.stream.write(&c.out[c.written..]) {
                Ok(0) => return self.close(id),
                Ok(n) => {
                    c.written += n;
                    c.write_since = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close(id),
            }
        }
        c.out = Vec::new();
        c.written = 0;
        c.last_active = Instant::now();
        if c.closing {
            self.close(id);
        } else {
            self.pump(id);
        }
    }

    /// Applies the timeouts of [`ServerLimits`].
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline(&self.limits).is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.partial_since.is_some() && !c.writing() {
                // Tell the peer why, then close (the write deadline bounds this too).
                c.closing = true;
                c.partial_since = None;
                let e = RpcError::invalid_request(format!(
                    "request not complete {:?} after its first byte (the limit); \
                     closing the connection",
                    self.limits.request_timeout
                ));
                self.reply(id, &error_response(Value::Null, e));
            } else {
                // Idle, or a peer that does not read its reply.
                self.close(id);
            }
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            c.stream.close();
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
