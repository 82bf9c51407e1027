//! A zone: a fixed slice of the pool with its own superblock, bitmap, intent
//! log, metadata trees and data blocks. One zone is owned by one thread; all
//! its state lives here and is touched without locks (single-threaded async
//! mutexes only order the zone's own tasks).
//!
//! - `io`: the chunk read/write paths, allocation, and the in-flight rules
//!   that make the stale-read race impossible.
//! - `log`: committing records, group commit, flush and checkpoints.
//! - `recovery`: format, open and log replay.
//! - `check`: scrub (cross-checks of lmap, rmap, bitmap and counters).
//! - `bounds`: volume ends the zone enforces after a resize, and its share
//!   of a shrink.
//! - `space`: the per-volume space table (mapped chunks and data blocks).
//! - `share`: sharing one volume's chunks with another in bounded steps
//!   (the reflink primitive under snapshots and clones).

mod bounds;
mod check;
mod io;
mod log;
mod recovery;
mod share;
mod space;

pub use check::{Problem, TreeRecords};
pub(crate) use share::check_share;
pub use space::VolumeSpace;

use crate::bitmap::Bitmap;
use crate::btree::{Btree, DevTarget};
use crate::dev::BlockDev;
use crate::error::{Error, Result};
use crate::format::{Geometry, ZoneCounters};
use crate::intent_log::Record;
use crate::lmap::Lmap;
use crate::refcount::Refcount;
use crate::rmap::Rmap;
use crate::sync::{KeyedRwLock, LocalMutex, Mutex};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// Metadata nodes this zone may keep cached (4 KiB each).
    pub cache_nodes: usize,
    /// Group commit: write the log once this many records are pending.
    pub max_pending_records: usize,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            cache_nodes: 1024,
            max_pending_records: 4096,
        }
    }
}

/// Counters for reporting; not persisted.
#[derive(Debug, Clone, Default)]
pub struct ZoneStats {
    pub chunk_reads: u64,
    pub chunk_writes: u64,
    pub rmw_reads: u64,
    pub data_blocks_written: u64,
    pub log_blocks_written: u64,
    pub log_flushes: u64,
    pub checkpoints: u64,
    pub replayed_records: u64,
    /// Backing-space allocations ahead of the data (thin pool files).
    pub preallocations: u64,
}

/// Blocks freed by record `seq`: reusable once that record is durable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Busy {
    seq: u64,
    pblk: u32,
    nblk: u32,
}

pub(crate) struct Trees<D: BlockDev> {
    pub lmap: Btree<Lmap, DevTarget<D>>,
    pub rmap: Btree<Rmap, DevTarget<D>>,
    /// Counts of shared data blocks (only counts >= 2; see `refcount`).
    pub refc: Btree<Refcount, DevTarget<D>>,
}

/// A zone's mutable bookkeeping: the allocator bitmaps, busy blocks, the
/// log sequence and LSN counters, counters and the failure flag.
pub(crate) struct ZoneState {
    /// Blocks not available to the allocator: committed, reserved by
    /// in-flight writes, or busy (freed by a record not yet durable).
    alloc: Bitmap,
    /// Blocks referenced by the forward map (what a checkpoint persists).
    committed: Bitmap,
    busy: VecDeque<Busy>,
    cursor: u32,
    /// One past the highest data block handed out since open. The allocator
    /// prefers blocks below it, so a pool on a sparse file only grows into
    /// new file extents when its live data (plus busy blocks) grows: random
    /// overwrites then land on file blocks already written, which the file
    /// system serves without allocation or an exclusive inode lock.
    hwm: u32,
    /// Data blocks below this have backing space allocated (a hint kept a
    /// step ahead of `hwm`; see `Zone::preallocate_ahead`).
    prealloc_end: u32,
    /// Frees so far (any block given back to `alloc`): a failed run search
    /// stays valid until this moves.
    frees: u64,
    /// `(n, frees)`: no run of `n` free blocks below `hwm` when `frees` was
    /// this. Spares a fragmented zone a full bitmap scan per wide write.
    run_miss: Option<(u32, u64)>,
    next_seq: u64,
    durable_seq: u64,
    log_epoch: u64,
    next_lsn: u64,
    start_lsn: u64,
    pending: Vec<(u64, Record)>,
    sb_gen: u64,
    counters: ZoneCounters,
    /// Per-volume space, built on first use (see `space`).
    space: space::SpaceTable,
    failed: Option<String>,
    stats: ZoneStats,
    /// Running share jobs (snapshots and clones being filled), in memory
    /// only: see `share`.
    jobs: Vec<share::ShareJob>,
}

impl ZoneState {
    /// Give blocks back to the allocator.
    fn release(&mut self, pblk: u32, n: u32) {
        self.alloc.clear_range(pblk, n);
        self.frees += 1;
    }
}

pub struct Zone<D: BlockDev> {
    idx: u32,
    geo: Rc<Geometry>,
    dev: Rc<D>,
    meta: Rc<DevTarget<D>>,
    trees: Mutex<Trees<D>>,
    /// Orders log writes and checkpoints. Lock order: log_lock, then trees.
    log_lock: LocalMutex,
    /// One build of the per-volume space table at a time (taken before trees).
    space_build: LocalMutex,
    st: RefCell<ZoneState>,
    /// Per-(volume, chunk) ordering of reads and writes.
    chunks: KeyedRwLock<(u32, u64)>,
    /// `(volume, size)` of resized volumes: this zone refuses I/O past the
    /// end (see `bounds`). Empty unless a volume was resized since open.
    ends: RefCell<Vec<(u32, u64)>>,
    cfg: ZoneConfig,
    /// Told once when the zone shuts down (see [`Zone::on_shutdown`]).
    on_shutdown: RefCell<Option<ShutdownHook>>,
}

/// Called with the zone index and the reason when a zone shuts down.
pub type ShutdownHook = Box<dyn Fn(u32, &str)>;

impl<D: BlockDev> Zone<D> {
    /// Have `hook` called, once, when this zone shuts down. The engine has
    /// no logger: whoever hosts the zone says so at once (the daemon on
    /// stderr), rather than on the next request that happens to fail.
    pub fn on_shutdown(&self, hook: impl Fn(u32, &str) + 'static) {
        *self.on_shutdown.borrow_mut() = Some(Box::new(hook));
    }

    pub fn index(&self) -> u32 {
        self.idx
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    pub fn counters(&self) -> ZoneCounters {
        self.st.borrow().counters
    }

    pub fn stats(&self) -> ZoneStats {
        self.st.borrow().stats.clone()
    }

    /// One past the highest data block allocated since open (see `ZoneState::hwm`).
    pub fn high_water(&self) -> u32 {
        self.st.borrow().hwm
    }

    /// Data blocks free for allocation now (busy blocks excluded).
    pub fn free_data_blocks(&self) -> u32 {
        let st = self.st.borrow();
        self.geo.zone_blocks - st.alloc.count_ones()
    }

    /// Blocks in use: data, busy and reserved blocks plus this zone's fixed
    /// regions (superblocks, bitmaps, log, metadata area).
    pub fn used_blocks(&self) -> u32 {
        self.st.borrow().alloc.count_ones()
    }

    pub fn is_failed(&self) -> Option<String> {
        self.st.borrow().failed.clone()
    }

    fn check_ok(&self) -> Result<()> {
        match &self.st.borrow().failed {
            None => Ok(()),
            Some(r) => Err(Error::Shutdown {
                zone: self.idx,
                reason: r.clone(),
            }),
        }
    }

    /// Stop taking writes after an error that may have left durable state
    /// unknown (a failed log or checkpoint write); reopening the pool
    /// recovers. Reads of what the maps hold go on (see `read_span`).
    fn fail(&self, e: &Error) {
        let why = {
            let mut st = self.st.borrow_mut();
            if st.failed.is_some() {
                return;
            }
            let why = e.to_string();
            st.failed = Some(why.clone());
            why
        };
        if let Some(hook) = &*self.on_shutdown.borrow() {
            hook(self.idx, &why);
        }
    }

    /// The trees, locked: read-only walks that live outside this module
    /// (GETFSMAP, `crate::fsmap`) see one consistent state under it.
    pub(crate) async fn lock_trees(&self) -> crate::sync::MutexGuard<'_, Trees<D>> {
        self.trees.lock().await
    }

    /// Byte offset on the device of zone-relative block `rel`.
    #[inline]
    fn byte_off(&self, rel: u32) -> u64 {
        self.geo.abs(self.idx, rel) * crate::BLOCK_SIZE as u64
    }
}
