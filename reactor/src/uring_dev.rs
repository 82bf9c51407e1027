//! `UringDev`: the engine's `BlockDev` on an O_DIRECT file or block device,
//! driven through the current thread's io_uring.
//!
//! This file owns the block-device front end used by the daemon. Reads and
//! writes are `IORING_OP_READ` / `IORING_OP_WRITE` straight into the
//! caller's [`AlignedBuf`], which moves into the op's slot and comes back
//! with the result (so a dropped future cannot free memory the kernel is
//! DMAing into). `flush` is `IORING_OP_FSYNC` with `DATASYNC`.
//!
//! A short transfer is continued from where it stopped; a transfer that
//! makes no progress (0 bytes: end of file, or a device that accepts
//! nothing) is an error, never a silently short buffer. Misaligned or
//! out-of-range requests are rejected before they reach the kernel.
//!
//! A `UringDev` is `Send + Sync` (just a file descriptor and a size): share
//! it between reactors with an `Arc`; each submits to its own ring.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use io_uring::{opcode, types};
use sluice_engine::dev::{BlockDev, BufResult};
use sluice_engine::{AlignedBuf, BLOCK_SIZE};

use crate::error::no_ring;
use crate::ring::{self, Op};

/// One op never transfers more than this (the kernel caps a single
/// read/write below 2 GiB anyway); longer buffers take several ops.
const MAX_OP_BYTES: usize = 1 << 30;

/// How to open a [`UringDev`].
#[derive(Debug, Clone, Copy)]
pub struct UringDevOptions {
    /// O_DIRECT (the default; buffers are always 4 KiB aligned).
    pub direct: bool,
    /// Open read-only; writes fail with `PermissionDenied`.
    pub read_only: bool,
}

impl Default for UringDevOptions {
    fn default() -> Self {
        UringDevOptions {
            direct: true,
            read_only: false,
        }
    }
}

/// A file or block device driven through io_uring.
pub struct UringDev {
    file: ManuallyDrop<File>,
    size: u64,
    read_only: bool,
    /// A regular file (space to allocate), not a block device.
    regular: bool,
}

impl UringDev {
    /// Open `path` read-write with O_DIRECT.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_with(path, UringDevOptions::default())
    }

    /// Open `path` with explicit options.
    pub fn open_with(path: &Path, opts: UringDevOptions) -> io::Result<Self> {
        let mut o = OpenOptions::new();
        o.read(true).write(!opts.read_only);
        let mut flags = libc::O_CLOEXEC;
        if opts.direct {
            flags |= libc::O_DIRECT;
        }
        o.custom_flags(flags);
        let file = o
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        let mut dev = Self::from_file(file)?;
        dev.read_only = opts.read_only;
        Ok(dev)
    }

    /// Wrap an already open file (open it with O_DIRECT for the daemon's
    /// use; buffered files work too).
    pub fn from_file(file: File) -> io::Result<Self> {
        let size = device_size(&file)?;
        let regular = file.metadata()?.is_file();
        Ok(UringDev {
            file: ManuallyDrop::new(file),
            size,
            read_only: false,
            regular,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for UringDev {
    fn drop(&mut self) {
        // SAFETY: `file` is never used again.
        let file = unsafe { ManuallyDrop::take(&mut self.file) };
        let fd = file.into_raw_fd();
        // Close through the ring when there is one, so an SQE still queued
        // for this fd cannot hit a recycled descriptor number.
        if ring::with_ring(|r| r.close_detached(fd)).is_none() {
            // SAFETY: we own fd (from into_raw_fd) and close it once.
            unsafe { libc::close(fd) };
        }
    }
}

/// Size of a regular file or block device, rounded down to whole blocks.
fn device_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    let size = if meta.is_file() {
        meta.len()
    } else {
        let mut f = file;
        f.seek(SeekFrom::End(0))?
    };
    Ok(size / BLOCK_SIZE as u64 * BLOCK_SIZE as u64)
}

/// Reject misaligned or out-of-range I/O (the engine's rule).
fn check_range(size: u64, offset: u64, len: usize) -> io::Result<()> {
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

/// Transfer the whole of `buf` at `offset`, resubmitting after short
/// transfers.
async fn rw(fd: RawFd, mut buf: AlignedBuf, offset: u64, dir: Dir) -> BufResult {
    let len = buf.len();
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(MAX_OP_BYTES) as u32;
        let off = offset + done as u64;
        // SAFETY: the SQE points at bytes [done, done + n) of the buffer
        // that moves into the op's slot, within its length.
        let op = unsafe {
            Op::start_device(Some(buf), |d| {
                let b = d.buf.as_mut().expect("buffer in slot");
                let p = b.as_mut_ptr().add(done);
                match dir {
                    Dir::Read => opcode::Read::new(types::Fd(fd), p, n).offset(off).build(),
                    Dir::Write => opcode::Write::new(types::Fd(fd), p, n).offset(off).build(),
                }
            })
        };
        let op = match op {
            Ok(op) => op,
            Err(b) => return (b.expect("buffer returned"), Err(no_ring())),
        };
        let c = op.await;
        buf = c.buf.expect("buffer returned");
        match c.res {
            r if r > 0 => done += r as usize,
            0 => {
                let e = match dir {
                    Dir::Read => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "short read: end of file at byte {off} ({done} of {len} bytes read)"
                        ),
                    ),
                    Dir::Write => io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short write: device accepted 0 bytes at byte {off}"),
                    ),
                };
                return (buf, Err(e));
            }
            r if r == -libc::EINTR || r == -libc::EAGAIN => {}
            r => return (buf, Err(io::Error::from_raw_os_error(-r))),
        }
    }
    (buf, Ok(()))
}

impl BlockDev for UringDev {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        if let Err(e) = check_range(self.size, offset, buf.len()) {
            return (buf, Err(e));
        }
        rw(self.fd(), buf, offset, Dir::Read).await
    }

    async fn write_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        if let Err(e) = check_range(self.size, offset, buf.len()) {
            return (buf, Err(e));
        }
        if self.read_only {
            return (
                buf,
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "write to a read-only UringDev",
                )),
            );
        }
        rw(self.fd(), buf, offset, Dir::Write).await
    }

    async fn flush(&self) -> io::Result<()> {
        let fd = self.fd();
        // SAFETY: fsync carries no pointers.
        let op = unsafe {
            Op::start_device(None, |_| {
                opcode::Fsync::new(types::Fd(fd))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
            })
        }
        .map_err(|_| no_ring())?;
        ring::cqe_result(op.await.res).map(|_| ())
    }

    /// `IORING_OP_FALLOCATE` (mode 0) on a regular file; nothing on a block
    /// device. The kernel runs it on its worker pool: the reactor does not
    /// block on it.
    async fn preallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only || !self.regular {
            return Ok(());
        }
        let fd = self.fd();
        // SAFETY: fallocate carries no pointers.
        let op = unsafe {
            Op::start_device(None, |_| {
                opcode::Fallocate::new(types::Fd(fd), len)
                    .offset(offset)
                    .build()
            })
        }
        .map_err(|_| no_ring())?;
        ring::cqe_result(op.await.res).map(|_| ())
    }
}
