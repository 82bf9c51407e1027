//! `MemTarget`: tree nodes as pages of an anonymous in-memory file (memfd),
//! as XFS runs its btree code on an xfile to build a replacement tree during
//! online repair. Same node format and cache as on disk; nodes are always
//! writable in place (nothing here survives a crash, so no copy-on-write).
//!
//! The file grows with `ftruncate`; freeing a node punches a hole (giving the
//! memory back) and recycles its block number.

use super::cache::{Cache, Store};
use super::ops::BtreeOps;
use super::target::{BufTarget, CacheStats, NodeRef};
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::error::{Error, Result, Structure};
use nix::fcntl::{fallocate, FallocateFlags};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::uio::{pread, pwrite};
use nix::unistd::ftruncate;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd};

/// Grow the file by at least this many blocks at a time.
const GROW_BLOCKS: u64 = 64;

fn errno_io(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

struct MemStore {
    fd: OwnedFd,
    /// File size in blocks.
    file_blocks: Cell<u64>,
}

impl MemStore {
    fn ensure(&self, blocks: u64) -> Result<()> {
        let have = self.file_blocks.get();
        if blocks <= have {
            return Ok(());
        }
        let want = blocks.max(have * 2).max(GROW_BLOCKS);
        let len = want * BLOCK_SIZE as u64;
        ftruncate(&self.fd, len as i64).map_err(|e| Error::io("memfd grow", len, errno_io(e)))?;
        self.file_blocks.set(want);
        Ok(())
    }

    fn punch(&self, blk: u64) {
        // Only gives memory back; a failure leaves the stale page, harmless.
        let _ = fallocate(
            self.fd.as_raw_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            (blk * BLOCK_SIZE as u64) as i64,
            BLOCK_SIZE as i64,
        );
    }
}

impl Store for MemStore {
    async fn read_block(&self, blk: u64) -> Result<AlignedBuf> {
        let off = blk * BLOCK_SIZE as u64;
        let mut buf = AlignedBuf::zeroed(BLOCK_SIZE);
        let mut done = 0;
        while done < BLOCK_SIZE {
            let n = pread(&self.fd, &mut buf[done..], (off + done as u64) as i64)
                .map_err(|e| Error::io("memfd node read", off, errno_io(e)))?;
            if n == 0 {
                break; // past the end: zeros, which fail verification
            }
            done += n;
        }
        Ok(buf)
    }

    async fn write_blocks(&self, blk: u64, buf: AlignedBuf) -> Result<()> {
        let off = blk * BLOCK_SIZE as u64;
        let mut done = 0;
        while done < buf.len() {
            done += pwrite(&self.fd, &buf[done..], (off + done as u64) as i64)
                .map_err(|e| Error::io("memfd node write", off, errno_io(e)))?;
        }
        Ok(())
    }
}

struct MemAlloc {
    /// Indexed by block number, up to the high-water mark.
    live: Vec<bool>,
    nlive: u32,
    /// Blocks handed out so far (the high-water mark).
    top: u64,
    /// Freed blocks to recycle.
    free: Vec<u64>,
}

pub struct MemTarget {
    cache: Cache<MemStore>,
    zone: u32,
    st: RefCell<MemAlloc>,
}

impl MemTarget {
    /// An empty in-memory target whose nodes carry owner `zone`, caching up
    /// to `budget` nodes (the rest live in the memfd's pages).
    pub fn new(zone: u32, budget: usize) -> Result<Self> {
        let fd = memfd_create(c"sluice-btree", MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(|e| Error::io("memfd_create", 0, errno_io(e)))?;
        Ok(MemTarget {
            cache: Cache::new(
                MemStore {
                    fd,
                    file_blocks: Cell::new(0),
                },
                budget,
            ),
            zone,
            st: RefCell::new(MemAlloc {
                live: Vec::new(),
                nlive: 0,
                top: 0,
                free: Vec::new(),
            }),
        })
    }

    pub fn nodes_in_use(&self) -> u32 {
        self.st.borrow().nlive
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Size of the memfd in blocks (it only grows; freed blocks are holes).
    pub fn file_blocks(&self) -> u64 {
        self.cache.store().file_blocks.get()
    }
}

impl BufTarget for MemTarget {
    fn zone(&self) -> u32 {
        self.zone
    }

    fn generation(&self) -> u64 {
        0
    }

    async fn read<O: BtreeOps>(&self, blk: u64) -> Result<NodeRef> {
        if !self.is_allocated(blk) {
            return Err(Error::corrupt(
                Structure::BtreeNode,
                blk,
                format!("{} pointer to an unallocated in-memory block", O::NAME),
            ));
        }
        self.cache.get_node::<O>(blk, self.zone).await
    }

    async fn alloc(&self) -> Result<(u64, NodeRef)> {
        self.cache.make_room().await?;
        let mut st = self.st.borrow_mut();
        let reuse = st.free.iter().rposition(|&b| !self.cache.is_inflight(b));
        let blk = match reuse {
            Some(i) => st.free.swap_remove(i),
            None => {
                let b = st.top;
                self.cache.store().ensure(b + 1)?;
                st.top += 1;
                st.live.push(false);
                b
            }
        };
        st.live[blk as usize] = true;
        st.nlive += 1;
        Ok((blk, self.cache.insert_new(blk)))
    }

    fn mark_dirty(&self, blk: u64) {
        self.cache.mark_dirty(blk);
    }

    fn free(&self, blk: u64) {
        self.cache.forget(blk);
        let mut st = self.st.borrow_mut();
        match st.live.get_mut(blk as usize) {
            Some(l) if *l => *l = false,
            _ => return, // not allocated: a corrupt tree's duplicate pointer
        }
        st.nlive -= 1;
        st.free.push(blk);
        self.cache.store().punch(blk);
    }

    fn is_writable(&self, _blk: u64) -> bool {
        true
    }

    fn is_allocated(&self, blk: u64) -> bool {
        usize::try_from(blk).is_ok_and(|b| self.st.borrow().live.get(b).copied().unwrap_or(false))
    }
}
