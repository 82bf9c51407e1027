//! Does a device hold a sluice pool? Asked before formatting over it and
//! before opening it, so both can refuse with the real reason.
//!
//! This is the one place that answers the question: it reads block 0 and
//! the backup copy of the pool header, so a pool whose block 0 was zeroed is
//! still a pool.

use super::header::{PoolHeader, HEADER_BACKUP_BLK, POOL_MAGIC};
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::dev::{BlockDev, FileDev};
use crate::error::{Error, Result};
use std::fs::File;

/// What a device's pool header says.
#[derive(Debug)]
pub enum Probe {
    /// No sluice pool magic: free to format.
    NotAPool,
    /// A valid pool header.
    Pool { uuid: [u8; 16], size_bytes: u64 },
    /// The pool magic is there but the header does not decode (corrupt, or
    /// written by a newer version): still a pool as far as overwriting goes.
    Damaged(Error),
}

impl Probe {
    /// Whether formatting this device would destroy a pool.
    pub fn holds_pool(&self) -> bool {
        !matches!(self, Probe::NotAPool)
    }
}

/// Read the pool header of `dev` (block 0, and its backup copy when block
/// 0 does not hold a valid one). Errors are I/O errors only; what the
/// headers say, including that they are damaged, is the [`Probe`].
pub async fn probe<D: BlockDev>(dev: &D) -> Result<Probe> {
    let bs = BLOCK_SIZE as u64;
    let dev_blocks = dev.size() / bs;
    let mut damaged = None;
    for blk in [0, HEADER_BACKUP_BLK] {
        if blk >= dev_blocks {
            break;
        }
        let (b, r) = dev.read_at(AlignedBuf::zeroed(BLOCK_SIZE), blk * bs).await;
        r.map_err(|e| Error::io("read pool header", blk * bs, e))?;
        if &b[0..POOL_MAGIC.len()] != POOL_MAGIC {
            continue;
        }
        match PoolHeader::decode_at(&b, blk, dev_blocks) {
            Ok(h) => {
                return Ok(Probe::Pool {
                    uuid: h.geo.uuid,
                    size_bytes: h.geo.size_bytes(),
                })
            }
            Err(e) => {
                damaged.get_or_insert(e);
            }
        }
    }
    Ok(damaged.map_or(Probe::NotAPool, Probe::Damaged))
}

/// [`probe`] an open file or block device, synchronously, through a
/// duplicate of its descriptor (a lock held on `file` stays held).
pub fn probe_file(file: &File) -> Result<Probe> {
    let dup = file
        .try_clone()
        .map_err(|e| Error::io("dup descriptor", 0, e))?;
    futures::executor::block_on(probe(&FileDev::from_file(dup)?))
}

/// A pool UUID as the control plane shows it: 32 hex digits.
pub fn uuid_hex(uuid: &[u8; 16]) -> String {
    uuid.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::MemDev;
    use crate::PoolCatalog;
    use futures::executor::block_on;
    use std::rc::Rc;

    #[test]
    fn tells_empty_pool_and_damaged_apart() {
        let dev = Rc::new(MemDev::new(8 << 20));
        assert!(matches!(block_on(probe(&*dev)).unwrap(), Probe::NotAPool));
        block_on(PoolCatalog::format(dev.clone(), 1 << 20, [9; 16])).unwrap();
        match block_on(probe(&*dev)).unwrap() {
            Probe::Pool { uuid, size_bytes } => {
                assert_eq!(uuid, [9; 16]);
                assert!(size_bytes > 0 && size_bytes <= 8 << 20, "{size_bytes}");
            }
            p => panic!("formatted device probes as {p:?}"),
        }
        // Block 0 damaged or zeroed: the backup copy still says pool.
        let img = dev.image();
        dev.poke(100, &[img[100] ^ 1]);
        assert!(matches!(
            block_on(probe(&*dev)).unwrap(),
            Probe::Pool { .. }
        ));
        dev.poke(0, &[0; 8]);
        assert!(matches!(
            block_on(probe(&*dev)).unwrap(),
            Probe::Pool { .. }
        ));
        // Both copies damaged (not the magic): damaged, still a pool.
        dev.poke(0, &img[..8]);
        let b = HEADER_BACKUP_BLK as usize * BLOCK_SIZE + 100;
        dev.poke(b as u64, &[img[b] ^ 1]);
        let p = block_on(probe(&*dev)).unwrap();
        assert!(
            matches!(&p, Probe::Damaged(Error::Corrupt { block: 0, .. })),
            "{p:?}"
        );
        assert!(p.holds_pool());
        assert!(!block_on(probe(&MemDev::new(0))).unwrap().holds_pool());
    }
}
