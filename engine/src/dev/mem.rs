//! An in-memory device: every write is immediately durable.

use super::{check_range, BlockDev, BufResult};
use crate::buf::AlignedBuf;
use std::cell::RefCell;
use std::io;

pub struct MemDev {
    data: RefCell<Vec<u8>>,
}

impl MemDev {
    pub fn new(size: u64) -> Self {
        MemDev {
            data: RefCell::new(vec![0; size as usize]),
        }
    }

    pub fn from_image(image: Vec<u8>) -> Self {
        MemDev {
            data: RefCell::new(image),
        }
    }

    /// A copy of the whole device, e.g. to corrupt it in tests.
    pub fn image(&self) -> Vec<u8> {
        self.data.borrow().clone()
    }

    /// Poke raw bytes (tests: inject corruption).
    pub fn poke(&self, offset: u64, bytes: &[u8]) {
        let o = offset as usize;
        self.data.borrow_mut()[o..o + bytes.len()].copy_from_slice(bytes);
    }
}

impl BlockDev for MemDev {
    fn size(&self) -> u64 {
        self.data.borrow().len() as u64
    }

    async fn read_at(&self, mut buf: AlignedBuf, offset: u64) -> BufResult {
        if let Err(e) = check_range(self.size(), offset, buf.len()) {
            return (buf, Err(e));
        }
        let o = offset as usize;
        let n = buf.len();
        buf.copy_from_slice(&self.data.borrow()[o..o + n]);
        (buf, Ok(()))
    }

    async fn write_at(&self, buf: AlignedBuf, offset: u64) -> BufResult {
        if let Err(e) = check_range(self.size(), offset, buf.len()) {
            return (buf, Err(e));
        }
        let o = offset as usize;
        self.data.borrow_mut()[o..o + buf.len()].copy_from_slice(&buf);
        (buf, Ok(()))
    }

    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}
