//! Does a device hold a sluice pool? Asked before formatting over it and
//! before opening it, so both can refuse with the real reason.
//!
//! This is the one place that answers the question: when the layout gains
//! another copy of the pool header, `probe` learns to look there too.

use super::header::{PoolHeader, POOL_MAGIC};
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

/// Read the pool header of `dev`. Errors are I/O errors only; what the
/// header says, including that it is damaged, is the [`Probe`].
pub async fn probe<D: BlockDev>(dev: &D) -> Result<Probe> {
    if dev.size() < BLOCK_SIZE as u64 {
        return Ok(Probe::NotAPool);
    }
    let (b, r) = dev.read_at(AlignedBuf::zeroed(BLOCK_SIZE), 0).await;
    r.map_err(|e| Error::io("read pool header", 0, e))?;
    if &b[0..POOL_MAGIC.len()] != POOL_MAGIC {
        return Ok(Probe::NotAPool);
    }
    Ok(
        match PoolHeader::decode(&b, dev.size() / BLOCK_SIZE as u64) {
            Ok(h) => Probe::Pool {
                uuid: h.geo.uuid,
                size_bytes: h.geo.size_bytes(),
            },
            Err(e) => Probe::Damaged(e),
        },
    )
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
    use crate::PoolMeta;
    use futures::executor::block_on;
    use std::rc::Rc;

    #[test]
    fn tells_empty_pool_and_damaged_apart() {
        let dev = Rc::new(MemDev::new(8 << 20));
        assert!(matches!(block_on(probe(&*dev)).unwrap(), Probe::NotAPool));
        block_on(PoolMeta::format(dev.clone(), 1 << 20, [9; 16])).unwrap();
        match block_on(probe(&*dev)).unwrap() {
            Probe::Pool { uuid, size_bytes } => {
                assert_eq!(uuid, [9; 16]);
                assert!(size_bytes > 0 && size_bytes <= 8 << 20, "{size_bytes}");
            }
            p => panic!("formatted device probes as {p:?}"),
        }
        // Flip a byte of the header (not the magic): damaged, still a pool.
        let byte = dev.image()[100];
        dev.poke(100, &[byte ^ 1]);
        let p = block_on(probe(&*dev)).unwrap();
        assert!(
            matches!(&p, Probe::Damaged(Error::Corrupt { block: 0, .. })),
            "{p:?}"
        );
        assert!(p.holds_pool());
        assert!(!block_on(probe(&MemDev::new(0))).unwrap().holds_pool());
    }
}
