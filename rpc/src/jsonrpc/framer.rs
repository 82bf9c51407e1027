//! Cutting a byte stream into JSON values.
//!
//! The control socket carries a *stream of JSON values* with no length prefix and no
//! required delimiter: SPDK's `rpc.py` writes one object and waits for the answer,
//! `nc` users send newline-terminated lines, scripts write several requests in one
//! `write`. This file owns telling those apart from each other and from garbage, for
//! both the server and the [`Client`](crate::client::Client).
//!
//! How: a small structural scanner (string/escape state and bracket depth, carried
//! across reads) finds where the first top-level value ends in O(n) total, however
//! the bytes are split; the complete slice is then handed out as bytes
//! ([`Framer::next_frame`], the server parses them on a worker thread) or parsed by
//! `serde_json` ([`Framer::next_value`]). While a value is still incomplete,
//! `serde_json` also checks the partial buffer (into `IgnoredAny`, so without building
//! anything) each time it has doubled in size, so that garbage (`xyz`, `{"a" 1`) is
//! reported right away rather than after the size cap, at an amortised linear cost.
//! A value still incomplete when more than [`Framer::max_len`] bytes are buffered is an
//! error: a peer must not be able to make the server buffer without bound. So the
//! buffer never holds more than `max_len` plus one read's worth of bytes.
//!
//! After an error the stream cannot be resynchronised (there is no delimiter to skip
//! to), so the framer is poisoned and the caller closes the connection.

use serde::de::IgnoredAny;
use serde_json::Value;

/// Default cap on the size of one value: far above any real request (the largest are
/// config replays of a few KiB), far below what would hurt the daemon.
pub const DEFAULT_MAX_LEN: usize = 1 << 20;

/// Capacity kept by an emptied buffer: after one big value, an idle connection must
/// not keep its high-water mark allocated.
const KEEP_CAPACITY: usize = 64 << 10;

/// Why the stream cannot be framed. Both are fatal for the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The bytes are not JSON; the message has serde_json's line/column.
    #[error("{0}")]
    Syntax(#[source] serde_json::Error),
    /// A single value is larger than the cap.
    #[error("JSON value exceeds the {limit}-byte size limit")]
    TooLarge { limit: usize },
    /// The stream ended in the middle of a value.
    #[error("stream ended inside a JSON value")]
    Truncated,
    /// An earlier call already returned an error; the stream cannot be resynchronised.
    #[error("JSON stream already failed")]
    Poisoned,
}

/// What the scanner knows about the value that starts at `Framer::start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Not yet looked at its first byte.
    Start,
    /// Inside an object or array, `depth` brackets open.
    Container {
        depth: usize,
        in_string: bool,
        escape: bool,
    },
    /// A top-level string.
    Str { escape: bool },
    /// A number or `true`/`false`/`null`: ends at the first delimiter.
    Scalar,
}

/// Incremental splitter of a byte stream into JSON values. Feed it whatever `read`
/// returned with [`Framer::feed`], then drain complete values with
/// [`Framer::next_value`] until it returns `Ok(None)` ("need more bytes").
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where the next value starts; bytes before it are consumed.
    start: usize,
    /// Absolute index in `buf` of the next byte the scanner has not seen.
    pos: usize,
    scan: Scan,
    /// Length of the pending value when serde_json last looked at it (0: never).
    probed_len: usize,
    max_len: usize,
    poisoned: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    pub fn new() -> Self {
        Self::with_max_len(DEFAULT_MAX_LEN)
    }

    pub fn with_max_len(max_len: usize) -> Self {
        Framer {
            buf: Vec::new(),
            start: 0,
            pos: 0,
            scan: Scan::Start,
            probed_len: 0,
            max_len,
            poisoned: false,
        }
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Bytes received but not yet returned as values (whitespace included).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            // Only pending bytes move; they are at most one partial value.
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// True when bytes of a value that is not complete yet are buffered. Meaningful
    /// right after [`Framer::next_frame`] or [`Framer::next_value`] returned `Ok(None)`
    /// (which skip whitespace between values): the server times such a value out.
    pub fn has_partial(&self) -> bool {
        self.start < self.buf.len()
    }

    /// The next complete value, `Ok(None)` if more bytes are needed, or an error after
    /// which this framer returns the same kind of error forever.
    pub fn next_value(&mut self) -> Result<Option<Value>, FrameError> {
        match self.next_frame()? {
            None => Ok(None),
            Some(bytes) => self.parse(&bytes).map(Some),
        }
    }

    /// Like [`Framer::next_value`], but returns the bytes of the next complete value
    /// unparsed. Its structure is known to be complete; whether it is valid JSON is
    /// only certain once it is parsed (garbage inside a bracketed value, bad UTF-8).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        let result = self.next_inner();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Called when the peer has closed its side: a trailing number (`42` with nothing
    /// after it) is complete now; anything else left over is truncated input.
    pub fn finish(&mut self) -> Result<Option<Value>, FrameError> {
        match self.finish_frame()? {
            None => Ok(None),
            Some(bytes) => self.parse(&bytes).map(Some),
        }
    }

    /// [`Framer::finish`] without parsing the last value (see [`Framer::next_frame`]).
    pub fn finish_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(v) = self.next_frame()? {
            return Ok(Some(v));
        }
        self.skip_whitespace();
        if self.start == self.buf.len() {
            return Ok(None);
        }
        self.poisoned = true;
        let rest = &self.buf[self.start..];
        if self.scan == Scan::Scalar {
            return Ok(Some(rest.to_vec()));
        }
        // Prefer serde's description ("EOF while parsing a string at line 1 column 9").
        match serde_json::from_slice::<IgnoredAny>(rest) {
            Err(e) => Err(FrameError::Syntax(e)),
            Ok(_) => Err(FrameError::Truncated),
        }
    }

    fn parse(&mut self, bytes: &[u8]) -> Result<Value, FrameError> {
        serde_json::from_slice(bytes).map_err(|e| {
            self.poisoned = true;
            FrameError::Syntax(e)
        })
    }

    fn skip_whitespace(&mut self) {
        if self.scan == Scan::Start {
            while self.start < self.buf.len() && self.buf[self.start].is_ascii_whitespace() {
                self.start += 1;
            }
            self.pos = self.start;
        }
    }

    fn next_inner(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        self.skip_whitespace();
        if self.start == self.buf.len() {
            self.release();
            return Ok(None);
        }
        match self.scan_to_end() {
            Some(end) => {
                if end - self.start > self.max_len {
                    return Err(FrameError::TooLarge {
                        limit: self.max_len,
                    });
                }
                let frame = if end == self.buf.len() || end - self.start > KEEP_CAPACITY {
                    // Hand the big buffer over rather than keep a second copy of a
                    // large value while it waits for a worker.
                    let rest = self.buf.split_off(end);
                    let frame = self.buf[self.start..].to_vec();
                    self.buf = rest;
                    self.start = 0;
                    self.pos = 0;
                    frame
                } else {
                    let frame = self.buf[self.start..end].to_vec();
                    self.start = end;
                    self.pos = end;
                    frame
                };
                self.scan = Scan::Start;
                self.probed_len = 0;
                Ok(Some(frame))
            }
            None => {
                let pending = self.buf.len() - self.start;
                if pending > self.max_len {
                    return Err(FrameError::TooLarge {
                        limit: self.max_len,
                    });
                }
                if pending >= self.probed_len.saturating_mul(2) {
                    self.probed_len = pending.max(1);
                    self.probe()?;
                }
                Ok(None)
            }
        }
    }

    /// Frees a big buffer once everything in it has been consumed.
    fn release(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.pos = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }

    /// Lets serde_json look at an incomplete value: an error that is not "ran out of
    /// input" means no amount of further bytes can make it valid.
    fn probe(&self) -> Result<(), FrameError> {
        let mut stream =
            serde_json::Deserializer::from_slice(&self.buf[self.start..]).into_iter::<IgnoredAny>();
        match stream.next() {
            Some(Err(e)) if !e.is_eof() => Err(FrameError::Syntax(e)),
            _ => Ok(()),
        }
    }

    /// Advances the scanner over unseen bytes; returns the end (exclusive) of the value
    /// starting at `self.start` once it is known.
    fn scan_to_end(&mut self) -> Option<usize> {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            let i = self.pos;
            self.pos += 1;
            match &mut self.scan {
                Scan::Start => {
                    self.scan = match b {
                        b'{' | b'[' => Scan::Container {
                            depth: 1,
                            in_string: false,
                            escape: false,
                        },
                        b'"' => Scan::Str { escape: false },
                        // Numbers, literals, and garbage: serde decides which.
                        _ => Scan::Scalar,
                    };
                }
                Scan::Container {
                    depth,
                    in_string,
                    escape,
                } => {
                    if *in_string {
                        if *escape {
                            *escape = false;
                        } else if b == b'\\' {
                            *escape = true;
                        } else if b == b'"' {
                            *in_string = false;
                        }
                    } else {
                        match b {
                            b'"' => *in_string = true,
                            b'{' | b'[' => *depth += 1,
                            b'}' | b']' => {
                                *depth -= 1;
                                if *depth == 0 {
                                    return Some(i + 1);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Scan::Str { escape } => {
                    if *escape {
                        *escape = false;
                    } else if b == b'\\' {
                        *escape = true;
                    } else if b == b'"' {
                        return Some(i + 1);
                    }
                }
                Scan::Scalar => {
                    if b.is_ascii_whitespace() || b"{}[]\",:".contains(&b) {
                        // The delimiter belongs to whatever comes next.
                        self.pos = i;
                        return Some(i);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn drain(f: &mut Framer) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = f.next_value().expect("valid stream") {
            out.push(v);
        }
        out
    }

    #[test]
    fn one_value_split_at_every_byte_boundary() {
        let text =
            br#"{"jsonrpc":"2.0","method":"m","params":{"s":"a}\"]{[","n":[1,{"x":null}]},"id":7}"#;
        for split in 0..=text.len() {
            let mut f = Framer::new();
            f.feed(&text[..split]);
            let mut got = drain(&mut f);
            if split < text.len() {
                assert!(got.is_empty(), "complete too early at {split}");
            }
            f.feed(&text[split..]);
            got.extend(drain(&mut f));
            assert_eq!(got.len(), 1, "split at {split}");
            assert_eq!(got[0]["params"]["s"], json!("a}\"]{["));
            assert_eq!(got[0]["id"], json!(7));
        }
    }

    #[test]
    fn byte_at_a_time() {
        let text = b" {\"a\": [1, 2, \"\\\\\"]}\n[3] \"str\\\"\" true null 12 ";
        let mut f = Framer::new();
        let mut got = Vec::new();
        for b in text {
            f.feed(std::slice::from_ref(b));
            got.extend(drain(&mut f));
        }
        assert_eq!(
            got,
            vec![
                json!({"a": [1, 2, "\\"]}),
                json!([3]),
                json!("str\""),
                json!(true),
                json!(null),
                json!(12)
            ]
        );
        assert_eq!(f.finish().unwrap(), None);
    }

    #[test]
    fn several_values_in_one_read_with_and_without_separators() {
        let mut f = Framer::new();
        f.feed(b"{\"id\":1}{\"id\":2}\n{\"id\":3}\r\n\t[{\"id\":4}]");
        assert_eq!(
            drain(&mut f),
            vec![
                json!({"id": 1}),
                json!({"id": 2}),
                json!({"id": 3}),
                json!([{"id": 4}])
            ]
        );
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn a_number_at_the_end_of_the_buffer_waits_for_a_delimiter_or_eof() {
        let mut f = Framer::new();
        f.feed(b"12");
        assert_eq!(f.next_value().unwrap(), None);
        f.feed(b"34 5");
        assert_eq!(f.next_value().unwrap(), Some(json!(1234)));
        assert_eq!(f.next_value().unwrap(), None);
        assert_eq!(f.finish().unwrap(), Some(json!(5)));
    }

    #[test]
    fn garbage_is_reported_immediately_not_at_the_cap() {
        for garbage in [
            &b"xyz"[..],
            b"{\"a\" 1",
            b"{\"a\":1,,",
            b"[1 2",
            b"\xff\xfe",
            b"{\"a\":\"\xff\"}",
            b"tru e",
            b"{]",
        ] {
            let mut f = Framer::new();
            f.feed(garbage);
            match f.next_value() {
                Err(FrameError::Syntax(_)) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(garbage)),
            }
            assert!(f.next_value().is_err(), "poisoned after an error");
        }
    }

    #[test]
    fn valid_values_before_garbage_are_still_returned() {
        let mut f = Framer::new();
        f.feed(b"{\"id\":1} }");
        assert_eq!(f.next_value().unwrap(), Some(json!({"id": 1})));
        assert!(matches!(f.next_value(), Err(FrameError::Syntax(_))));
    }

    #[test]
    fn oversize_value_is_an_error_whether_complete_or_not() {
        let mut f = Framer::with_max_len(64);
        f.feed(b"[");
        f.feed(&[b' '; 64]);
        assert!(matches!(
            f.next_value(),
            Err(FrameError::TooLarge { limit: 64 })
        ));

        let mut f = Framer::with_max_len(64);
        let big = format!("[\"{}\"]", "a".repeat(100));
        f.feed(big.as_bytes());
        assert!(matches!(f.next_value(), Err(FrameError::TooLarge { .. })));

        // The cap is per value, not per connection.
        let mut f = Framer::with_max_len(64);
        for _ in 0..100 {
            f.feed(br#"{"jsonrpc":"2.0","id":1}"#);
            assert!(f.next_value().unwrap().is_some());
        }
    }

    #[test]
    fn deep_nesting_is_a_syntax_error_not_a_stack_overflow() {
        let mut f = Framer::new();
        f.feed(&[b'['; 10_000]);
        f.feed(&[b']'; 10_000]);
        assert!(matches!(f.next_value(), Err(FrameError::Syntax(_))));
    }

    #[test]
    fn eof_inside_a_value_is_truncation() {
        let mut f = Framer::new();
        f.feed(b"{\"jsonrpc\":\"2.");
        assert_eq!(f.next_value().unwrap(), None);
        let err = f.finish().unwrap_err();
        assert!(
            matches!(err, FrameError::Syntax(ref e) if e.is_eof()),
            "{err:?}"
        );
    }

    #[test]
    fn large_value_in_small_chunks_is_linear_enough() {
        // 8 MiB fed in 4 KiB reads: quadratic rescanning would take minutes.
        let item = br#"{"k":"vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv","n":[1,2,3]},"#;
        let mut body = b"[".to_vec();
        while body.len() < 8 << 20 {
            body.extend_from_slice(item);
        }
        body.extend_from_slice(b"null]");
        let mut f = Framer::with_max_len(16 << 20);
        let t = std::time::Instant::now();
        let mut got = None;
        for chunk in body.chunks(4096) {
            f.feed(chunk);
            if let Some(v) = f.next_value().unwrap() {
                got = Some(v);
            }
        }
        assert!(got.is_some_and(|v| v.as_array().is_some_and(|a| a.len() > 1000)));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
    }
}
