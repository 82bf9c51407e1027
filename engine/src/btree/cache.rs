//! The node cache both targets share: a write-back cache with a budget of
//! nodes over a [`Store`] (the device region or the memfd).
//!
//! Rules that make it safe:
//! - a dirty node is never dropped: it is written back first, and a failed
//!   write marks it dirty again;
//! - a node with a write in flight stays in the cache (readable from memory)
//!   until the write completes, so a re-read can never see the old bytes;
//! - at most one write per block is in flight (write-back skips blocks with a
//!   write in flight; checkpoints first wait for all writes to finish), and
//!   the allocators do not hand out a block with a write in flight, so two
//!   writes of one block can never race on the device;
//! - a node somebody holds (`Rc` count > 1) is never evicted.
//!
//! The budget is soft: nodes pinned by a running tree operation may push the
//! cache over it for a moment.

use super::node::{seal, verify, NodeBuf};
use super::ops::BtreeOps;
use super::target::{CacheStats, NodeRef};
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::error::{Error, Result, Structure};
use foldhash::{HashMap, HashSet};
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Longest run of adjacent nodes written with one I/O.
const MAX_RUN: usize = 64;

/// Backing storage of node blocks.
pub(crate) trait Store {
    /// One block's bytes.
    fn read_block(&self, blk: u64) -> impl Future<Output = Result<AlignedBuf>>;
    /// Write `buf` (whole blocks) starting at block `blk`.
    fn write_blocks(&self, blk: u64, buf: AlignedBuf) -> impl Future<Output = Result<()>>;
}

/// One cached tree node and whether it must be written back.
struct CachedNode {
    node: NodeRef,
    dirty: bool,
    /// Tick of the last use, for LRU-ish eviction.
    last: u64,
}

/// The cached nodes by block, the blocks with a write in flight, the LRU
/// clock and the counters.
#[derive(Default)]
struct CacheTable {
    map: HashMap<u64, CachedNode>,
    /// Blocks with a write in flight (the entry may be gone if it was freed).
    inflight: HashSet<u64>,
    tick: u64,
    stats: CacheStats,
}

/// Sealed copies of dirty nodes, grouped into runs of adjacent blocks.
pub(crate) struct WriteBatch {
    runs: Vec<(u64, AlignedBuf)>,
    nodes: u64,
}

pub(crate) struct Cache<S> {
    store: S,
    budget: usize,
    inner: RefCell<CacheTable>,
    /// Tasks waiting for `inflight` to become empty.
    waiters: RefCell<Vec<Waker>>,
}

impl<S: Store> Cache<S> {
    pub fn new(store: S, budget: usize) -> Self {
        Cache {
            store,
            budget: budget.max(1),
            inner: RefCell::default(),
            waiters: RefCell::default(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The cached node at `blk`, or read it and check it with `verify`.
    async fn get(&self, blk: u64, verify: impl Fn(&[u8]) -> Result<()>) -> Result<NodeRef> {
        {
            let mut inner = self.inner.borrow_mut();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(e) = inner.map.get_mut(&blk) {
                e.last = tick;
                let n = e.node.clone();
                inner.stats.hits += 1;
                return Ok(n);
            }
        }
        self.make_room().await?;
        let buf = self.store.read_block(blk).await?;
        verify(&buf)?;
        let mut inner = self.inner.borrow_mut();
        inner.stats.misses += 1;
        let tick = inner.tick;
        // Another task may have loaded (and changed) it meanwhile: theirs wins.
        let e = inner.map.entry(blk).or_insert_with(|| CachedNode {
            node: Rc::new(RefCell::new(NodeBuf::from_buf(buf))),
            dirty: false,
            last: tick,
        });
        Ok(e.node.clone())
    }

    /// The node at `blk` as a node of tree type `O`: verified when read; on a
    /// hit only its tree id is checked (it was verified when it came in).
    pub async fn get_node<O: BtreeOps>(&self, blk: u64, zone: u32) -> Result<NodeRef> {
        let n = self.get(blk, |b| verify::<O>(b, blk, zone)).await?;
        let id = n.borrow().tree_id();
        if id != O::TREE_ID {
            return Err(Error::corrupt(
                Structure::BtreeNode,
                blk,
                format!("node of tree id {id} where a {} node was expected", O::NAME),
            ));
        }
        Ok(n)
    }

    /// Cache a new zeroed, dirty node for a block just allocated. Call
    /// `make_room` before choosing the block.
    pub fn insert_new(&self, blk: u64) -> NodeRef {
        let mut inner = self.inner.borrow_mut();
        inner.tick += 1;
        let node = Rc::new(RefCell::new(NodeBuf::zeroed()));
        let e = CachedNode {
            node: node.clone(),
            dirty: true,
            last: inner.tick,
        };
        inner.map.insert(blk, e);
        node
    }

    pub fn mark_dirty(&self, blk: u64) {
        if let Some(e) = self.inner.borrow_mut().map.get_mut(&blk) {
            e.dirty = true;
        }
    }

    /// Drop a freed block's node, dirty or not: its contents are garbage now.
    pub fn forget(&self, blk: u64) {
        self.inner.borrow_mut().map.remove(&blk);
    }

    pub fn is_inflight(&self, blk: u64) -> bool {
        self.inner.borrow().inflight.contains(&blk)
    }

    pub fn inflight_count(&self) -> usize {
        self.inner.borrow().inflight.len()
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.borrow();
        CacheStats {
            cached: inner.map.len(),
            dirty: inner.map.values().filter(|e| e.dirty).count(),
            ..inner.stats
        }
    }

    /// Copy every dirty node into a batch (synchronously: this is the
    /// checkpoint's snapshot), marking them clean and in flight.
    pub fn take_all_dirty(&self) -> WriteBatch {
        let mut inner = self.inner.borrow_mut();
        let blocks: Vec<u64> = inner
            .map
            .iter()
            .filter(|(_, e)| e.dirty)
            .map(|(&b, _)| b)
            .collect();
        Self::take(&mut inner, blocks)
    }

    fn take(inner: &mut CacheTable, mut blocks: Vec<u64>) -> WriteBatch {
        blocks.sort_unstable();
        let mut runs: Vec<(u64, AlignedBuf)> = Vec::new();
        let mut i = 0;
        while i < blocks.len() {
            let mut n = 1;
            while i + n < blocks.len() && n < MAX_RUN && blocks[i + n] == blocks[i] + n as u64 {
                n += 1;
            }
            let mut buf = AlignedBuf::zeroed(n * BLOCK_SIZE);
            for (j, &b) in blocks[i..i + n].iter().enumerate() {
                let img = &mut buf[j * BLOCK_SIZE..(j + 1) * BLOCK_SIZE];
                if let Some(e) = inner.map.get_mut(&b) {
                    img.copy_from_slice(e.node.borrow().bytes());
                    e.dirty = false;
                }
                seal(img);
                inner.inflight.insert(b);
            }
            runs.push((blocks[i], buf));
            i += n;
        }
        WriteBatch {
            runs,
            nodes: blocks.len() as u64,
        }
    }

    /// Write a batch, all runs at once. On failure the nodes become dirty
    /// again (they are still cached: in-flight nodes are never evicted).
    pub async fn write(&self, batch: WriteBatch, checkpoint: bool) -> Result<()> {
        let futs = batch.runs.into_iter().map(|(start, buf)| {
            let n = (buf.len() / BLOCK_SIZE) as u64;
            let w = self.store.write_blocks(start, buf);
            async move { (start, n, w.await) }
        });
        let results = join_all(futs.collect()).await;
        let mut first_err = None;
        {
            let mut inner = self.inner.borrow_mut();
            if checkpoint {
                inner.stats.checkpoint_writes += batch.nodes;
            } else {
                inner.stats.writebacks += batch.nodes;
            }
            for (start, n, r) in results {
                for b in start..start + n {
                    inner.inflight.remove(&b);
                    if r.is_err() {
                        if let Some(e) = inner.map.get_mut(&b) {
                            e.dirty = true;
                        }
                    }
                }
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                }
            }
        }
        if self.inner.borrow().inflight.is_empty() {
            for w in self.waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Wait until no write is in flight.
    pub async fn drain(&self) {
        poll_fn(|cx| {
            if self.inner.borrow().inflight.is_empty() {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Bring the cache under budget before it grows: evict clean unpinned
    /// nodes, least recently used first; if that is not enough, write back
    /// dirty unpinned nodes and evict them.
    pub async fn make_room(&self) -> Result<()> {
        for _ in 0..3 {
            let batch = {
                let mut inner = self.inner.borrow_mut();
                if inner.map.len() < self.budget {
                    return Ok(());
                }
                // Evict a little more than needed so scans are amortised.
                let goal = self.budget - (self.budget / 8).max(1).min(self.budget - 1);
                let idle = |inner: &CacheTable, dirty: bool| {
                    let mut v: Vec<(u64, u64)> = inner
                        .map
                        .iter()
                        .filter(|(b, e)| {
                            e.dirty == dirty
                                && Rc::strong_count(&e.node) == 1
                                && !inner.inflight.contains(b)
                        })
                        .map(|(&b, e)| (e.last, b))
                        .collect();
                    v.sort_unstable();
                    v
                };
                let excess = inner.map.len() + 1 - goal;
                let clean = idle(&inner, false);
                for &(_, b) in clean.iter().take(excess) {
                    inner.map.remove(&b);
                    inner.stats.evictions += 1;
                }
                if inner.map.len() < self.budget {
                    return Ok(());
                }
                let excess = inner.map.len() + 1 - goal;
                let dirty: Vec<u64> = idle(&inner, true)
                    .into_iter()
                    .take(excess)
                    .map(|(_, b)| b)
                    .collect();
                if dirty.is_empty() {
                    return Ok(()); // everything is pinned or in flight
                }
                Self::take(&mut inner, dirty)
            };
            self.write(batch, false).await?;
        }
        Ok(())
    }
}

/// Run futures concurrently and collect their outputs in order.
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
