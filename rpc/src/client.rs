//! A small blocking JSON-RPC 2.0 client over a Unix socket, used by the `sluice` CLI
//! and by tests (and usable by anything else that drives the daemon from Rust).
//!
//! One request at a time on one connection: the control plane is not a hot path, and
//! strict request/response keeps error handling obvious. Responses are read with the
//! same [`Framer`] as the server uses, so whitespace and splitting do not matter.

use crate::jsonrpc::{Framer, RpcError};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached: no daemon, wrong path, no permission.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("no response from {} within {}s", path.display(), timeout.as_secs_f64())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("connection to {} failed: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} closed the connection without answering", path.display())]
    Closed { path: PathBuf },
    /// The peer answered something that is not a JSON-RPC 2.0 response to our request.
    #[error("invalid response from {}: {detail}", path.display())]
    Protocol { path: PathBuf, detail: String },
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

/// A connection to a JSON-RPC server.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    framer: Framer,
    next_id: u64,
    timeout: Option<Duration>,
}

impl Client {
    /// What `rpc.py` uses too: long enough for a slow `pool_create` on a big file,
    /// short enough that a wedged daemon does not hang a script forever.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
        Ok(Client {
            stream,
            path,
            framer: Framer::new(),
            next_id: 1,
            timeout: Some(Self::DEFAULT_TIMEOUT),
        })
    }

    /// Limit on the time a [`Client::call`] waits; `None` waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `method` and waits for its result. `params` is sent as given unless it is
    /// `null`, in which case the member is omitted (as `rpc.py` does).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        self.send(method, params, Some(id))?;
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
                            path: self.path.clone(),
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
            path: self.path.clone(),
            source,
        }
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            detail,
        }
    }

    fn timeout_error(&self) -> ClientError {
        ClientError::Timeout {
            path: self.path.clone(),
            timeout: self.timeout.unwrap_or_default(),
        }
    }
}
