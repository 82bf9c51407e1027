//! [`ServerLimits`]: what one JSON-RPC server lets its peers hold.
//!
//! Every limit exists so that the memory and threads of the control plane are
//! bounded whatever peers send (or do not send). With the defaults, the input a
//! server buffers is at most `max_connections × (max_request_len + 64 KiB)`
//! (64 × 1.06 MiB ≈ 68 MiB), plus one reply per connection and, per worker, the
//! request being run. README.md, "Limits", lists them with measured figures.

use std::time::Duration;

/// Limits of one server; [`Default`] gives the daemon's values, tests set them small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections at most. The next one is accepted, sent a -32004 error object
    /// ("server busy", id null) and closed; refusals are logged (at most once a second).
    pub max_connections: usize,
    /// Bytes of one JSON value (request or batch) at most. A bigger one is answered
    /// with -32600 naming the limit, and the connection is closed without reading on.
    pub max_request_len: usize,
    /// Requests in one batch at most: a batch is answered as a whole, so its reply
    /// must be bounded too. A longer batch gets one -32600 error.
    pub max_batch: usize,
    /// A connection with nothing in flight and nothing half-sent is closed after this.
    pub idle_timeout: Duration,
    /// A request must arrive whole within this time of its first byte; otherwise it is
    /// answered with -32600 and the connection is closed.
    pub request_timeout: Duration,
    /// A peer that reads none of a pending reply for this long is disconnected.
    pub write_timeout: Duration,
    /// Threads that run method calls (methods block on the reactors). Fixed: the
    /// number of threads never depends on the number of connections. At least 1.
    pub workers: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 64,
            max_request_len: super::DEFAULT_MAX_LEN,
            max_batch: 1024,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            workers: 4,
        }
    }
}
