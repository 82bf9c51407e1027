//! Sans-IO transmission phase: request decoding, request validation, and
//! reply encoding.
//!
//! This file owns the 28-byte request header ([`parse_request`]), the rules
//! that decide which error a request gets before it reaches storage
//! ([`validate`]), and every reply frame the server sends: simple replies
//! and the structured reply chunks `OFFSET_DATA`, `OFFSET_HOLE`, `NONE`,
//! `ERROR`, `ERROR_OFFSET` and `BLOCK_STATUS`.
//!
//! Zero copy: a WRITE's payload is not part of the parsed request — the
//! caller reads [`Request::payload_len`] bytes straight into its own (e.g.
//! registered, 4 KiB-aligned) buffer. Likewise, for replies that carry data
//! the `encode_*_header` functions return just the small header, so a driver
//! can send `[header, data]` as an iovec without copying the data; the
//! `encode_*` variants that append to a `Vec<u8>` are for small replies and
//! tests.
//!
//! Framing rules (from the spec) that callers must follow:
//! * Without structured replies, every reply is simple; a READ error reply
//!   carries no payload.
//! * With structured replies, READ and BLOCK_STATUS must be answered with
//!   structured chunks (even errors); other commands may use a simple reply
//!   when there is no payload. [`encode_error_reply`] picks the right form.
//! * Exactly one chunk of a structured reply carries `NBD_REPLY_FLAG_DONE`,
//!   and it is the last one sent for that handle.
//! * `NBD_CMD_DISC` gets no reply.

use super::handshake::{truncate_str, Negotiated};
use super::proto::*;

/// A decoded request header (compact or extended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Opaque client cookie, echoed in every reply to this request.
    pub handle: u64,
    pub cmd: Command,
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    pub offset: u64,
    /// Effect length (64-bit with extended headers, else at most 2^32-1).
    pub length: u64,
    /// Bytes of payload that follow this header on the wire: `length` for
    /// WRITE, and with extended headers for any command carrying
    /// `NBD_CMD_FLAG_PAYLOAD_LEN`; 0 otherwise.
    pub payload: u64,
}

impl Request {
    /// Bytes of payload that follow this header on the wire. The caller
    /// must consume them even when [`validate`] rejects the request, or
    /// the stream falls out of sync.
    pub fn payload_len(&self) -> u64 {
        self.payload
    }

    pub fn has_flag(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Whether the reply must be a structured reply (READ and BLOCK_STATUS
    /// once structured replies are negotiated).
    pub fn needs_structured_reply(&self, neg: &Negotiated) -> bool {
        neg.structured_replies && matches!(self.cmd, Command::Read | Command::BlockStatus)
    }
}

/// Decode one compact (28-byte) request header from the front of `buf`:
/// [`parse_header`] without extended headers.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    parse_header(buf, false)
}

/// Decode one request header from the front of `buf`: 28 bytes with magic
/// `NBD_REQUEST_MAGIC`, or 32 bytes with `NBD_EXTENDED_REQUEST_MAGIC` once
/// extended headers are negotiated.
///
/// Returns `Ok(None)` until the whole header is present (a bad magic is
/// reported as soon as its 4 bytes are there), and otherwise the request
/// and the number of header bytes consumed; the payload, if any, follows.
/// The only error is a bad magic (we are out of sync and must close);
/// payload sizes are judged by the caller (see `session`), which refuses
/// oversized ones after discarding them.
pub fn parse_header(buf: &[u8], extended: bool) -> Result<Option<(Request, usize)>, ProtocolError> {
    let (want_magic, len) = if extended {
        (EXTENDED_REQUEST_MAGIC, EXTENDED_REQUEST_HEADER_LEN)
    } else {
        (REQUEST_MAGIC, REQUEST_HEADER_LEN)
    };
    if let Some(m) = buf.get(0..4) {
        let magic = u32::from_be_bytes([m[0], m[1], m[2], m[3]]);
        if magic != want_magic {
            return Err(ProtocolError::BadRequestMagic(magic));
        }
    }
    let Some(h) = buf.get(..len) else {
        return Ok(None);
    };
    let u16_at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
    let flags = u16_at(4);
    let cmd = Command::from_code(u16_at(6));
    let length = if extended {
        u64_at(24)
    } else {
        u64::from(u32_at(24))
    };
    let carries_payload = cmd == Command::Write || (extended && flags & CMD_FLAG_PAYLOAD_LEN != 0);
    let req = Request {
        flags,
        cmd,
        handle: u64_at(8),
        offset: u64_at(16),
        length,
        payload: if carries_payload { length } else { 0 },
    };
    Ok(Some((req, len)))
}

/// Check a request against the negotiated export before doing any I/O.
///
/// `Err(errno)` is what to send back (see [`encode_error_reply`]); the
/// connection stays up. Rules, in order:
/// 1. unknown command → EINVAL;
/// 2. DISC is always fine (it has no reply);
/// 3. WRITE/TRIM/WRITE_ZEROES on a read-only export → EPERM;
/// 4. a command flag not allowed for this command or not advertised
///    (FUA needs SEND_FUA, DF needs SEND_DF and READ, REQ_ONE needs
///    BLOCK_STATUS, NO_HOLE needs WRITE_ZEROES, FAST_ZERO needs
///    SEND_FAST_ZERO and WRITE_ZEROES, PAYLOAD_LEN needs extended headers
///    and WRITE) → EINVAL;
/// 5. FLUSH with nonzero offset or length → EINVAL (spec: MUST be zero);
/// 6. BLOCK_STATUS without `base:allocation` selected → EINVAL;
/// 7. zero length → EINVAL; any offset and length alignment is fine (we
///    advertise a minimum block size of 1);
/// 8. READ/WRITE longer than [`MAX_BLOCK_SIZE`] → EOVERFLOW (TRIM,
///    WRITE_ZEROES, CACHE and BLOCK_STATUS carry no payload, so we do not
///    cap them);
/// 9. beyond the end of the export → ENOSPC for WRITE/WRITE_ZEROES, EINVAL
///    otherwise (as the spec recommends).
pub fn validate(req: &Request, neg: &Negotiated) -> Result<(), Errno> {
    use Command::*;
    match req.cmd {
        Unknown(_) => return Err(Errno::Inval),
        Disc => return Ok(()),
        _ => {}
    }
    if neg.read_only && req.cmd.is_write() {
        return Err(Errno::Perm);
    }

    let tf = neg.transmission_flags;
    let mut allowed = 0;
    if tf & FLAG_SEND_FUA != 0 {
        // "valid for all commands, provided NBD_FLAG_SEND_FUA has been
        // negotiated".
        allowed |= CMD_FLAG_FUA;
    }
    match req.cmd {
        Read if tf & FLAG_SEND_DF != 0 => allowed |= CMD_FLAG_DF,
        Write if neg.extended_headers => allowed |= CMD_FLAG_PAYLOAD_LEN,
        WriteZeroes => {
            allowed |= CMD_FLAG_NO_HOLE;
            if tf & FLAG_SEND_FAST_ZERO != 0 {
                allowed |= CMD_FLAG_FAST_ZERO;
            }
        }
        BlockStatus => allowed |= CMD_FLAG_REQ_ONE,
        _ => {}
    }
    if req.flags & !allowed != 0 {
        return Err(Errno::Inval);
    }

    match req.cmd {
        Flush => {
            return if req.offset == 0 && req.length == 0 {
                Ok(())
            } else {
                Err(Errno::Inval)
            };
        }
        BlockStatus if !neg.structured_replies || neg.base_allocation_context.is_none() => {
            return Err(Errno::Inval);
        }
        _ => {}
    }

    if req.length == 0 {
        return Err(Errno::Inval);
    }
    if matches!(req.cmd, Read | Write) && req.length > u64::from(MAX_BLOCK_SIZE) {
        return Err(Errno::Overflow);
    }
    let in_bounds = req
        .offset
        .checked_add(req.length)
        .is_some_and(|end| end <= neg.size);
    if !in_bounds {
        return Err(match req.cmd {
            Write | WriteZeroes => Errno::NoSpc,
            _ => Errno::Inval,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Simple replies
// ---------------------------------------------------------------------------

/// Header of a simple reply. For a successful READ without structured
/// replies, send `length` bytes of data right after it.
pub fn encode_simple_reply_header(
    handle: u64,
    error: Option<Errno>,
) -> [u8; SIMPLE_REPLY_HEADER_LEN] {
    let mut h = [0u8; SIMPLE_REPLY_HEADER_LEN];
    h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.map_or(0, Errno::code).to_be_bytes());
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h
}

/// Append a simple reply (header plus `data`, which must be empty unless
/// this is a successful READ without structured replies).
pub fn encode_simple_reply(out: &mut Vec<u8>, handle: u64, error: Option<Errno>, data: &[u8]) {
    out.extend_from_slice(&encode_simple_reply_header(handle, error));
    out.extend_from_slice(data);
}

// ---------------------------------------------------------------------------
// Structured reply chunks
// ---------------------------------------------------------------------------

/// Length of an `OFFSET_DATA` chunk header including its 8-byte offset.
pub const OFFSET_DATA_HEADER_LEN: usize = STRUCTURED_REPLY_HEADER_LEN + 8;

/// Generic structured chunk header.
pub fn encode_chunk_header(
    flags: u16,
    reply_type: u16,
    handle: u64,
    payload_len: u32,
) -> [u8; STRUCTURED_REPLY_HEADER_LEN] {
    let mut h = [0u8; STRUCTURED_REPLY_HEADER_LEN];
    h[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&reply_type.to_be_bytes());
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h[16..20].copy_from_slice(&payload_len.to_be_bytes());
    h
}

fn done_flag(done: bool) -> u16 {
    if done {
        REPLY_FLAG_DONE
    } else {
        0
    }
}

/// Header of an `OFFSET_DATA` chunk (chunk header + offset) for `data_len`
/// bytes the caller sends itself. `data_len` must be 1..=2^32-9; it is at
/// most [`MAX_BLOCK_SIZE`] for validated requests. Set `done` only if no
/// error can still occur while the data is sent (e.g. it is already in
/// memory).
pub fn encode_offset_data_header(
    handle: u64,
    offset: u64,
    data_len: u32,
    done: bool,
) -> [u8; OFFSET_DATA_HEADER_LEN] {
    debug_assert!(data_len > 0 && data_len <= u32::MAX - 8);
    let mut h = [0u8; OFFSET_DATA_HEADER_LEN];
    h[..STRUCTURED_REPLY_HEADER_LEN].copy_from_slice(&encode_chunk_header(
        done_flag(done),
        REPLY_TYPE_OFFSET_DATA,
        handle,
        data_len.saturating_add(8),
    ));
    h[STRUCTURED_REPLY_HEADER_LEN..].copy_from_slice(&offset.to_be_bytes());
    h
}

/// Append an `OFFSET_DATA` chunk carrying `data` (non-empty).
pub fn encode_offset_data(out: &mut Vec<u8>, handle: u64, offset: u64, data: &[u8], done: bool) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&encode_offset_data_header(handle, offset, len, done));
    out.extend_from_slice(data);
}

/// Append an `OFFSET_HOLE` chunk: `hole_len` (nonzero) bytes at `offset`
/// read as zeroes. Not allowed with `NBD_CMD_FLAG_DF`.
pub fn encode_offset_hole(out: &mut Vec<u8>, handle: u64, offset: u64, hole_len: u32, done: bool) {
    debug_assert!(hole_len > 0);
    out.extend_from_slice(&encode_chunk_header(
        done_flag(done),
        REPLY_TYPE_OFFSET_HOLE,
        handle,
        12,
    ));
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&hole_len.to_be_bytes());
}

/// Append the `NONE` chunk that ends a structured reply (always DONE).
pub fn encode_none(out: &mut Vec<u8>, handle: u64) {
    out.extend_from_slice(&encode_chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_NONE,
        handle,
        0,
    ));
}

/// Append an `ERROR` chunk. The message is shown to humans by clients; it
/// is truncated to the spec's 4096-byte string limit.
pub fn encode_error_chunk(out: &mut Vec<u8>, handle: u64, errno: Errno, message: &str, done: bool) {
    let msg = truncate_str(message, MAX_STRING_LEN);
    out.extend_from_slice(&encode_chunk_header(
        done_flag(done),
        REPLY_TYPE_ERROR,
        handle,
        6 + msg.len() as u32,
    ));
    out.extend_from_slice(&errno.code().to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
}

/// Append an `ERROR_OFFSET` chunk: the error happened at `offset`, which
/// must lie inside the request. Lets a client keep the data before it.
pub fn encode_error_offset_chunk(
    out: &mut Vec<u8>,
    handle: u64,
    errno: Errno,
    message: &str,
    offset: u64,
    done: bool,
) {
    let msg = truncate_str(message, MAX_STRING_LEN);
    out.extend_from_slice(&encode_chunk_header(
        done_flag(done),
        REPLY_TYPE_ERROR_OFFSET,
        handle,
        14 + msg.len() as u32,
    ));
    out.extend_from_slice(&errno.code().to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
}

/// One `base:allocation` extent descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusExtent {
    pub length: u32,
    /// `STATE_HOLE` / `STATE_ZERO`.
    pub flags: u32,
}

/// Append the `BLOCK_STATUS` chunk answering `req` for `context_id`, with
/// DONE set (we serve one context, so this is the whole reply).
///
/// `extents` describe consecutive ranges starting at `req.offset`. The
/// encoder enforces the spec's shape rules so the storage side need not:
/// zero-length extents are dropped; with `REQ_ONE` only the first extent is
/// sent, clipped to the request length; otherwise extents stop once they
/// cover the request (the last one may extend past it); and an empty list
/// becomes one extent of the request length with status 0, which the spec
/// says is always safe.
pub fn encode_block_status(
    out: &mut Vec<u8>,
    req: &Request,
    context_id: u32,
    extents: &[StatusExtent],
) {
    let chosen = choose_extents(req, extents);
    let payload_len = 4 + 8 * chosen.len() as u32;
    out.reserve(STRUCTURED_REPLY_HEADER_LEN + payload_len as usize);
    out.extend_from_slice(&encode_chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        req.handle,
        payload_len,
    ));
    out.extend_from_slice(&context_id.to_be_bytes());
    for e in chosen {
        out.extend_from_slice(&e.length.to_be_bytes());
        out.extend_from_slice(&e.flags.to_be_bytes());
    }
}

/// The extents a BLOCK_STATUS reply carries, by the spec's shape rules
/// (see [`encode_block_status`]).
fn choose_extents(req: &Request, extents: &[StatusExtent]) -> Vec<StatusExtent> {
    let req_len = u32::try_from(req.length).unwrap_or(u32::MAX).max(1);
    let mut chosen: Vec<StatusExtent> = Vec::new();
    let mut covered: u64 = 0;
    for e in extents.iter().filter(|e| e.length > 0) {
        if req.has_flag(CMD_FLAG_REQ_ONE) {
            chosen.push(StatusExtent {
                length: e.length.min(req_len),
                flags: e.flags,
            });
            break;
        }
        chosen.push(*e);
        covered += u64::from(e.length);
        if covered >= req.length {
            break;
        }
    }
    if chosen.is_empty() {
        chosen.push(StatusExtent {
            length: req_len,
            flags: 0,
        });
    }
    chosen
}

/// Append the BLOCK_STATUS reply framed as negotiated: a `BLOCK_STATUS`
/// chunk, or with extended headers a `BLOCK_STATUS_EXT` chunk (64-bit
/// lengths and flags, with a descriptor count), the only form allowed then.
pub fn encode_block_status_reply(
    out: &mut Vec<u8>,
    req: &Request,
    neg: &Negotiated,
    context_id: u32,
    extents: &[StatusExtent],
) {
    if !neg.extended_headers {
        encode_block_status(out, req, context_id, extents);
        return;
    }
    let chosen = choose_extents(req, extents);
    let payload_len = 8 + 16 * chosen.len() as u64;
    out.extend_from_slice(&reply_chunk_header(
        true,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS_EXT,
        req,
        payload_len,
    ));
    out.extend_from_slice(&context_id.to_be_bytes());
    out.extend_from_slice(&(chosen.len() as u32).to_be_bytes());
    for e in chosen {
        out.extend_from_slice(&u64::from(e.length).to_be_bytes());
        out.extend_from_slice(&u64::from(e.flags).to_be_bytes());
    }
}

/// Append the complete error reply for `req`, framed as the negotiation
/// requires: a single `ERROR` chunk with DONE when structured replies are
/// on (mandatory for READ/BLOCK_STATUS, and preferred for the rest because
/// it carries `message`), a payload-less simple reply otherwise.
pub fn encode_error_reply(
    out: &mut Vec<u8>,
    req: &Request,
    neg: &Negotiated,
    errno: Errno,
    message: &str,
) {
    if neg.extended_headers {
        let msg = truncate_str(message, MAX_STRING_LEN);
        let h = reply_chunk_header(
            true,
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR,
            req,
            6 + msg.len() as u64,
        );
        out.extend_from_slice(&h);
        out.extend_from_slice(&errno.code().to_be_bytes());
        out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        out.extend_from_slice(msg.as_bytes());
    } else if neg.structured_replies {
        encode_error_chunk(out, req.handle, errno, message, true);
    } else {
        encode_simple_reply(out, req.handle, Some(errno), &[]);
    }
}

// ---------------------------------------------------------------------------
// Reply headers framed for the negotiation (simple, structured, extended)
// ---------------------------------------------------------------------------

/// Longest reply header built by [`ReplyHeader`] users: an extended
/// `OFFSET_HOLE` chunk (32-byte header + 12-byte payload).
pub const MAX_REPLY_HEADER_LEN: usize = EXTENDED_REPLY_HEADER_LEN + 12;

/// A small reply frame held inline (no allocation per reply).
#[derive(Clone, Copy)]
pub struct ReplyHeader {
    buf: [u8; MAX_REPLY_HEADER_LEN],
    len: usize,
}

impl ReplyHeader {
    fn new() -> Self {
        ReplyHeader {
            buf: [0; MAX_REPLY_HEADER_LEN],
            len: 0,
        }
    }

    fn put(&mut self, b: &[u8]) {
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }
}

impl std::ops::Deref for ReplyHeader {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Debug for ReplyHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyHeader({:02x?})", &**self)
    }
}

/// A chunk header: structured (20 bytes, 32-bit payload length) or, with
/// `extended`, extended (32 bytes: the request's offset and a 64-bit
/// payload length).
pub fn reply_chunk_header(
    extended: bool,
    flags: u16,
    reply_type: u16,
    req: &Request,
    payload_len: u64,
) -> ReplyHeader {
    let mut h = ReplyHeader::new();
    if extended {
        h.put(&EXTENDED_REPLY_MAGIC.to_be_bytes());
        h.put(&flags.to_be_bytes());
        h.put(&reply_type.to_be_bytes());
        h.put(&req.handle.to_be_bytes());
        h.put(&req.offset.to_be_bytes());
        h.put(&payload_len.to_be_bytes());
    } else {
        let len = u32::try_from(payload_len).unwrap_or(u32::MAX);
        h.put(&encode_chunk_header(flags, reply_type, req.handle, len));
    }
    h
}

/// The reply to a successful request without data: a simple reply, or
/// with extended headers (where simple replies are not allowed) a `NONE`
/// chunk with DONE.
pub fn ok_reply(req: &Request, neg: &Negotiated) -> ReplyHeader {
    if neg.extended_headers {
        reply_chunk_header(true, REPLY_FLAG_DONE, REPLY_TYPE_NONE, req, 0)
    } else {
        let mut h = ReplyHeader::new();
        h.put(&encode_simple_reply_header(req.handle, None));
        h
    }
}

/// Header in front of `data_len` bytes of READ data at `offset`: an
/// `OFFSET_DATA` chunk (structured or extended), or a simple reply header
/// when structured replies are off (then `offset`/`data_len` must be the
/// whole request and `done` true).
pub fn read_data_header(
    req: &Request,
    neg: &Negotiated,
    offset: u64,
    data_len: u64,
    done: bool,
) -> ReplyHeader {
    if !neg.structured_replies {
        return ok_reply(req, neg);
    }
    let flags = done_flag(done);
    let mut h = reply_chunk_header(
        neg.extended_headers,
        flags,
        REPLY_TYPE_OFFSET_DATA,
        req,
        data_len + 8,
    );
    h.put(&offset.to_be_bytes());
    h
}

/// A whole `OFFSET_HOLE` chunk (structured replies only): `len` bytes at
/// `offset` read as zeroes.
pub fn read_hole_chunk(
    req: &Request,
    neg: &Negotiated,
    offset: u64,
    len: u32,
    done: bool,
) -> ReplyHeader {
    let mut h = reply_chunk_header(
        neg.extended_headers,
        done_flag(done),
        REPLY_TYPE_OFFSET_HOLE,
        req,
        12,
    );
    h.put(&offset.to_be_bytes());
    h.put(&len.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::handshake::{transmission_flags, ExportInfo};

    const SIZE: u64 = 1 << 20;

    fn neg(read_only: bool, structured: bool, base_alloc: bool) -> Negotiated {
        let info = ExportInfo {
            name: "disk".into(),
            size: SIZE,
            read_only,
            description: None,
        };
        Negotiated {
            export_name: "disk".into(),
            size: SIZE,
            read_only,
            structured_replies: structured,
            extended_headers: false,
            base_allocation_context: base_alloc.then_some(7),
            transmission_flags: transmission_flags(&info, structured),
        }
    }

    fn req(cmd: Command, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            handle: 0x1122_3344_5566_7788,
            cmd,
            flags,
            offset,
            length: length.into(),
            payload: if cmd == Command::Write {
                length.into()
            } else {
                0
            },
        }
    }

    fn header(flags: u16, ty: u16, handle: u64, offset: u64, length: u32) -> Vec<u8> {
        let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&handle.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&length.to_be_bytes());
        v
    }

    #[test]
    fn parse_request_fields_and_partial_input() {
        let h = header(CMD_FLAG_FUA, CMD_WRITE, 42, 4096, 512);
        for n in 0..REQUEST_HEADER_LEN {
            assert_eq!(parse_request(&h[..n]), Ok(None), "prefix {n}");
        }
        let mut with_payload = h.clone();
        with_payload.extend_from_slice(&[7u8; 512]);
        let (r, used) = parse_request(&with_payload).unwrap().unwrap();
        assert_eq!(used, REQUEST_HEADER_LEN);
        assert_eq!(
            r,
            Request {
                handle: 42,
                cmd: Command::Write,
                flags: CMD_FLAG_FUA,
                offset: 4096,
                length: 512,
                payload: 512,
            }
        );
        assert_eq!(r.payload_len(), 512);
        let (r, _) = parse_request(&header(0, CMD_READ, 1, 0, 4096))
            .unwrap()
            .unwrap();
        assert_eq!(r.payload_len(), 0);
        let (r, _) = parse_request(&header(0, 77, 1, 0, 4096)).unwrap().unwrap();
        assert_eq!(r.cmd, Command::Unknown(77));
        assert_eq!(r.payload_len(), 0);
    }

    #[test]
    fn parse_request_bad_magic_is_detected_early() {
        assert_eq!(
            parse_request(b"GARB"),
            Err(ProtocolError::BadRequestMagic(0x4741_5242))
        );
        assert!(parse_request(&[0u8; 28]).is_err());
    }

    #[test]
    fn oversized_requests_parse_and_are_refused_with_eoverflow() {
        // Parsing never refuses a length: the session discards an oversized
        // payload and answers it.
        let big = MAX_BLOCK_SIZE + 1;
        let n = Negotiated {
            size: 1 << 30,
            ..neg(false, true, true)
        };
        for cmd in [CMD_WRITE, CMD_READ] {
            let (r, _) = parse_request(&header(0, cmd, 1, 0, big)).unwrap().unwrap();
            assert_eq!(validate(&r, &n), Err(Errno::Overflow));
        }
    }

    #[test]
    fn extended_header_fields() {
        let mut h = EXTENDED_REQUEST_MAGIC.to_be_bytes().to_vec();
        h.extend_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        h.extend_from_slice(&CMD_WRITE_ZEROES.to_be_bytes());
        h.extend_from_slice(&7u64.to_be_bytes());
        h.extend_from_slice(&(5u64 << 32).to_be_bytes());
        h.extend_from_slice(&(6u64 << 32).to_be_bytes());
        assert_eq!(parse_header(&h[..31], true), Ok(None));
        let (r, used) = parse_header(&h, true).unwrap().unwrap();
        assert_eq!(used, EXTENDED_REQUEST_HEADER_LEN);
        assert_eq!(
            (
                r.cmd,
                r.flags,
                r.handle,
                r.offset,
                r.length,
                r.payload_len()
            ),
            (Command::WriteZeroes, CMD_FLAG_FUA, 7, 5 << 32, 6 << 32, 0)
        );
        // The compact magic is refused on an extended connection and vice versa.
        assert!(parse_header(&header(0, CMD_READ, 1, 0, 1), true).is_err());
        assert!(parse_header(&h, false).is_err());
    }

    #[test]
    fn extended_replies_are_32_byte_chunks() {
        let n = Negotiated {
            extended_headers: true,
            ..neg(false, true, true)
        };
        let r = req(Command::Write, 0, 4096, 512);
        let ok = ok_reply(&r, &n);
        assert_eq!(ok.len(), EXTENDED_REPLY_HEADER_LEN);
        assert_eq!(&ok[0..4], &EXTENDED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(u16::from_be_bytes([ok[4], ok[5]]), REPLY_FLAG_DONE);
        assert_eq!(u16::from_be_bytes([ok[6], ok[7]]), REPLY_TYPE_NONE);
        assert_eq!(&ok[8..16], &r.handle.to_be_bytes());
        assert_eq!(&ok[16..24], &4096u64.to_be_bytes());
        assert_eq!(&ok[24..32], &0u64.to_be_bytes());
        // Without extended headers a success is a 16-byte simple reply.
        assert_eq!(ok_reply(&r, &neg(false, true, true)).len(), 16);
        let d = read_data_header(&r, &n, 4096, 100, true);
        assert_eq!(d.len(), EXTENDED_REPLY_HEADER_LEN + 8);
        assert_eq!(&d[24..32], &108u64.to_be_bytes());
        let hole = read_hole_chunk(&r, &n, 4096, 512, false);
        assert_eq!(hole.len(), MAX_REPLY_HEADER_LEN);
        let mut bs = Vec::new();
        let e = StatusExtent {
            length: 4096,
            flags: STATE_HOLE,
        };
        let q = req(Command::BlockStatus, 0, 0, 4096);
        encode_block_status_reply(&mut bs, &q, &n, 7, &[e]);
        assert_eq!(
            u16::from_be_bytes([bs[6], bs[7]]),
            REPLY_TYPE_BLOCK_STATUS_EXT
        );
        let p = &bs[EXTENDED_REPLY_HEADER_LEN..];
        assert_eq!(p.len(), 8 + 16);
        assert_eq!(&p[0..8], &[0, 0, 0, 7, 0, 0, 0, 1]);
        assert_eq!(&p[8..16], &4096u64.to_be_bytes());
        assert_eq!(&p[16..24], &u64::from(STATE_HOLE).to_be_bytes());
        let mut err = Vec::new();
        encode_error_reply(&mut err, &r, &n, Errno::Io, "bad");
        assert_eq!(&err[0..4], &EXTENDED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&err[24..32], &9u64.to_be_bytes());
        assert_eq!(&err[32..36], &5u32.to_be_bytes());
    }

    #[test]
    fn validation_table() {
        use Command::*;
        let rw = neg(false, false, false);
        let rw_sr = neg(false, true, true);
        let rw_sr_nometa = neg(false, true, false);
        let ro = neg(true, true, true);
        let big = Negotiated {
            size: 1 << 30,
            ..neg(false, false, false)
        };
        let max = MAX_BLOCK_SIZE;
        #[rustfmt::skip]
        let table: Vec<(&str, Request, &Negotiated, Result<(), Errno>)> = vec![
            ("plain read", req(Read, 0, 0, 4096), &rw, Ok(())),
            ("read to the last byte", req(Read, 0, SIZE - 512, 512), &rw, Ok(())),
            ("read of max size", req(Read, 0, 0, max), &big, Ok(())),
            ("write", req(Write, CMD_FLAG_FUA, 512, 1024), &rw, Ok(())),
            ("trim", req(Trim, 0, 0, 8192), &rw, Ok(())),
            ("write zeroes all flags", req(WriteZeroes, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO, 0, 4096), &rw, Ok(())),
            ("flush", req(Flush, 0, 0, 0), &rw, Ok(())),
            ("flush with FUA", req(Flush, CMD_FLAG_FUA, 0, 0), &rw, Ok(())),
            ("disc", req(Disc, 0, 0, 0), &rw, Ok(())),
            ("block status", req(BlockStatus, CMD_FLAG_REQ_ONE, 0, 4096), &rw_sr, Ok(())),
            ("read with DF", req(Read, CMD_FLAG_DF, 0, 4096), &rw_sr, Ok(())),
            // out of range
            ("read past end", req(Read, 0, SIZE - 512, 1024), &rw, Err(Errno::Inval)),
            ("read at end", req(Read, 0, SIZE, 512), &rw, Err(Errno::Inval)),
            ("read offset overflow", req(Read, 0, u64::MAX - 511, 512), &rw, Err(Errno::Inval)),
            ("write past end", req(Write, 0, SIZE - 512, 1024), &rw, Err(Errno::NoSpc)),
            ("write zeroes past end", req(WriteZeroes, 0, SIZE, 512), &rw, Err(Errno::NoSpc)),
            ("trim past end", req(Trim, 0, SIZE, 512), &rw, Err(Errno::Inval)),
            ("block status past end", req(BlockStatus, 0, SIZE, 512), &rw_sr, Err(Errno::Inval)),
            // any alignment (minimum block size 1) and zero length
            ("unaligned read offset", req(Read, 0, 100, 512), &rw, Ok(())),
            ("unaligned read length", req(Read, 0, 0, 1000), &rw, Ok(())),
            ("unaligned write", req(Write, 0, 511, 512), &rw, Ok(())),
            ("unaligned trim", req(Trim, 0, 0, 513), &rw, Ok(())),
            ("unaligned block status", req(BlockStatus, 0, 1, 512), &rw_sr, Ok(())),
            ("unaligned cache", req(Cache, 0, 3, 5), &rw, Ok(())),
            ("zero-length read", req(Read, 0, 0, 0), &rw, Err(Errno::Inval)),
            ("zero-length write", req(Write, 0, 0, 0), &rw, Err(Errno::Inval)),
            // size limits
            ("read over 64 MiB", req(Read, 0, 0, max + 1), &big, Err(Errno::Overflow)),
            ("write over 64 MiB", req(Write, 0, 0, max + 1), &big, Err(Errno::Overflow)),
            ("trim over 64 MiB", req(Trim, 0, 0, max + 512), &big, Ok(())),
            ("write zeroes over 64 MiB", req(WriteZeroes, 0, 0, max + 512), &big, Ok(())),
            ("PAYLOAD_LEN without extended headers", req(Write, CMD_FLAG_PAYLOAD_LEN, 0, 512), &rw, Err(Errno::Inval)),
            // read-only
            ("write on ro", req(Write, 0, 0, 512), &ro, Err(Errno::Perm)),
            ("trim on ro", req(Trim, 0, 0, 512), &ro, Err(Errno::Perm)),
            ("write zeroes on ro", req(WriteZeroes, 0, 0, 512), &ro, Err(Errno::Perm)),
            ("read on ro", req(Read, 0, 0, 512), &ro, Ok(())),
            ("flush on ro", req(Flush, 0, 0, 0), &ro, Ok(())),
            ("FUA not advertised on ro", req(Read, CMD_FLAG_FUA, 0, 512), &ro, Err(Errno::Inval)),
            // unknown command / flags
            ("unknown command", req(Unknown(99), 0, 0, 512), &rw, Err(Errno::Inval)),
            ("cache", req(Cache, 0, 0, 512), &rw, Ok(())),
            ("cache past end", req(Cache, 0, SIZE, 1), &rw, Err(Errno::Inval)),
            ("unknown flag", req(Read, 1 << 9, 0, 512), &rw, Err(Errno::Inval)),
            ("DF without structured", req(Read, CMD_FLAG_DF, 0, 512), &rw, Err(Errno::Inval)),
            ("DF on write", req(Write, CMD_FLAG_DF, 0, 512), &rw_sr, Err(Errno::Inval)),
            ("REQ_ONE on read", req(Read, CMD_FLAG_REQ_ONE, 0, 512), &rw_sr, Err(Errno::Inval)),
            ("NO_HOLE on write", req(Write, CMD_FLAG_NO_HOLE, 0, 512), &rw, Err(Errno::Inval)),
            ("FAST_ZERO on trim", req(Trim, CMD_FLAG_FAST_ZERO, 0, 512), &rw, Err(Errno::Inval)),
            // flush / block status specifics
            ("flush with offset", req(Flush, 0, 512, 0), &rw, Err(Errno::Inval)),
            ("flush with length", req(Flush, 0, 0, 512), &rw, Err(Errno::Inval)),
            ("block status without structured", req(BlockStatus, 0, 0, 512), &rw, Err(Errno::Inval)),
            ("block status without context", req(BlockStatus, 0, 0, 512), &rw_sr_nometa, Err(Errno::Inval)),
            ("block status length not capped", req(BlockStatus, 0, 0, 1 << 20), &rw_sr, Ok(())),
        ];
        for (what, r, n, want) in table {
            assert_eq!(validate(&r, n), want, "{what}");
        }
    }

    #[test]
    fn simple_reply_bytes() {
        let mut out = Vec::new();
        encode_simple_reply(&mut out, 5, Some(Errno::NoSpc), &[]);
        encode_simple_reply(&mut out, 6, None, b"abc");
        assert_eq!(
            out,
            [
                &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 5][..],
                &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6],
                b"abc",
            ]
            .concat()
        );
    }

    fn chunk(out: &[u8]) -> (u16, u16, u64, Vec<u8>, &[u8]) {
        assert_eq!(&out[0..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        let flags = u16::from_be_bytes([out[4], out[5]]);
        let ty = u16::from_be_bytes([out[6], out[7]]);
        let handle = u64::from_be_bytes(out[8..16].try_into().unwrap());
        let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
        (
            flags,
            ty,
            handle,
            out[20..20 + len].to_vec(),
            &out[20 + len..],
        )
    }

    #[test]
    fn structured_chunks_bytes() {
        let mut out = Vec::new();
        encode_offset_data(&mut out, 9, 4096, b"xyz", false);
        encode_offset_hole(&mut out, 9, 8192, 4096, false);
        encode_error_offset_chunk(&mut out, 9, Errno::Io, "bad", 8192, false);
        encode_error_chunk(&mut out, 9, Errno::Inval, "oops", false);
        encode_none(&mut out, 9);
        let (f, t, h, p, rest) = chunk(&out);
        assert_eq!((f, t, h), (0, REPLY_TYPE_OFFSET_DATA, 9));
        assert_eq!(p, [&4096u64.to_be_bytes()[..], b"xyz"].concat());
        let (f, t, _, p, rest) = chunk(rest);
        assert_eq!((f, t), (0, REPLY_TYPE_OFFSET_HOLE));
        assert_eq!(
            p,
            [&8192u64.to_be_bytes()[..], &4096u32.to_be_bytes()].concat()
        );
        let (_, t, _, p, rest) = chunk(rest);
        assert_eq!(t, REPLY_TYPE_ERROR_OFFSET);
        assert_eq!(
            p,
            [
                &5u32.to_be_bytes()[..],
                &3u16.to_be_bytes(),
                b"bad",
                &8192u64.to_be_bytes()
            ]
            .concat()
        );
        let (_, t, _, p, rest) = chunk(rest);
        assert_eq!(t, REPLY_TYPE_ERROR);
        assert_eq!(
            p,
            [&22u32.to_be_bytes()[..], &4u16.to_be_bytes(), b"oops"].concat()
        );
        let (f, t, _, p, rest) = chunk(rest);
        assert_eq!((f, t, p.len()), (REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0));
        assert!(rest.is_empty());
        // The zero-copy header is byte-identical to the inline encoding.
        let mut inline = Vec::new();
        encode_offset_data(&mut inline, 3, 512, &[1u8; 512], true);
        assert_eq!(
            &inline[..OFFSET_DATA_HEADER_LEN],
            &encode_offset_data_header(3, 512, 512, true)
        );
    }

    #[test]
    fn error_message_is_truncated_to_string_limit() {
        let mut out = Vec::new();
        let long = "é".repeat(3000); // 6000 bytes, 2-byte chars
        encode_error_chunk(&mut out, 1, Errno::Io, &long, true);
        let (_, _, _, p, _) = chunk(&out);
        let msg_len = u16::from_be_bytes([p[4], p[5]]) as usize;
        assert!(msg_len <= MAX_STRING_LEN);
        assert!(std::str::from_utf8(&p[6..6 + msg_len]).is_ok());
        assert_eq!(p.len(), 6 + msg_len);
    }

    fn extents_of(out: &[u8]) -> (u32, Vec<(u32, u32)>) {
        let (f, t, _, p, rest) = chunk(out);
        assert_eq!((f, t), (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS));
        assert!(rest.is_empty());
        let id = u32::from_be_bytes(p[0..4].try_into().unwrap());
        let ext = p[4..]
            .chunks(8)
            .map(|c| {
                (
                    u32::from_be_bytes(c[0..4].try_into().unwrap()),
                    u32::from_be_bytes(c[4..8].try_into().unwrap()),
                )
            })
            .collect();
        (id, ext)
    }

    #[test]
    fn block_status_shape_rules() {
        let e = |length, flags| StatusExtent { length, flags };
        let hole = STATE_HOLE | STATE_ZERO;
        let exts = [
            e(4096, 0),
            e(0, 0),
            e(8192, hole),
            e(4096, 0),
            e(4096, hole),
        ];
        // Plain: stops once the request is covered; the last may overhang.
        let mut out = Vec::new();
        encode_block_status(&mut out, &req(Command::BlockStatus, 0, 0, 8192), 7, &exts);
        assert_eq!(extents_of(&out), (7, vec![(4096, 0), (8192, hole)]));
        // REQ_ONE: one extent, clipped to the request length.
        let mut out = Vec::new();
        encode_block_status(
            &mut out,
            &req(Command::BlockStatus, CMD_FLAG_REQ_ONE, 0, 1024),
            7,
            &exts,
        );
        assert_eq!(extents_of(&out), (7, vec![(1024, 0)]));
        // Nothing known: one safe status-0 extent.
        let mut out = Vec::new();
        encode_block_status(&mut out, &req(Command::BlockStatus, 0, 0, 2048), 7, &[]);
        assert_eq!(extents_of(&out), (7, vec![(2048, 0)]));
    }

    #[test]
    fn error_reply_framing_follows_negotiation() {
        let r = req(Command::Read, 0, 0, 512);
        let mut out = Vec::new();
        encode_error_reply(&mut out, &r, &neg(false, false, false), Errno::Inval, "x");
        assert_eq!(
            out,
            encode_simple_reply_header(r.handle, Some(Errno::Inval))
        );
        let mut out = Vec::new();
        encode_error_reply(&mut out, &r, &neg(false, true, false), Errno::Inval, "x");
        let (f, t, h, p, _) = chunk(&out);
        assert_eq!((f, t, h), (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, r.handle));
        assert_eq!(&p[0..4], &22u32.to_be_bytes());
        assert!(r.needs_structured_reply(&neg(false, true, false)));
        assert!(!req(Command::Write, 0, 0, 512).needs_structured_reply(&neg(false, true, false)));
        assert!(!r.needs_structured_reply(&neg(false, false, false)));
    }

    #[test]
    fn random_headers_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let n = neg(false, true, true);
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut h = header(
                (x >> 48) as u16 & 0x1f,
                (x % 9) as u16,
                x,
                x.rotate_left(17) & 0x1f_ffff,
                (x >> 20) as u32 & 0x3ff_ffff,
            );
            h.truncate((x % 29) as usize);
            if let Ok(Some((r, _))) = parse_request(&h) {
                let _ = validate(&r, &n);
            }
        }
    }
}
