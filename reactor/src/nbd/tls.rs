//! TLS for NBD: server credentials and the sans-IO TLS session.
//!
//! This file owns two things and no I/O:
//!
//! * [`TlsServer`] — credentials loaded once when the server starts, from
//!   the layouts qemu and nbdkit use: an X.509 directory
//!   (`server-cert.pem`, `server-key.pem`, and optionally `ca-cert.pem`,
//!   whose presence makes client certificates required and verified, like
//!   qemu's `verify-peer=on`), or a PSK file of `username:hexkey` lines (the
//!   format of GnuTLS `psktool` and qemu's `keys.psk`).
//! * [`TlsSession`] — one connection's TLS state machine over memory
//!   buffers: the driver pushes ciphertext received from the socket in,
//!   reads plaintext out, writes plaintext in and takes ciphertext out to
//!   send. It never touches a socket, so it cannot block a reactor; the
//!   handshake is plain CPU work.
//!
//! OpenSSL (the `openssl` crate) rather than rustls: GnuTLS clients
//! (libnbd, qemu) use TLS 1.3 *external* PSK for `tls-psk`, which rustls
//! does not implement; OpenSSL serves both X.509 and PSK through one
//! mechanism (see `docs/decisions.md`). Session tickets are off: NBD
//! clients do not resume, and a ticket would be ciphertext the server emits
//! on its own after the handshake.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::error::ErrorStack;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslOptions, SslStream,
    SslVerifyMode, SslVersion,
};

/// Longest PSK key we accept (bytes); psktool makes 32-byte keys.
pub const MAX_PSK_LEN: usize = 64;
/// Longest PSK identity (username) we accept, in bytes.
pub const MAX_PSK_IDENTITY: usize = 255;
/// Largest PSK file we read (it holds a few short lines).
const MAX_PSK_FILE: u64 = 1 << 20;

/// Which credentials a TLS server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsCredentials {
    /// X.509: a directory with `server-cert.pem`, `server-key.pem` and,
    /// optionally, `ca-cert.pem` (then clients must present a certificate
    /// signed by that CA).
    X509 { dir: PathBuf },
    /// Pre-shared keys: a file of `username:hexkey` lines.
    Psk { file: PathBuf },
}

/// TLS settings of an NBD server (applied to its TCP listeners).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub credentials: TlsCredentials,
    /// Refuse every option but STARTTLS and ABORT until TLS is up (the
    /// spec's FORCEDTLS mode). When false, TLS is offered but optional.
    pub required: bool,
}

/// Errors loading credentials or running a TLS session.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
    #[error("PSK file {path}, line {line}: {reason}")]
    PskFile {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("PSK file {0} holds no keys")]
    PskEmpty(PathBuf),
    #[error("TLS setup failed: {0}")]
    Setup(#[from] ErrorStack),
    #[error("TLS: {0}")]
    Protocol(String),
}

/// Loaded credentials, shared by every connection of a server.
pub struct TlsServer {
    ctx: SslContext,
    required: bool,
    kind: &'static str,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("kind", &self.kind)
            .field("required", &self.required)
            .finish()
    }
}

impl TlsServer {
    /// Load the credentials `cfg` names. Every file problem is reported
    /// here, at start-up, not on the first connection.
    pub fn load(cfg: &TlsConfig) -> Result<Arc<TlsServer>, TlsError> {
        let mut b = SslContextBuilder::new(SslMethod::tls_server())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        b.set_options(SslOptions::NO_TICKET | SslOptions::NO_RENEGOTIATION);
        b.set_num_tickets(0)?;
        let kind = match &cfg.credentials {
            TlsCredentials::X509 { dir } => {
                load_x509(&mut b, dir)?;
                "x509"
            }
            TlsCredentials::Psk { file } => {
                let keys = load_psk_file(file)?;
                // TLS 1.2 PSK suites; TLS 1.3 suites are on by default and
                // OpenSSL runs this callback for TLS 1.3 external PSK too.
                b.set_cipher_list("ECDHE-PSK:DHE-PSK:PSK:!eNULL")?;
                b.set_psk_server_callback(move |_ssl, identity, out| {
                    let key = identity.and_then(|id| keys.get(id));
                    match key {
                        Some(k) if k.len() <= out.len() => {
                            out[..k.len()].copy_from_slice(k);
                            Ok(k.len())
                        }
                        // Unknown identity: 0 makes the handshake fail.
                        _ => Ok(0),
                    }
                });
                "psk"
            }
        };
        Ok(Arc::new(TlsServer {
            ctx: b.build(),
            required: cfg.required,
            kind,
        }))
    }

    /// Whether plaintext option haggling is refused (FORCEDTLS).
    pub fn required(&self) -> bool {
        self.required
    }

    /// `"x509"` or `"psk"`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// A fresh server-side session for one connection.
    pub fn session(&self) -> Result<TlsSession, TlsError> {
        let ssl = Ssl::new(&self.ctx)?;
        let stream = SslStream::new(ssl, MemIo::default())?;
        Ok(TlsSession {
            stream,
            established: false,
        })
    }
}

fn load_x509(b: &mut SslContextBuilder, dir: &Path) -> Result<(), TlsError> {
    let cert = dir.join("server-cert.pem");
    let key = dir.join("server-key.pem");
    let ca = dir.join("ca-cert.pem");
    for p in [&cert, &key] {
        std::fs::metadata(p).map_err(|source| TlsError::Read {
            path: p.clone(),
            source,
        })?;
    }
    let bad = |path: &Path, e: ErrorStack| TlsError::Credentials {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    b.set_certificate_chain_file(&cert)
        .map_err(|e| bad(&cert, e))?;
    b.set_private_key_file(&key, SslFiletype::PEM)
        .map_err(|e| bad(&key, e))?;
    b.check_private_key().map_err(|e| TlsError::Credentials {
        path: key.clone(),
        reason: format!("does not match server-cert.pem: {e}"),
    })?;
    match std::fs::metadata(&ca) {
        Ok(_) => {
            b.set_ca_file(&ca).map_err(|e| bad(&ca, e))?;
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(TlsError::Read { path: ca, source }),
    }
    Ok(())
}

/// Parse a `username:hexkey` file. Errors name the line, never the key.
pub fn load_psk_file(path: &Path) -> Result<PskKeys, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_PSK_FILE {
        return Err(TlsError::Credentials {
            path: path.to_path_buf(),
            reason: format!("{len} bytes is too large for a PSK file"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    parse_psk(&text).map_err(|(line, reason)| match reason {
        "" => TlsError::PskEmpty(path.to_path_buf()),
        reason => TlsError::PskFile {
            path: path.to_path_buf(),
            line,
            reason,
        },
    })
}

/// PSK keys by identity (username).
pub type PskKeys = HashMap<Vec<u8>, Vec<u8>>;

/// The keys of a PSK file, or (line, reason) of the first bad line; an
/// empty reason means the file holds no keys.
fn parse_psk(text: &str) -> Result<PskKeys, (usize, &'static str)> {
    let mut keys = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let (user, hex) = line
            .split_once(':')
            .ok_or((n, "expected username:hexkey"))?;
        if user.is_empty() || user.len() > MAX_PSK_IDENTITY {
            return Err((n, "the username must be 1 to 255 bytes"));
        }
        let key = decode_hex(hex).ok_or((n, "the key is not an even number of hex digits"))?;
        if key.is_empty() || key.len() > MAX_PSK_LEN {
            return Err((n, "the key must be 1 to 64 bytes"));
        }
        if keys.insert(user.as_bytes().to_vec(), key).is_some() {
            return Err((n, "duplicate username"));
        }
    }
    if keys.is_empty() {
        return Err((0, ""));
    }
    Ok(keys)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((digit(p[0])? << 4) | digit(p[1])?))
        .collect()
}

/// The memory "socket" under a session: ciphertext in, ciphertext out.
/// Reading an empty input says `WouldBlock`, which OpenSSL turns into
/// `WANT_READ`; writing always succeeds (the driver drains `output`).
#[derive(Default)]
struct MemIo {
    input: Vec<u8>,
    /// Consumed prefix of `input`.
    pos: usize,
    output: Vec<u8>,
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = &self.input[self.pos..];
        if avail.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        }
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`TlsSession::read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRead {
    /// This many plaintext bytes were written to the buffer.
    Data(usize),
    /// The peer closed TLS cleanly (close_notify).
    Closed,
    /// Push more ciphertext first.
    NeedInput,
}

/// One connection's TLS state, over memory buffers.
pub struct TlsSession {
    stream: SslStream<MemIo>,
    established: bool,
}

impl TlsSession {
    /// Hand ciphertext received from the peer to the session.
    pub fn push_ciphertext(&mut self, data: &[u8]) {
        let io = self.stream.get_mut();
        // Drop the consumed prefix before growing, so the buffer stays
        // about one receive long.
        if io.pos > 0 {
            io.input.drain(..io.pos);
            io.pos = 0;
        }
        io.input.extend_from_slice(data);
    }

    /// Ciphertext bytes held and not yet processed.
    pub fn pending_input(&self) -> usize {
        let io = self.stream.get_ref();
        io.input.len() - io.pos
    }

    /// Ciphertext waiting to be sent to the peer.
    pub fn ciphertext(&self) -> &[u8] {
        &self.stream.get_ref().output
    }

    /// Forget the first `n` bytes of [`Self::ciphertext`] (they were sent).
    pub fn consume_ciphertext(&mut self, n: usize) {
        let out = &mut self.stream.get_mut().output;
        let n = n.min(out.len());
        out.drain(..n);
    }

    /// Advance the server handshake with the ciphertext pushed so far.
    /// `Ok(true)` once it is complete; `Ok(false)` means: send
    /// [`Self::ciphertext`], push more input, call again. On `Err` the
    /// ciphertext holds the alert for the peer; send it and hang up.
    pub fn handshake(&mut self) -> Result<bool, TlsError> {
        if self.established {
            return Ok(true);
        }
        match self.stream.accept() {
            Ok(()) => {
                self.established = true;
                Ok(true)
            }
            Err(e) if e.code() == ErrorCode::WANT_READ => Ok(false),
            Err(e) => Err(TlsError::Protocol(handshake_reason(&e))),
        }
    }

    /// True once the handshake completed.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Decrypt into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<TlsRead, TlsError> {
        if buf.is_empty() {
            return Ok(TlsRead::Data(0));
        }
        match self.stream.ssl_read(buf) {
            Ok(0) => Ok(TlsRead::Closed),
            Ok(n) => Ok(TlsRead::Data(n)),
            Err(e) if e.code() == ErrorCode::WANT_READ => Ok(TlsRead::NeedInput),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(TlsRead::Closed),
            Err(e) => Err(TlsError::Protocol(e.to_string())),
        }
    }

    /// Encrypt all of `data` into [`Self::ciphertext`]. The caller bounds
    /// `data` (it sends the ciphertext after each piece).
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), TlsError> {
        while !data.is_empty() {
            match self.stream.ssl_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) => return Err(TlsError::Protocol(e.to_string())),
            }
        }
        Ok(())
    }

    /// Queue a close_notify alert (best effort).
    pub fn close(&mut self) {
        let _ = self.stream.shutdown();
    }
}

/// A handshake failure in words a user can act on.
fn handshake_reason(e: &openssl::ssl::Error) -> String {
    match e.ssl_error() {
        Some(stack) => format!("handshake failed: {stack}"),
        None => format!("handshake failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_file_parses_users_and_keys() {
        let k = parse_psk("# comment\nalice:00ff10\n\n bob:ABCDEF01 \n").unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(k[b"alice".as_slice()], vec![0x00, 0xff, 0x10]);
        assert_eq!(k[b"bob".as_slice()], vec![0xab, 0xcd, 0xef, 0x01]);
    }

    #[test]
    fn psk_file_errors_name_the_line() {
        assert_eq!(parse_psk("alice:00\nnocolon\n").unwrap_err().0, 2);
        assert_eq!(parse_psk("alice:0g").unwrap_err().0, 1);
        assert_eq!(parse_psk("alice:abc").unwrap_err().0, 1);
        assert_eq!(parse_psk(":00").unwrap_err().0, 1);
        assert_eq!(parse_psk("a:00\na:11").unwrap_err().0, 2);
        let long = format!("a:{}", "00".repeat(MAX_PSK_LEN + 1));
        assert_eq!(parse_psk(&long).unwrap_err().0, 1);
        assert_eq!(parse_psk("\n# only a comment\n").unwrap_err(), (0, ""));
    }

    #[test]
    fn missing_x509_files_are_named() {
        let cfg = TlsConfig {
            credentials: TlsCredentials::X509 {
                dir: PathBuf::from("/nonexistent-sluice-tls"),
            },
            required: true,
        };
        let e = TlsServer::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("server-cert.pem"), "{e}");
    }
}
