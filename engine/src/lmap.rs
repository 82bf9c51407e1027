//! The forward map: (volume, chunk) -> where the chunk's bytes are.

use crate::btree::BtreeOps;
use crate::codec::*;
use crate::intent_log::ChunkExtent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LmapRec {
    pub vol: u32,
    pub chunk: u64,
    pub ext: ChunkExtent,
}

pub struct Lmap;

impl BtreeOps for Lmap {
    type Key = (u32, u64);
    type Rec = LmapRec;
    const TREE_ID: u8 = 1;
    const NAME: &'static str = "lmap";
    const KEY_SIZE: usize = 12;
    const REC_SIZE: usize = 27;
    const OVERLAPPING: bool = false;

    fn describe_keys(lo: Option<&(u32, u64)>, hi: Option<&(u32, u64)>) -> String {
        match (lo, hi) {
            (Some(&(v, c)), Some(&(hv, hc))) if v == hv => {
                format!("volume {v} chunks {c}..{hc}")
            }
            (Some(&(v, c)), Some(&(hv, hc))) => {
                format!("volume {v} chunks from {c}, up to volume {hv} chunk {hc}")
            }
            (Some(&(v, c)), None) => format!("volume {v} chunks from {c}, and later volumes"),
            (None, _) => "the chunks of every volume in this zone".into(),
        }
    }

    fn key(r: &LmapRec) -> (u32, u64) {
        (r.vol, r.chunk)
    }
    fn encode_key(k: &(u32, u64), out: &mut [u8]) {
        put_u32(out, 0, k.0);
        put_u64(out, 4, k.1);
    }
    fn decode_key(b: &[u8]) -> (u32, u64) {
        (get_u32(b, 0), get_u64(b, 4))
    }
    fn encode_rec(r: &LmapRec, out: &mut [u8]) {
        put_u32(out, 0, r.vol);
        put_u64(out, 4, r.chunk);
        put_u32(out, 12, r.ext.pblk);
        put_u16(out, 16, r.ext.nblk);
        out[18] = r.ext.flags;
        put_u32(out, 19, r.ext.stored_len);
        put_u32(out, 23, r.ext.crc);
    }
    fn decode_rec(b: &[u8]) -> LmapRec {
        LmapRec {
            vol: get_u32(b, 0),
            chunk: get_u64(b, 4),
            ext: ChunkExtent {
                pblk: get_u32(b, 12),
                nblk: get_u16(b, 16),
                flags: b[18],
                stored_len: get_u32(b, 19),
                crc: get_u32(b, 23),
            },
        }
    }
}
