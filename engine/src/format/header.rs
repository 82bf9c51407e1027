//! The pool header (block 0) and the geometry derived from it.

use crate::buf::BLOCK_SIZE;
use crate::codec::*;
use crate::error::{Error, Result, Structure};

pub const POOL_MAGIC: &[u8; 8] = b"SLUICEPL";
/// Version 2: every metadata structure but B+tree nodes is kept twice (a
/// backup pool header, catalog copies that both carry the newest generation,
/// mirrored zone superblocks, bitmaps and intent log), so one bad block loses
/// nothing. Version 1 pools are refused (no released build wrote them).
pub const FORMAT_VERSION: u32 = 2;
/// Blocks per catalog copy.
pub const CATALOG_BLOCKS: u32 = 16;
/// The backup copy of the pool header: right after the two catalog copies.
pub const HEADER_BACKUP_BLK: u64 = 1 + 2 * CATALOG_BLOCKS as u64;
/// Copies of each zone superblock slot, bitmap and log block.
pub const COPIES: u32 = 2;

/// Where everything is, in 4 KiB blocks. Immutable after format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub uuid: [u8; 16],
    pub total_blocks: u64,
    pub zone0_start: u64,
    pub zone_blocks: u32,
    pub nzones: u32,
    pub catalog_start: u64,
    pub catalog_blocks: u32,
    /// Per copy: data bitmap (all zone blocks) then meta-area bitmap.
    pub bm_blocks: u32,
    pub log_start: u32,
    /// Blocks of the log ring; the region holds [`COPIES`] mirrors of it.
    pub log_blocks: u32,
    pub meta_start: u32,
    pub meta_blocks: u32,
    pub data_start: u32,
}

impl Geometry {
    /// Lay out a pool of `total_blocks` with zones of `zone_blocks`.
    pub fn compute(uuid: [u8; 16], total_blocks: u64, zone_blocks: u32) -> Result<Self> {
        if zone_blocks < 256 {
            return Err(Error::Invalid(format!(
                "zone size {} KiB is below the minimum of 1 MiB",
                zone_blocks as u64 * 4
            )));
        }
        let catalog_start = 1u64;
        // The two catalog copies, then the backup pool header.
        let zone0_start = catalog_start + 2 * CATALOG_BLOCKS as u64 + 1;
        let nzones = total_blocks.saturating_sub(zone0_start) / zone_blocks as u64;
        if nzones == 0 {
            return Err(Error::Invalid(format!(
                "device of {} blocks is too small for one zone of {} blocks",
                total_blocks, zone_blocks
            )));
        }
        if nzones > u32::MAX as u64 {
            return Err(Error::Invalid("too many zones".into()));
        }
        // Metadata area: room for every lmap+rmap record of a zone full of
        // 4 KiB chunks at half-full nodes, plus copy-on-write headroom.
        let meta_blocks = (zone_blocks / 16).max(48);
        let log_blocks = (zone_blocks / 64).clamp(16, 4096);
        let bm_bits = zone_blocks as u64 + meta_blocks as u64;
        let bm_blocks = bm_bits.div_ceil(8 * BLOCK_SIZE as u64) as u32;
        // Superblock slots A/B and their mirrors, then per slot two bitmap copies.
        let log_start = 2 * COPIES + 2 * COPIES * bm_blocks;
        let meta_start = log_start + COPIES * log_blocks;
        let data_start = meta_start + meta_blocks;
        if data_start + 16 > zone_blocks {
            return Err(Error::Invalid(format!(
                "zone of {zone_blocks} blocks leaves no room for data"
            )));
        }
        Ok(Geometry {
            uuid,
            total_blocks,
            zone0_start,
            zone_blocks,
            nzones: nzones as u32,
            catalog_start,
            catalog_blocks: CATALOG_BLOCKS,
            bm_blocks,
            log_start,
            log_blocks,
            meta_start,
            meta_blocks,
            data_start,
        })
    }

    /// Pool-absolute block of zone-relative block `rel` in zone `z`.
    #[inline]
    pub fn abs(&self, zone: u32, rel: u32) -> u64 {
        self.zone0_start + zone as u64 * self.zone_blocks as u64 + rel as u64
    }

    #[inline]
    pub fn data_blocks(&self) -> u32 {
        self.zone_blocks - self.data_start
    }

    /// Where the backup copy of the pool header lives (after the catalog).
    pub fn header_backup_blk(&self) -> u64 {
        HEADER_BACKUP_BLK
    }

    /// Zone-relative block of superblock `slot` (0/1), copy `copy`.
    pub fn sb_rel(&self, slot: u32, copy: u32) -> u32 {
        copy * 2 + slot
    }

    /// Zone-relative first block of the bitmap paired with `slot`, copy `copy`.
    pub fn bitmap_rel(&self, slot: u32, copy: u32) -> u32 {
        2 * COPIES + (slot * COPIES + copy) * self.bm_blocks
    }

    /// Zone-relative block of log ring position `pos`, copy `copy`.
    pub fn log_rel(&self, copy: u32, pos: u32) -> u32 {
        self.log_start + copy * self.log_blocks + pos
    }

    /// A zone's regions that are not data, as reverse-map special owners:
    /// (first block, blocks, owner), zone-relative.
    pub fn special_regions(&self) -> [(u32, u32, u64); 3] {
        use crate::format::owner;
        [
            (0, self.log_start, owner::ZONE_HEADER),
            (self.log_start, COPIES * self.log_blocks, owner::LOG),
            (self.meta_start, self.meta_blocks, owner::METADATA),
        ]
    }

    /// Blocks used by the header and catalog before zone 0.
    pub fn pool_header_blocks(&self) -> u64 {
        self.zone0_start
    }

    pub fn size_bytes(&self) -> u64 {
        (self.zone0_start + self.nzones as u64 * self.zone_blocks as u64) * BLOCK_SIZE as u64
    }

    /// Bytes of one bitmap copy that hold the data bitmap.
    pub fn data_bitmap_bytes(&self) -> usize {
        (self.zone_blocks as usize).div_ceil(8)
    }

    /// Lay out a pool on a device of `dev_bytes` with zones of `zone_size` bytes.
    pub fn for_device(uuid: [u8; 16], dev_bytes: u64, zone_size: u64) -> Result<Self> {
        let bs = BLOCK_SIZE as u64;
        if !zone_size.is_multiple_of(bs) || zone_size / bs > u32::MAX as u64 {
            return Err(Error::Invalid(format!(
                "zone size {zone_size} is not a multiple of 4 KiB"
            )));
        }
        Self::compute(uuid, dev_bytes / bs, (zone_size / bs) as u32)
    }

    /// Byte ranges of the pool that hold metadata, ascending, adjacent ones
    /// merged: the header and catalog before zone 0, and in every zone all
    /// before its data blocks. A thin pool file has these allocated at
    /// creation so that a full host file system fails only data writes.
    pub fn metadata_ranges(&self) -> Vec<std::ops::Range<u64>> {
        let bs = BLOCK_SIZE as u64;
        let mut out: Vec<std::ops::Range<u64>> = Vec::with_capacity(self.nzones as usize);
        let zones = (0..self.nzones).map(|z| self.abs(z, 0)..self.abs(z, self.data_start));
        for r in std::iter::once(0..self.zone0_start).chain(zones) {
            let r = r.start * bs..r.end * bs;
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }
}

/// Block 0 of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolHeader {
    pub version: u32,
    pub geo: Geometry,
    pub created_unix: u64,
}

const H_VERSION: usize = 8;
const H_UUID: usize = 16;
const H_CREATED: usize = 32;
const H_TOTAL: usize = 40;
const H_ZONE0: usize = 48;
const H_ZONE_BLOCKS: usize = 56;
const H_NZONES: usize = 60;
const H_CAT_START: usize = 64;
const H_CAT_BLOCKS: usize = 72;
const H_BM: usize = 76;
const H_LOG_START: usize = 80;
const H_LOG_BLOCKS: usize = 84;
const H_META_START: usize = 88;
const H_META_BLOCKS: usize = 92;
const H_DATA_START: usize = 96;
const H_CRC: usize = BLOCK_SIZE - 4;

impl PoolHeader {
    pub fn encode(&self) -> Vec<u8> {
        let g = &self.geo;
        let mut b = vec![0u8; BLOCK_SIZE];
        b[0..8].copy_from_slice(POOL_MAGIC);
        put_u32(&mut b, H_VERSION, self.version);
        b[H_UUID..H_UUID + 16].copy_from_slice(&g.uuid);
        put_u64(&mut b, H_CREATED, self.created_unix);
        put_u64(&mut b, H_TOTAL, g.total_blocks);
        put_u64(&mut b, H_ZONE0, g.zone0_start);
        put_u32(&mut b, H_ZONE_BLOCKS, g.zone_blocks);
        put_u32(&mut b, H_NZONES, g.nzones);
        put_u64(&mut b, H_CAT_START, g.catalog_start);
        put_u32(&mut b, H_CAT_BLOCKS, g.catalog_blocks);
        put_u32(&mut b, H_BM, g.bm_blocks);
        put_u32(&mut b, H_LOG_START, g.log_start);
        put_u32(&mut b, H_LOG_BLOCKS, g.log_blocks);
        put_u32(&mut b, H_META_START, g.meta_start);
        put_u32(&mut b, H_META_BLOCKS, g.meta_blocks);
        put_u32(&mut b, H_DATA_START, g.data_start);
        let crc = crc_with_hole(&b, H_CRC);
        put_u32(&mut b, H_CRC, crc);
        b
    }

    /// Decode and validate block 0; `dev_blocks` is the device size.
    pub fn decode(b: &[u8], dev_blocks: u64) -> Result<Self> {
        Self::decode_at(b, 0, dev_blocks)
    }

    /// Decode and validate a header copy read from `block` (0, or the backup).
    pub fn decode_at(b: &[u8], block: u64, dev_blocks: u64) -> Result<Self> {
        if b.len() < BLOCK_SIZE || &b[0..8] != POOL_MAGIC {
            return Err(Error::NotAPool(format!(
                "no sluice pool magic in block {block}"
            )));
        }
        let crc = get_u32(b, H_CRC);
        if crc != crc_with_hole(&b[..BLOCK_SIZE], H_CRC) {
            return Err(Error::corrupt(
                Structure::PoolHeader,
                block,
                "checksum mismatch",
            ));
        }
        let version = get_u32(b, H_VERSION);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[H_UUID..H_UUID + 16]);
        let total = get_u64(b, H_TOTAL);
        let zone_blocks = get_u32(b, H_ZONE_BLOCKS);
        // Recompute the layout and insist the stored one matches it: this
        // validates every field at once against impossible values.
        let expect = Geometry::compute(uuid, total, zone_blocks).map_err(|e| {
            Error::corrupt(Structure::PoolHeader, block, format!("bad geometry: {e}"))
        })?;
        let geo = Geometry {
            uuid,
            total_blocks: total,
            zone0_start: get_u64(b, H_ZONE0),
            zone_blocks,
            nzones: get_u32(b, H_NZONES),
            catalog_start: get_u64(b, H_CAT_START),
            catalog_blocks: get_u32(b, H_CAT_BLOCKS),
            bm_blocks: get_u32(b, H_BM),
            log_start: get_u32(b, H_LOG_START),
            log_blocks: get_u32(b, H_LOG_BLOCKS),
            meta_start: get_u32(b, H_META_START),
            meta_blocks: get_u32(b, H_META_BLOCKS),
            data_start: get_u32(b, H_DATA_START),
        };
        if geo != expect {
            return Err(Error::corrupt(
                Structure::PoolHeader,
                block,
                "stored geometry is inconsistent",
            ));
        }
        if total > dev_blocks {
            return Err(Error::corrupt(
                Structure::PoolHeader,
                block,
                format!("pool needs {total} blocks but the device has {dev_blocks}"),
            ));
        }
        Ok(PoolHeader {
            version,
            geo,
            created_unix: get_u64(b, H_CREATED),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_ranges_cover_header_and_each_zone_up_to_its_data() {
        let bs = BLOCK_SIZE as u64;
        let g = Geometry::for_device([1; 16], 1 << 30, 64 << 20).unwrap();
        let r = g.metadata_ranges();
        assert_eq!(r.len(), g.nzones as usize, "header merges with zone 0");
        assert_eq!(r[0], 0..g.abs(0, g.data_start) * bs);
        for z in 1..g.nzones {
            assert_eq!(r[z as usize], g.abs(z, 0) * bs..g.abs(z, g.data_start) * bs);
        }
        let total: u64 = r.iter().map(|x| x.end - x.start).sum();
        assert_eq!(
            total,
            (g.zone0_start + g.nzones as u64 * g.data_start as u64) * bs
        );
        assert!(Geometry::for_device([1; 16], 1 << 30, (64 << 20) + 512).is_err());
    }

    #[test]
    fn header_round_trip_and_flips_detected() {
        let geo = Geometry::compute([7; 16], 1 << 20, 65536).unwrap();
        let h = PoolHeader {
            version: FORMAT_VERSION,
            geo,
            created_unix: 12345,
        };
        let b = h.encode();
        assert_eq!(PoolHeader::decode(&b, 1 << 20).unwrap(), h);
        for i in [10usize, 20, 50, 90, 4000] {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(
                PoolHeader::decode(&c, 1 << 20).is_err(),
                "flip at {i} undetected"
            );
        }
        let mut newer = h.clone();
        newer.version = 99;
        assert!(matches!(
            PoolHeader::decode(&newer.encode(), 1 << 20),
            Err(Error::UnsupportedVersion { found: 99, .. })
        ));
        assert!(matches!(
            PoolHeader::decode(&vec![0; 4096], 1 << 20),
            Err(Error::NotAPool(_))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        for _ in 0..2000 {
            let mut b = vec![0u8; BLOCK_SIZE];
            rng.fill(&mut b[..]);
            if rng.gen_bool(0.5) {
                b[0..8].copy_from_slice(POOL_MAGIC);
            }
            let _ = PoolHeader::decode(&b, rng.gen());
        }
    }
}
