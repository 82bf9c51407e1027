//! Sans-IO state machine for the NBD handshake (fixed newstyle).
//!
//! This file owns option haggling: it turns the bytes a client sends after
//! our greeting into option replies, and ends either in
//! [`HandshakeState::Done`] with the [`Negotiated`] parameters the
//! transmission phase needs, or in [`HandshakeState::Closed`]. It never
//! touches a socket: the driver (an io_uring reactor, or the blocking test
//! server) sends [`Handshake::greeting`], then repeatedly hands received
//! bytes to [`Handshake::feed`], sends whatever [`Handshake::take_output`]
//! returns, and drops the consumed prefix of its receive buffer.
//!
//! `feed` only consumes *complete* messages. A partial option stays in the
//! caller's buffer until more bytes arrive, so split reads need no extra
//! state here, and bytes that follow the final option (pipelined
//! transmission requests) are left untouched for the transmission phase.
//! Option data is capped at [`MAX_OPTION_LEN`] and the cap is checked from
//! the 16-byte header alone, so a hostile client cannot make the caller
//! buffer more than `OPTION_HEADER_LEN + MAX_OPTION_LEN` bytes.
//!
//! Supported options: `EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO`,
//! `STRUCTURED_REPLY`, `EXTENDED_HEADERS` (which implies structured
//! replies), `LIST_META_CONTEXT` and `SET_META_CONTEXT` (the only context
//! is `base:allocation`), and `STARTTLS` when the driver offers TLS
//! ([`TlsPolicy`]; see `nbd/tls.rs`). Everything else gets
//! `NBD_REP_ERR_UNSUP`.

use super::proto::*;

/// What the server knows about one export, as the catalog reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Canonical name (what `NBD_OPT_LIST` shows; may differ from the name
    /// a client asked for, e.g. for the default export `""`).
    pub name: String,
    /// Size in bytes; should be a multiple of [`MIN_BLOCK_SIZE`].
    pub size: u64,
    /// Read-only exports (snapshots) refuse write-type commands.
    pub read_only: bool,
    /// Optional human-readable description (`NBD_INFO_DESCRIPTION`).
    pub description: Option<String>,
}

/// The set of exports a handshake can select from. Implemented by the
/// daemon's export table; consulted on every option so that exports added or
/// removed while a client is haggling are seen.
pub trait ExportCatalog {
    /// Canonical names of all exports, for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<String>;
    /// Look an export up by the name a client sent (`""` = default export;
    /// return `None` if there is no default).
    fn lookup(&self, name: &str) -> Option<ExportInfo>;
}

/// Metadata context id we hand out for `base:allocation`. Ids are opaque to
/// clients; any nonzero value will do.
pub const BASE_ALLOCATION_CONTEXT_ID: u32 = 1;

/// The transmission flags we advertise for an export.
///
/// Writable exports get HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
/// SEND_WRITE_ZEROES, SEND_FAST_ZERO and CAN_MULTI_CONN (our cache is shared
/// by all connections, so flush/FUA are visible across connections).
/// Read-only exports get READ_ONLY and lose every write-type flag (FUA,
/// TRIM, WRITE_ZEROES, FAST_ZERO) but keep FLUSH, which is harmless.
/// SEND_DF is set only when structured replies were negotiated, as the spec
/// requires. SEND_CACHE is always set: CACHE is validated and answered
/// without touching storage (see `session`).
pub fn transmission_flags(info: &ExportInfo, structured_replies: bool) -> u16 {
    let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN | FLAG_SEND_CACHE;
    if info.read_only {
        flags |= FLAG_READ_ONLY;
    } else {
        flags |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
    }
    if structured_replies {
        flags |= FLAG_SEND_DF;
    }
    flags
}

/// Everything the transmission phase needs to know about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Canonical name of the selected export.
    pub export_name: String,
    pub size: u64,
    pub read_only: bool,
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged: READ and BLOCK_STATUS
    /// replies must be structured.
    pub structured_replies: bool,
    /// `NBD_OPT_EXTENDED_HEADERS` was acknowledged: requests carry 32-byte
    /// headers with 64-bit lengths and every reply is an extended chunk.
    /// Implies `structured_replies`.
    pub extended_headers: bool,
    /// Context id for `base:allocation` if the client selected it for this
    /// very export; `None` means BLOCK_STATUS gets `EINVAL`.
    pub base_allocation_context: Option<u32>,
    /// The flags sent to the client (see [`transmission_flags`]).
    pub transmission_flags: u16,
}

/// Why a handshake ended without entering transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `NBD_OPT_ABORT` (soft disconnect); the ACK is in the
    /// output buffer and should be sent before closing.
    Aborted,
    /// [`Handshake::feed`] returned a [`ProtocolError`]: hang up.
    ProtocolViolation,
}

// --- TLS (STARTTLS) ---------------------------------------------------------

/// Whether, and how strictly, a handshake offers TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// No TLS (NOTLS mode): `STARTTLS` gets `NBD_REP_ERR_UNSUP`.
    #[default]
    Off,
    /// TLS on request; plaintext haggling is allowed too.
    Optional,
    /// FORCEDTLS: before TLS is up, every option but `STARTTLS` and
    /// `ABORT` gets `NBD_REP_ERR_TLS_REQD` (so not even export names are
    /// revealed), and `EXPORT_NAME`, which cannot be answered with an
    /// error, ends the connection.
    Required,
}

// --- end TLS -------------------------------------------------------------------

/// Where the handshake is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeState {
    /// Greeting sent (or about to be), waiting for the 32-bit client flags.
    AwaitingClientFlags,
    /// Option haggling.
    Haggling,
    /// The client's `NBD_OPT_STARTTLS` was accepted and its ACK is in the
    /// output. Send it, run the TLS handshake on the connection (the bytes
    /// the client sends next are TLS records, so `feed` consumes nothing
    /// meanwhile), then call [`Handshake::tls_started`] and keep feeding
    /// the decrypted stream.
    StartTls,
    /// Transmission phase entered (by `EXPORT_NAME` or a successful `GO`).
    /// Flush the output first: it ends with the final reply.
    Done(Negotiated),
    /// Connection must be closed (after flushing output).
    Closed(CloseReason),
}

/// Metadata contexts selected by the last `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone)]
struct MetaSelection {
    /// Canonical name of the export the selection was made for.
    export: String,
    base_allocation: bool,
}

/// The handshake state machine. One per connection.
#[derive(Debug)]
pub struct Handshake {
    state: HandshakeState,
    /// TLS policy, and whether TLS is up.
    tls: TlsPolicy,
    tls_active: bool,
    no_zeroes: bool,
    structured: bool,
    extended: bool,
    /// Whether `NBD_OPT_EXTENDED_HEADERS` is offered at all.
    allow_extended: bool,
    meta: Option<MetaSelection>,
    out: Vec<u8>,
}

impl Default for Handshake {
    fn default() -> Self {
        Self::new()
    }
}

impl Handshake {
    pub fn new() -> Self {
        Self::with_tls(TlsPolicy::Off)
    }

    /// A handshake that offers TLS according to `tls`.
    pub fn with_tls(tls: TlsPolicy) -> Self {
        Handshake {
            state: HandshakeState::AwaitingClientFlags,
            tls,
            tls_active: false,
            no_zeroes: false,
            structured: false,
            extended: false,
            allow_extended: true,
            meta: None,
            out: Vec::new(),
        }
    }

    /// A handshake that answers `NBD_OPT_EXTENDED_HEADERS` with
    /// `NBD_REP_ERR_UNSUP`, for drivers that only speak compact headers.
    pub fn without_extended_headers() -> Self {
        Handshake {
            allow_extended: false,
            ..Self::new()
        }
    }

    /// The bytes to send as soon as the connection is accepted: `NBDMAGIC`,
    /// `IHAVEOPT`, and our handshake flags (FIXED_NEWSTYLE | NO_ZEROES).
    pub fn greeting(&self) -> [u8; GREETING_LEN] {
        let mut g = [0u8; GREETING_LEN];
        g[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
        g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        g[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        g
    }

    pub fn state(&self) -> &HandshakeState {
        &self.state
    }

    /// The driver finished the TLS handshake after
    /// [`HandshakeState::StartTls`]: haggling resumes over TLS. Everything
    /// negotiated before STARTTLS is forgotten (the spec has the client
    /// negotiate structured replies and meta contexts again).
    pub fn tls_started(&mut self) {
        if self.state == HandshakeState::StartTls {
            self.tls_active = true;
            self.structured = false;
            self.extended = false;
            self.meta = None;
            self.state = HandshakeState::Haggling;
        }
    }

    /// True once TLS is up on this connection.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The negotiated parameters once the state is `Done`.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        match &self.state {
            HandshakeState::Done(n) => Some(n),
            _ => None,
        }
    }

    /// True once the state is `Done` or `Closed`: `feed` consumes nothing
    /// more.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state,
            HandshakeState::Done(_) | HandshakeState::Closed(_)
        )
    }

    /// Bytes waiting to be sent to the client (replies so far). The caller
    /// should send them before feeding more input: the protocol is lock-step,
    /// and not feeding while the socket is backed up is what keeps this
    /// buffer bounded.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// True if [`Handshake::take_output`] would return bytes.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Process as many complete client messages from `input` as possible and
    /// return how many bytes were consumed. The caller keeps the rest
    /// (an incomplete message, or transmission-phase bytes once the state is
    /// `Done`) and calls again with more data appended.
    ///
    /// On `Err` the state is `Closed(ProtocolViolation)` and the connection
    /// must be dropped without further ado.
    pub fn feed<C: ExportCatalog + ?Sized>(
        &mut self,
        input: &[u8],
        catalog: &C,
    ) -> Result<usize, ProtocolError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                HandshakeState::AwaitingClientFlags => {
                    let Some(flags) = be_u32(rest, 0) else {
                        return Ok(pos);
                    };
                    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
                        return Err(self.fail(ProtocolError::BadClientFlags(flags)));
                    }
                    // A client without FLAG_C_FIXED_NEWSTYLE is still served
                    // with fixed-newstyle replies (the spec allows honouring
                    // it); such clients only ever send EXPORT_NAME anyway.
                    self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
                    pos += CLIENT_FLAGS_LEN;
                    self.state = HandshakeState::Haggling;
                }
                HandshakeState::Haggling => {
                    // Check the magic as soon as it is complete so garbage is
                    // rejected without waiting for a full header.
                    let Some(magic) = be_u64(rest, 0) else {
                        return Ok(pos);
                    };
                    if magic != IHAVEOPT {
                        return Err(self.fail(ProtocolError::BadOptionMagic(magic)));
                    }
                    let (Some(option), Some(len)) = (be_u32(rest, 8), be_u32(rest, 12)) else {
                        return Ok(pos);
                    };
                    if len > MAX_OPTION_LEN {
                        return Err(self.fail(ProtocolError::OptionTooLarge {
                            option,
                            len,
                            max: MAX_OPTION_LEN,
                        }));
                    }
                    let total = OPTION_HEADER_LEN + len as usize;
                    if rest.len() < total {
                        return Ok(pos);
                    }
                    let data = &rest[OPTION_HEADER_LEN..total];
                    pos += total;
                    self.handle_option(option, data, catalog)?;
                }
                HandshakeState::StartTls | HandshakeState::Done(_) | HandshakeState::Closed(_) => {
                    return Ok(pos)
                }
            }
        }
    }

    fn fail(&mut self, err: ProtocolError) -> ProtocolError {
        self.state = HandshakeState::Closed(CloseReason::ProtocolViolation);
        err
    }

    fn handle_option<C: ExportCatalog + ?Sized>(
        &mut self,
        option: u32,
        data: &[u8],
        catalog: &C,
    ) -> Result<(), ProtocolError> {
        // --- TLS: FORCEDTLS refuses everything but STARTTLS/ABORT first.
        if self.tls == TlsPolicy::Required
            && !self.tls_active
            && option != OPT_STARTTLS
            && option != OPT_ABORT
        {
            if option == OPT_EXPORT_NAME {
                return Err(self.fail(ProtocolError::TlsRequired));
            }
            self.error_reply(
                option,
                REP_ERR_TLS_REQD,
                "this server requires TLS: send NBD_OPT_STARTTLS first (use an nbds:// URI)",
            );
            return Ok(());
        }
        // --- end TLS
        match option {
            OPT_EXPORT_NAME => return self.opt_export_name(data, catalog),
            OPT_ABORT => {
                // The spec says to ignore any data sent with ABORT.
                self.reply(option, REP_ACK, &[]);
                self.state = HandshakeState::Closed(CloseReason::Aborted);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    self.error_reply(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                } else {
                    for name in catalog.list() {
                        // Name, then (spec: "implementation-specific
                        // details ... suitable for direct display") the
                        // export's description, which `nbdinfo --list`
                        // shows.
                        let name = truncate_str(&name, MAX_STRING_LEN);
                        let desc = catalog.lookup(name).and_then(|i| i.description);
                        let desc = truncate_str(desc.as_deref().unwrap_or(""), MAX_STRING_LEN);
                        let mut payload = Vec::with_capacity(4 + name.len() + desc.len());
                        payload.extend_from_slice(&(name.len() as u32).to_be_bytes());
                        payload.extend_from_slice(name.as_bytes());
                        payload.extend_from_slice(desc.as_bytes());
                        self.reply(option, REP_SERVER, &payload);
                    }
                    self.reply(option, REP_ACK, &[]);
                }
            }
            OPT_INFO | OPT_GO => self.opt_info_go(option, data, catalog),
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    self.error_reply(
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    );
                } else if self.extended {
                    self.error_reply(
                        option,
                        REP_ERR_EXT_HEADER_REQD,
                        "extended headers are already negotiated",
                    );
                } else {
                    self.structured = true;
                    self.reply(option, REP_ACK, &[]);
                }
            }
            OPT_EXTENDED_HEADERS => {
                if !self.allow_extended {
                    self.error_reply(option, REP_ERR_UNSUP, "option not supported");
                } else if !data.is_empty() {
                    self.error_reply(
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_EXTENDED_HEADERS takes no data",
                    );
                } else if self.extended {
                    self.error_reply(
                        option,
                        REP_ERR_INVALID,
                        "extended headers are already negotiated",
                    );
                } else {
                    self.extended = true;
                    self.structured = true;
                    self.reply(option, REP_ACK, &[]);
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.opt_meta_context(option, data, catalog)
            }
            OPT_STARTTLS => self.opt_starttls(option, data),
            _ => self.error_reply(option, REP_ERR_UNSUP, "option not supported"),
        }
        Ok(())
    }

    /// `NBD_OPT_STARTTLS` (TLS): ACK and hand over to the driver.
    fn opt_starttls(&mut self, option: u32, data: &[u8]) {
        if self.tls == TlsPolicy::Off {
            self.error_reply(option, REP_ERR_UNSUP, "TLS is not enabled on this listener");
        } else if !data.is_empty() {
            self.error_reply(option, REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
        } else if self.tls_active {
            self.error_reply(option, REP_ERR_INVALID, "TLS is already active");
        } else {
            self.reply(option, REP_ACK, &[]);
            self.state = HandshakeState::StartTls;
        }
    }

    fn opt_export_name<C: ExportCatalog + ?Sized>(
        &mut self,
        data: &[u8],
        catalog: &C,
    ) -> Result<(), ProtocolError> {
        // EXPORT_NAME cannot be answered with an error: a bad name means
        // we must terminate the session.
        let info = match std::str::from_utf8(data) {
            Ok(name) if data.len() <= MAX_STRING_LEN => catalog.lookup(name),
            _ => None,
        };
        let Some(info) = info else {
            let name = String::from_utf8_lossy(&data[..data.len().min(MAX_STRING_LEN)]);
            return Err(self.fail(ProtocolError::UnknownExport(name.into_owned())));
        };
        let negotiated = self.negotiated_for(&info);
        self.out.extend_from_slice(&info.size.to_be_bytes());
        self.out
            .extend_from_slice(&negotiated.transmission_flags.to_be_bytes());
        if !self.no_zeroes {
            self.out.extend_from_slice(&[0u8; 124]);
        }
        self.state = HandshakeState::Done(negotiated);
        Ok(())
    }

    fn opt_info_go<C: ExportCatalog + ?Sized>(&mut self, option: u32, data: &[u8], catalog: &C) {
        let Some((name, requests)) = parse_info_request(data) else {
            self.error_reply(
                option,
                REP_ERR_INVALID,
                "malformed NBD_OPT_INFO/NBD_OPT_GO request",
            );
            return;
        };
        let Some(info) = catalog.lookup(name) else {
            self.error_reply(option, REP_ERR_UNKNOWN, "no such export");
            return;
        };
        let negotiated = self.negotiated_for(&info);

        let mut export = Vec::with_capacity(12);
        export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        export.extend_from_slice(&info.size.to_be_bytes());
        export.extend_from_slice(&negotiated.transmission_flags.to_be_bytes());
        self.reply(option, REP_INFO, &export);

        // Always advertised (the spec allows unrequested info). We enforce
        // exactly this for every client, whether it asked or not: any
        // alignment (minimum 1), READ/WRITE payloads up to the maximum
        // (larger ones get EOVERFLOW after their payload is consumed).
        let mut bs = Vec::with_capacity(14);
        bs.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        bs.extend_from_slice(&MIN_BLOCK_SIZE.to_be_bytes());
        bs.extend_from_slice(&PREFERRED_BLOCK_SIZE.to_be_bytes());
        bs.extend_from_slice(&MAX_BLOCK_SIZE.to_be_bytes());
        self.reply(option, REP_INFO, &bs);

        if requests.contains(&INFO_NAME) {
            let mut p = Vec::with_capacity(2 + info.name.len());
            p.extend_from_slice(&INFO_NAME.to_be_bytes());
            p.extend_from_slice(info.name.as_bytes());
            self.reply(option, REP_INFO, &p);
        }
        if requests.contains(&INFO_DESCRIPTION) {
            if let Some(desc) = &info.description {
                let desc = truncate_str(desc, MAX_STRING_LEN);
                let mut p = Vec::with_capacity(2 + desc.len());
                p.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
                p.extend_from_slice(desc.as_bytes());
                self.reply(option, REP_INFO, &p);
            }
        }
        self.reply(option, REP_ACK, &[]);
        if option == OPT_GO {
            self.state = HandshakeState::Done(negotiated);
        }
    }

    fn opt_meta_context<C: ExportCatalog + ?Sized>(
        &mut self,
        option: u32,
        data: &[u8],
        catalog: &C,
    ) {
        let set = option == OPT_SET_META_CONTEXT;
        if set {
            // "Issuing this command replaces all previously-set metadata
            // contexts (including when this command fails)".
            self.meta = None;
        }
        if !self.structured {
            self.error_reply(
                option,
                REP_ERR_INVALID,
                "negotiate NBD_OPT_STRUCTURED_REPLY first",
            );
            return;
        }
        let Some((name, queries)) = parse_meta_request(data) else {
            self.error_reply(option, REP_ERR_INVALID, "malformed meta context request");
            return;
        };
        let Some(info) = catalog.lookup(name) else {
            self.error_reply(option, REP_ERR_UNKNOWN, "no such export");
            return;
        };
        let matched = if set {
            // Only the exact name selects; `base:` alone MUST be ignored by
            // SET, and unknown namespaces are ignored.
            queries.contains(&BASE_ALLOCATION)
        } else {
            // LIST: no queries means "everything"; `base:` is the wildcard
            // for our namespace.
            queries.is_empty()
                || queries
                    .iter()
                    .any(|q| *q == "base:" || *q == BASE_ALLOCATION)
        };
        if matched {
            let id = if set { BASE_ALLOCATION_CONTEXT_ID } else { 0 };
            let mut p = Vec::with_capacity(4 + BASE_ALLOCATION.len());
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.reply(option, REP_META_CONTEXT, &p);
        }
        if set {
            self.meta = Some(MetaSelection {
                export: info.name.clone(),
                base_allocation: matched,
            });
        }
        self.reply(option, REP_ACK, &[]);
    }

    fn negotiated_for(&self, info: &ExportInfo) -> Negotiated {
        let base_allocation_context = match &self.meta {
            Some(m) if self.structured && m.base_allocation && m.export == info.name => {
                Some(BASE_ALLOCATION_CONTEXT_ID)
            }
            _ => None,
        };
        Negotiated {
            export_name: info.name.clone(),
            size: info.size,
            read_only: info.read_only,
            structured_replies: self.structured,
            extended_headers: self.extended,
            base_allocation_context,
            transmission_flags: transmission_flags(info, self.structured),
        }
    }

    fn reply(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        self.out
            .extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        self.out.extend_from_slice(&option.to_be_bytes());
        self.out.extend_from_slice(&reply_type.to_be_bytes());
        self.out
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.out.extend_from_slice(data);
    }

    /// Error replies carry a message "suitable for display to the user"
    /// (nbdinfo and qemu print it), which makes failures self-explaining.
    fn error_reply(&mut self, option: u32, reply_type: u32, message: &str) {
        self.reply(option, reply_type, message.as_bytes());
    }
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn be_u64(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Bounds-checked reader over option data; every accessor returns `None`
/// instead of panicking on short input.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes(b.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.bytes(4)?;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    /// An NBD string: at most [`MAX_STRING_LEN`] bytes of UTF-8.
    fn string(&mut self, len: u32) -> Option<&'a str> {
        let len = usize::try_from(len).ok()?;
        if len > MAX_STRING_LEN {
            return None;
        }
        std::str::from_utf8(self.bytes(len)?).ok()
    }
}

/// `NBD_OPT_INFO`/`NBD_OPT_GO` data: name length, name, request count,
/// requests. Anything short, long or not UTF-8 is `None` (ERR_INVALID).
fn parse_info_request(data: &[u8]) -> Option<(&str, Vec<u16>)> {
    let mut r = Reader { buf: data };
    let name_len = r.u32()?;
    let name = r.string(name_len)?;
    let n = r.u16()?;
    let mut requests = Vec::with_capacity(usize::from(n).min(r.buf.len() / 2));
    for _ in 0..n {
        requests.push(r.u16()?);
    }
    r.buf.is_empty().then_some((name, requests))
}

/// `NBD_OPT_{LIST,SET}_META_CONTEXT` data: export name, query count,
/// length-prefixed queries.
fn parse_meta_request(data: &[u8]) -> Option<(&str, Vec<&str>)> {
    let mut r = Reader { buf: data };
    let name_len = r.u32()?;
    let name = r.string(name_len)?;
    let n = r.u32()?;
    // Each query takes at least 4 bytes, which bounds the allocation.
    let mut queries = Vec::with_capacity((n as usize).min(r.buf.len() / 4));
    for _ in 0..n {
        let len = r.u32()?;
        queries.push(r.string(len)?);
    }
    r.buf.is_empty().then_some((name, queries))
}

/// Longest prefix of `s` that fits in `max` bytes without splitting a char.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Catalog;

    impl ExportCatalog for Catalog {
        fn list(&self) -> Vec<String> {
            vec!["disk".into(), "ro".into()]
        }
        fn lookup(&self, name: &str) -> Option<ExportInfo> {
            match name {
                "disk" | "" => Some(ExportInfo {
                    name: "disk".into(),
                    size: 1 << 20,
                    read_only: false,
                    description: Some("test disk".into()),
                }),
                "ro" => Some(ExportInfo {
                    name: "ro".into(),
                    size: 1 << 16,
                    read_only: true,
                    description: None,
                }),
                _ => None,
            }
        }
    }

    const FLAGS_BOTH: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

    fn opt(option: u32, data: &[u8]) -> Vec<u8> {
        let mut v = IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn info_data(name: &str, reqs: &[u16]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            v.extend_from_slice(&r.to_be_bytes());
        }
        v
    }

    fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            v.extend_from_slice(&(q.len() as u32).to_be_bytes());
            v.extend_from_slice(q.as_bytes());
        }
        v
    }

    fn client(flags: u32, opts: &[Vec<u8>]) -> Vec<u8> {
        let mut v = flags.to_be_bytes().to_vec();
        for o in opts {
            v.extend_from_slice(o);
        }
        v
    }

    /// Decoded option reply: (option, reply type, data).
    type Rep = (u32, u32, Vec<u8>);

    fn parse_replies(mut out: &[u8]) -> Vec<Rep> {
        let mut reps = Vec::new();
        while !out.is_empty() {
            assert!(out.len() >= 20, "truncated reply: {out:?}");
            assert_eq!(
                u64::from_be_bytes(out[0..8].try_into().unwrap()),
                OPTION_REPLY_MAGIC
            );
            let option = u32::from_be_bytes(out[8..12].try_into().unwrap());
            let ty = u32::from_be_bytes(out[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
            reps.push((option, ty, out[20..20 + len].to_vec()));
            out = &out[20 + len..];
        }
        reps
    }

    /// Feed everything at once; returns (result, consumed, output).
    fn run(input: &[u8]) -> (Handshake, Result<usize, ProtocolError>, Vec<u8>) {
        let mut hs = Handshake::new();
        let r = hs.feed(input, &Catalog);
        let out = hs.take_output();
        (hs, r, out)
    }

    /// Drive like a real caller receiving one byte per read: keep a buffer,
    /// drop what was consumed. Returns (handshake, total consumed, output).
    fn run_bytewise(input: &[u8]) -> (Handshake, Result<usize, ProtocolError>, Vec<u8>) {
        let mut hs = Handshake::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        for &b in input {
            buf.push(b);
            match hs.feed(&buf, &Catalog) {
                Ok(n) => {
                    consumed += n;
                    buf.drain(..n);
                }
                Err(e) => {
                    out.extend(hs.take_output());
                    return (hs, Err(e), out);
                }
            }
            out.extend(hs.take_output());
            if hs.is_finished() {
                break;
            }
        }
        (hs, Ok(consumed), out)
    }

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_and_flags() {
        let g = Handshake::new().greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 0b11);
    }

    fn full_go_input() -> Vec<u8> {
        client(
            FLAGS_BOTH,
            &[
                opt(OPT_STRUCTURED_REPLY, &[]),
                opt(OPT_SET_META_CONTEXT, &meta_data("disk", &[BASE_ALLOCATION])),
                opt(
                    OPT_GO,
                    &info_data("disk", &[INFO_NAME, INFO_BLOCK_SIZE, INFO_DESCRIPTION]),
                ),
            ],
        )
    }

    #[test]
    fn extended_headers_imply_structured_replies() {
        let input = client(
            FLAGS_BOTH,
            &[
                opt(OPT_EXTENDED_HEADERS, &[]),
                opt(OPT_STRUCTURED_REPLY, &[]),
                opt(OPT_EXTENDED_HEADERS, b"x"),
                opt(OPT_SET_META_CONTEXT, &meta_data("disk", &[BASE_ALLOCATION])),
                opt(OPT_GO, &info_data("disk", &[])),
            ],
        );
        let (hs, r, out) = run(&input);
        assert_eq!(r, Ok(input.len()));
        let reps = parse_replies(&out);
        assert_eq!(reps[0], (OPT_EXTENDED_HEADERS, REP_ACK, vec![]));
        assert_eq!(reps[1].0, OPT_STRUCTURED_REPLY);
        assert_eq!(reps[1].1, REP_ERR_EXT_HEADER_REQD);
        assert_eq!(reps[2].1, REP_ERR_INVALID);
        // Meta contexts work: structured replies are implied.
        assert_eq!(reps[3].1, REP_META_CONTEXT);
        let n = hs.negotiated().expect("in transmission");
        assert!(n.extended_headers && n.structured_replies);
        assert_eq!(n.base_allocation_context, Some(BASE_ALLOCATION_CONTEXT_ID));
        assert_ne!(n.transmission_flags & FLAG_SEND_CACHE, 0);
        // Without the option nothing changes.
        let (hs, _, _) = run(&full_go_input());
        assert!(!hs.negotiated().expect("done").extended_headers);
        // A driver that does not speak them refuses the option.
        let mut hs = Handshake::without_extended_headers();
        let input = client(FLAGS_BOTH, &[opt(OPT_EXTENDED_HEADERS, &[])]);
        assert_eq!(hs.feed(&input, &Catalog), Ok(input.len()));
        let reps = parse_replies(&hs.take_output());
        assert_eq!(reps[0].1, REP_ERR_UNSUP);
    }

    #[test]
    fn go_with_structured_replies_and_base_allocation() {
        let input = full_go_input();
        let (hs, r, out) = run(&input);
        assert_eq!(r, Ok(input.len()));
        let reps = parse_replies(&out);
        assert_eq!(reps[0], (OPT_STRUCTURED_REPLY, REP_ACK, vec![]));
        let mut mc = BASE_ALLOCATION_CONTEXT_ID.to_be_bytes().to_vec();
        mc.extend_from_slice(BASE_ALLOCATION.as_bytes());
        assert_eq!(reps[1], (OPT_SET_META_CONTEXT, REP_META_CONTEXT, mc));
        assert_eq!(reps[2], (OPT_SET_META_CONTEXT, REP_ACK, vec![]));
        let infos: Vec<&Rep> = reps[3..].iter().filter(|r| r.1 == REP_INFO).collect();
        let flags = FLAG_HAS_FLAGS
            | FLAG_SEND_FLUSH
            | FLAG_SEND_FUA
            | FLAG_SEND_TRIM
            | FLAG_SEND_WRITE_ZEROES
            | FLAG_SEND_FAST_ZERO
            | FLAG_CAN_MULTI_CONN
            | FLAG_SEND_CACHE
            | FLAG_SEND_DF;
        let mut export = INFO_EXPORT.to_be_bytes().to_vec();
        export.extend_from_slice(&(1u64 << 20).to_be_bytes());
        export.extend_from_slice(&flags.to_be_bytes());
        assert!(infos.iter().any(|r| r.2 == export), "{infos:?}");
        let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [1u32, 4096, 64 << 20] {
            bs.extend_from_slice(&v.to_be_bytes());
        }
        assert!(infos.iter().any(|r| r.2 == bs));
        let mut name = INFO_NAME.to_be_bytes().to_vec();
        name.extend_from_slice(b"disk");
        assert!(infos.iter().any(|r| r.2 == name));
        let mut desc = INFO_DESCRIPTION.to_be_bytes().to_vec();
        desc.extend_from_slice(b"test disk");
        assert!(infos.iter().any(|r| r.2 == desc));
        assert_eq!(infos.len(), 4);
        assert_eq!(reps.last().unwrap(), &(OPT_GO, REP_ACK, vec![]));
        assert_eq!(
            hs.negotiated(),
            Some(&Negotiated {
                export_name: "disk".into(),
                size: 1 << 20,
                read_only: false,
                structured_replies: true,
                extended_headers: false,
                base_allocation_context: Some(BASE_ALLOCATION_CONTEXT_ID),
                transmission_flags: flags,
            })
        );
    }

    #[test]
    fn byte_at_a_time_matches_bulk_feeding() {
        let inputs = [
            full_go_input(),
            client(
                FLAG_C_FIXED_NEWSTYLE,
                &[
                    opt(OPT_LIST, &[]),
                    opt(99, b"junk"),
                    opt(OPT_INFO, &info_data("nope", &[])),
                    opt(OPT_EXPORT_NAME, b"ro"),
                ],
            ),
            client(FLAGS_BOTH, &[opt(OPT_ABORT, &[])]),
            client(
                FLAGS_BOTH,
                &[opt(OPT_LIST, &[]), opt(OPT_EXPORT_NAME, b"missing")],
            ),
        ];
        for input in inputs {
            let (hs_a, ra, out_a) = run(&input);
            let (hs_b, rb, out_b) = run_bytewise(&input);
            assert_eq!(ra, rb);
            assert_eq!(out_a, out_b);
            assert_eq!(hs_a.state(), hs_b.state());
        }
    }

    #[test]
    fn export_name_with_and_without_no_zeroes() {
        for (flags, zeroes) in [(FLAGS_BOTH, 0usize), (FLAG_C_FIXED_NEWSTYLE, 124), (0, 124)] {
            let input = client(flags, &[opt(OPT_EXPORT_NAME, b"disk")]);
            let (hs, r, out) = run(&input);
            assert_eq!(r, Ok(input.len()));
            assert_eq!(out.len(), 8 + 2 + zeroes);
            assert_eq!(u64::from_be_bytes(out[0..8].try_into().unwrap()), 1 << 20);
            let flags = u16::from_be_bytes([out[8], out[9]]);
            assert_eq!(flags & FLAG_SEND_DF, 0, "no DF without structured replies");
            assert!(out[10..].iter().all(|&b| b == 0));
            let n = hs.negotiated().unwrap();
            assert!(!n.structured_replies);
            assert_eq!(n.base_allocation_context, None);
        }
    }

    #[test]
    fn export_name_default_export_uses_canonical_name() {
        let (hs, _, _) = run(&client(FLAGS_BOTH, &[opt(OPT_EXPORT_NAME, b"")]));
        assert_eq!(hs.negotiated().unwrap().export_name, "disk");
    }

    #[test]
    fn export_name_unknown_closes() {
        let (hs, r, out) = run(&client(FLAGS_BOTH, &[opt(OPT_EXPORT_NAME, b"nope")]));
        assert_eq!(r, Err(ProtocolError::UnknownExport("nope".into())));
        assert!(out.is_empty());
        assert_eq!(
            hs.state(),
            &HandshakeState::Closed(CloseReason::ProtocolViolation)
        );
    }

    #[test]
    fn abort_acks_and_closes() {
        let mut input = client(FLAGS_BOTH, &[opt(OPT_ABORT, b"ignored data")]);
        input.extend_from_slice(&opt(OPT_LIST, &[]));
        let (mut hs, r, out) = run(&input);
        // The LIST after ABORT is not consumed.
        assert_eq!(r, Ok(input.len() - OPTION_HEADER_LEN));
        assert_eq!(parse_replies(&out), vec![(OPT_ABORT, REP_ACK, vec![])]);
        assert_eq!(hs.state(), &HandshakeState::Closed(CloseReason::Aborted));
        assert_eq!(hs.feed(&opt(OPT_LIST, &[]), &Catalog), Ok(0));
    }

    #[test]
    fn unknown_options_get_err_unsup_and_haggling_continues() {
        let input = client(
            FLAGS_BOTH,
            &[
                opt(99, b"whatever"),
                opt(OPT_STARTTLS, &[]),
                opt(OPT_PEEK_EXPORT, &[]),
                opt(OPT_EXPORT_NAME, b"disk"),
            ],
        );
        let (hs, r, out) = run(&input);
        assert_eq!(r, Ok(input.len()));
        let reps = parse_replies(&out[..out.len() - 10]);
        let got: Vec<(u32, u32)> = reps.iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            got,
            vec![
                (99, REP_ERR_UNSUP),
                (OPT_STARTTLS, REP_ERR_UNSUP),
                (OPT_PEEK_EXPORT, REP_ERR_UNSUP),
            ]
        );
        assert!(hs.negotiated().is_some());
    }

    #[test]
    fn malformed_lengths_get_err_invalid() {
        let mut short_go = info_data("disk", &[INFO_NAME]);
        short_go.pop(); // request list cut short
        let mut long_go = info_data("disk", &[]);
        long_go.push(0); // trailing byte
        let mut name_overrun = 100u32.to_be_bytes().to_vec();
        name_overrun.extend_from_slice(b"disk\0\0");
        let mut meta_overrun = meta_data("disk", &[BASE_ALLOCATION]);
        meta_overrun.truncate(meta_overrun.len() - 3);
        let mut meta_trailing = meta_data("disk", &[]);
        meta_trailing.extend_from_slice(b"xx");
        let mut bad_utf8 = info_data("disk", &[]);
        bad_utf8[4] = 0xff;
        let huge_name = info_data(&"a".repeat(MAX_STRING_LEN + 1), &[]);
        let cases: Vec<(u32, Vec<u8>)> = vec![
            (OPT_LIST, b"x".to_vec()),
            (OPT_STRUCTURED_REPLY, b"x".to_vec()),
            (OPT_GO, vec![]),
            (OPT_GO, vec![0, 0, 0, 0, 0]),
            (OPT_GO, short_go),
            (OPT_INFO, long_go),
            (OPT_INFO, name_overrun),
            (OPT_GO, bad_utf8),
            (OPT_GO, huge_name),
            (OPT_SET_META_CONTEXT, meta_overrun),
            (OPT_LIST_META_CONTEXT, meta_trailing),
            (OPT_SET_META_CONTEXT, vec![0, 0]),
        ];
        for (option, data) in cases {
            // Structured replies first so meta-context cases reach parsing.
            let input = client(
                FLAGS_BOTH,
                &[opt(OPT_STRUCTURED_REPLY, &[]), opt(option, &data)],
            );
            let (hs, r, out) = run(&input);
            assert_eq!(r, Ok(input.len()), "option {option}");
            let reps = parse_replies(&out);
            assert_eq!(reps.len(), 2, "option {option}: {reps:?}");
            assert_eq!(
                (reps[1].0, reps[1].1),
                (option, REP_ERR_INVALID),
                "{data:?}"
            );
            assert_eq!(hs.state(), &HandshakeState::Haggling);
        }
    }

    #[test]
    fn info_and_go_on_unknown_export_get_err_unknown() {
        let input = client(
            FLAGS_BOTH,
            &[
                opt(OPT_INFO, &info_data("nope", &[])),
                opt(OPT_GO, &info_data("nope", &[])),
                opt(OPT_INFO, &info_data("ro", &[])),
                opt(OPT_GO, &info_data("", &[INFO_NAME])),
            ],
        );
        let (hs, r, out) = run(&input);
        assert_eq!(r, Ok(input.len()));
        let reps = parse_replies(&out);
        assert_eq!((reps[0].0, reps[0].1), (OPT_INFO, REP_ERR_UNKNOWN));
        assert_eq!((reps[1].0, reps[1].1), (OPT_GO, REP_ERR_UNKNOWN));
        // INFO on "ro" answers but does not end the handshake.
        let ro: Vec<&Rep> = reps.iter().filter(|r| r.0 == OPT_INFO).skip(1).collect();
        assert_eq!(ro.last().unwrap().1, REP_ACK);
        let ro_export = ro
            .iter()
            .find(|r| r.2[..2] == INFO_EXPORT.to_be_bytes())
            .unwrap();
        let ro_flags = u16::from_be_bytes([ro_export.2[10], ro_export.2[11]]);
        assert_eq!(
            ro_flags,
            FLAG_HAS_FLAGS
                | FLAG_READ_ONLY
                | FLAG_SEND_FLUSH
                | FLAG_CAN_MULTI_CONN
                | FLAG_SEND_CACHE
        );
        // GO "" selects the default export and reports its canonical name.
        let mut name = INFO_NAME.to_be_bytes().to_vec();
        name.extend_from_slice(b"disk");
        assert!(reps
            .iter()
            .any(|r| r.0 == OPT_GO && r.1 == REP_INFO && r.2 == name));
        assert_eq!(hs.negotiated().unwrap().export_name, "disk");
    }

    #[test]
    fn list_names_every_export() {
        let (_, _, out) = run(&client(FLAGS_BOTH, &[opt(OPT_LIST, &[])]));
        let reps = parse_replies(&out);
        let mut disk = 4u32.to_be_bytes().to_vec();
        disk.extend_from_slice(b"disktest disk");
        let mut ro = 2u32.to_be_bytes().to_vec();
        ro.extend_from_slice(b"ro");
        assert_eq!(
            reps,
            vec![
                (OPT_LIST, REP_SERVER, disk),
                (OPT_LIST, REP_SERVER, ro),
                (OPT_LIST, REP_ACK, vec![]),
            ]
        );
    }

    fn meta_names(reps: &[Rep]) -> Vec<(u32, String)> {
        reps.iter()
            .filter(|r| r.1 == REP_META_CONTEXT)
            .map(|r| {
                (
                    u32::from_be_bytes(r.2[0..4].try_into().unwrap()),
                    String::from_utf8(r.2[4..].to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn list_meta_context_queries() {
        let cases: Vec<(Vec<&str>, bool)> = vec![
            (vec![], true),
            (vec!["base:"], true),
            (vec![BASE_ALLOCATION], true),
            (vec!["qemu:dirty-bitmap:x"], false),
            (vec!["base:nonsense"], false),
            (vec!["x-foo:", "base:allocation", "base:"], true),
        ];
        for (queries, found) in cases {
            let input = client(
                FLAGS_BOTH,
                &[
                    opt(OPT_STRUCTURED_REPLY, &[]),
                    opt(OPT_LIST_META_CONTEXT, &meta_data("disk", &queries)),
                ],
            );
            let (_, _, out) = run(&input);
            let reps = parse_replies(&out);
            let names = meta_names(&reps);
            if found {
                assert_eq!(names, vec![(0, BASE_ALLOCATION.to_string())], "{queries:?}");
            } else {
                assert!(names.is_empty(), "{queries:?}");
            }
            assert_eq!(reps.last().unwrap().1, REP_ACK);
        }
    }

    #[test]
    fn meta_context_requires_structured_replies() {
        for option in [OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT] {
            let input = client(
                FLAGS_BOTH,
                &[
                    opt(option, &meta_data("disk", &[BASE_ALLOCATION])),
                    opt(OPT_GO, &info_data("disk", &[])),
                ],
            );
            let (hs, _, out) = run(&input);
            let reps = parse_replies(&out);
            assert_eq!((reps[0].0, reps[0].1), (option, REP_ERR_INVALID));
            assert_eq!(hs.negotiated().unwrap().base_allocation_context, None);
        }
    }

    #[test]
    fn set_meta_context_selection_rules() {
        // (queries for SET, export of SET, export of GO, context replied,
        // selected for transmission)
        let cases: Vec<(Vec<&str>, &str, &str, bool, bool)> = vec![
            (vec![BASE_ALLOCATION], "disk", "disk", true, true),
            (vec![BASE_ALLOCATION], "", "disk", true, true), // same canonical export
            (vec![BASE_ALLOCATION], "ro", "disk", true, false), // other export
            (vec![], "disk", "disk", false, false),
            (vec!["base:"], "disk", "disk", false, false),
            (vec!["qemu:allocation-depth"], "disk", "disk", false, false),
            (
                vec![BASE_ALLOCATION, BASE_ALLOCATION],
                "disk",
                "disk",
                true,
                true,
            ),
        ];
        for (queries, set_export, go_export, replied, selected) in cases {
            let input = client(
                FLAGS_BOTH,
                &[
                    opt(OPT_STRUCTURED_REPLY, &[]),
                    opt(OPT_SET_META_CONTEXT, &meta_data(set_export, &queries)),
                    opt(OPT_GO, &info_data(go_export, &[])),
                ],
            );
            let (hs, r, out) = run(&input);
            assert_eq!(r, Ok(input.len()));
            let reps = parse_replies(&out);
            let names = meta_names(&reps);
            let want: Vec<(u32, String)> = if replied {
                vec![(BASE_ALLOCATION_CONTEXT_ID, BASE_ALLOCATION.to_string())]
            } else {
                vec![]
            };
            assert_eq!(names, want, "{queries:?}");
            assert_eq!(
                hs.negotiated().unwrap().base_allocation_context.is_some(),
                selected,
                "{queries:?} {set_export} {go_export}"
            );
        }
    }

    #[test]
    fn failed_set_meta_context_clears_previous_selection() {
        let input = client(
            FLAGS_BOTH,
            &[
                opt(OPT_STRUCTURED_REPLY, &[]),
                opt(OPT_SET_META_CONTEXT, &meta_data("disk", &[BASE_ALLOCATION])),
                opt(OPT_SET_META_CONTEXT, &meta_data("nope", &[BASE_ALLOCATION])),
                opt(OPT_GO, &info_data("disk", &[])),
            ],
        );
        let (hs, _, out) = run(&input);
        let reps = parse_replies(&out);
        assert!(reps
            .iter()
            .any(|r| r.0 == OPT_SET_META_CONTEXT && r.1 == REP_ERR_UNKNOWN));
        assert_eq!(hs.negotiated().unwrap().base_allocation_context, None);
    }

    #[test]
    fn bad_option_magic_closes() {
        let mut input = FLAGS_BOTH.to_be_bytes().to_vec();
        input.extend_from_slice(b"GARBAGE!GARBAGE!GARBAGE!");
        let (hs, r, out) = run(&input);
        assert!(matches!(r, Err(ProtocolError::BadOptionMagic(_))));
        assert!(out.is_empty());
        assert!(hs.is_finished());
        // Detected byte by byte after the 8 magic bytes, without a full header.
        let (_, r, _) = run_bytewise(&input[..4 + 8]);
        assert!(matches!(r, Err(ProtocolError::BadOptionMagic(_))));
    }

    #[test]
    fn bad_client_flags_close() {
        for flags in [1u32 << 2, 0xffff_ffff, 1 << 31] {
            let (hs, r, _) = run(&flags.to_be_bytes());
            assert_eq!(r, Err(ProtocolError::BadClientFlags(flags)));
            assert!(hs.is_finished());
        }
    }

    #[test]
    fn oversized_option_closes_from_header_alone() {
        let mut input = FLAGS_BOTH.to_be_bytes().to_vec();
        input.extend_from_slice(&IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&OPT_GO.to_be_bytes());
        input.extend_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
        let (hs, r, _) = run(&input);
        assert_eq!(
            r,
            Err(ProtocolError::OptionTooLarge {
                option: OPT_GO,
                len: MAX_OPTION_LEN + 1,
                max: MAX_OPTION_LEN
            })
        );
        assert!(hs.is_finished());
        // Exactly the cap is fine (and answered, here with ERR_UNSUP).
        let input = client(
            FLAGS_BOTH,
            &[opt(1234, &vec![0u8; MAX_OPTION_LEN as usize])],
        );
        let (_, r, out) = run(&input);
        assert_eq!(r, Ok(input.len()));
        assert_eq!(parse_replies(&out)[0].1, REP_ERR_UNSUP);
    }

    #[test]
    fn partial_input_consumes_nothing_until_complete() {
        let input = client(FLAGS_BOTH, &[opt(OPT_LIST, &[])]);
        let mut hs = Handshake::new();
        assert_eq!(hs.feed(&input[..3], &Catalog), Ok(0));
        assert_eq!(hs.feed(&input[..4], &Catalog), Ok(4));
        assert_eq!(hs.feed(&input[4..19], &Catalog), Ok(0));
        assert!(!hs.has_output());
        assert_eq!(hs.feed(&input[4..], &Catalog), Ok(16));
        assert!(hs.has_output());
    }

    #[test]
    fn bytes_after_go_are_left_for_transmission() {
        let mut input = client(FLAGS_BOTH, &[opt(OPT_GO, &info_data("disk", &[]))]);
        let hs_len = input.len();
        input.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        input.extend_from_slice(&[0u8; 24]);
        let (hs, r, _) = run(&input);
        assert_eq!(r, Ok(hs_len));
        assert!(hs.negotiated().is_some());
    }

    #[test]
    fn random_input_never_panics() {
        // Deterministic xorshift so failures reproduce.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut input = FLAGS_BOTH.to_be_bytes().to_vec();
            let len = (next() % 64) as usize;
            // Mostly well-formed option headers with random option codes and
            // lengths, so parsing of option bodies gets exercised.
            input.extend_from_slice(&IHAVEOPT.to_be_bytes());
            input.extend_from_slice(&((next() % 13) as u32).to_be_bytes());
            input.extend_from_slice(&(len as u32).to_be_bytes());
            for _ in 0..len {
                input.push(next() as u8);
            }
            let mut hs = Handshake::new();
            let _ = hs.feed(&input, &Catalog);
            let _ = hs.take_output();
        }
    }

    #[test]
    fn read_only_export_flags() {
        let ro = Catalog.lookup("ro").unwrap();
        assert_eq!(
            transmission_flags(&ro, true),
            FLAG_HAS_FLAGS
                | FLAG_READ_ONLY
                | FLAG_SEND_FLUSH
                | FLAG_CAN_MULTI_CONN
                | FLAG_SEND_CACHE
                | FLAG_SEND_DF
        );
    }

    // --- TLS (STARTTLS) -------------------------------------------------------

    #[test]
    fn tls_required_refuses_options_before_starttls_without_revealing_names() {
        let mut hs = Handshake::with_tls(TlsPolicy::Required);
        let input = client(
            FLAGS_BOTH,
            &[
                opt(OPT_LIST, &[]),
                opt(OPT_STRUCTURED_REPLY, &[]),
                opt(OPT_GO, &info_data("disk", &[])),
            ],
        );
        assert_eq!(hs.feed(&input, &Catalog).unwrap(), input.len());
        let reps = parse_replies(&hs.take_output());
        assert_eq!(reps.len(), 3);
        for (r, o) in reps.iter().zip([OPT_LIST, OPT_STRUCTURED_REPLY, OPT_GO]) {
            assert_eq!((r.0, r.1), (o, REP_ERR_TLS_REQD));
            assert!(!String::from_utf8_lossy(&r.2).contains("disk"));
        }
        assert_eq!(*hs.state(), HandshakeState::Haggling);
        // EXPORT_NAME cannot be refused with a reply: hang up.
        let r = hs.feed(&opt(OPT_EXPORT_NAME, b"disk"), &Catalog);
        assert_eq!(r, Err(ProtocolError::TlsRequired));
    }

    #[test]
    fn starttls_hands_over_and_haggling_resumes_afresh() {
        let mut hs = Handshake::with_tls(TlsPolicy::Required);
        let mut input = client(FLAGS_BOTH, &[opt(OPT_STARTTLS, &[])]);
        let tls_start = input.len();
        input.extend_from_slice(b"\x16\x03\x01 client hello bytes");
        assert_eq!(hs.feed(&input, &Catalog).unwrap(), tls_start);
        assert_eq!(*hs.state(), HandshakeState::StartTls);
        assert_eq!(
            parse_replies(&hs.take_output()),
            vec![(OPT_STARTTLS, REP_ACK, vec![])]
        );
        // Nothing is parsed while the driver runs the TLS handshake.
        assert_eq!(hs.feed(&input[tls_start..], &Catalog).unwrap(), 0);
        hs.tls_started();
        assert!(hs.tls_active());
        let input = [
            opt(OPT_STARTTLS, &[]),
            opt(OPT_LIST, &[]),
            opt(OPT_GO, &info_data("disk", &[])),
        ]
        .concat();
        assert_eq!(hs.feed(&input, &Catalog).unwrap(), input.len());
        let reps = parse_replies(&hs.take_output());
        assert_eq!((reps[0].0, reps[0].1), (OPT_STARTTLS, REP_ERR_INVALID));
        assert!(reps.iter().any(|r| r.1 == REP_SERVER));
        let n = hs.negotiated().expect("GO over TLS");
        assert!(!n.structured_replies);
    }

    #[test]
    fn starttls_state_from_before_tls_is_forgotten() {
        let mut hs = Handshake::with_tls(TlsPolicy::Optional);
        let input = client(
            FLAGS_BOTH,
            &[opt(OPT_STRUCTURED_REPLY, &[]), opt(OPT_STARTTLS, &[])],
        );
        hs.feed(&input, &Catalog).unwrap();
        assert_eq!(*hs.state(), HandshakeState::StartTls);
        hs.tls_started();
        hs.feed(&opt(OPT_GO, &info_data("disk", &[])), &Catalog)
            .unwrap();
        assert!(!hs.negotiated().expect("done").structured_replies);
    }

    #[test]
    fn starttls_with_data_or_without_tls_is_refused() {
        let mut hs = Handshake::with_tls(TlsPolicy::Optional);
        let input = client(FLAGS_BOTH, &[opt(OPT_STARTTLS, b"x")]);
        hs.feed(&input, &Catalog).unwrap();
        let reps = parse_replies(&hs.take_output());
        assert_eq!(reps[0].1, REP_ERR_INVALID);
        assert_eq!(*hs.state(), HandshakeState::Haggling);

        let (hs, _, out) = run(&client(FLAGS_BOTH, &[opt(OPT_STARTTLS, &[])]));
        assert_eq!(parse_replies(&out)[0].1, REP_ERR_UNSUP);
        assert_eq!(*hs.state(), HandshakeState::Haggling);
    }
}
