//! The zone superblock: two slots (A/B by generation parity) recording the
//! roots of the zone's trees, the bitmap copy checksum and where log replay
//! starts.

use crate::buf::BLOCK_SIZE;
use crate::codec::*;
use crate::error::{Error, Result, Structure};

const SB_MAGIC: &[u8; 8] = b"SLZONESB";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RootPtr {
    pub blk: u64,
    pub height: u8,
}

/// Running totals kept with each checkpoint so reporting needs no scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZoneCounters {
    /// Chunks mapped (each counts its full logical chunk size).
    pub mapped_chunks: u64,
    pub logical_bytes: u64,
    /// Data blocks referenced by the forward map, a shared block once
    /// (physical blocks in use).
    pub data_blocks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub zone: u32,
    pub uuid: [u8; 16],
    pub generation: u64,
    pub log_epoch: u64,
    /// First log block (sequence number) to replay.
    pub log_start_lsn: u64,
    /// Every intent record with seq <= this is reflected in the trees.
    pub applied_seq: u64,
    pub lmap_root: RootPtr,
    pub rmap_root: RootPtr,
    pub refc_root: RootPtr,
    pub bitmap_crc: u32,
    pub counters: ZoneCounters,
}

const O_ZONE: usize = 8;
const O_UUID: usize = 12;
const O_GEN: usize = 28;
const O_EPOCH: usize = 36;
const O_LSN: usize = 44;
const O_SEQ: usize = 52;
const O_ROOTS: usize = 60; // 3 x (u64 + u8 + pad 7)
const O_BMCRC: usize = 108;
const O_CNT: usize = 112; // 3 x u64
const O_CRC: usize = BLOCK_SIZE - 4;

impl Superblock {
    pub fn slot(&self) -> u32 {
        (self.generation % 2) as u32
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        b[0..8].copy_from_slice(SB_MAGIC);
        put_u32(&mut b, O_ZONE, self.zone);
        b[O_UUID..O_UUID + 16].copy_from_slice(&self.uuid);
        put_u64(&mut b, O_GEN, self.generation);
        put_u64(&mut b, O_EPOCH, self.log_epoch);
        put_u64(&mut b, O_LSN, self.log_start_lsn);
        put_u64(&mut b, O_SEQ, self.applied_seq);
        for (i, r) in [self.lmap_root, self.rmap_root, self.refc_root]
            .iter()
            .enumerate()
        {
            put_u64(&mut b, O_ROOTS + i * 16, r.blk);
            b[O_ROOTS + i * 16 + 8] = r.height;
        }
        put_u32(&mut b, O_BMCRC, self.bitmap_crc);
        put_u64(&mut b, O_CNT, self.counters.mapped_chunks);
        put_u64(&mut b, O_CNT + 8, self.counters.logical_bytes);
        put_u64(&mut b, O_CNT + 16, self.counters.data_blocks);
        let crc = crc_with_hole(&b, O_CRC);
        put_u32(&mut b, O_CRC, crc);
        b
    }

    /// Decode a slot; `None` if it was never written (all zero).
    pub fn decode(b: &[u8], block: u64, zone: u32, uuid: &[u8; 16]) -> Result<Option<Self>> {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let bad = |d: &str| Error::corrupt(Structure::Superblock, block, d.to_string());
        if &b[0..8] != SB_MAGIC {
            return Err(bad("bad magic"));
        }
        if get_u32(b, O_CRC) != crc_with_hole(&b[..BLOCK_SIZE], O_CRC) {
            return Err(bad("checksum mismatch"));
        }
        if get_u32(b, O_ZONE) != zone {
            return Err(bad("belongs to another zone"));
        }
        if &b[O_UUID..O_UUID + 16] != uuid {
            return Err(bad("belongs to another pool"));
        }
        let root = |i: usize| RootPtr {
            blk: get_u64(b, O_ROOTS + i * 16),
            height: b[O_ROOTS + i * 16 + 8],
        };
        Ok(Some(Superblock {
            zone,
            uuid: *uuid,
            generation: get_u64(b, O_GEN),
            log_epoch: get_u64(b, O_EPOCH),
            log_start_lsn: get_u64(b, O_LSN),
            applied_seq: get_u64(b, O_SEQ),
            lmap_root: root(0),
            rmap_root: root(1),
            refc_root: root(2),
            bitmap_crc: get_u32(b, O_BMCRC),
            counters: ZoneCounters {
                mapped_chunks: get_u64(b, O_CNT),
                logical_bytes: get_u64(b, O_CNT + 8),
                data_blocks: get_u64(b, O_CNT + 16),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let sb = Superblock {
            zone: 3,
            uuid: [9; 16],
            generation: 7,
            log_epoch: 2,
            log_start_lsn: 100,
            applied_seq: 5000,
            lmap_root: RootPtr { blk: 77, height: 2 },
            rmap_root: RootPtr { blk: 78, height: 1 },
            refc_root: RootPtr::default(),
            bitmap_crc: 0xdead,
            counters: ZoneCounters {
                mapped_chunks: 1,
                logical_bytes: 65536,
                data_blocks: 9,
            },
        };
        let b = sb.encode();
        assert_eq!(
            Superblock::decode(&b, 10, 3, &[9; 16]).unwrap(),
            Some(sb.clone())
        );
        assert!(Superblock::decode(&b, 10, 4, &[9; 16]).is_err());
        assert!(Superblock::decode(&b, 10, 3, &[8; 16]).is_err());
        let mut c = b.clone();
        c[50] ^= 2;
        assert!(Superblock::decode(&c, 10, 3, &[9; 16]).is_err());
        assert_eq!(
            Superblock::decode(&vec![0; 4096], 10, 3, &[9; 16]).unwrap(),
            None
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(4);
        for _ in 0..5000 {
            let mut b = vec![0u8; BLOCK_SIZE];
            rng.fill(&mut b[..]);
            b[0..8].copy_from_slice(SB_MAGIC);
            put_u32(&mut b, O_ZONE, 1);
            b[O_UUID..O_UUID + 16].copy_from_slice(&[5; 16]);
            if rng.gen_bool(0.7) {
                let crc = crc_with_hole(&b, O_CRC);
                put_u32(&mut b, O_CRC, crc);
            }
            let _ = Superblock::decode(&b, 0, 1, &[5; 16]);
        }
    }
}
