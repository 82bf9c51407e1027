//! Sharing one volume's chunks with another (the reflink primitive that
//! snapshots and clones are made of): `dst` gets lmap records for `src`'s
//! chunks pointing at the same blocks, an rmap record per new owner, and
//! one more reference on every block in the refcount tree. No data moves.
//!
//! A long range is cut into [`Record::Share`] steps of at most
//! [`SHARE_MAX_CHUNKS`] mapped chunks, each found and committed in one hold
//! of the trees lock, so no record does unbounded work and no write can
//! slip between a step's lookup and its commit. Each step is atomic; a
//! crash between steps leaves a prefix of the range shared (the caller
//! that needs all-or-nothing, a snapshot, carries that in its own intent).

use super::log::META_RESERVE;
use super::{Trees, Zone};
use crate::dev::BlockDev;
use crate::error::{Error, Result, Structure};
use crate::intent_log::{Record, SHARE_MAX_CHUNKS};
use crate::lmap::LmapRec;
use crate::refcount::{self, Delta};
use crate::rmap::RmapRec;
use crate::volume::VolInfo;

/// Metadata blocks to keep free per chunk of a share step, on top of
/// `META_RESERVE`. Each chunk inserts into three trees, but a node is
/// shadowed at most once per checkpoint epoch and the lmap inserts are
/// consecutive keys: at most one rmap leaf, one refcount leaf and their
/// share of splits and lmap leaves per chunk.
const SHARE_META_PER_CHUNK: u32 = 4;

/// Whether `src` may share chunks `[from, to)` with `dst`: two volumes of
/// one family (so their chunks have the same home zones) and chunk size,
/// the range inside both.
pub(crate) fn check_share(src: &VolInfo, dst: &VolInfo, from: u64, to: u64) -> Result<()> {
    if src.id == dst.id || src.family != dst.family || src.chunk_shift != dst.chunk_shift {
        return Err(Error::Invalid(format!(
            "volume {} (family {}, chunk shift {}) cannot share with volume {} \
             (family {}, chunk shift {}): they must be two volumes of one family \
             and chunk size",
            src.id, src.family, src.chunk_shift, dst.id, dst.family, dst.chunk_shift
        )));
    }
    for v in [src, dst] {
        if from < to && to > v.nchunks() {
            return Err(Error::OutOfRange(format!(
                "chunks {from}..{to} beyond volume {} ({} chunks)",
                v.id,
                v.nchunks()
            )));
        }
    }
    Ok(())
}

/// A snapshot or clone being filled in this zone: `dst` gets what `src`
/// mapped here when the job began. Chunks below `next` are done. A `Map` or
/// `Unmap` of `src` at a chunk at or past `next` first advances the job past
/// that chunk ([`Zone::catch_up`]), so every chunk not yet shared still
/// holds what it held when the job began: the point in time is the job's
/// start, and no write of `src` waits for the rest of the copy.
///
/// In memory only. Its steps are ordinary `Share` records, which replay
/// alone reproduces; a job a crash interrupts belongs to a volume the
/// catalog still marks creating, deleted at open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShareJob {
    src: VolInfo,
    dst: VolInfo,
    next: u64,
}

impl ShareJob {
    /// Whether chunks are left to share (the job ends at `src`'s end).
    fn open(&self) -> bool {
        self.next < self.src.nchunks()
    }
}

impl<D: BlockDev> Zone<D> {
    /// Make `dst` map the same blocks as `src` for every chunk in
    /// `[from, to)` that `src` maps in this zone; returns how many chunks
    /// were shared. Both volumes must be of one family (so their chunks
    /// have the same home zone) and chunk size.
    ///
    /// `dst` must map none of those chunks: that is checked for the whole
    /// range before anything is committed ([`Error::Exists`]), and again
    /// at each step (a write to `dst` racing the share stops it there).
    pub async fn share(&self, src: &VolInfo, dst: &VolInfo, from: u64, to: u64) -> Result<u64> {
        check_share(src, dst, from, to)?;
        if from >= to {
            return Ok(0);
        }
        self.check_ok()?;
        {
            let mut t = self.trees.lock().await;
            self.dst_unmapped(&mut t, dst.id, from, to - 1).await?;
        }
        let mut shared = 0u64;
        let mut cur = from;
        while cur < to {
            let cap = self.share_step_cap().await?;
            let mut t = self.trees.lock().await;
            let (n, next) = self.share_step(&mut t, src, dst, cur, to, cap).await?;
            drop(t);
            self.flush_if_full().await?;
            shared += n;
            cur = next;
        }
        Ok(shared)
    }

    /// One step: share the first (at most `cap`) chunks `src` maps in
    /// `[from, to)`, in one record committed in the same hold of the trees
    /// lock as the lookup. Returns the chunks shared and where the next
    /// step begins (`to` when the range is done).
    async fn share_step(
        &self,
        t: &mut Trees<D>,
        src: &VolInfo,
        dst: &VolInfo,
        from: u64,
        to: u64,
        cap: usize,
    ) -> Result<(u64, u64)> {
        let recs = t
            .lmap
            .range(&(src.id, from), &(src.id, to - 1), cap + 1)
            .await?;
        let Some(first) = recs.first() else {
            return Ok((0, to));
        };
        let n = recs.len().min(cap);
        // The step ends where the chunk it cannot take begins.
        let next = recs.get(cap).map_or(to, |r| r.chunk);
        let (a, b) = (first.chunk, recs[n - 1].chunk);
        self.dst_unmapped(t, dst.id, a, b).await?;
        self.check_bytes(dst.id, b << dst.chunk_shift, 1)?;
        let rec = Record::Share {
            src: src.id,
            dst: dst.id,
            from: a,
            to: b + 1,
        };
        self.commit_locked(t, rec).await?;
        Ok((n as u64, next))
    }

    /// Start filling `dst` with what `src` maps in this zone now (a
    /// snapshot or clone). Nothing is logged: the steps are, as
    /// [`Self::share_run`] and writes of `src` (`catch_up`) take
    /// them. `dst` must be new (mapping nothing).
    pub fn share_begin(&self, src: &VolInfo, dst: &VolInfo) -> Result<()> {
        check_share(src, dst, 0, src.nchunks())?;
        self.check_ok()?;
        let mut st = self.st.borrow_mut();
        if st.jobs.iter().any(|j| j.dst.id == dst.id) {
            return Err(Error::Exists(format!(
                "zone {}: volume {} is already being filled",
                self.idx, dst.id
            )));
        }
        st.jobs.push(ShareJob {
            src: *src,
            dst: *dst,
            next: 0,
        });
        Ok(())
    }

    /// Run the job filling `dst` to its end, make it durable and drop it
    /// (also when a step fails). Returns the chunks shared by this call.
    pub async fn share_run(&self, dst: u32) -> Result<u64> {
        let mut shared = 0;
        let r = loop {
            match self.job_step(dst).await {
                Ok(Some(n)) => shared += n,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.share_end(dst);
        r?;
        self.flush().await?;
        Ok(shared)
    }

    /// Drop the job filling `dst`, if there is one (a snapshot given up).
    pub fn share_end(&self, dst: u32) {
        self.st.borrow_mut().jobs.retain(|j| j.dst.id != dst);
    }

    /// Whether a job is filling `dst` here.
    pub fn share_running(&self, dst: u32) -> bool {
        self.st.borrow().jobs.iter().any(|j| j.dst.id == dst)
    }

    /// One step of the job filling `dst`; `None` once it is done or gone.
    async fn job_step(&self, dst: u32) -> Result<Option<u64>> {
        let cap = self.share_step_cap().await?;
        let mut t = self.trees.lock().await;
        let job = self
            .st
            .borrow()
            .jobs
            .iter()
            .find(|j| j.dst.id == dst)
            .copied();
        let Some(j) = job.filter(ShareJob::open) else {
            return Ok(None);
        };
        let (n, next) = self
            .share_step(&mut t, &j.src, &j.dst, j.next, j.src.nchunks(), cap)
            .await?;
        if let Some(j) = self
            .st
            .borrow_mut()
            .jobs
            .iter_mut()
            .find(|j| j.dst.id == dst)
        {
            j.next = next;
        }
        drop(t);
        self.flush_if_full().await?;
        Ok(Some(n))
    }

    /// Before `(vol, chunk)` changes: advance every job filling from `vol`
    /// that has not passed `chunk`, so it shares what the chunk held when
    /// the job began. A write waits for at most the job's share of this
    /// zone; with no job running this is one check of an empty list.
    pub(super) async fn catch_up(&self, vol: u32, chunk: u64) -> Result<()> {
        loop {
            let behind = self
                .st
                .borrow()
                .jobs
                .iter()
                .find(|j| j.src.id == vol && j.next <= chunk && j.open())
                .map(|j| j.dst.id);
            let Some(dst) = behind else {
                return Ok(());
            };
            self.job_step(dst).await?;
        }
    }

    /// Chunks the next share step may take: as many as the metadata area
    /// has room for (after a checkpoint if that frees some), at most
    /// `SHARE_MAX_CHUNKS`.
    async fn share_step_cap(&self) -> Result<usize> {
        self.reserve_meta(META_RESERVE + SHARE_META_PER_CHUNK)
            .await?;
        let room = (self.meta.free_blocks() - META_RESERVE) / SHARE_META_PER_CHUNK;
        Ok((room as usize).min(SHARE_MAX_CHUNKS))
    }

    /// `dst` maps no chunk in `[a, b]` here, else [`Error::Exists`].
    async fn dst_unmapped(&self, t: &mut Trees<D>, dst: u32, a: u64, b: u64) -> Result<()> {
        match t.lmap.range(&(dst, a), &(dst, b), 1).await?.first() {
            Some(r) => Err(Error::Exists(format!(
                "volume {dst} chunk {} (in zone {}), which a share into it would replace",
                r.chunk, self.idx
            ))),
            None => Ok(()),
        }
    }

    /// Apply a [`Record::Share`]: everything is read and checked first, so
    /// a record that cannot be applied changes nothing. The same trees give
    /// the same records, live and in replay.
    pub(super) async fn apply_share(
        &self,
        t: &mut Trees<D>,
        src: u32,
        dst: u32,
        from: u64,
        to: u64,
    ) -> Result<()> {
        let last = to - 1;
        let recs = t
            .lmap
            .range(&(src, from), &(src, last), SHARE_MAX_CHUNKS + 1)
            .await?;
        let bad = |detail: String| {
            let log = self.geo.abs(self.idx, self.geo.log_start);
            Err(Error::corrupt(
                Structure::LogRecord,
                log,
                format!("zone {}: {detail}", self.idx),
            ))
        };
        if recs.len() > SHARE_MAX_CHUNKS {
            return bad(format!(
                "share of volume {src} chunks {from}..{to} covers more than \
                 {SHARE_MAX_CHUNKS} chunks"
            ));
        }
        if let Some(r) = t.lmap.range(&(dst, from), &(dst, last), 1).await?.first() {
            return bad(format!(
                "share of volume {src} chunks {from}..{to} into volume {dst}, which \
                 already maps chunk {}",
                r.chunk
            ));
        }
        for r in &recs {
            self.check_bitmap(&r.ext, true, src, r.chunk, "shares")?;
        }
        for r in recs {
            let e = r.ext;
            t.lmap
                .insert(LmapRec {
                    vol: dst,
                    chunk: r.chunk,
                    ext: e,
                })
                .await?;
            t.rmap
                .insert(RmapRec {
                    pblk: e.pblk,
                    count: e.nblk as u32,
                    owner: dst as u64,
                    offset: r.chunk,
                    flags: 0,
                })
                .await?;
            refcount::adjust(&mut t.refc, e.pblk, e.nblk as u32, Delta::Inc).await?;
            // No new blocks: data_blocks (physical) stays; the chunk counts
            // and dst's own space count the shared extent.
            let mut st = self.st.borrow_mut();
            st.counters.mapped_chunks += 1;
            st.counters.logical_bytes += e.chunk_size();
            st.space.mapped(dst, r.chunk, &e);
        }
        Ok(())
    }
}
