//! A small blocking JSON-RPC 2.0 client over a Unix socket or TCP, used by the
//! `sluice` CLI and by tests (and usable by anything else that drives the daemon from
//! Rust).
//!
//! One request at a time on one connection: the control plane is not a hot path, and
//! strict request/response keeps error handling obvious. Responses are read with the
//! same [`Framer`] as the server uses, so whitespace and splitting do not matter.

use crate::jsonrpc::{Framer, RpcError};
use serde_json::{json, Value};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Where a JSON-RPC server listens, as `sluice -s` names it (SPDK `rpc.py -s` style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `host:port`, as given (`127.0.0.1:5260`, `localhost:5260`, `[::1]:5260`).
    Tcp(String),
}

impl Endpoint {
    /// Reads `-s VALUE`: TCP when the value has the form `host:port` (a non-empty
    /// host, no `/`, a port number after the last `:`) and no file of that name
    /// exists; otherwise a Unix socket path. So `./rpc.sock`, `/run/s.sock` and
    /// `rpc.sock` are paths, `127.0.0.1:5260` is TCP, and a path that happens to look
    /// like `host:port` is written `./host:5260`.
    pub fn parse(value: &str) -> Endpoint {
        Self::parse_with(value, Path::exists)
    }

    fn parse_with(value: &str, exists: impl Fn(&Path) -> bool) -> Endpoint {
        if looks_like_host_port(value) && !exists(Path::new(value)) {
            Endpoint::Tcp(value.to_string())
        } else {
            Endpoint::Unix(PathBuf::from(value))
        }
    }

    /// The Unix socket path, if this is one.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Endpoint::Unix(p) => Some(p),
            Endpoint::Tcp(_) => None,
        }
    }
}

fn looks_like_host_port(value: &str) -> bool {
    if value.contains('/') {
        return false;
    }
    match value.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

impl FromStr for Endpoint {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Endpoint::parse(value))
    }
}

impl From<&Path> for Endpoint {
    fn from(path: &Path) -> Self {
        Endpoint::Unix(path.to_path_buf())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Why a call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached: no daemon, wrong path or address, no
    /// permission.
    #[error("cannot connect to {peer}: {source}")]
    Connect { peer: Endpoint, source: io::Error },
    #[error("no response from {peer} within {}s", timeout.as_secs_f64())]
    Timeout { peer: Endpoint, timeout: Duration },
    #[error("connection to {peer} failed: {source}")]
    Io { peer: Endpoint, source: io::Error },
    #[error("{peer} closed the connection without answering")]
    Closed { peer: Endpoint },
    /// The peer answered something that is not a JSON-RPC 2.0 response to our request.
    #[error("invalid response from {peer}: {detail}")]
    Protocol { peer: Endpoint, detail: String },
    /// The server answered with an error object.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

impl ClientError {
    /// The server's error, if that is what this is.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            ClientError::Rpc(e) => Some(e),
            _ => None,
        }
    }
}

/// The connected socket.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(buf),
            Stream::Tcp(s) => s.write_all(buf),
        }
    }
}

/// Connects to the first address `addr` resolves to that accepts, each attempt
/// bounded by `timeout` (`None`: the kernel's own limit).
fn connect_tcp(addr: &str, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        let attempt = match timeout {
            Some(t) => TcpStream::connect_timeout(&a, t),
            None => TcpStream::connect(a),
        };
        match attempt {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// A connection to a JSON-RPC server.
#[derive(Debug)]
pub struct Client {
    stream: Stream,
    peer: Endpoint,
    framer: Framer,
    next_id: u64,
    timeout: Option<Duration>,
}

impl Client {
    /// What `rpc.py` uses too: long enough for a slow `pool_create` on a big file,
    /// short enough that a wedged daemon does not hang a script forever.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// Connects to the Unix socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_to(&Endpoint::Unix(path.as_ref().to_path_buf()), None)
    }

    /// Connects to `host:port` over TCP, waiting at most [`Client::DEFAULT_TIMEOUT`].
    pub fn connect_tcp(addr: &str) -> Result<Self, ClientError> {
        Self::connect_to(
            &Endpoint::Tcp(addr.to_string()),
            Some(Self::DEFAULT_TIMEOUT),
        )
    }

    /// Connects to `peer`; a TCP connect waits at most `connect_timeout` per address
    /// (`None`: as long as the kernel tries). A Unix connect does not wait.
    pub fn connect_to(
        peer: &Endpoint,
        connect_timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let connected = match peer {
            Endpoint::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Endpoint::Tcp(addr) => connect_tcp(addr, connect_timeout).map(Stream::Tcp),
        };
        let stream = connected.map_err(|source| ClientError::Connect {
            peer: peer.clone(),
            source,
        })?;
        Ok(Client {
            stream,
            peer: peer.clone(),
            framer: Framer::new(),
            next_id: 1,
            timeout: Some(Self::DEFAULT_TIMEOUT),
        })
    }

    /// Limit on the time a [`Client::call`] waits; `None` waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The server this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.peer
    }

    /// Calls `method` and waits for its result. `params` is sent as given unless it is
    /// `null`, in which case the member is omitted (as `rpc.py` does).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        match self.send(method, params, Some(id)) {
            Ok(()) => {}
            Err(ClientError::Io { peer, source })
                if matches!(
                    source.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Err(self.refusal(id).unwrap_or(ClientError::Io { peer, source }))
            }
            Err(e) => return Err(e),
        }
        loop {
            let response = self.read_response(deadline)?;
            // A late answer to an earlier call that timed out: not ours, skip it.
            if response["id"].as_u64().is_some_and(|earlier| earlier < id) {
                continue;
            }
            return self.interpret(response, id);
        }
    }

    /// Sends a notification: no id, so the server runs it and never answers.
    pub fn notify(&mut self, method: &str, params: Value) -> Result<(), ClientError> {
        self.send(method, params, None)
    }

    fn send(&mut self, method: &str, params: Value, id: Option<u64>) -> Result<(), ClientError> {
        let mut request = json!({"jsonrpc": "2.0", "method": method});
        if !params.is_null() {
            request["params"] = params;
        }
        if let Some(id) = id {
            request["id"] = json!(id);
        }
        let mut bytes = request.to_string().into_bytes();
        bytes.push(b'\n');
        self.stream
            .set_write_timeout(self.timeout)
            .and_then(|()| self.stream.write_all(&bytes))
            .map_err(|e| self.io_error(e))
    }

    /// After a failed send: the server may have refused the connection before
    /// reading it (too many connections, a limit) and said why before closing.
    /// That error, if it is there to read.
    fn refusal(&mut self, id: u64) -> Option<ClientError> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let response = self.read_response(Some(deadline)).ok()?;
        match self.interpret(response, id) {
            Err(e @ ClientError::Rpc(_)) => Some(e),
            _ => None,
        }
    }

    fn read_response(&mut self, deadline: Option<Instant>) -> Result<Value, ClientError> {
        let mut buf = [0u8; 16 << 10];
        loop {
            match self.framer.next_value() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(self.protocol(e.to_string())),
            }
            let remaining = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => return Err(self.timeout_error()),
                },
                None => None,
            };
            self.stream
                .set_read_timeout(remaining)
                .map_err(|e| self.io_error(e))?;
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return match self.framer.finish() {
                        Ok(Some(v)) => Ok(v),
                        Ok(None) => Err(ClientError::Closed {
                            peer: self.peer.clone(),
                        }),
                        Err(e) => Err(self.protocol(e.to_string())),
                    }
                }
                Ok(n) => self.framer.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timeout_error())
                }
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    fn interpret(&self, response: Value, id: u64) -> Result<Value, ClientError> {
        let Value::Object(mut response) = response else {
            return Err(self.protocol(format!("expected a response object, got {response}")));
        };
        // The server answers an unparseable request with id null; take that error too.
        match response.get("id") {
            Some(Value::Number(n)) if n.as_u64() == Some(id) => {}
            Some(Value::Null) if response.contains_key("error") => {}
            other => {
                return Err(self.protocol(format!(
                    "response id {} does not match request id {id}",
                    other.map_or_else(|| "(missing)".to_string(), Value::to_string)
                )))
            }
        }
        if let Some(error) = response.remove("error") {
            let error: RpcError = serde_json::from_value(error)
                .map_err(|e| self.protocol(format!("malformed error object: {e}")))?;
            return Err(ClientError::Rpc(error));
        }
        response
            .remove("result")
            .ok_or_else(|| self.protocol("response has neither result nor error".to_string()))
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            peer: self.peer.clone(),
            source,
        }
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            peer: self.peer.clone(),
            detail,
        }
    }

    fn timeout_error(&self) -> ClientError {
        ClientError::Timeout {
            peer: self.peer.clone(),
            timeout: self.timeout.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_host_port_is_tcp_anything_else_a_path() {
        for tcp in ["127.0.0.1:5260", "localhost:5260", "[::1]:5260", "h:0"] {
            assert_eq!(Endpoint::parse(tcp), Endpoint::Tcp(tcp.into()), "{tcp}");
        }
        for unix in [
            "./sluice-data/rpc.sock",
            "/run/sluice.sock",
            "rpc.sock",
            "./host:5260",
            ":5260",
            "host:",
            "host:port",
            "host:65536",
        ] {
            assert_eq!(Endpoint::parse(unix), Endpoint::Unix(unix.into()), "{unix}");
        }
    }

    #[test]
    fn an_existing_file_that_looks_like_host_port_is_a_path() {
        assert_eq!(
            Endpoint::parse_with("h:5260", |p| p == Path::new("h:5260")),
            Endpoint::Unix("h:5260".into())
        );
        assert_eq!(
            Endpoint::parse_with("h:5260", |_| false),
            Endpoint::Tcp("h:5260".into())
        );
    }
}
