//! A plain file or block device with positional, synchronous I/O.
//!
//! Used by tools and tests; the daemon drives files through the kernel ring in the
//! reactor instead. Opens with O_DIRECT when asked (buffers are aligned).

use super::{check_range, BlockDev, BufResult};
use crate::buf::AlignedBuf;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

pub struct FileDev {
    file: File,
    size: u64,
}

impl FileDev {
    /// Open an existing file or block device.
    pub fn open(path: &Path, direct: bool) -> io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path)?;
        let size = device_size(&file)?;
        Ok(FileDev { file, size })
    }

    /// Create (or truncate) a sparse file of `size` bytes and open it.
    pub fn create(path: &Path, size: u64, direct: bool) -> io::Result<Self> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.set_len(size)?;
        drop(f);
        Self::open(path, direct)
    }

    pub fn file(&self) -> &File {
        &self.file
    }
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
}
