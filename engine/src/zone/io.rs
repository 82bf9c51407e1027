//! Chunk reads and writes.
//!
//! The dm-compress stale-read race is impossible by construction:
//! - every read or write of a chunk holds that chunk's FIFO reader/writer
//!   lock, so a read issued after a write waits for it, and writes to one
//!   chunk are applied in arrival order;
//! - data always goes to freshly allocated blocks (never over live data);
//! - blocks a write frees stay *busy* (unallocatable) until the intent record
//!   that freed them is durable, so no write can land on blocks that a crash
//!   would bring back into use, nor on blocks a concurrent read still reads
//!   (that read holds the chunk lock the freeing write needs).

use super::Zone;
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::compress::{self, Encoded};
use crate::dev::BlockDev;
use crate::error::{Error, Result, Structure};
use crate::format::Compression;
use crate::intent_log::{ChunkExtent, Record};
use crate::volume::{ChunkSpan, VolInfo, WritePiece};
use futures::future::join_all;

impl<D: BlockDev> Zone<D> {
    /// Where (vol, chunk) is stored, if anywhere.
    pub async fn lookup(&self, vol: u32, chunk: u64) -> Result<Option<ChunkExtent>> {
        let mut t = self.trees.lock().await;
        Ok(t.lmap.get(&(vol, chunk)).await?.map(|r| r.ext))
    }

    /// The first chunk of `vol` in `[from, to)` mapped in this zone.
    pub async fn first_mapped(&self, vol: u32, from: u64, to: u64) -> Result<Option<u64>> {
        if from >= to {
            return Ok(None);
        }
        let mut t = self.trees.lock().await;
        let r = t.lmap.range(&(vol, from), &(vol, to - 1), 1).await?;
        Ok(r.first().map(|r| r.chunk))
    }

    /// Pool-absolute block of the forward-map leaf that holds (or would
    /// hold) `(vol, chunk)`: for diagnostics and tests that damage it.
    pub async fn lmap_leaf_of(&self, vol: u32, chunk: u64) -> Result<u64> {
        let t = self.trees.lock().await;
        t.lmap.leaf_of(&(vol, chunk)).await
    }

    /// Whether the chunk holds data (false: a hole that reads as zeros).
    /// Served by a shut-down zone too, like reads.
    pub async fn is_mapped(&self, vol: &VolInfo, chunk: u64) -> Result<bool> {
        let _g = self.chunks.read((vol.id, chunk)).await;
        self.check_bytes(vol.id, chunk << vol.chunk_shift, 1)?;
        Ok(self.lookup(vol.id, chunk).await?.is_some())
    }

    /// Read `span` of a chunk into `out` (`out.len() == span.len`).
    pub async fn read(&self, vol: &VolInfo, span: ChunkSpan, out: &mut [u8]) -> Result<()> {
        match self.read_span(vol, span).await? {
            Some(buf) => out.copy_from_slice(&buf),
            None => out.fill(0),
        }
        Ok(())
    }

    /// Read `span` of a chunk: `None` when the chunk is a hole (reads as
    /// zeros), else a buffer of exactly `span.len` bytes.
    ///
    /// A shut-down zone still reads: it writes nothing more, so no data
    /// block its maps name can be reused, and the maps in memory name what
    /// was written last (full-chunk reads verify the chunk crc as always).
    pub async fn read_span(&self, vol: &VolInfo, span: ChunkSpan) -> Result<Option<AlignedBuf>> {
        let cs = vol.chunk_size();
        let _g = self.chunks.read((vol.id, span.chunk)).await;
        self.check_end(vol, span)?;
        let ext = self.lookup(vol.id, span.chunk).await?;
        self.st.borrow_mut().stats.chunk_reads += 1;
        let Some(e) = ext else {
            return Ok(None);
        };
        // Every read verifies the chunk's crc, partial reads of raw chunks
        // too: they read the whole chunk (a flipped byte is never data).
        let mut chunk = self.load_chunk(&e, cs).await?;
        if !span.full(cs) {
            chunk.copy_within(span.off..span.off + span.len, 0);
            chunk.set_len(span.len);
        }
        Ok(Some(chunk))
    }

    /// Write `data` (`span.len` bytes) over `span` of a chunk
    /// (read-modify-write when partial). A whole chunk's buffer goes to the
    /// device as it is: no copy.
    pub async fn write(&self, vol: &VolInfo, span: ChunkSpan, data: AlignedBuf) -> Result<()> {
        self.check_ok()?;
        if vol.read_only {
            return Err(Error::ReadOnly(format!("volume {} is read-only", vol.id)));
        }
        let cs = vol.chunk_size();
        let _g = self.chunks.write((vol.id, span.chunk)).await;
        self.check_end(vol, span)?;
        let chunk = if span.full(cs) {
            data
        } else {
            let mut c = match self.lookup(vol.id, span.chunk).await? {
                Some(e) => {
                    self.st.borrow_mut().stats.rmw_reads += 1;
                    self.load_chunk(&e, cs).await?
                }
                None => AlignedBuf::zeroed(cs),
            };
            c[span.off..span.off + span.len].copy_from_slice(&data);
            c
        };
        self.store(vol, span.chunk, chunk).await
    }

    /// Write whole chunks `first..first + n` (`n = data.len() / chunk size`,
    /// all homed in this zone) with one allocation and one device write,
    /// then commit a record per chunk. A 128 KiB write to a 4 KiB-chunk
    /// volume was 32 allocations and 32 device writes. Chunks are locked in
    /// ascending order (no deadlock with other runs; single-chunk I/O holds
    /// one lock at a time). When the zone has no free run that long, each
    /// chunk is stored on its own.
    pub async fn write_run(&self, vol: &VolInfo, first: u64, data: AlignedBuf) -> Result<()> {
        let cs = vol.chunk_size();
        let n = data.len() / cs;
        if n == 0 || !data.len().is_multiple_of(cs) {
            return Err(Error::Invalid(format!(
                "write_run of {} bytes is not whole {cs}-byte chunks",
                data.len()
            )));
        }
        if n == 1 {
            let span = ChunkSpan {
                chunk: first,
                off: 0,
                len: cs,
                buf_off: 0,
            };
            return self.write(vol, span, data).await;
        }
        self.check_ok()?;
        if vol.read_only {
            return Err(Error::ReadOnly(format!("volume {} is read-only", vol.id)));
        }
        let mut guards = Vec::with_capacity(n);
        for c in first..first + n as u64 {
            guards.push(self.chunks.write((vol.id, c)).await);
        }
        let whole = ChunkSpan {
            chunk: first,
            off: 0,
            len: n * cs,
            buf_off: 0,
        };
        self.check_end(vol, whole)?;
        let (buf, pieces) = pack_run(vol.compression, cs, data);
        let at = self.place_run(buf, &pieces).await?;
        for (i, (p, &pblk)) in pieces.iter().zip(&at).enumerate() {
            let ext = p.extent(pblk, vol.chunk_shift);
            if let Err(e) = self.commit_chunk(vol, first + i as u64, ext).await {
                if let Error::OutOfRange(_) = e {
                    // Refused before logging (a shrink got here first).
                    self.release_run(&pieces[i..], &at[i..]);
                }
                return Err(e);
            }
        }
        drop(guards);
        Ok(())
    }

    /// Write one piece of a request cut by [`VolInfo::write_pieces`]: a run
    /// of whole chunks, or one (partial) chunk.
    pub async fn write_piece(&self, vol: &VolInfo, p: &WritePiece, data: AlignedBuf) -> Result<()> {
        if p.run {
            self.write_run(vol, p.span.chunk, data).await
        } else {
            self.write(vol, p.span, data).await
        }
    }

    /// Allocate and write the packed chunks of a run; returns each
    /// piece's first block (0 for holes). One run of blocks when the zone
    /// has one below its mark; else block by block (a zone fragmented by
    /// random overwrites), the chunks that land next to each other written
    /// together and all the writes issued at once.
    async fn place_run(&self, buf: AlignedBuf, pieces: &[RunPiece]) -> Result<Vec<u32>> {
        let nblk = (buf.len() / BLOCK_SIZE) as u32;
        let mut at = Vec::with_capacity(pieces.len());
        if nblk == 0 {
            at.resize(pieces.len(), 0);
            return Ok(at);
        }
        // No flush to make room for the whole run: a fragmented zone may
        // have none for a long while, and a log flush per write would cost
        // far more than splitting it.
        if let Some(p) = self.try_alloc(nblk, false) {
            at.extend(pieces.iter().map(|pc| p + pc.blk));
        } else {
            for pc in pieces {
                if pc.nblk == 0 {
                    at.push(0);
                    continue;
                }
                match self.alloc(pc.nblk).await {
                    Ok(p) => at.push(p),
                    Err(e) => {
                        self.release_run(pieces, &at);
                        return Err(e);
                    }
                }
            }
        }
        // Pieces are back to back in `buf`; merge those adjacent on disk.
        let mut groups: Vec<(u32, usize, usize)> = Vec::new();
        for (pc, &p) in pieces.iter().zip(&at).filter(|(pc, _)| pc.nblk > 0) {
            let (from, to) = (
                pc.blk as usize * BLOCK_SIZE,
                (pc.blk + pc.nblk) as usize * BLOCK_SIZE,
            );
            if let Some(g) = groups.last_mut() {
                if g.2 == from && g.0 + ((g.2 - g.1) / BLOCK_SIZE) as u32 == p {
                    g.2 = to;
                    continue;
                }
            }
            groups.push((p, from, to));
        }
        let r = if let [(p, _, _)] = groups[..] {
            self.write_blocks(p, buf).await // the whole packed buffer, no copy
        } else {
            let writes = groups
                .iter()
                .map(|&(p, from, to)| self.write_blocks(p, AlignedBuf::from_slice(&buf[from..to])));
            join_all(writes).await.into_iter().collect()
        };
        if let Err(e) = r {
            self.release_run(pieces, &at);
            return Err(e);
        }
        self.count_written(pieces.iter().filter(|p| p.nblk > 0).count(), nblk);
        Ok(at)
    }

    /// Give back the blocks `place_run` took for the first `at.len()` pieces.
    fn release_run(&self, pieces: &[RunPiece], at: &[u32]) {
        let mut st = self.st.borrow_mut();
        for (pc, &p) in pieces.iter().zip(at).filter(|(pc, _)| pc.nblk > 0) {
            st.release(p, pc.nblk);
        }
    }

    /// Make `span` read as zeros; whole chunks become holes (TRIM and
    /// WRITE_ZEROES both land here: a hole reads as zeros).
    pub async fn write_zeroes(&self, vol: &VolInfo, span: ChunkSpan) -> Result<()> {
        self.check_ok()?;
        if vol.read_only {
            return Err(Error::ReadOnly(format!("volume {} is read-only", vol.id)));
        }
        let _g = self.chunks.write((vol.id, span.chunk)).await;
        self.check_end(vol, span)?;
        self.zero_locked(vol, span).await
    }

    /// [`Self::write_zeroes`] once the chunk's write lock is held and the
    /// range checked (a shrink zeroes the cut tail past the new end).
    pub(crate) async fn zero_locked(&self, vol: &VolInfo, span: ChunkSpan) -> Result<()> {
        let cs = vol.chunk_size();
        let Some(e) = self.lookup(vol.id, span.chunk).await? else {
            return Ok(());
        };
        if span.full(cs) {
            return self
                .commit(Record::Unmap {
                    vol: vol.id,
                    chunk: span.chunk,
                })
                .await;
        }
        let mut c = self.load_chunk(&e, cs).await?;
        c[span.off..span.off + span.len].fill(0);
        self.store(vol, span.chunk, c).await
    }

    /// Compress, allocate, write and commit a whole chunk. Caller holds the
    /// chunk's write lock.
    async fn store(&self, vol: &VolInfo, chunk: u64, data: AlignedBuf) -> Result<()> {
        let cs = data.len();
        let mut scratch = compress::scratch_for_chunks(vol.compression, cs);
        let (buf, stored_len, compressed) =
            match compress::encode(vol.compression, &data, &mut scratch) {
                Encoded::Hole => return self.commit_chunk(vol, chunk, None).await,
                Encoded::Raw => (data, cs, false),
                Encoded::Compressed { len } => {
                    let padded = len.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
                    scratch.set_len(padded);
                    scratch[len..].fill(0);
                    (scratch, len, true)
                }
            };
        let nblk = (buf.len() / BLOCK_SIZE) as u32;
        let crc = crc32c::crc32c(&buf[..stored_len]);
        let pblk = self.alloc(nblk).await?;
        if let Err(e) = self.write_blocks(pblk, buf).await {
            self.st.borrow_mut().release(pblk, nblk);
            return Err(e);
        }
        self.count_written(1, nblk);
        let ext = ChunkExtent {
            pblk,
            nblk: nblk as u16,
            flags: ChunkExtent::flags_for(compressed, vol.chunk_shift),
            stored_len: stored_len as u32,
            crc,
        };
        let r = self.commit_chunk(vol, chunk, Some(ext)).await;
        if let Err(Error::OutOfRange(_)) = r {
            // Refused before logging (a shrink got here first).
            self.st.borrow_mut().release(pblk, nblk);
        }
        r
    }

    /// Write `buf` at data block `pblk` (the caller owns the blocks and
    /// gives them back on error). A host file system that is full (or over
    /// quota) under a thin pool file fails the write with no-space, which
    /// the client sees as ENOSPC; the zone stays online, since its metadata
    /// was allocated at creation and nothing durable is in doubt.
    async fn write_blocks(&self, pblk: u32, buf: AlignedBuf) -> Result<()> {
        self.preallocate_ahead(pblk + (buf.len() / BLOCK_SIZE) as u32)
            .await;
        let off = self.byte_off(pblk);
        let nblk = buf.len() / BLOCK_SIZE;
        let (_buf, r) = self.dev.write_at(buf, off).await;
        r.map_err(|err| match err.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Error::NoSpace(format!(
                "host file system full: zone {} could not write {nblk} data blocks at byte {off}: {err}",
                self.idx
            )),
            _ => Error::io("write", off, err),
        })
    }

    /// Keep backing space allocated a step ahead of the data written. On a
    /// thin pool file a write to a never-allocated extent makes the file
    /// system allocate, which a non-blocking submission cannot do inline
    /// (after a sequential fill, every random overwrite lands past the
    /// high-water mark until freed blocks come back). So when a write comes
    /// within half a step of the allocated end, the next step (1/32 of the
    /// zone, 8 MiB of 256 MiB) is allocated, once, by the write that crossed
    /// it. The file runs at most a step ahead of the zone's high-water mark.
    /// A failed allocation is only a hint lost: the write that needs the
    /// space reports it (ENOSPC).
    async fn preallocate_ahead(&self, end: u32) {
        let (from, to) = {
            let mut st = self.st.borrow_mut();
            let g = &self.geo;
            let step = (g.data_blocks() / PREALLOC_STEPS).max(16);
            let edge = end.max(st.hwm);
            if edge + step / 2 <= st.prealloc_end {
                return;
            }
            let from = st.prealloc_end.max(g.data_start);
            let to = (edge + step).min(g.zone_blocks);
            st.prealloc_end = to;
            (from, to)
        };
        if to > from {
            let len = (to - from) as u64 * BLOCK_SIZE as u64;
            let _hint = self.dev.preallocate(self.byte_off(from), len).await;
            self.st.borrow_mut().stats.preallocations += 1;
        }
    }

    fn count_written(&self, chunks: usize, blocks: u32) {
        let mut st = self.st.borrow_mut();
        st.stats.data_blocks_written += blocks as u64;
        st.stats.chunk_writes += chunks as u64;
    }

    /// Commit where a chunk now lives: `ext`, or nowhere (a hole: unmapped
    /// if it was mapped). Caller holds the chunk's write lock.
    async fn commit_chunk(
        &self,
        vol: &VolInfo,
        chunk: u64,
        ext: Option<ChunkExtent>,
    ) -> Result<()> {
        match ext {
            Some(ext) => {
                let rec = Record::Map {
                    vol: vol.id,
                    chunk,
                    ext,
                };
                self.commit(rec).await
            }
            None if self.lookup(vol.id, chunk).await?.is_some() => {
                self.commit(Record::Unmap { vol: vol.id, chunk }).await
            }
            None => Ok(()),
        }
    }

    /// Reserve `n` contiguous free data blocks. When none are free but some
    /// are busy, make the log durable (which frees them) and try again.
    async fn alloc(&self, n: u32) -> Result<u32> {
        for attempt in 0..2 {
            if let Some(p) = self.try_alloc(n, true) {
                return Ok(p);
            }
            if attempt == 1 || self.st.borrow().busy.is_empty() {
                break;
            }
            self.flush().await?;
        }
        Err(Error::NoSpace(format!(
            "zone {} has no run of {} free blocks ({} free)",
            self.idx,
            n,
            self.free_data_blocks()
        )))
    }

    /// Reserve `n` contiguous free data blocks if there are: next fit below
    /// the high-water mark, else grow the mark (always if `grow_any`).
    fn try_alloc(&self, n: u32, grow_any: bool) -> Option<u32> {
        let mut st = self.st.borrow_mut();
        let (lo, hi) = (self.geo.data_start, self.geo.zone_blocks);
        let (from, hwm) = (st.cursor, st.hwm.max(lo));
        let known_miss = st.run_miss.is_some_and(|(m, f)| n >= m && f == st.frees);
        let below = if known_miss {
            None
        } else {
            let b = st.alloc.find_run(lo, hwm, from, n);
            if b.is_none() && n > 1 {
                st.run_miss = Some((n, st.frees));
            }
            b
        };
        // A wide write may grow the mark past free blocks below it by at
        // most RUN_SLACK of the zone (what is free below can then not
        // exceed that); beyond, it is stored chunk by chunk in the gaps, so
        // the touched part of a thin pool file stays live + busy + slack.
        let free_below = hwm.saturating_sub(st.alloc.count_ones());
        let slack = (hi - lo) / RUN_SLACK;
        if below.is_none() && !grow_any && free_below >= n && free_below + n > slack {
            return None;
        }
        let p = below.or_else(|| st.alloc.find_run(lo, hi, hwm, n))?;
        st.alloc.set_range(p, n);
        st.cursor = p + n;
        st.hwm = st.hwm.max(p + n);
        Some(p)
    }

    /// Sanity-check a forward-map extent before trusting it for I/O.
    fn check_extent(&self, e: &ChunkExtent, cs: usize) -> Result<()> {
        let end = e.pblk as u64 + e.nblk as u64;
        let ok = e.pblk >= self.geo.data_start
            && end <= self.geo.zone_blocks as u64
            && e.nblk > 0
            && e.stored_len as usize <= e.nblk as usize * BLOCK_SIZE
            && e.chunk_size() == cs as u64
            && (e.compressed() || e.stored_len as usize == cs);
        if ok {
            Ok(())
        } else {
            Err(Error::corrupt(
                Structure::BtreeNode,
                self.geo.abs(self.idx, self.geo.meta_start),
                format!(
                    "zone {} lmap extent {e:?} is impossible for a {cs}-byte chunk",
                    self.idx
                ),
            ))
        }
    }

    /// Read, verify and (if needed) decompress a whole chunk.
    pub(crate) async fn load_chunk(&self, e: &ChunkExtent, cs: usize) -> Result<AlignedBuf> {
        self.check_extent(e, cs)?;
        let off = self.byte_off(e.pblk);
        let (buf, r) = self
            .dev
            .read_at(AlignedBuf::filled_later(e.nblk as usize * BLOCK_SIZE), off)
            .await;
        r.map_err(|err| Error::io("read", off, err))?;
        let stored = &buf[..e.stored_len as usize];
        let blk = off / BLOCK_SIZE as u64;
        if crc32c::crc32c(stored) != e.crc {
            return Err(Error::corrupt(
                Structure::ChunkData,
                blk,
                format!("checksum mismatch in zone {} ({} blocks)", self.idx, e.nblk),
            ));
        }
        if e.compressed() {
            let mut out = AlignedBuf::zeroed(cs);
            compress::decode(stored, &mut out, blk)?;
            Ok(out)
        } else {
            Ok(buf)
        }
    }

    /// Unmap every chunk of `vol` at or beyond `first` (volume shrink).
    pub async fn unmap_from(&self, vol: &VolInfo, first: u64) -> Result<()> {
        loop {
            let recs = {
                let mut t = self.trees.lock().await;
                t.lmap
                    .range(&(vol.id, first), &(vol.id, u64::MAX), 256)
                    .await?
            };
            if recs.is_empty() {
                return Ok(());
            }
            for r in recs {
                let _g = self.chunks.write((vol.id, r.chunk)).await;
                self.commit(Record::Unmap {
                    vol: vol.id,
                    chunk: r.chunk,
                })
                .await?;
            }
        }
    }

    /// Remove every chunk of a volume from this zone (one intent record).
    pub async fn delete_volume(&self, vol: u32) -> Result<()> {
        self.check_ok()?;
        self.commit(Record::DeleteVolume { vol }).await
    }
}

/// A wide write may leave up to 1/RUN_SLACK of a zone's data blocks free
/// below the high-water mark to stay one contiguous write (8 MiB of a
/// 256 MiB zone).
const RUN_SLACK: u32 = 32;

/// Backing space is allocated ahead of the data in steps of 1/PREALLOC_STEPS
/// of a zone's data blocks.
const PREALLOC_STEPS: u32 = 32;

/// Where one chunk of a run sits in the packed buffer (`nblk == 0`: a hole).
struct RunPiece {
    blk: u32,
    nblk: u32,
    stored_len: usize,
    compressed: bool,
    crc: u32,
}

impl RunPiece {
    /// The chunk's extent if it was stored at `pblk` (`None` for a hole).
    fn extent(&self, pblk: u32, chunk_shift: u8) -> Option<ChunkExtent> {
        (self.nblk > 0).then(|| ChunkExtent {
            pblk,
            nblk: self.nblk as u16,
            flags: ChunkExtent::flags_for(self.compressed, chunk_shift),
            stored_len: self.stored_len as u32,
            crc: self.crc,
        })
    }
}

/// Encode the chunks of `data` back to back, each padded to whole blocks;
/// all-zero chunks take no space. An uncompressed run without holes is
/// `data` itself (no copy).
fn pack_run(comp: Compression, cs: usize, data: AlignedBuf) -> (AlignedBuf, Vec<RunPiece>) {
    let n = data.len() / cs;
    let cblk = (cs / BLOCK_SIZE) as u32;
    let mut pieces = Vec::with_capacity(n);
    if !compress::may_compress(comp, cs) && !data.chunks_exact(cs).any(compress::is_zero) {
        for (i, d) in data.chunks_exact(cs).enumerate() {
            pieces.push(RunPiece {
                blk: i as u32 * cblk,
                nblk: cblk,
                stored_len: cs,
                compressed: false,
                crc: crc32c::crc32c(d),
            });
        }
        return (data, pieces);
    }
    // LZ4 wants room for its worst case, so it compresses into one scratch
    // buffer and what pays (saves a block) is copied over; the packed
    // buffer is then never longer than the data.
    let mut out = AlignedBuf::filled_later(n * cs);
    let mut scratch = compress::scratch_for_chunks(comp, cs);
    let mut pos = 0usize;
    for d in data.chunks_exact(cs) {
        let blk = (pos / BLOCK_SIZE) as u32;
        let (stored_len, compressed) = match compress::encode(comp, d, &mut scratch) {
            Encoded::Hole => {
                pieces.push(RunPiece {
                    blk,
                    nblk: 0,
                    stored_len: 0,
                    compressed: false,
                    crc: 0,
                });
                continue;
            }
            Encoded::Compressed { len } => {
                out[pos..pos + len].copy_from_slice(&scratch[..len]);
                (len, true)
            }
            Encoded::Raw => {
                out[pos..pos + cs].copy_from_slice(d);
                (cs, false)
            }
        };
        let padded = stored_len.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        out[pos + stored_len..pos + padded].fill(0);
        pieces.push(RunPiece {
            blk,
            nblk: (padded / BLOCK_SIZE) as u32,
            stored_len,
            compressed,
            crc: crc32c::crc32c(&out[pos..pos + stored_len]),
        });
        pos += padded;
    }
    out.set_len(pos);
    (out, pieces)
}
