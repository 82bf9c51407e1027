//! A block bitmap with run search, used for a zone's allocation state.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    nbits: u32,
    ones: u32,
}

impl Bitmap {
    pub fn new(nbits: u32) -> Self {
        Bitmap {
            words: vec![0; (nbits as usize).div_ceil(64)],
            nbits,
            ones: 0,
        }
    }

    /// From the little-endian byte form written to disk.
    pub fn from_bytes(bytes: &[u8], nbits: u32) -> Self {
        let mut b = Bitmap::new(nbits);
        for i in 0..nbits {
            if bytes[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                b.set(i);
            }
        }
        b
    }

    /// Write the byte form into `out` (at least nbits/8 rounded up bytes).
    pub fn to_bytes(&self, out: &mut [u8]) {
        let n = (self.nbits as usize).div_ceil(8);
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o = (self.words[i / 8] >> ((i % 8) * 8)) as u8;
        }
    }

    pub fn len(&self) -> u32 {
        self.nbits
    }

    pub fn is_empty(&self) -> bool {
        self.nbits == 0
    }

    pub fn count_ones(&self) -> u32 {
        self.ones
    }

    #[inline]
    pub fn get(&self, i: u32) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    #[inline]
    pub fn set(&mut self, i: u32) {
        let w = &mut self.words[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        if *w & m == 0 {
            *w |= m;
            self.ones += 1;
        }
    }

    #[inline]
    pub fn clear(&mut self, i: u32) {
        let w = &mut self.words[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        if *w & m != 0 {
            *w &= !m;
            self.ones -= 1;
        }
    }

    pub fn set_range(&mut self, start: u32, n: u32) {
        for i in start..start + n {
            self.set(i);
        }
    }

    pub fn clear_range(&mut self, start: u32, n: u32) {
        for i in start..start + n {
            self.clear(i);
        }
    }

    pub fn all_clear(&self, start: u32, n: u32) -> bool {
        (start..start + n).all(|i| !self.get(i))
    }

    /// First run of `n` clear bits within `[lo, hi)`, searching from `from`
    /// and wrapping around once (next-fit).
    pub fn find_run(&self, lo: u32, hi: u32, from: u32, n: u32) -> Option<u32> {
        let from = from.clamp(lo, hi);
        self.find_in(from, hi, n)
            .or_else(|| self.find_in(lo, from.saturating_add(n).min(hi), n))
    }

    /// One past the highest set bit in `[lo, hi)`, or `lo` if none is set.
    pub fn end_of_set(&self, lo: u32, hi: u32) -> u32 {
        let mut w = (hi as usize).div_ceil(64);
        while w > (lo / 64) as usize {
            w -= 1;
            let mut word = self.words[w];
            let base = w as u32 * 64;
            if base + 64 > hi {
                word &= (1u64 << (hi - base)) - 1;
            }
            if word != 0 {
                let top = base + 64 - word.leading_zeros();
                return top.max(lo);
            }
        }
        lo
    }

    fn find_in(&self, lo: u32, hi: u32, n: u32) -> Option<u32> {
        if n == 0 || hi < lo || hi - lo < n {
            return None;
        }
        let mut i = lo;
        let mut run = 0u32;
        while i < hi {
            // Skip whole full words quickly.
            if run == 0
                && i.is_multiple_of(64)
                && i + 64 <= hi
                && self.words[(i / 64) as usize] == u64::MAX
            {
                i += 64;
                continue;
            }
            if self.get(i) {
                run = 0;
            } else {
                run += 1;
                if run == n {
                    return Some(i + 1 - n);
                }
            }
            i += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_bytes() {
        let mut b = Bitmap::new(300);
        b.set_range(0, 130);
        b.set(135);
        assert_eq!(b.find_run(0, 300, 0, 5), Some(130));
        assert_eq!(b.find_run(0, 300, 0, 6), Some(136));
        assert_eq!(b.find_run(0, 300, 200, 10), Some(200));
        assert_eq!(b.end_of_set(0, 300), 136);
        assert_eq!(b.end_of_set(0, 135), 130);
        assert_eq!(b.end_of_set(140, 300), 140);
        assert_eq!(b.end_of_set(0, 64), 64);
        assert_eq!(b.find_run(0, 300, 295, 10), Some(136));
        assert_eq!(b.find_run(0, 140, 0, 10), None);
        assert_eq!(b.count_ones(), 131);
        let mut bytes = vec![0; 38];
        b.to_bytes(&mut bytes);
        assert_eq!(Bitmap::from_bytes(&bytes, 300), b);
    }
}
