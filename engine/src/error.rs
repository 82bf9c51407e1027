//! The engine's error type: every failure names what failed and where.

use std::fmt;

/// Which on-disk structure a corruption was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    PoolHeader,
    Catalog,
    Superblock,
    Bitmap,
    BtreeNode,
    LogBlock,
    LogRecord,
    ChunkData,
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Structure::PoolHeader => "pool header",
            Structure::Catalog => "volume catalog",
            Structure::Superblock => "zone superblock",
            Structure::Bitmap => "free-space bitmap",
            Structure::BtreeNode => "b+tree node",
            Structure::LogBlock => "intent log block",
            Structure::LogRecord => "intent log record",
            Structure::ChunkData => "chunk data",
        };
        f.write_str(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error at byte {offset} ({op}): {source}")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt {structure} at block {block}: {detail}")]
    Corrupt {
        structure: Structure,
        /// Pool-absolute 4 KiB block number.
        block: u64,
        detail: String,
    },
    #[error("not a sluice pool: {0}")]
    NotAPool(String),
    #[error("pool format version {found} is not the version this build reads ({supported}); re-create the pool")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("out of range: {0}")]
    OutOfRange(String),
    #[error("read-only: {0}")]
    ReadOnly(String),
    #[error("zone {zone} is shut down after an earlier error: {reason}")]
    Shutdown { zone: u32, reason: String },
    /// An in-memory space figure stopped matching the trees (a bug, never
    /// a wrapped number).
    #[error("zone {zone}: per-volume space table is inconsistent: {detail}")]
    Accounting { zone: u32, detail: String },
    /// Sharing a block once more would wrap its reference count
    /// ([`crate::refcount`]); nothing was changed.
    #[error("zone {zone}: block {pblk} is already shared {refcount} times; one more reference would overflow its count")]
    RefcountOverflow { zone: u32, pblk: u32, refcount: u32 },
    /// Another process or pool object holds the device's lock ([`crate::dev::DeviceLock`]).
    #[error("pool device {} is in use by another process or pool", path.display())]
    DeviceInUse { path: std::path::PathBuf },
    /// Formatting would destroy a pool (`what` says which) and was not forced.
    #[error("pool device {} already holds {what}: formatting over it needs force", path.display())]
    PoolPresent {
        path: std::path::PathBuf,
        what: String,
    },
    /// The device could not be opened at all (missing, permission, ...).
    #[error("cannot open pool device {}: {source}", path.display())]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn corrupt(structure: Structure, block: u64, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            structure,
            block,
            detail: detail.into(),
        }
    }

    pub fn io(op: &'static str, offset: u64, source: std::io::Error) -> Self {
        Error::Io { op, offset, source }
    }

    pub fn open(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Open {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The errno a block export should report for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NoSpace(_) => libc::ENOSPC,
            Error::Invalid(_) | Error::OutOfRange(_) => libc::EINVAL,
            Error::ReadOnly(_) => libc::EPERM,
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::DeviceInUse { .. } => libc::EBUSY,
            Error::PoolPresent { .. } => libc::EEXIST,
            Error::RefcountOverflow { .. } => libc::EOVERFLOW,
            _ => libc::EIO,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
