//! Volume ends a zone enforces itself, and a zone's share of a shrink.
//!
//! Callers check requests against the size in their `VolInfo`, a copy that
//! an open NBD connection keeps for its whole life. A resize therefore also
//! tells every zone the volume's new end ([`Zone::set_volume_end`]), on the
//! zone's own thread, and the zone refuses what lies past it:
//! - on entry to a read, write, zeroing or lookup, after taking the chunk
//!   lock (so a write queued behind a shrink's tail zeroing cannot land
//!   after it);
//! - at commit, under the trees lock, for every new mapping (`admit`), so a
//!   write that passed the entry check before the shrink cannot commit a
//!   chunk past the end after the shrink's unmap scan has gone by.
//!
//! Together a shrink is airtight: data past the new end never comes back
//! after a grow. Ends are in memory only; after a restart every `VolInfo`
//! comes from the catalog, which already has the new size.

use super::Zone;
use crate::dev::BlockDev;
use crate::error::{Error, Result};
use crate::intent_log::Record;
use crate::volume::{ChunkSpan, VolInfo};

impl<D: BlockDev> Zone<D> {
    /// From now on refuse I/O to `vol` past byte `size` (a resize).
    pub fn set_volume_end(&self, vol: u32, size: u64) {
        let mut ends = self.ends.borrow_mut();
        match ends.iter_mut().find(|(v, _)| *v == vol) {
            Some(e) => e.1 = size,
            None => ends.push((vol, size)),
        }
    }

    /// Forget a deleted volume's end (ids are never reused).
    pub fn forget_volume_end(&self, vol: u32) {
        self.ends.borrow_mut().retain(|(v, _)| *v != vol);
    }

    /// The end this zone enforces for `vol`, if a resize set one.
    pub fn volume_end(&self, vol: u32) -> Option<u64> {
        self.ends
            .borrow()
            .iter()
            .find(|(v, _)| *v == vol)
            .map(|e| e.1)
    }

    /// Refuse `span` of a chunk if it reaches past the volume's end.
    pub(crate) fn check_end(&self, vol: &VolInfo, span: ChunkSpan) -> Result<()> {
        let start = (span.chunk << vol.chunk_shift) + span.off as u64;
        self.check_bytes(vol.id, start, span.len as u64)
    }

    pub(crate) fn check_bytes(&self, vol: u32, start: u64, len: u64) -> Result<()> {
        match self.volume_end(vol) {
            Some(end) if start.saturating_add(len) > end => Err(Error::OutOfRange(format!(
                "bytes {start}..+{len} of volume {vol} beyond its end {end} (resized)"
            ))),
            _ => Ok(()),
        }
    }

    /// Refuse a new mapping of a chunk that starts at or past the volume's
    /// end. Called by `commit` under the trees lock, so the check and the
    /// mapping are one step relative to a shrink's unmap scan.
    pub(crate) fn admit(&self, rec: &Record) -> Result<()> {
        match *rec {
            Record::Map { vol, chunk, ext } => {
                self.check_bytes(vol, chunk.saturating_mul(ext.chunk_size()), 1)
            }
            _ => Ok(()),
        }
    }

    /// This zone's share of shrinking `vol` (its old geometry) to `size`:
    /// enforce the new end, zero the cut tail of the last chunk if it lives
    /// here, unmap every chunk past the end, and make it durable. Each zone
    /// sets its end before its own scan, so zones can do this in parallel.
    pub async fn shrink_volume(&self, vol: &VolInfo, size: u64) -> Result<()> {
        self.check_ok()?;
        self.set_volume_end(vol.id, size);
        let cs = vol.chunk_size() as u64;
        let first = size.div_ceil(cs);
        let tail_end = first * cs;
        if tail_end > size && vol.zone_of(size / cs, self.geo.nzones) == self.idx {
            let span = ChunkSpan {
                chunk: size / cs,
                off: (size % cs) as usize,
                len: (tail_end - size) as usize,
                buf_off: 0,
            };
            let _g = self.chunks.write((vol.id, span.chunk)).await;
            self.zero_locked(vol, span).await?;
        }
        self.unmap_from(vol, first).await?;
        self.flush().await
    }
}
