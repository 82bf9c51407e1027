//! The reverse map: for every used physical block of a zone, who owns it.
//! An overlapping-interval tree (records carry high keys), as XFS's rmapbt,
//! so shared blocks can have several owners later.

use crate::btree::BtreeOps;
use crate::codec::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmapRec {
    /// Zone-relative first block.
    pub pblk: u32,
    pub count: u32,
    /// A volume id, or one of `format::owner`'s special owners.
    pub owner: u64,
    /// Chunk index within the owner volume (0 for special owners).
    pub offset: u64,
    pub flags: u8,
}

/// Key: (pblk, owner, offset).
pub type RmapKey = (u32, u64, u64);

pub struct Rmap;

impl BtreeOps for Rmap {
    type Key = RmapKey;
    type Rec = RmapRec;
    const TREE_ID: u8 = 2;
    const NAME: &'static str = "rmap";
    const KEY_SIZE: usize = 20;
    const REC_SIZE: usize = 25;
    const OVERLAPPING: bool = true;

    fn key(r: &RmapRec) -> RmapKey {
        (r.pblk, r.owner, r.offset)
    }
    fn high_key(r: &RmapRec) -> RmapKey {
        (r.pblk + r.count.saturating_sub(1), r.owner, r.offset)
    }
    fn encode_key(k: &RmapKey, out: &mut [u8]) {
        put_u32(out, 0, k.0);
        put_u64(out, 4, k.1);
        put_u64(out, 12, k.2);
    }
    fn decode_key(b: &[u8]) -> RmapKey {
        (get_u32(b, 0), get_u64(b, 4), get_u64(b, 12))
    }
    fn encode_rec(r: &RmapRec, out: &mut [u8]) {
        put_u32(out, 0, r.pblk);
        put_u32(out, 4, r.count);
        put_u64(out, 8, r.owner);
        put_u64(out, 16, r.offset);
        out[24] = r.flags;
    }
    fn decode_rec(b: &[u8]) -> RmapRec {
        RmapRec {
            pblk: get_u32(b, 0),
            count: get_u32(b, 4),
            owner: get_u64(b, 8),
            offset: get_u64(b, 16),
            flags: b[24],
        }
    }
}
