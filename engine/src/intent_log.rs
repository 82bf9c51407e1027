//! The per-zone intent log: record and block formats.
//!
//! A mapping change is one self-contained record (redo, applied in sequence
//! order over the last checkpoint). Records are packed into 4 KiB log blocks
//! written at increasing log sequence numbers (LSN); block `lsn` lives at
//! `log_start + lsn % log_blocks`. A block is valid only with the right magic,
//! crc, zone, epoch and LSN, so a stale block from before a crash (older
//! epoch) or from the previous lap of the ring (older LSN) is never replayed.
//! The crc is seeded with the pool's UUID: a file re-formatted as a new pool
//! starts again at the same epoch and LSN, and the old pool's log blocks
//! must not pass for the new one's.
//! A block that was ever made durable is never rewritten.
//!
//! Each block is written twice (the log region holds two mirrors of the
//! ring) and carries the first LSN of the write it was part of
//! (`batch_lsn`): every block before that LSN was durable when it was
//! written. So at replay a position where neither copy is valid is the end
//! of the log only if no valid block after it has a `batch_lsn` beyond it
//! (a torn last write); otherwise durable records are missing, and replay
//! fails naming the block instead of stopping there.

use crate::buf::BLOCK_SIZE;
use crate::codec::*;
use crate::error::{Error, Result, Structure};

const LOG_MAGIC: u32 = 0x474c_4c53; // "SLLG"
pub const LOG_HDR: usize = 48;
/// Byte offset of the block crc.
const O_CRC: usize = 44;
/// A log write covers at most this many blocks, so the end of the log is
/// told from a hole in its middle by reading this far past it.
pub const MAX_BATCH_BLOCKS: u64 = 32;

/// Where a chunk's bytes are stored, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkExtent {
    /// Zone-relative first block.
    pub pblk: u32,
    pub nblk: u16,
    pub flags: u8,
    /// Bytes stored (compressed length, or the chunk size when raw).
    pub stored_len: u32,
    /// crc32c of the stored bytes.
    pub crc: u32,
}

pub const EXT_COMPRESSED: u8 = 1;

impl ChunkExtent {
    /// Flags for a chunk of `1 << chunk_shift` bytes: bits 4..7 carry
    /// `chunk_shift - 12`, so space accounting never needs the catalog.
    pub fn flags_for(compressed: bool, chunk_shift: u8) -> u8 {
        (compressed as u8) | ((chunk_shift - 12) << 4)
    }
    pub fn compressed(&self) -> bool {
        self.flags & EXT_COMPRESSED != 0
    }
    pub fn chunk_size(&self) -> u64 {
        1 << (12 + (self.flags >> 4))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// (vol, chunk) now lives at `ext`; whatever it had before is freed.
    Map {
        vol: u32,
        chunk: u64,
        ext: ChunkExtent,
    },
    /// (vol, chunk) becomes a hole.
    Unmap { vol: u32, chunk: u64 },
    /// Every chunk of `vol` in this zone is unmapped.
    DeleteVolume { vol: u32 },
    /// `dst` now also maps every chunk in `[from, to)` that `src` maps in
    /// this zone, to the same blocks (one more reference each): one bounded
    /// step of a reflink, snapshot or clone. `dst` maps none of them
    /// before, and the range holds at most [`SHARE_MAX_CHUNKS`] of `src`'s
    /// chunks, so applying a record is bounded work (`Zone::share` cuts a
    /// long range into such steps).
    Share {
        src: u32,
        dst: u32,
        from: u64,
        to: u64,
    },
}

/// Most chunks one [`Record::Share`] may copy: a bound on the work of one
/// record (each chunk is an lmap insert, an rmap insert and a refcount
/// adjust), checked when it is applied, live and in replay.
pub const SHARE_MAX_CHUNKS: usize = 256;

const T_MAP: u8 = 1;
const T_UNMAP: u8 = 2;
const T_DELVOL: u8 = 3;
const T_SHARE: u8 = 4;

impl Record {
    /// Encoded size including the 11-byte record header (len, type, seq).
    pub fn encoded_len(&self) -> usize {
        11 + match self {
            Record::Map { .. } => 4 + 8 + 4 + 2 + 1 + 4 + 4,
            Record::Unmap { .. } => 12,
            Record::DeleteVolume { .. } => 4,
            Record::Share { .. } => 4 + 4 + 8 + 8,
        }
    }

    pub fn encode(&self, seq: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        let b = &mut out[start..];
        put_u16(b, 0, self.encoded_len() as u16);
        put_u64(b, 3, seq);
        match *self {
            Record::Map { vol, chunk, ext } => {
                b[2] = T_MAP;
                put_u32(b, 11, vol);
                put_u64(b, 15, chunk);
                put_u32(b, 23, ext.pblk);
                put_u16(b, 27, ext.nblk);
                b[29] = ext.flags;
                put_u32(b, 30, ext.stored_len);
                put_u32(b, 34, ext.crc);
            }
            Record::Unmap { vol, chunk } => {
                b[2] = T_UNMAP;
                put_u32(b, 11, vol);
                put_u64(b, 15, chunk);
            }
            Record::DeleteVolume { vol } => {
                b[2] = T_DELVOL;
                put_u32(b, 11, vol);
            }
            Record::Share { src, dst, from, to } => {
                b[2] = T_SHARE;
                put_u32(b, 11, src);
                put_u32(b, 15, dst);
                put_u64(b, 19, from);
                put_u64(b, 27, to);
            }
        }
    }

    /// Decode one record at the start of `b`: (seq, record, length).
    pub fn decode(b: &[u8], block: u64) -> Result<(u64, Record, usize)> {
        let bad = |d: String| Error::corrupt(Structure::LogRecord, block, d);
        if b.len() < 11 {
            return Err(bad("truncated record header".into()));
        }
        let len = get_u16(b, 0) as usize;
        if len < 11 || len > b.len() {
            return Err(bad(format!("record length {len}")));
        }
        let seq = get_u64(b, 3);
        let r = match b[2] {
            T_MAP if len == 38 => Record::Map {
                vol: get_u32(b, 11),
                chunk: get_u64(b, 15),
                ext: ChunkExtent {
                    pblk: get_u32(b, 23),
                    nblk: get_u16(b, 27),
                    flags: b[29],
                    stored_len: get_u32(b, 30),
                    crc: get_u32(b, 34),
                },
            },
            T_UNMAP if len == 23 => Record::Unmap {
                vol: get_u32(b, 11),
                chunk: get_u64(b, 15),
            },
            T_DELVOL if len == 15 => Record::DeleteVolume {
                vol: get_u32(b, 11),
            },
            T_SHARE if len == 35 => {
                let (src, dst) = (get_u32(b, 11), get_u32(b, 15));
                let (from, to) = (get_u64(b, 19), get_u64(b, 27));
                // Never written: `Zone::share` refuses both before logging.
                if src == dst || from >= to {
                    return Err(bad(format!(
                        "share of volume {src} chunks {from}..{to} into volume {dst}"
                    )));
                }
                Record::Share { src, dst, from, to }
            }
            t => return Err(bad(format!("record type {t} with length {len}"))),
        };
        Ok((seq, r, len))
    }
}

/// Header of a log block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBlockHeader {
    pub zone: u32,
    pub epoch: u64,
    pub lsn: u64,
    pub nrec: u16,
    pub used: u16,
    pub first_seq: u64,
    /// First LSN of the log write this block was part of.
    pub batch_lsn: u64,
}

/// crc of a log block (crc field as zeros), seeded with the pool UUID.
fn block_crc(pool: &[u8; 16], b: &[u8]) -> u32 {
    crc_with_hole_from(crc32c::crc32c(pool), &b[..BLOCK_SIZE], O_CRC)
}

/// Build a log block from already-encoded records (`payload` <= 4048 bytes)
/// for the pool with UUID `pool`.
pub fn encode_block(pool: &[u8; 16], h: &LogBlockHeader, payload: &[u8], out: &mut [u8]) {
    debug_assert!(payload.len() <= BLOCK_SIZE - LOG_HDR);
    out[..BLOCK_SIZE].fill(0);
    put_u32(out, 0, LOG_MAGIC);
    put_u32(out, 4, h.zone);
    put_u64(out, 8, h.epoch);
    put_u64(out, 16, h.lsn);
    put_u16(out, 24, h.nrec);
    put_u16(out, 26, payload.len() as u16);
    put_u64(out, 28, h.first_seq);
    put_u64(out, 36, h.batch_lsn);
    out[LOG_HDR..LOG_HDR + payload.len()].copy_from_slice(payload);
    let crc = block_crc(pool, out);
    put_u32(out, O_CRC, crc);
}

/// Outcome of reading the log block expected at some LSN.
#[derive(Debug)]
pub enum BlockRead {
    /// Not a block of this zone/epoch/LSN (stale, torn, never written, or
    /// damaged): the end of the log if the other copy is no better and no
    /// later block says otherwise.
    End,
    Valid(LogBlockHeader, Vec<(u64, Record)>),
}

/// Decode the block at `block` that should carry `lsn` of `epoch`.
///
/// A block that fails its checksum or carries another LSN/epoch marks the end
/// of the log (the normal way a log ends after a crash). A block whose
/// checksum holds but whose records do not decode is corruption.
pub fn decode_block(
    pool: &[u8; 16],
    b: &[u8],
    block: u64,
    zone: u32,
    epoch: u64,
    lsn: u64,
) -> Result<BlockRead> {
    if b.len() < BLOCK_SIZE
        || get_u32(b, 0) != LOG_MAGIC
        || get_u32(b, O_CRC) != block_crc(pool, b)
        || get_u32(b, 4) != zone
        || get_u64(b, 8) != epoch
        || get_u64(b, 16) != lsn
    {
        return Ok(BlockRead::End);
    }
    let h = LogBlockHeader {
        zone,
        epoch,
        lsn,
        nrec: get_u16(b, 24),
        used: get_u16(b, 26),
        first_seq: get_u64(b, 28),
        batch_lsn: get_u64(b, 36),
    };
    if h.batch_lsn > lsn {
        return Err(Error::corrupt(
            Structure::LogBlock,
            block,
            format!(
                "write start {} after the block's own LSN {lsn}",
                h.batch_lsn
            ),
        ));
    }
    if h.used as usize > BLOCK_SIZE - LOG_HDR {
        return Err(Error::corrupt(
            Structure::LogBlock,
            block,
            format!("payload length {}", h.used),
        ));
    }
    let mut recs = Vec::with_capacity(h.nrec as usize);
    let mut o = LOG_HDR;
    let end = LOG_HDR + h.used as usize;
    while o < end {
        let (seq, r, len) = Record::decode(&b[o..end], block)?;
        let expect = h.first_seq + recs.len() as u64;
        if seq != expect {
            return Err(Error::corrupt(
                Structure::LogRecord,
                block,
                format!("sequence {seq} where {expect} was expected"),
            ));
        }
        recs.push((seq, r));
        o += len;
    }
    if recs.len() != h.nrec as usize {
        return Err(Error::corrupt(
            Structure::LogBlock,
            block,
            format!("{} records decoded, header says {}", recs.len(), h.nrec),
        ));
    }
    Ok(BlockRead::Valid(h, recs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: [u8; 16] = [9; 16];

    fn recs() -> Vec<Record> {
        vec![
            Record::Map {
                vol: 3,
                chunk: 99,
                ext: ChunkExtent {
                    pblk: 500,
                    nblk: 4,
                    flags: EXT_COMPRESSED,
                    stored_len: 12000,
                    crc: 7,
                },
            },
            Record::Unmap { vol: 3, chunk: 100 },
            Record::DeleteVolume { vol: 4 },
            Record::Share {
                src: 3,
                dst: 5,
                from: 7,
                to: 1 << 40,
            },
        ]
    }

    #[test]
    fn block_round_trip_and_end_detection() {
        let mut payload = Vec::new();
        for (i, r) in recs().iter().enumerate() {
            r.encode(10 + i as u64, &mut payload);
        }
        let h = LogBlockHeader {
            zone: 2,
            epoch: 5,
            lsn: 77,
            nrec: 4,
            used: 0,
            first_seq: 10,
            batch_lsn: 75,
        };
        let mut b = vec![0u8; BLOCK_SIZE];
        encode_block(&P, &h, &payload, &mut b);
        match decode_block(&P, &b, 1000, 2, 5, 77).unwrap() {
            BlockRead::Valid(_, got) => {
                let want: Vec<_> = recs()
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (10 + i as u64, r))
                    .collect();
                assert_eq!(got, want);
            }
            BlockRead::End => panic!("valid block read as end"),
        }
        // stale epoch, wrong lsn, torn: all mark the end
        assert!(matches!(
            decode_block(&P, &b, 1000, 2, 6, 77).unwrap(),
            BlockRead::End
        ));
        assert!(matches!(
            decode_block(&P, &b, 1000, 2, 5, 78).unwrap(),
            BlockRead::End
        ));
        let mut t = b.clone();
        t[60] ^= 1;
        assert!(matches!(
            decode_block(&P, &t, 1000, 2, 5, 77).unwrap(),
            BlockRead::End
        ));
    }

    /// A share record whose fields cannot have been written, or whose
    /// length does not match its type, is corruption naming the block.
    #[test]
    fn malformed_share_records_are_corrupt() {
        let share = |src, dst, from, to| {
            let mut b = Vec::new();
            Record::Share { src, dst, from, to }.encode(1, &mut b);
            b
        };
        let ok = share(1, 2, 0, 8);
        assert_eq!(
            Record::decode(&ok, 9).unwrap(),
            (
                1,
                Record::Share {
                    src: 1,
                    dst: 2,
                    from: 0,
                    to: 8
                },
                35
            )
        );
        for b in [share(1, 1, 0, 8), share(1, 2, 8, 8), share(1, 2, 9, 8)] {
            let e = Record::decode(&b, 9).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Corrupt {
                        structure: Structure::LogRecord,
                        block: 9,
                        ..
                    }
                ),
                "{e}"
            );
        }
        // Wrong length for the type: shorter (a torn field), longer, and
        // a length past the bytes there are.
        for len in [34u16, 36] {
            let mut b = ok.clone();
            b.resize(40, 0);
            put_u16(&mut b, 0, len);
            assert!(Record::decode(&b, 9).is_err(), "length {len}");
        }
        assert!(Record::decode(&ok[..30], 9).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        for _ in 0..5000 {
            let mut b = vec![0u8; BLOCK_SIZE];
            rng.fill(&mut b[..]);
            put_u32(&mut b, 0, LOG_MAGIC);
            put_u32(&mut b, 4, 1);
            put_u64(&mut b, 8, 1);
            put_u64(&mut b, 16, 1);
            put_u16(&mut b, 26, rng.gen_range(0..5000));
            let crc = block_crc(&P, &b);
            put_u32(&mut b, O_CRC, crc);
            let _ = decode_block(&P, &b, 0, 1, 1, 1);
            let _ = Record::decode(&b[rng.gen_range(0..4000)..], 0);
        }
    }
}
