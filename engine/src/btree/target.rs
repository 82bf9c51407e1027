//! `BufTarget`: where a tree's nodes live, as XFS's buftarg. The tree code
//! only reads, allocates, dirties and frees nodes through this trait, so the
//! same code runs on a zone's metadata area ([`super::DevTarget`]) and on an
//! in-memory file ([`super::MemTarget`]). Several trees may share one target.

use super::node::NodeBuf;
use super::ops::BtreeOps;
use crate::error::Result;
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;

/// A cached node. The cache keeps its own reference; a node somebody else
/// holds is never evicted. Never hold a borrow of it across an `.await`.
pub type NodeRef = Rc<RefCell<NodeBuf>>;

pub trait BufTarget {
    /// Owner zone written into (and checked in) every node header.
    fn zone(&self) -> u32;

    /// Generation stamped into nodes made now (the current epoch).
    fn generation(&self) -> u64;

    /// The node at `blk`, from the cache or read and verified as a node of
    /// tree type `O` (checksum, block, zone, tree id, key order).
    fn read<O: BtreeOps>(&self, blk: u64) -> impl Future<Output = Result<NodeRef>>;

    /// A fresh, zeroed node, writable in place and already marked dirty.
    /// `Error::NoSpace` when the target is full.
    fn alloc(&self) -> impl Future<Output = Result<(u64, NodeRef)>>;

    /// The caller changed the node; call it right after the change, with no
    /// `.await` in between, so a write-back never misses the change.
    fn mark_dirty(&self, blk: u64);

    /// The node is no longer referenced by the tree.
    fn free(&self, blk: u64);

    /// `false` when the node belongs to the last durable checkpoint: the
    /// tree must then copy it to a fresh block before changing it.
    fn is_writable(&self, blk: u64) -> bool;

    /// Whether `blk` is an allocated node block (scrub: a tree pointing at a
    /// free block is corrupt).
    fn is_allocated(&self, blk: u64) -> bool;
}

/// Counters of the node cache, for reporting and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Nodes written because the cache was over budget.
    pub writebacks: u64,
    /// Nodes written by checkpoints.
    pub checkpoint_writes: u64,
    pub cached: usize,
    pub dirty: usize,
}
