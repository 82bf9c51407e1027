//! The block-I/O seam: the only way the engine touches storage.
//!
//! Offsets and lengths are multiples of [`BLOCK_SIZE`]. Buffers are owned by
//! the operation and returned with its result. The engine is single-threaded
//! per zone, so the futures need not be `Send`.

mod file;
mod lock;
mod mem;
pub mod sim;

pub use file::{preallocate_metadata, FileDev};
pub use lock::DeviceLock;
pub use mem::MemDev;
pub use sim::{SimConfig, SimDev};

use crate::buf::{AlignedBuf, BLOCK_SIZE};
use std::future::Future;
use std::io;

/// Result of an owned-buffer I/O: the buffer always comes back.
pub type BufResult = (AlignedBuf, io::Result<()>);

pub trait BlockDev {
    /// Device size in bytes (a multiple of 4 KiB).
    fn size(&self) -> u64;
    /// Fill `buf` (its whole length) from byte `offset`.
    fn read_at(&self, buf: AlignedBuf, offset: u64) -> impl Future<Output = BufResult>;
    /// Write `buf` (its whole length) at byte `offset`. Not durable until `flush`.
    fn write_at(&self, buf: AlignedBuf, offset: u64) -> impl Future<Output = BufResult>;
    /// Make every completed write durable.
    fn flush(&self) -> impl Future<Output = io::Result<()>>;
    /// Allocate backing space for `[offset, offset + len)` ahead of writes
    /// (a file system then serves them without allocating, so a
    /// non-blocking submission completes them inline). Only a hint: devices
    /// with nothing to allocate do nothing.
    fn preallocate(&self, offset: u64, len: u64) -> impl Future<Output = io::Result<()>> {
        let _ = (offset, len);
        async { Ok(()) }
    }
}

/// Reject I/O that is misaligned or past the end, before it reaches a device.
pub(crate) fn check_range(size: u64, offset: u64, len: usize) -> io::Result<()> {
    let bs = BLOCK_SIZE as u64;
    if !offset.is_multiple_of(bs) || !(len as u64).is_multiple_of(bs) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("misaligned I/O: offset {offset} len {len}"),
        ));
    }
    if offset.checked_add(len as u64).is_none_or(|end| end > size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("I/O past end of device: offset {offset} len {len} size {size}"),
        ));
    }
    Ok(())
}
