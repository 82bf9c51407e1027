//! Write data: calibrated to a target LZ4 ratio, cut into per-I/O payloads.

use super::*;

/// The `random_pct` of [`DataGen`] whose LZ4 output, chunk by chunk, is
/// closest to `target_pct` % of the input. `random_pct` is the share of
/// random bytes; LZ4 adds a few bytes of framing per literal/run pair, so
/// the compressed size sits slightly above it: measure instead of assuming.
/// Returns (random_pct, LZ4 fraction, fraction the engine stores).
pub(crate) fn calibrate(target_pct: u32, chunk: usize) -> (u32, f64, f64) {
    let chunks = ((2 * MIB) as usize / chunk).max(8);
    let measure = |rp: u32| DataGen::new(SEED, rp).lz4_fraction(chunk, chunks);
    let target = target_pct as f64 / 100.0;
    // The fraction grows with random_pct: find the first at or above target.
    let (mut lo, mut hi) = (1u32, 100u32);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if measure(mid).0 >= target {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut best = (lo, measure(lo));
    if lo > 1 {
        let below = measure(lo - 1);
        if (below.0 - target).abs() < (best.1 .0 - target).abs() {
            best = (lo - 1, below);
        }
    }
    let (rp, (f, stored)) = best;
    (rp, f, stored)
}

/// Copy `len` bytes of the data pool (a random 4 KiB-aligned place) into a
/// fresh I/O buffer and stamp 8 random bytes at the head of every 4 KiB
/// block, so no two writes carry the same bytes. Each generated block
/// starts with random bytes anyway, so stamping leaves its compressibility
/// as it was.
pub(crate) fn payload(data: &[u8], len: usize, rng: &mut SplitMix) -> AlignedBuf {
    let mut b = AlignedBuf::filled_later(len);
    let places = ((data.len() - len) / BLOCK_SIZE) as u64 + 1;
    let p = rng.below(places) as usize * BLOCK_SIZE;
    b.copy_from_slice(&data[p..p + len]);
    for blk in b.chunks_mut(BLOCK_SIZE) {
        let n = blk.len().min(8);
        blk[..n].copy_from_slice(&rng.next_u64().to_le_bytes()[..n]);
    }
    b
}

/// Task-unique random stream.
pub(crate) fn task_rng(kind: u64, global_task: usize) -> SplitMix {
    let mut s = SplitMix::new(SEED ^ kind.wrapping_mul(0xA24B_AED4_963E_E407));
    SplitMix::new(s.next_u64() ^ (global_task as u64 + 1).wrapping_mul(0x9FB2_1C65_1E98_DF25))
}
