//! Wire constants and small wire types of the NBD protocol.
//!
//! This file owns every number that appears on the wire — magics, flag bits,
//! option/reply/info codes, command codes, structured reply types and the
//! protocol's own errno values — plus the typed [`Errno`] and [`Command`]
//! enums and the [`ProtocolError`] used by the rest of `nbd`. Values follow
//! NetworkBlockDevice `doc/proto.md`; everything on the wire is big-endian.
//!
//! Nothing here does I/O or keeps state.

use thiserror::Error;

// ---------------------------------------------------------------------------
// Magics
// ---------------------------------------------------------------------------

/// First 8 bytes the server sends: ASCII `NBDMAGIC`.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Newstyle magic (ASCII `IHAVEOPT`): sent by the server after `NBDMAGIC`
/// and by the client in front of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic in front of every fixed-newstyle option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Magic of a request with extended headers (32 bytes, 64-bit length).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Magic of an extended reply chunk (32 bytes, 64-bit length); once
/// extended headers are negotiated every reply uses it.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

// ---------------------------------------------------------------------------
// Handshake flags (server, 16 bits) and client flags (32 bits)
// ---------------------------------------------------------------------------

/// Server supports fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client asks us to omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// ---------------------------------------------------------------------------
// Options (client -> server during haggling)
// ---------------------------------------------------------------------------

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_PEEK_EXPORT: u32 = 4;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// ---------------------------------------------------------------------------
// Option reply types (server -> client)
// ---------------------------------------------------------------------------

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks every error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;
/// The option needs extended headers (or, for `NBD_OPT_STRUCTURED_REPLY`:
/// extended headers are already on and imply structured replies).
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_FLAG_ERROR | 10;

// ---------------------------------------------------------------------------
// Info types (inside NBD_REP_INFO, requested by NBD_OPT_INFO / NBD_OPT_GO)
// ---------------------------------------------------------------------------

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------------------------------
// Transmission flags (16 bits, per export)
// ---------------------------------------------------------------------------

pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---------------------------------------------------------------------------
// Commands and command flags
// ---------------------------------------------------------------------------

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Extended headers only: `length` is the length of a payload that follows
/// the header (set by clients on commands other than WRITE only if the
/// server advertised it; we do not, but we still consume the payload).
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// ---------------------------------------------------------------------------
// Structured replies
// ---------------------------------------------------------------------------

/// Structured reply flag: this chunk is the last one of its reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;

pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// BLOCK_STATUS with 64-bit extent lengths and flags: the only block status
/// reply allowed once extended headers are negotiated.
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
/// Bit 15 marks every error chunk type.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR | 2;

/// `base:allocation` extent flag: the extent is not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` extent flag: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// Name of the only metadata context we serve.
pub const BASE_ALLOCATION: &str = "base:allocation";

// ---------------------------------------------------------------------------
// Sizes and limits
// ---------------------------------------------------------------------------

/// Length of the server greeting (`NBDMAGIC`, `IHAVEOPT`, handshake flags).
pub const GREETING_LEN: usize = 8 + 8 + 2;
/// Length of the client's flags field.
pub const CLIENT_FLAGS_LEN: usize = 4;
/// Length of an option header (magic, option, data length).
pub const OPTION_HEADER_LEN: usize = 8 + 4 + 4;
/// Length of the transmission request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Length of a request header with extended headers.
pub const EXTENDED_REQUEST_HEADER_LEN: usize = 32;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const STRUCTURED_REPLY_HEADER_LEN: usize = 20;
/// Length of an extended reply chunk header.
pub const EXTENDED_REPLY_HEADER_LEN: usize = 32;

/// Advertised minimum block size: 1, any byte offset and length. The
/// engine serves unaligned ranges by read-modify-write of the chunks they
/// touch (under each chunk's write lock), so we enforce no alignment, which
/// is also what the spec asks of a server whose client negotiated no block
/// size.
pub const MIN_BLOCK_SIZE: u32 = 1;
/// Advertised preferred block size: our physical block, below which writes
/// turn into read-modify-write.
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Advertised maximum block size (payload) of READ and WRITE: 64 MiB. Every
/// buffer byte in flight is charged to the server's memory budget, so a
/// large request waits for room rather than growing the process.
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024 * 1024;
/// Bytes of an oversized WRITE payload we read and throw away to answer
/// it with an error: anything longer ends the connection. 4 GiB - 1, the
/// most a compact header can announce; only extended headers can exceed it.
pub const MAX_DISCARD_LEN: u64 = u32::MAX as u64;
/// Largest option payload we accept during haggling. Real options are at
/// most a few KiB (names are capped at 4096 bytes); anything bigger is a
/// client trying to make us buffer without bound, and we hang up.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Maximum length of an NBD string (export names, messages, queries).
pub const MAX_STRING_LEN: usize = 4096;

// ---------------------------------------------------------------------------
// Typed values
// ---------------------------------------------------------------------------

/// The protocol's own error numbers (not the host's errno values, although
/// they agree on Linux). Sent in simple replies and in error chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[repr(u32)]
pub enum Errno {
    #[error("EPERM: operation not permitted")]
    Perm = 1,
    #[error("EIO: input/output error")]
    Io = 5,
    #[error("ENOMEM: cannot allocate memory")]
    NoMem = 12,
    #[error("EINVAL: invalid argument")]
    Inval = 22,
    #[error("ENOSPC: no space left on device")]
    NoSpc = 28,
    #[error("EOVERFLOW: value too large")]
    Overflow = 75,
    #[error("ENOTSUP: operation not supported")]
    NotSup = 95,
    #[error("ESHUTDOWN: server is shutting down")]
    Shutdown = 108,
}

impl Errno {
    /// The value that goes on the wire.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Decode a wire value; unknown values are `None` (clients treat those
    /// as `EINVAL`).
    pub const fn from_code(code: u32) -> Option<Errno> {
        Some(match code {
            1 => Errno::Perm,
            5 => Errno::Io,
            12 => Errno::NoMem,
            22 => Errno::Inval,
            28 => Errno::NoSpc,
            75 => Errno::Overflow,
            95 => Errno::NotSup,
            108 => Errno::Shutdown,
            _ => return None,
        })
    }
}

/// A transmission command. Unknown codes are kept (not rejected at parse
/// time) because the spec wants an `EINVAL` reply and the connection to go
/// on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    /// `NBD_CMD_CACHE`: a hint to prefetch a range.
    Cache,
    WriteZeroes,
    BlockStatus,
    /// Any other code.
    Unknown(u16),
}

impl Command {
    pub const fn from_code(code: u16) -> Command {
        match code {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    pub const fn code(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::Cache => CMD_CACHE,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
            Command::Unknown(c) => c,
        }
    }

    /// Commands that modify the export (refused with `EPERM` on read-only
    /// exports).
    pub const fn is_write(self) -> bool {
        matches!(self, Command::Write | Command::Trim | Command::WriteZeroes)
    }
}

/// A violation that ends the connection (hard disconnect). Everything the
/// spec lets us answer with an error reply is *not* a `ProtocolError`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The client set flag bits we did not advertise; the spec says drop it.
    #[error("client sent unknown handshake flags {0:#x}")]
    BadClientFlags(u32),
    /// An option did not start with `IHAVEOPT`: we are out of sync.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// Option data longer than [`MAX_OPTION_LEN`].
    #[error("option {option} carries {len} bytes, more than the {max} we accept")]
    OptionTooLarge { option: u32, len: u32, max: u32 },
    /// `NBD_OPT_EXPORT_NAME` cannot be answered with an error, only by
    /// hanging up.
    #[error("NBD_OPT_EXPORT_NAME asked for unknown export {0:?}")]
    UnknownExport(String),
    /// `NBD_OPT_EXPORT_NAME` before STARTTLS on a server that requires
    /// TLS: it cannot be refused with an error reply, only by hanging up.
    #[error("NBD_OPT_EXPORT_NAME sent before TLS on a server that requires TLS")]
    TlsRequired,
    /// A request did not start with `NBD_REQUEST_MAGIC`.
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    /// A payload longer than [`MAX_DISCARD_LEN`] (only extended headers
    /// can announce one): not worth reading just to refuse it.
    #[error("payload of {len} bytes exceeds the {max} bytes we would read to refuse it")]
    PayloadTooLarge { len: u64, max: u64 },
}
