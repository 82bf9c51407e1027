//! Little-endian field access for fixed on-disk layouts.

#[inline]
pub fn get_u16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
#[inline]
pub fn get_u32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}
#[inline]
pub fn get_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
#[inline]
pub fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// crc32c of `b` with the 4 bytes at `crc_off` taken as zero.
pub fn crc_with_hole(b: &[u8], crc_off: usize) -> u32 {
    crc_with_hole_from(0, b, crc_off)
}

/// [`crc_with_hole`] continuing from `seed` (the crc32c of bytes that
/// logically precede `b`, such as an identity the block must belong to).
pub fn crc_with_hole_from(seed: u32, b: &[u8], crc_off: usize) -> u32 {
    let c = crc32c::crc32c_append(seed, &b[..crc_off]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &b[crc_off + 4..])
}
