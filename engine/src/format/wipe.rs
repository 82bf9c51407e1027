//! Erasing a pool: what makes a device no longer hold a sluice pool.
//!
//! [`super::probe()`] and `PoolCatalog::open` find a pool by its header in block 0
//! or in its backup ([`HEADER_BACKUP_BLK`]); zeroing both (and flushing) is
//! what erases one, so `pool_import` refuses the device and `pool_create`
//! formats it without `force`. Data blocks are left as they are: this is not
//! a secure erase.

use super::header::HEADER_BACKUP_BLK;
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::dev::{BlockDev, FileDev};
use crate::error::{Error, Result};
use std::fs::File;

/// Zero both pool header copies of `dev` and flush.
pub async fn wipe<D: BlockDev>(dev: &D) -> Result<()> {
    let bs = BLOCK_SIZE as u64;
    let blocks = dev.size() / bs;
    for blk in [0, HEADER_BACKUP_BLK].into_iter().filter(|b| *b < blocks) {
        let (_b, r) = dev.write_at(AlignedBuf::zeroed(BLOCK_SIZE), blk * bs).await;
        r.map_err(|e| Error::io("wipe pool header", blk * bs, e))?;
    }
    dev.flush()
        .await
        .map_err(|e| Error::io("flush after wipe", 0, e))
}

/// [`wipe`] an open file or block device, synchronously, through a
/// duplicate of its descriptor (a lock held on `file` stays held).
pub fn wipe_file(file: &File) -> Result<()> {
    let dup = file
        .try_clone()
        .map_err(|e| Error::io("dup descriptor", 0, e))?;
    futures::executor::block_on(wipe(&FileDev::from_file(dup)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::MemDev;
    use crate::format::{probe, Probe};
    use crate::pool_catalog::PoolCatalog;
    use std::rc::Rc;

    #[test]
    fn wiped_pool_is_no_pool() {
        futures::executor::block_on(async {
            let dev = Rc::new(MemDev::new(512 << 20));
            PoolCatalog::format(dev.clone(), 128 << 20, [7; 16])
                .await
                .unwrap();
            assert!(matches!(probe(&*dev).await.unwrap(), Probe::Pool { .. }));
            wipe(&*dev).await.unwrap();
            assert!(matches!(probe(&*dev).await.unwrap(), Probe::NotAPool));
            let e = PoolCatalog::open(dev.clone())
                .await
                .err()
                .expect("open must fail");
            assert!(matches!(e, Error::NotAPool(_)), "{e}");
        });
    }
}
