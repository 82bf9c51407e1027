//! Async sockets on the current thread's io_uring (for the NBD server).
//!
//! This file owns socket I/O: listening on a Unix path or a TCP address,
//! `accept`, `recv` into an owned buffer, `send_all` of an owned buffer,
//! a vectored `send_with_header` (a small header copied into the op plus a
//! data buffer, so read replies need no copy), and close. Everything goes
//! through the ring (ACCEPT / RECV / SEND / SENDMSG / CLOSE), so sockets can
//! stay in blocking mode: io_uring never blocks the thread on them.
//!
//! Buffers follow the ring's owned-buffer rule. A dropped socket future also
//! cancels its op (a recv may otherwise wait forever). Closing — explicit
//! or on drop — goes through the ring, after every SQE already queued, so a
//! queued op can never reach a recycled descriptor number.
//!
//! One task should send on a stream at a time (concurrent `send_all`s could
//! interleave after a short send); one recv and one send may run together.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use io_uring::{opcode, types};
use sluice_engine::AlignedBuf;

use crate::error::no_ring;
use crate::ring::{self, OnDrop, Op, MAX_INLINE_HEADER};

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A listening socket whose `accept` goes through io_uring.
pub struct UringListener {
    fd: Option<OwnedFd>,
    addr: ListenAddr,
}

/// A connected stream socket driven through io_uring.
pub struct UringStream {
    fd: Option<OwnedFd>,
}

fn close_fd(fd: OwnedFd) {
    let raw = fd.into_raw_fd();
    if ring::with_ring(|r| r.close_detached(raw)).is_none() {
        // SAFETY: we own `raw` (from into_raw_fd) and close it once.
        unsafe { libc::close(raw) };
    }
}

impl UringListener {
    /// Listen on a Unix socket path (which must not exist).
    pub fn bind_unix(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let l = UnixListener::bind(path)?;
        Ok(UringListener {
            fd: Some(l.into()),
            addr: ListenAddr::Unix(path.to_path_buf()),
        })
    }

    /// Listen on a TCP address (port 0 picks a free port; see
    /// [`Self::local_addr`]).
    pub fn bind_tcp(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let l = TcpListener::bind(addr)?;
        let a = l.local_addr()?;
        Ok(UringListener {
            fd: Some(l.into()),
            addr: ListenAddr::Tcp(a),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    fn raw(&self) -> RawFd {
        self.fd.as_ref().expect("open listener").as_raw_fd()
    }

    /// Accept one connection. TCP connections get `TCP_NODELAY` (NBD
    /// replies are latency-bound).
    pub async fn accept(&self) -> io::Result<UringStream> {
        let fd = self.raw();
        // SAFETY: null addr/addrlen: the kernel writes no peer address.
        let op = unsafe {
            Op::start(OnDrop::CancelCloseFd, None, |_| {
                opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            })
        }
        .map_err(|_| no_ring())?;
        let new_fd = ring::cqe_result(op.await.res)? as RawFd;
        // SAFETY: the kernel handed us a fresh descriptor we now own.
        let s = UringStream {
            fd: Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(new_fd) }),
        };
        if matches!(self.addr, ListenAddr::Tcp(_)) {
            let _ = s.set_nodelay(true);
        }
        Ok(s)
    }
}

impl Drop for UringListener {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            close_fd(fd);
        }
        if let ListenAddr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl UringStream {
    /// Connect to a Unix socket (a blocking connect; for clients/tests).
    pub fn connect_unix(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self::from_fd(UnixStream::connect(path)?.into()))
    }

    /// Connect over TCP (a blocking connect; for clients/tests).
    pub fn connect_tcp(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Self::from_fd(s.into()))
    }

    /// Adopt a connected stream socket (e.g. `UnixStream`/`TcpStream`).
    pub fn from_fd(fd: OwnedFd) -> Self {
        UringStream { fd: Some(fd) }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_ref().expect("open stream").as_raw_fd()
    }

    /// Set `TCP_NODELAY` (errors on non-TCP sockets).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        let v: libc::c_int = on as libc::c_int;
        // SAFETY: valid fd and a c_int option value of the right size.
        let r = unsafe {
            libc::setsockopt(
                self.raw(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receive into `buf[start..]`; Ok(0) is end of stream (or an empty
    /// range).
    async fn recv_from(&self, buf: AlignedBuf, start: usize) -> (AlignedBuf, io::Result<usize>) {
        let fd = self.raw();
        let n = (buf.len() - start).min(u32::MAX as usize) as u32;
        // SAFETY: the SQE points at bytes [start, start + n) of the buffer
        // in the op's slot.
        let op = unsafe {
            Op::start(OnDrop::Cancel, Some(buf), |d| {
                let b = d.buf.as_mut().expect("buffer in slot");
                opcode::Recv::new(types::Fd(fd), b.as_mut_ptr().add(start), n).build()
            })
        };
        let op = match op {
            Ok(op) => op,
            Err(b) => return (b.expect("buffer returned"), Err(no_ring())),
        };
        let c = op.await;
        (c.buf.expect("buffer returned"), ring::cqe_result(c.res))
    }

    /// Receive up to `buf.len()` bytes into `buf`; returns the count, 0 at
    /// end of stream.
    pub async fn recv(&self, mut buf: AlignedBuf) -> (AlignedBuf, io::Result<usize>) {
        loop {
            let (b, r) = self.recv_from(buf, 0).await;
            buf = b;
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return (buf, r),
            }
        }
    }

    /// Fill all of `buf`; end of stream before that is `UnexpectedEof`.
    pub async fn recv_exact(&self, mut buf: AlignedBuf) -> (AlignedBuf, io::Result<()>) {
        let len = buf.len();
        let mut got = 0;
        while got < len {
            let (b, r) = self.recv_from(buf, got).await;
            buf = b;
            match r {
                Ok(0) => {
                    return (
                        buf,
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("connection closed after {got} of {len} bytes"),
                        )),
                    )
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (buf, Err(e)),
            }
        }
        (buf, Ok(()))
    }

    /// Send all of `buf`, continuing after short sends. `MSG_NOSIGNAL`: a
    /// closed peer is an `EPIPE` error, not a signal.
    pub async fn send_all(&self, mut buf: AlignedBuf) -> (AlignedBuf, io::Result<()>) {
        let fd = self.raw();
        let len = buf.len();
        let mut sent = 0;
        while sent < len {
            let n = (len - sent).min(u32::MAX as usize) as u32;
            // SAFETY: the SQE points at bytes [sent, sent + n) of the buffer
            // in the op's slot.
            let op = unsafe {
                Op::start(OnDrop::Cancel, Some(buf), |d| {
                    let b = d.buf.as_mut().expect("buffer in slot");
                    opcode::Send::new(types::Fd(fd), b.as_ptr().add(sent), n)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                })
            };
            let op = match op {
                Ok(op) => op,
                Err(b) => return (b.expect("buffer returned"), Err(no_ring())),
            };
            let c = op.await;
            buf = c.buf.expect("buffer returned");
            match c.res {
                r if r > 0 => sent += r as usize,
                0 => return (buf, Err(io::Error::from(io::ErrorKind::WriteZero))),
                r if r == -libc::EINTR || r == -libc::EAGAIN => {}
                r => return (buf, Err(io::Error::from_raw_os_error(-r))),
            }
        }
        (buf, Ok(()))
    }

    /// Send `header` (at most [`MAX_INLINE_HEADER`] bytes, copied into the
    /// op) followed by all of `data`, in one `sendmsg` when the socket takes
    /// it all — no copy of `data`. Continues after short sends.
    pub async fn send_with_header(
        &self,
        header: &[u8],
        mut data: AlignedBuf,
    ) -> (AlignedBuf, io::Result<()>) {
        let hlen = header.len();
        if hlen > MAX_INLINE_HEADER {
            return (
                data,
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("header of {hlen} bytes exceeds {MAX_INLINE_HEADER}"),
                )),
            );
        }
        let mut hdr = [0u8; MAX_INLINE_HEADER];
        hdr[..hlen].copy_from_slice(header);
        let fd = self.raw();
        let total = hlen + data.len();
        let mut sent = 0;
        while sent < total {
            // SAFETY: msghdr, iovecs and header bytes live in the op's slot;
            // the data iovec points into the buffer in the same slot; all
            // ranges are within their lengths.
            let op = unsafe {
                Op::start(OnDrop::Cancel, Some(data), |d| {
                    let b = d.buf.as_mut().expect("buffer in slot");
                    let ext = &mut d.ext;
                    ext.hdr[..hlen].copy_from_slice(&hdr[..hlen]);
                    let mut n = 0;
                    if sent < hlen {
                        ext.iov[0] = libc::iovec {
                            iov_base: ext.hdr.as_mut_ptr().add(sent) as *mut libc::c_void,
                            iov_len: hlen - sent,
                        };
                        n += 1;
                    }
                    let doff = sent.saturating_sub(hlen);
                    if doff < b.len() {
                        ext.iov[n] = libc::iovec {
                            iov_base: b.as_mut_ptr().add(doff) as *mut libc::c_void,
                            iov_len: b.len() - doff,
                        };
                        n += 1;
                    }
                    ext.msg = std::mem::zeroed();
                    ext.msg.msg_iov = ext.iov.as_mut_ptr();
                    ext.msg.msg_iovlen = n as _;
                    opcode::SendMsg::new(types::Fd(fd), &ext.msg as *const libc::msghdr)
                        .flags(libc::MSG_NOSIGNAL as u32)
                        .build()
                })
            };
            let op = match op {
                Ok(op) => op,
                Err(b) => return (b.expect("buffer returned"), Err(no_ring())),
            };
            let c = op.await;
            data = c.buf.expect("buffer returned");
            match c.res {
                r if r > 0 => sent += r as usize,
                0 => return (data, Err(io::Error::from(io::ErrorKind::WriteZero))),
                r if r == -libc::EINTR || r == -libc::EAGAIN => {}
                r => return (data, Err(io::Error::from_raw_os_error(-r))),
            }
        }
        (data, Ok(()))
    }

    /// Shut down one or both directions (a plain syscall; not on the I/O
    /// path).
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        let how = match how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: valid fd.
        if unsafe { libc::shutdown(self.raw(), how) } < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Close through the ring and report the result.
    pub async fn close(mut self) -> io::Result<()> {
        let fd = self.fd.take().expect("open stream").into_raw_fd();
        // SAFETY: close carries no pointers.
        let op = unsafe {
            Op::start(OnDrop::Wait, None, |_| {
                opcode::Close::new(types::Fd(fd)).build()
            })
        };
        match op {
            Ok(op) => ring::cqe_result(op.await.res).map(|_| ()),
            Err(_) => {
                // SAFETY: we own fd and close it once.
                if unsafe { libc::close(fd) } < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl AsRawFd for UringStream {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            close_fd(fd);
        }
    }
}
