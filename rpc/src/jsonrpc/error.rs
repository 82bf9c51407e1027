//! The error object of a JSON-RPC 2.0 response, and the codes sluice uses.
//!
//! This file owns the mapping from "what went wrong" to a wire code. Handlers return
//! [`RpcError`]; the dispatcher puts it in the `error` member unchanged; the client
//! turns it back into an [`RpcError`] so that callers can match on [`RpcError::code`].
//! See the table of codes in the [`jsonrpc`](super) module docs.
//!
//! It also owns keeping error messages short: messages quote what the peer sent (a
//! method name, serde's `invalid type: string "..."`, a volume name), and a peer can
//! send a megabyte. Every message goes through [`shorten`] when the error is built
//! ([`RpcError::new`]) and again when it is put on the wire, so no error echoes more
//! than a short prefix of any input.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The numeric codes. Standard ones come from the JSON-RPC 2.0 specification;
/// application ones are in the server-reserved range -32000..=-32099.
pub mod codes {
    /// Invalid JSON was received; the connection is closed after this response.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON is not a valid request object (or the batch is empty).
    pub const INVALID_REQUEST: i64 = -32600;
    /// No method of that name is registered.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The params are missing, of the wrong shape, or a value is out of range.
    pub const INVALID_PARAMS: i64 = -32602;
    /// A bug in the server (including a panicking handler).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The named pool, volume, snapshot, export or job does not exist.
    pub const NOT_FOUND: i64 = -32001;
    /// An object of that name already exists.
    pub const EXISTS: i64 = -32002;
    /// The pool (or a zone of it) has no free space for the request.
    pub const NO_SPACE: i64 = -32003;
    /// The object is in use (exported, has clones, a job is running); retry later.
    pub const BUSY: i64 = -32004;
    /// The request is valid but not in the object's current state (e.g. writing to
    /// a snapshot, starting an NBD server twice, shrinking below used data).
    pub const INVALID_STATE: i64 = -32005;
    /// The storage below returned an I/O error or failed a checksum.
    pub const IO_ERROR: i64 = -32006;
}

/// A whitespace-free run (a name, a quoted string, a JSON value) longer than this is
/// cut to [`QUOTE_PREFIX`] characters. Long enough for any real path or name.
pub const MAX_QUOTED: usize = 128;
/// Characters kept of an over-long run.
pub const QUOTE_PREFIX: usize = 64;
/// A whole message is cut after this many bytes (a long input with spaces in it).
pub const MAX_MESSAGE: usize = 1024;

/// `text` itself if it is at most [`MAX_QUOTED`] bytes, else its first
/// [`QUOTE_PREFIX`] characters followed by `…(N bytes)`.
pub fn quote_prefix(text: &str) -> String {
    if text.len() <= MAX_QUOTED {
        return text.to_string();
    }
    let end = text
        .char_indices()
        .nth(QUOTE_PREFIX)
        .map_or(text.len(), |(i, _)| i);
    format!("{}…({} bytes)", &text[..end], text.len())
}

/// `message` with every over-long whitespace-free run replaced by [`quote_prefix`] of
/// it, and the result cut at [`MAX_MESSAGE`] bytes. Idempotent, so applying it twice
/// (at construction and on the wire) is harmless.
pub fn shorten(message: String) -> String {
    let has_long_run = message
        .split(char::is_whitespace)
        .any(|run| run.len() > MAX_QUOTED);
    if !has_long_run && message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut out = String::new();
    for piece in message.split_inclusive(char::is_whitespace) {
        let run = piece.trim_end_matches(char::is_whitespace);
        out.push_str(&quote_prefix(run));
        out.push_str(&piece[run.len()..]);
        if out.len() > MAX_MESSAGE {
            break;
        }
    }
    if out.len() > MAX_MESSAGE {
        // Leave room for the suffix, so that the result is within the cap (idempotence).
        let end = (0..=MAX_MESSAGE - 32)
            .rev()
            .find(|&i| out.is_char_boundary(i))
            .unwrap_or(0);
        out.truncate(end);
        out.push_str(&format!("…({} bytes)", message.len()));
    }
    out
}

/// A JSON-RPC error object: `{"code": ..., "message": ..., "data"?: ...}`.
///
/// `message` is a whole sentence meant for the person at the terminal (the CLI prints
/// it verbatim); `data` carries machine-readable detail when there is some, e.g. the
/// offending field of invalid params.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// Builds an error; the message is [`shorten`]ed.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: shorten(message.into()),
            data: None,
        }
    }

    /// The same error with its message [`shorten`]ed, for errors built as struct
    /// literals (the wire path applies this to every error it sends).
    pub fn shortened(mut self) -> Self {
        self.message = shorten(std::mem::take(&mut self.message));
        self
    }

    /// Attaches machine-readable detail.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// -32700, for input that is not JSON at all.
    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::PARSE_ERROR, format!("Parse error: {detail}"))
    }

    /// -32600, for JSON that is not a request object.
    pub fn invalid_request(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::INVALID_REQUEST, format!("Invalid request: {detail}"))
    }

    /// -32601.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            codes::METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        )
    }

    /// -32602, with the reason, e.g. `invalid_params("size: must be a multiple of 4096")`.
    pub fn invalid_params(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::INVALID_PARAMS, format!("Invalid params: {detail}"))
    }

    /// -32603.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::INTERNAL_ERROR, format!("Internal error: {detail}"))
    }

    /// -32001; `message` names the missing thing, e.g. `volume "vol0" not found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(codes::NOT_FOUND, message)
    }

    /// -32002; e.g. `volume "vol0" already exists`.
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(codes::EXISTS, message)
    }

    /// -32003; e.g. `pool "p0" has 1.2 GiB free, 4.0 GiB needed`.
    pub fn no_space(message: impl Into<String>) -> Self {
        Self::new(codes::NO_SPACE, message)
    }

    /// -32004; e.g. `volume "vol0" is exported as "vol0"`.
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(codes::BUSY, message)
    }

    /// -32005; e.g. `snapshot "s1" is read-only`.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_STATE, message)
    }

    /// -32006; e.g. `read of zone 3 failed: Input/output error`.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(codes::IO_ERROR, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn application_codes_are_distinct_and_in_the_server_range() {
        let app = [
            RpcError::not_found("x"),
            RpcError::exists("x"),
            RpcError::no_space("x"),
            RpcError::busy("x"),
            RpcError::invalid_state("x"),
            RpcError::io("x"),
        ];
        let mut seen: Vec<i64> = app.iter().map(|e| e.code).collect();
        assert!(
            seen.iter().all(|c| (-32099..=-32000).contains(c)),
            "{seen:?}"
        );
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), app.len());
    }

    #[test]
    fn long_input_is_quoted_as_a_prefix() {
        let name = "n".repeat(1_000_000);
        let e = RpcError::not_found(format!("volume \"{name}\" not found"));
        assert_eq!(
            e.message,
            format!("volume \"{}…(1000002 bytes) not found", "n".repeat(63))
        );
        let e = RpcError::method_not_found(&"é".repeat(200));
        assert!(
            e.message
                .starts_with(&format!("Method not found: {}…(400 bytes)", "é".repeat(64))),
            "{}",
            e.message
        );
        // Short runs, such as paths, are left whole.
        let path = format!("/var/tmp/{}", "p".repeat(100));
        assert_eq!(
            RpcError::io(format!("cannot open {path}")).message,
            format!("cannot open {path}")
        );
        // Many short words: the whole message is capped.
        let words = "ab ".repeat(100_000);
        let m = RpcError::invalid_params(words).message;
        assert!(m.len() <= MAX_MESSAGE, "{}", m.len());
        assert!(m.ends_with("…(300016 bytes)"), "{}", &m[m.len() - 40..]);
        assert_eq!(shorten(m.clone()), m, "idempotent");
    }

    #[test]
    fn serializes_without_data_when_absent() {
        assert_eq!(
            serde_json::to_value(RpcError::not_found("volume \"v\" not found")).unwrap(),
            json!({"code": -32001, "message": "volume \"v\" not found"})
        );
        let with = RpcError::invalid_params("size: bad").with_data(json!({"field": "size"}));
        assert_eq!(
            serde_json::to_value(&with).unwrap(),
            json!({"code": -32602, "message": "Invalid params: size: bad", "data": {"field": "size"}})
        );
        assert_eq!(with.to_string(), "Invalid params: size: bad (code -32602)");
    }
}
