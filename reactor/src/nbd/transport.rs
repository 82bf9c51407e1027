//! A connection's byte stream: the plain socket, or TLS over it.
//!
//! This file owns the switch from plaintext to TLS after `NBD_OPT_STARTTLS`
//! and the pumping of bytes between the socket and the sans-IO
//! [`TlsSession`]. [`Transport`] offers the same `recv` / `recv_exact` /
//! `send_all` / `send_with_header` / `shutdown` calls as [`UringStream`],
//! so the connection code is the same either way: before STARTTLS (and for
//! connections that never use TLS) they go straight to the socket; after
//! it they decrypt what the socket delivers and encrypt what is sent.
//!
//! Concurrency is the same as for the socket: one receiver and one sender
//! may run together. Both touch the session only between awaits (it sits in
//! a `RefCell` that is never borrowed across an await), and only the sender
//! sends ciphertext, so records never interleave on the wire. Memory stays
//! bounded: ciphertext is received in [`TLS_RECV`] pieces only when the
//! session wants more, and plaintext is encrypted and sent in
//! [`TLS_SEND_PIECE`] pieces.

use std::cell::RefCell;
use std::io;

use sluice_engine::AlignedBuf;

use super::tls::{TlsError, TlsRead, TlsServer, TlsSession};
use crate::net::UringStream;

/// Ciphertext receive size (a little over one 16 KiB TLS record, times a
/// few).
const TLS_RECV: usize = 64 * 1024;
/// Plaintext encrypted per socket send.
const TLS_SEND_PIECE: usize = 256 * 1024;

/// The byte stream of one connection.
pub(crate) struct Transport {
    stream: UringStream,
    /// Set once the TLS handshake completed.
    tls: RefCell<Option<TlsSession>>,
    /// Ciphertext receive buffer (receiver only; `None` while a receive
    /// holds it).
    rx: RefCell<Option<AlignedBuf>>,
    /// Ciphertext send buffer (sender only).
    tx: RefCell<Option<AlignedBuf>>,
}

fn tls_io(e: TlsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Transport {
    pub(crate) fn new(stream: UringStream) -> Transport {
        Transport {
            stream,
            tls: RefCell::new(None),
            rx: RefCell::new(None),
            tx: RefCell::new(None),
        }
    }

    /// True once TLS is in use.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.borrow().is_some()
    }

    /// Run the server side of a TLS handshake (after the STARTTLS ACK went
    /// out). `early` is ciphertext the client already sent (bytes that
    /// followed its STARTTLS option). On success every later call goes
    /// through TLS; on failure the alert is sent and the error returned
    /// (the connection must end).
    pub(crate) async fn start_tls(&self, server: &TlsServer, early: &[u8]) -> io::Result<()> {
        let mut s = server.session().map_err(tls_io)?;
        s.push_ciphertext(early);
        let mut buf = AlignedBuf::zeroed(TLS_RECV);
        loop {
            let r = s.handshake();
            self.send_ciphertext(&mut s).await?;
            match r {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return Err(tls_io(e)),
            }
            buf.set_len(buf.capacity());
            let (b, r) = self.stream.recv(buf).await;
            buf = b;
            match r? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection during the TLS handshake",
                    ))
                }
                n => s.push_ciphertext(&buf[..n]),
            }
        }
        *self.rx.borrow_mut() = Some(buf);
        *self.tls.borrow_mut() = Some(s);
        Ok(())
    }

    /// Send all ciphertext a session holds (used before the session is
    /// installed, during the handshake).
    async fn send_ciphertext(&self, s: &mut TlsSession) -> io::Result<()> {
        while !s.ciphertext().is_empty() {
            let buf = AlignedBuf::from_slice(s.ciphertext());
            let n = buf.len();
            let (_, r) = self.stream.send_all(buf).await;
            r?;
            s.consume_ciphertext(n);
        }
        Ok(())
    }

    /// Receive up to `buf.len()` bytes; 0 at end of stream.
    pub(crate) async fn recv(&self, mut buf: AlignedBuf) -> (AlignedBuf, io::Result<usize>) {
        if !self.is_tls() {
            return self.stream.recv(buf).await;
        }
        let r = self.recv_tls(&mut buf[..]).await;
        (buf, r)
    }

    /// Fill all of `buf`; end of stream before that is `UnexpectedEof`.
    pub(crate) async fn recv_exact(&self, mut buf: AlignedBuf) -> (AlignedBuf, io::Result<()>) {
        if !self.is_tls() {
            return self.stream.recv_exact(buf).await;
        }
        let len = buf.len();
        let mut got = 0;
        while got < len {
            match self.recv_tls(&mut buf[got..]).await {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed after {got} of {len} bytes"),
                    );
                    return (buf, Err(e));
                }
                Ok(n) => got += n,
                Err(e) => return (buf, Err(e)),
            }
        }
        (buf, Ok(()))
    }

    /// Plaintext into `dst`: what the session already decrypted, else
    /// receive ciphertext until a record completes.
    async fn recv_tls(&self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match self.tls.borrow_mut().as_mut() {
                Some(s) => s.read(dst).map_err(tls_io)?,
                None => return Err(io::ErrorKind::NotConnected.into()),
            };
            match r {
                TlsRead::Data(n) => return Ok(n),
                TlsRead::Closed => return Ok(0),
                TlsRead::NeedInput => {}
            }
            let taken = self.rx.borrow_mut().take();
            let mut b = taken.unwrap_or_else(|| AlignedBuf::zeroed(TLS_RECV));
            b.set_len(b.capacity());
            let (b, r) = self.stream.recv(b).await;
            let n = match r {
                Ok(n) => n,
                Err(e) => {
                    *self.rx.borrow_mut() = Some(b);
                    return Err(e);
                }
            };
            if let Some(s) = self.tls.borrow_mut().as_mut() {
                s.push_ciphertext(&b[..n]);
            }
            *self.rx.borrow_mut() = Some(b);
            if n == 0 {
                // End of stream without close_notify: whatever plaintext
                // is complete was returned above; the rest is truncated.
                return Ok(0);
            }
        }
    }

    /// Send all of `buf`.
    pub(crate) async fn send_all(&self, buf: AlignedBuf) -> (AlignedBuf, io::Result<()>) {
        if !self.is_tls() {
            return self.stream.send_all(buf).await;
        }
        let r = self.send_tls(&[&buf[..]]).await;
        (buf, r)
    }

    /// Send `header` then `data` (zero-copy on a plain socket; encrypted,
    /// and so copied, under TLS).
    pub(crate) async fn send_with_header(
        &self,
        header: &[u8],
        data: AlignedBuf,
    ) -> (AlignedBuf, io::Result<()>) {
        if !self.is_tls() {
            return self.stream.send_with_header(header, data).await;
        }
        let r = self.send_tls(&[header, &data[..]]).await;
        (data, r)
    }

    /// Encrypt `parts` in bounded pieces, sending the ciphertext after
    /// each.
    async fn send_tls(&self, parts: &[&[u8]]) -> io::Result<()> {
        for part in parts {
            for piece in part.chunks(TLS_SEND_PIECE) {
                match self.tls.borrow_mut().as_mut() {
                    Some(s) => s.write(piece).map_err(tls_io)?,
                    None => return Err(io::ErrorKind::NotConnected.into()),
                }
                self.flush_tls().await?;
            }
        }
        Ok(())
    }

    /// Send the installed session's pending ciphertext.
    async fn flush_tls(&self) -> io::Result<()> {
        loop {
            let taken = self.tx.borrow_mut().take();
            let mut b = taken.unwrap_or_else(|| {
                let mut b = AlignedBuf::zeroed(TLS_SEND_PIECE + TLS_RECV);
                b.set_len(0);
                b
            });
            let n = {
                let mut tls = self.tls.borrow_mut();
                let Some(s) = tls.as_mut() else {
                    return Err(io::ErrorKind::NotConnected.into());
                };
                let n = s.ciphertext().len().min(b.capacity());
                b.set_len(n);
                b[..n].copy_from_slice(&s.ciphertext()[..n]);
                s.consume_ciphertext(n);
                n
            };
            if n == 0 {
                *self.tx.borrow_mut() = Some(b);
                return Ok(());
            }
            let (b, r) = self.stream.send_all(b).await;
            *self.tx.borrow_mut() = Some(b);
            r?;
        }
    }

    /// Shut the socket down (ends the peer's and our pending operations).
    pub(crate) fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }
}
