//! Reproducible benchmark data of a chosen LZ4 compressibility.
//!
//! Every 4 KiB block is a pure function of (seed, generation, block index):
//! a benchmark can write terabytes without storing them and still verify any
//! read, in any process, by regenerating the expected bytes. "Generation"
//! lets a later phase overwrite a range with different bytes (the crash
//! phase of `engine-open`) while staying verifiable.
//!
//! A block alternates short literals of random bytes (32..=224 bytes) with
//! runs of one repeated byte, sized so that random bytes are `random_pct` %
//! of the block. LZ4 cannot shrink the random bytes and turns every run into
//! a few bytes, so a block compresses to about `random_pct` % (plus a few
//! bytes of LZ4 framing per literal/run pair; [`DataGen::lz4_fraction`]
//! measures the real figure). No block is ever all zeros, so the engine
//! never turns one into a hole and every chunk is really stored.

use sluice_engine::BLOCK_SIZE;

/// SplitMix64: tiny, fast, and good enough to make bytes incompressible.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the tiny modulo bias does not matter here).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DataGen {
    seed: u64,
    random_pct: u32,
}

impl DataGen {
    /// `random_pct` (1..=100): share of random bytes, i.e. roughly the size
    /// LZ4 compresses the data to, in percent.
    pub fn new(seed: u64, random_pct: u32) -> Self {
        DataGen {
            seed,
            random_pct: random_pct.clamp(1, 100),
        }
    }

    /// Fill `out` with the bytes of `generation` at byte `offset`. Both
    /// `offset` and `out.len()` must be multiples of 4 KiB.
    pub fn fill(&self, generation: u64, offset: u64, out: &mut [u8]) {
        assert!(
            offset.is_multiple_of(BLOCK_SIZE as u64) && out.len().is_multiple_of(BLOCK_SIZE),
            "DataGen::fill needs 4 KiB alignment (offset {offset}, len {})",
            out.len()
        );
        let first = offset / BLOCK_SIZE as u64;
        for (i, blk) in out.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            self.block(generation, first + i as u64, blk);
        }
    }

    fn block(&self, generation: u64, index: u64, out: &mut [u8]) {
        let mut key = SplitMix::new(self.seed ^ generation.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let mut rng = SplitMix::new(key.next_u64() ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
        let p = self.random_pct as u64;
        let mut pos = 0;
        while pos < out.len() {
            // Literal of random bytes.
            let lit = 32 + rng.below(193) as usize;
            let end = (pos + lit).min(out.len());
            for w in out[pos..end].chunks_mut(8) {
                let r = rng.next_u64().to_le_bytes();
                w.copy_from_slice(&r[..w.len()]);
            }
            pos = end;
            if pos >= out.len() || p == 100 {
                continue;
            }
            // A run of one non-zero byte: lit * (100 - p) / p bytes on average.
            let run = (lit as u64 * (100 - p) / p) as usize;
            let end = (pos + run).min(out.len());
            out[pos..end].fill(rng.next_u64() as u8 | 1);
            pos = end;
        }
    }

    /// LZ4 (lz4_flex, as the engine uses it) on `chunks` chunks of
    /// `chunk_size` bytes of generation 0: (compressed bytes / input bytes,
    /// the same with each chunk rounded up to whole 4 KiB blocks and stored
    /// raw when that saves no block — the engine's rule).
    pub fn lz4_fraction(&self, chunk_size: usize, chunks: usize) -> (f64, f64) {
        let mut data = vec![0u8; chunk_size];
        let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(chunk_size)];
        let (mut comp, mut stored) = (0u64, 0u64);
        for c in 0..chunks {
            self.fill(0, (c * chunk_size) as u64, &mut data);
            let n =
                lz4_flex::block::compress_into(&data, &mut out).expect("output is large enough");
            comp += n as u64;
            stored += stored_bytes(chunk_size, n) as u64;
        }
        let total = (chunks * chunk_size) as f64;
        (comp as f64 / total, stored as f64 / total)
    }
}

/// Bytes the engine stores for a chunk of `chunk_size` that LZ4 compresses to
/// `compressed` bytes: whole blocks if that saves at least one block, else
/// the raw chunk (see `sluice_engine::compress::encode`).
pub fn stored_bytes(chunk_size: usize, compressed: usize) -> usize {
    let bs = BLOCK_SIZE;
    if chunk_size > bs && compressed.div_ceil(bs) < chunk_size.div_ceil(bs) {
        compressed.div_ceil(bs) * bs
    } else {
        chunk_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_position_independent() {
        let g = DataGen::new(7, 50);
        let mut a = vec![0u8; 64 * 1024];
        g.fill(0, 1 << 20, &mut a);
        // The same bytes, generated as two halves.
        let mut b = vec![0u8; 64 * 1024];
        g.fill(0, 1 << 20, &mut b[..32 * 1024]);
        g.fill(0, (1 << 20) + 32 * 1024, &mut b[32 * 1024..]);
        assert_eq!(a, b);
        // Another generation or seed gives other bytes.
        g.fill(1, 1 << 20, &mut b);
        assert_ne!(a, b);
        DataGen::new(8, 50).fill(0, 1 << 20, &mut b);
        assert_ne!(a, b);
        // Never an all-zero block.
        assert!(a.chunks(BLOCK_SIZE).all(|blk| blk.iter().any(|&x| x != 0)));
    }

    #[test]
    fn compressibility_follows_the_knob() {
        for pct in [10u32, 50, 90] {
            let (f, _) = DataGen::new(1, pct).lz4_fraction(65536, 32);
            let want = pct as f64 / 100.0;
            assert!((f - want).abs() < 0.06, "pct {pct}: lz4 fraction {f}");
        }
        let (f, stored) = DataGen::new(1, 100).lz4_fraction(65536, 8);
        assert!(f > 1.0 && stored == 1.0, "{f} {stored}");
    }

    #[test]
    fn stored_size_rule() {
        assert_eq!(stored_bytes(4096, 100), 4096);
        assert_eq!(stored_bytes(65536, 30000), 32768);
        assert_eq!(stored_bytes(65536, 61441), 65536);
        assert_eq!(stored_bytes(65536, 61440), 61440);
    }
}
