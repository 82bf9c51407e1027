//! One owner per pool device: an exclusive, non-blocking `flock` held for as
//! long as a pool is open on it.
//!
//! `flock` locks belong to an open file description, so a second `open()` of
//! the same file refuses the lock even in the same process: two pool objects
//! of one daemon are kept apart as well as two daemons. The kernel drops the
//! lock when the last descriptor of that description closes, including when
//! the process dies, so a crashed owner never leaves a stale lock. It is
//! advisory: it keeps sluice processes and tools from each other, not `dd`.
//!
//! Block devices are also opened with `O_EXCL`, Linux's exclusive open, so a
//! device that is mounted or claimed by another exclusive opener is refused.

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// An exclusive lock on a pool device; released when dropped.
#[derive(Debug)]
pub struct DeviceLock {
    file: Flock<File>,
    path: PathBuf,
}

impl DeviceLock {
    /// Open `path` (read-write, so a device we may not write is refused here)
    /// and lock it.
    pub fn acquire(path: &Path) -> Result<Self> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        let is_bdev = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        if is_bdev {
            opts.custom_flags(libc::O_EXCL);
        }
        match opts.open(path) {
            Ok(f) => Self::lock(f, path),
            Err(e) if is_bdev && e.raw_os_error() == Some(libc::EBUSY) => Err(Error::DeviceInUse {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(Error::open(path, e)),
        }
    }

    /// Lock `file`, already open on `path`, so the locked descriptor can also
    /// do the I/O (one descriptor, one lock).
    pub fn lock(file: File, path: &Path) -> Result<Self> {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(DeviceLock {
                file,
                path: path.to_path_buf(),
            }),
            Err((_, Errno::EWOULDBLOCK)) => Err(Error::DeviceInUse {
                path: path.to_path_buf(),
            }),
            Err((_, e)) => Err(Error::io("lock pool device", 0, io::Error::from(e))),
        }
    }

    /// The locked descriptor (its duplicates share the lock).
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("sluice-lock-{tag}-{}", std::process::id()));
        std::fs::write(&p, [0u8; 4096]).unwrap();
        p
    }

    #[test]
    fn second_acquire_in_the_same_process_fails_until_the_first_drops() {
        let p = temp_file("second");
        let first = DeviceLock::acquire(&p).unwrap();
        match DeviceLock::acquire(&p) {
            Err(Error::DeviceInUse { path }) => assert_eq!(path, p),
            other => panic!("second lock of {} should fail: {other:?}", p.display()),
        }
        // Closing a duplicate of the locked descriptor (as a probe does)
        // keeps the lock; it goes when the last one closes.
        drop(first.file().try_clone().unwrap());
        assert!(matches!(
            DeviceLock::acquire(&p),
            Err(Error::DeviceInUse { .. })
        ));
        drop(first);
        let again = DeviceLock::acquire(&p).expect("the lock is free once every holder is gone");
        assert_eq!(again.path(), p);
        drop(again);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn released_on_drop() {
        let p = temp_file("drop");
        drop(DeviceLock::acquire(&p).unwrap());
        let l = DeviceLock::acquire(&p).expect("released on drop");
        let msg = DeviceLock::acquire(&p).unwrap_err().to_string();
        assert!(
            msg.contains("in use") && msg.contains(&p.display().to_string()),
            "{msg}"
        );
        drop(l);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn file_dev_takes_the_lock_and_never_truncates_a_locked_file() {
        use crate::dev::{BlockDev, FileDev};
        let p = temp_file("filedev");
        let held = DeviceLock::acquire(&p).unwrap();
        assert!(matches!(
            FileDev::open(&p, false),
            Err(Error::DeviceInUse { .. })
        ));
        assert!(matches!(
            FileDev::create(&p, 1 << 20, false),
            Err(Error::DeviceInUse { .. })
        ));
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            4096,
            "resized under a lock"
        );
        drop(held);
        let dev = FileDev::create(&p, 1 << 20, false).unwrap();
        assert_eq!(dev.size(), 1 << 20);
        assert!(matches!(
            DeviceLock::acquire(&p),
            Err(Error::DeviceInUse { .. })
        ));
        drop(dev);
        drop(DeviceLock::acquire(&p).unwrap());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_missing_device_names_the_path_and_the_cause() {
        let p = std::env::temp_dir().join("sluice-lock-missing-no-such-file");
        let msg = DeviceLock::acquire(&p).unwrap_err().to_string();
        assert!(
            msg.contains("sluice-lock-missing-no-such-file") && msg.contains("No such file"),
            "{msg}"
        );
    }
}
