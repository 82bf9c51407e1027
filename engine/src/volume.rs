//! Volumes as the data path sees them: chunk geometry, placement of chunks on
//! zones, and splitting a byte range into per-chunk pieces.

use crate::error::{Error, Result};
use crate::format::{Compression, VolumeEntry};

/// Logical bytes of a volume that map to consecutive chunks in one zone
/// before moving to the next zone (the stripe unit).
pub const STRIPE_BYTES: u64 = 1 << 20;
pub const MIN_CHUNK_SHIFT: u8 = 12;
pub const MAX_CHUNK_SHIFT: u8 = 20;
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Volume sizes are multiples of this. I/O ranges need no alignment: a
/// range that covers part of a chunk is a read-modify-write of that chunk
/// under its write lock (`zone::io`), so any byte offset and length work.
pub const SECTOR: u64 = 512;

/// What a zone needs to know about a volume to serve its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolInfo {
    pub id: u32,
    pub family: u32,
    pub chunk_shift: u8,
    pub compression: Compression,
    pub size: u64,
    pub read_only: bool,
}

impl VolInfo {
    pub fn from_entry(e: &VolumeEntry) -> Self {
        VolInfo {
            id: e.id,
            family: e.family,
            chunk_shift: e.chunk_shift,
            compression: e.compression,
            size: e.size,
            read_only: e.read_only(),
        }
    }

    #[inline]
    pub fn chunk_size(&self) -> usize {
        1 << self.chunk_shift
    }

    pub fn nchunks(&self) -> u64 {
        self.size.div_ceil(self.chunk_size() as u64)
    }

    /// Home zone of chunk `c`: stripes of STRIPE_BYTES rotate over the zones,
    /// starting at a family-dependent zone so volumes do not all begin in zone 0.
    #[inline]
    pub fn zone_of(&self, chunk: u64, nzones: u32) -> u32 {
        let per_stripe = (STRIPE_BYTES >> self.chunk_shift).max(1);
        let start = (self.family as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        ((start + chunk / per_stripe) % nzones as u64) as u32
    }

    /// Check an I/O range: inside the volume (any byte alignment).
    pub fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(Error::OutOfRange(format!(
                "bytes {offset}..+{len} beyond volume size {}",
                self.size
            )));
        }
        Ok(())
    }

    /// The pieces of `[offset, offset+len)`, one per chunk, in order.
    pub fn split(&self, offset: u64, len: u64) -> ChunkSpans {
        ChunkSpans {
            shift: self.chunk_shift,
            pos: offset,
            end: offset + len,
            start: offset,
        }
    }
}

/// Longest run of whole chunks written as one device write (a chunk is at
/// most this long too): stripes are this long, so a run rarely needs more.
pub const MAX_RUN_BYTES: usize = STRIPE_BYTES as usize;

/// One zone's share of a write: a run of whole consecutive chunks
/// (`run`), or one partial chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritePiece {
    pub zone: u32,
    /// The first chunk's span (for a run, its `chunk` and `buf_off`).
    pub span: ChunkSpan,
    /// Bytes of the request buffer it covers.
    pub len: usize,
    pub run: bool,
}

impl VolInfo {
    /// Cut a write into runs of consecutive whole chunks homed in one zone
    /// (at most [`MAX_RUN_BYTES`], or one chunk if chunks are longer) and
    /// single partial chunks, in request order.
    pub fn write_pieces(&self, offset: u64, len: usize, nzones: u32) -> Vec<WritePiece> {
        let cs = self.chunk_size();
        let max_run = MAX_RUN_BYTES.max(cs);
        let mut out: Vec<WritePiece> = Vec::new();
        for s in self.split(offset, len as u64) {
            let zone = self.zone_of(s.chunk, nzones);
            let full = s.full(cs);
            if let Some(last) = out.last_mut() {
                if full
                    && last.run
                    && last.zone == zone
                    && last.span.chunk + (last.len / cs) as u64 == s.chunk
                    && last.len + cs <= max_run
                {
                    last.len += cs;
                    continue;
                }
            }
            out.push(WritePiece {
                zone,
                span: s,
                len: s.len,
                run: full,
            });
        }
        out
    }
}

/// One chunk's share of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    pub chunk: u64,
    /// Offset inside the chunk.
    pub off: usize,
    pub len: usize,
    /// Offset inside the request buffer.
    pub buf_off: usize,
}

impl ChunkSpan {
    pub fn full(&self, chunk_size: usize) -> bool {
        self.off == 0 && self.len == chunk_size
    }
}

pub struct ChunkSpans {
    shift: u8,
    pos: u64,
    end: u64,
    start: u64,
}

impl Iterator for ChunkSpans {
    type Item = ChunkSpan;
    fn next(&mut self) -> Option<ChunkSpan> {
        if self.pos >= self.end {
            return None;
        }
        let cs = 1u64 << self.shift;
        let chunk = self.pos >> self.shift;
        let off = self.pos & (cs - 1);
        let len = (cs - off).min(self.end - self.pos);
        let s = ChunkSpan {
            chunk,
            off: off as usize,
            len: len as usize,
            buf_off: (self.pos - self.start) as usize,
        };
        self.pos += len;
        Some(s)
    }
}

/// Largest volume: 1 PiB.
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;

/// Validate a volume size: a positive multiple of 512 up to 1 PiB.
pub fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(SECTOR) || size > MAX_VOLUME_SIZE {
        return Err(Error::Invalid(format!(
            "volume size {size} must be a positive multiple of {SECTOR} up to 1 PiB"
        )));
    }
    Ok(())
}

/// Validate a chunk size: a power of two from 4 KiB to 1 MiB.
pub fn chunk_shift_for(chunk_size: u64) -> Result<u8> {
    if !chunk_size.is_power_of_two()
        || !(1u64 << MIN_CHUNK_SHIFT..=1u64 << MAX_CHUNK_SHIFT).contains(&chunk_size)
    {
        return Err(Error::Invalid(format!(
            "chunk size {chunk_size} must be a power of two from 4 KiB to 1 MiB"
        )));
    }
    Ok(chunk_size.trailing_zeros() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(shift: u8) -> VolInfo {
        VolInfo {
            id: 1,
            family: 1,
            chunk_shift: shift,
            compression: Compression::Lz4,
            size: 1 << 30,
            read_only: false,
        }
    }

    #[test]
    fn write_pieces_group_whole_chunks_per_zone() {
        let v = vol(12); // 4 KiB chunks, 256 per 1 MiB stripe
        let nz = 4;
        // 1 KiB into chunk 250 .. 3 KiB into chunk 262: a partial head,
        // chunks 251..=255 (one stripe), 256..=261 (the next stripe, another
        // zone), a partial tail.
        let off = 250 * 4096 + 1024;
        let len = 12 * 4096 + 2048;
        let p = v.write_pieces(off, len, nz);
        let got: Vec<_> = p.iter().map(|p| (p.span.chunk, p.len, p.run)).collect();
        assert_eq!(
            got,
            vec![
                (250, 3072, false),
                (251, 5 * 4096, true),
                (256, 6 * 4096, true),
                (262, 3072, false)
            ]
        );
        assert_ne!(p[1].zone, p[2].zone);
        assert_eq!(p.iter().map(|p| p.len).sum::<usize>(), len);
        assert_eq!(p[2].span.buf_off, 3072 + 5 * 4096);
        // One zone: runs still stop at MAX_RUN_BYTES.
        let p = v.write_pieces(0, 3 * MAX_RUN_BYTES, 1);
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|p| p.run && p.len == MAX_RUN_BYTES));
        // Chunks longer than a run: one chunk a piece.
        let v = vol(20);
        assert_eq!(v.write_pieces(0, 2 << 20, 1).len(), 2);
    }

    #[test]
    fn split_covers_range_exactly() {
        let v = vol(16);
        let spans: Vec<_> = v.split(65536 - 512, 65536 + 1024).collect();
        assert_eq!(spans.len(), 3);
        assert_eq!(
            spans[0],
            ChunkSpan {
                chunk: 0,
                off: 65024,
                len: 512,
                buf_off: 0
            }
        );
        assert_eq!(
            spans[1],
            ChunkSpan {
                chunk: 1,
                off: 0,
                len: 65536,
                buf_off: 512
            }
        );
        assert_eq!(
            spans[2],
            ChunkSpan {
                chunk: 2,
                off: 0,
                len: 512,
                buf_off: 66048
            }
        );
        assert!(spans[1].full(65536));
    }

    #[test]
    fn placement_stripes_evenly() {
        let v = vol(12);
        let mut count = [0u32; 8];
        for c in 0..(1u64 << 18) {
            count[v.zone_of(c, 8) as usize] += 1;
        }
        assert!(count.iter().all(|&n| n == (1 << 18) / 8), "{count:?}");
        // consecutive chunks of one stripe stay in one zone
        assert_eq!(v.zone_of(0, 8), v.zone_of(255, 8));
        assert_ne!(v.zone_of(0, 8), v.zone_of(256, 8));
    }

    #[test]
    fn ranges_and_chunk_sizes() {
        let v = vol(16);
        assert!(v.check_range(0, 512).is_ok());
        assert!(v.check_range(1, 511).is_ok());
        assert!(v.check_range((1 << 30) - 1, 1).is_ok());
        assert!(v.check_range((1 << 30) - 512, 1024).is_err());
        assert!(v.check_range(u64::MAX - 511, 512).is_err());
        assert_eq!(chunk_shift_for(65536).unwrap(), 16);
        assert!(chunk_shift_for(2048).is_err());
        assert!(chunk_shift_for(3 << 12).is_err());
        assert!(chunk_shift_for(2 << 20).is_err());
    }
}
