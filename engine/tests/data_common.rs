//! Reproducible test data for the pool tests. Included by them with
//! `#[path]`; built on its own it has no tests.
#![allow(dead_code)]

/// Reproducible incompressible bytes (xorshift from `seed`).
pub fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
