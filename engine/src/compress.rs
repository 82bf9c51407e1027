//! Chunk encoding: a chunk is stored compressed (LZ4) when that saves at least
//! one 4 KiB block, raw otherwise, and not at all when it is all zero.

use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::error::{Error, Result, Structure};
use crate::format::Compression;

/// How a chunk will be stored.
pub enum Encoded {
    /// All zero: unmap it.
    Hole,
    /// Store the input buffer itself.
    Raw,
    /// Store the first `len` bytes of the scratch buffer.
    Compressed { len: usize },
}

pub fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.as_chunks::<8>();
    words.iter().all(|w| u64::from_ne_bytes(*w) == 0) && rest.iter().all(|&x| x == 0)
}

/// Scratch space big enough to compress a chunk of `chunk_size` bytes.
pub fn scratch_for(chunk_size: usize) -> AlignedBuf {
    AlignedBuf::zeroed(lz4_flex::block::get_maximum_output_size(chunk_size))
}

/// Whether [`encode`] may compress chunks of `chunk_size` bytes (a single
/// block cannot get smaller).
pub fn may_compress(comp: Compression, chunk_size: usize) -> bool {
    comp == Compression::Lz4 && chunk_size > BLOCK_SIZE
}

/// The scratch [`encode`] needs for chunks of `chunk_size` bytes. When they
/// are never compressed `encode` does not touch it: an empty buffer (a
/// recycled block, not zeroed).
pub fn scratch_for_chunks(comp: Compression, chunk_size: usize) -> AlignedBuf {
    if may_compress(comp, chunk_size) {
        scratch_for(chunk_size)
    } else {
        AlignedBuf::filled_later(0)
    }
}

/// Decide how to store `data` (a whole chunk), compressing into `scratch`.
pub fn encode(comp: Compression, data: &[u8], scratch: &mut AlignedBuf) -> Encoded {
    if is_zero(data) {
        return Encoded::Hole;
    }
    if !may_compress(comp, data.len()) {
        return Encoded::Raw;
    }
    let cap = scratch.capacity();
    scratch.set_len(cap);
    match lz4_flex::block::compress_into(data, &mut scratch[..]) {
        Ok(len) if len.div_ceil(BLOCK_SIZE) < data.len().div_ceil(BLOCK_SIZE) => {
            Encoded::Compressed { len }
        }
        _ => Encoded::Raw,
    }
}

/// Decompress a stored chunk into `out` (exactly the chunk size).
pub fn decode(stored: &[u8], out: &mut [u8], block: u64) -> Result<()> {
    match lz4_flex::block::decompress_into(stored, out) {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) => Err(Error::corrupt(
            Structure::ChunkData,
            block,
            format!("decompressed to {n} bytes, expected {}", out.len()),
        )),
        Err(e) => Err(Error::corrupt(
            Structure::ChunkData,
            block,
            format!("lz4: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_raw_and_compressed() {
        let mut s = scratch_for(65536);
        assert!(matches!(
            encode(Compression::Lz4, &vec![0; 65536], &mut s),
            Encoded::Hole
        ));
        let text: Vec<u8> = (0..65536).map(|i| b"hello world "[i % 12]).collect();
        let Encoded::Compressed { len } = encode(Compression::Lz4, &text, &mut s) else {
            panic!("text should compress")
        };
        let mut out = vec![0; 65536];
        decode(&s[..len], &mut out, 0).unwrap();
        assert_eq!(out, text);
        assert!(matches!(
            encode(Compression::None, &text, &mut s),
            Encoded::Raw
        ));
        let mut noise = vec![0u8; 65536];
        let mut x = 88172645463325252u64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        assert!(matches!(
            encode(Compression::Lz4, &noise, &mut s),
            Encoded::Raw
        ));
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
        assert!(decode(&noise[..100], &mut out, 9).is_err());
    }
}
