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
        let last = to - 1;
        self.check_ok()?;
        {
            let mut t = self.trees.lock().await;
            self.dst_unmapped(&mut t, dst.id, from, last).await?;
        }
        let mut shared = 0u64;
        let mut cur = from;
        while cur < to {
            let cap = self.share_step_cap().await?;
            let mut t = self.trees.lock().await;
            let recs = t
                .lmap
                .range(&(src.id, cur), &(src.id, last), cap + 1)
                .await?;
            let Some(first) = recs.first() else {
                break;
            };
            let n = recs.len().min(cap);
            // The step ends where the chunk it cannot take begins.
            let end = recs.get(cap).map_or(to, |r| r.chunk);
            let (a, b) = (first.chunk, recs[n - 1].chunk);
            self.dst_unmapped(&mut t, dst.id, a, b).await?;
            self.check_bytes(dst.id, b << dst.chunk_shift, 1)?;
            let rec = Record::Share {
                src: src.id,
                dst: dst.id,
                from: a,
                to: b + 1,
            };
            self.commit_locked(&mut t, rec).await?;
            drop(t);
            self.flush_if_full().await?;
            shared += n as u64;
            cur = end;
        }
        Ok(shared)
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
