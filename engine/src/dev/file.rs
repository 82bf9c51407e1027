//! A plain file or block device with positional, synchronous I/O.
//!
//! Used by tools and tests; the daemon drives files through the kernel ring in the
//! reactor instead. Opens with O_DIRECT when asked (buffers are aligned).
//! [`FileDev::open`] and [`FileDev::create`] take the device's [`DeviceLock`], so a
//! tool cannot open a pool a daemon (or another tool) has open.

use super::{check_range, BlockDev, BufResult, DeviceLock};
use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::Geometry;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

pub struct FileDev {
    file: File,
    size: u64,
    /// Held on a duplicate of `file` (one open file description, one lock).
    _lock: Option<DeviceLock>,
}

impl FileDev {
    /// Open and lock an existing file or block device.
    pub fn open(path: &Path, direct: bool) -> Result<Self> {
        Self::open_locked(path, direct, false)
    }

    /// Create (or truncate) a sparse file of `size` bytes and open it. The
    /// lock is taken before the file is truncated, so a pool in use is never
    /// cut short.
    pub fn create(path: &Path, size: u64, direct: bool) -> Result<Self> {
        let dev = Self::open_locked(path, direct, true)?;
        let sized = dev.file.set_len(0).and_then(|()| dev.file.set_len(size));
        sized.map_err(|e| Error::io("size file", size, e))?;
        Self::from_file_locked(dev.file, dev._lock)
    }

    fn open_locked(path: &Path, direct: bool, create: bool) -> Result<Self> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(create);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path).map_err(|e| Error::open(path, e))?;
        let dup = file
            .try_clone()
            .map_err(|e| Error::io("dup descriptor", 0, e))?;
        let lock = DeviceLock::lock(dup, path)?;
        Self::from_file_locked(file, Some(lock))
    }

    /// Wrap a file the caller has opened (and locked, if it should be).
    pub fn from_file(file: File) -> Result<Self> {
        Self::from_file_locked(file, None)
    }

    fn from_file_locked(file: File, lock: Option<DeviceLock>) -> Result<Self> {
        let size = device_size(&file).map_err(|e| Error::io("size of device", 0, e))?;
        Ok(FileDev {
            file,
            size,
            _lock: lock,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Allocate, in the regular file `file` about to hold a pool with zones of
/// `zone_size` bytes, every metadata range of that pool
/// ([`Geometry::metadata_ranges`]); returns the bytes allocated. Without
/// this a thin pool file gets its metadata blocks on first write, and a full
/// host file system then fails log and checkpoint writes (shutting zones
/// down) instead of only the data writes that do not fit. `fallocate` mode
/// 0: real blocks, nothing written (not `posix_fallocate`, which may emulate
/// by writing zeros). A block device needs nothing (returns 0).
pub fn preallocate_metadata(file: &File, zone_size: u64) -> Result<u64> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io("preallocate: stat", 0, e))?;
    if !meta.is_file() {
        return Ok(0);
    }
    let dev_bytes = device_size(file).map_err(|e| Error::io("preallocate: size", 0, e))?;
    let geo = Geometry::for_device([0; 16], dev_bytes, zone_size)?;
    let ranges = geo.metadata_ranges();
    let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    for r in ranges {
        if let Err(e) = fallocate(file, r.start, r.end - r.start) {
            return Err(match e.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => Error::NoSpace(format!(
                    "the host file system has no room for the pool's metadata \
                     ({} MiB of the file must be allocated at creation): {e}",
                    total.div_ceil(1 << 20)
                )),
                Some(libc::EOPNOTSUPP) => Error::Invalid(format!(
                    "the host file system cannot allocate the pool's metadata \
                     at creation (fallocate: {e}); use another file system or a block device"
                )),
                _ => Error::io("preallocate metadata", r.start, e),
            });
        }
    }
    Ok(total)
}

/// `fallocate` mode 0 of `[offset, offset + len)`: real blocks, nothing written.
fn fallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    nix::fcntl::fallocate(
        file.as_raw_fd(),
        nix::fcntl::FallocateFlags::empty(),
        offset as libc::off_t,
        len as libc::off_t,
    )
    .map_err(io::Error::from)
}

/// Size of a regular file or a block device, rounded down to whole blocks.
pub fn device_size(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    let size = if meta.is_file() {
        meta.len()
    } else {
        let mut f = file;
        f.seek(SeekFrom::End(0))?
    };
    Ok(size / crate::buf::BLOCK_SIZE as u64 * crate::buf::BLOCK_SIZE as u64)
}

impl BlockDev for FileDev {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, mut buf: AlignedBuf, offset: u64) -> BufResult {
        if let Err(e) = check_range(self.size, offset, buf.len()) {
            return (buf, Err(e));
        }
        let r = self.file.read_exact_at(&mut buf, offset);
        (buf, r)
    }

    async fn write_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        if let Err(e) = check_range(self.size, offset, buf.len()) {
            return (buf, Err(e));
        }
        let r = self.file.write_all_at(&buf, offset);
        (buf, r)
    }

    async fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    async fn preallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.file.metadata()?.is_file() {
            return Ok(());
        }
        fallocate(&self.file, offset, len)
    }
}
