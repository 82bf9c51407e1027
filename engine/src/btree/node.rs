//! The on-disk B+tree node: one 4 KiB block, a fixed header and a sorted
//! array of fixed-size slots, manipulated in place.
//!
//! ```text
//! off  size  field
//!   0     4  magic "SLBT"
//!   4     1  tree id (BtreeOps::TREE_ID)
//!   5     1  level (0 = leaf)
//!   6     2  nrecs (slots in use)
//!   8     4  owner zone
//!  12     4  crc32c of the whole block with this field taken as zero
//!  16     8  generation (the target's epoch when this node version was made)
//!  24     8  own block number (pool-absolute for the device target)
//!  32   ...  slots
//! leaf slot:     record (REC_SIZE bytes)
//! interior slot: low key | high key (only if OVERLAPPING) | child block u64
//! ```
//!
//! Slots stay sorted in the raw bytes: lookups binary-search by decoding one
//! key per probe, inserts and deletes move bytes with `copy_within`. Nothing
//! decodes a whole node into a `Vec` on the lookup path.
//!
//! The checksum is computed when a node is written out ([`seal`]), not on
//! every change; a node is verified ([`verify`]) once when it enters the cache.

use super::ops::BtreeOps;
use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::codec::{crc_with_hole, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use crate::error::{Error, Result, Structure};
use std::marker::PhantomData;

pub const NODE_MAGIC: [u8; 4] = *b"SLBT";
pub const HDR_SIZE: usize = 32;
/// Trees never get this tall (16 levels of fanout >= 4 is 4^16 leaves); a
/// larger level in a header is corruption.
pub const MAX_LEVELS: usize = 16;

const O_MAGIC: usize = 0;
const O_TREE: usize = 4;
const O_LEVEL: usize = 5;
const O_NRECS: usize = 6;
const O_ZONE: usize = 8;
const O_CRC: usize = 12;
const O_GEN: usize = 16;
const O_BLKNO: usize = 24;

/// One node's bytes, owned (the cache shares it as a `NodeRef`).
pub struct NodeBuf {
    buf: AlignedBuf,
}

impl NodeBuf {
    pub fn zeroed() -> Self {
        NodeBuf {
            buf: AlignedBuf::zeroed(BLOCK_SIZE),
        }
    }

    /// Wrap a block read from storage (exactly one block).
    pub(crate) fn from_buf(buf: AlignedBuf) -> Self {
        debug_assert_eq!(buf.len(), BLOCK_SIZE);
        NodeBuf { buf }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    pub fn tree_id(&self) -> u8 {
        self.buf[O_TREE]
    }

    pub fn level(&self) -> u8 {
        self.buf[O_LEVEL]
    }

    pub fn nrecs(&self) -> usize {
        get_u16(&self.buf, O_NRECS) as usize
    }

    pub fn zone(&self) -> u32 {
        get_u32(&self.buf, O_ZONE)
    }

    pub fn generation(&self) -> u64 {
        get_u64(&self.buf, O_GEN)
    }

    pub fn blkno(&self) -> u64 {
        get_u64(&self.buf, O_BLKNO)
    }

    pub(crate) fn set_nrecs(&mut self, n: usize) {
        put_u16(&mut self.buf, O_NRECS, n as u16);
    }

    /// Make this an empty node of `tree` at `level`, living at `blk`.
    pub(crate) fn init(&mut self, tree: u8, level: u8, zone: u32, blk: u64, gen: u64) {
        self.buf.fill(0);
        self.buf[O_MAGIC..O_MAGIC + 4].copy_from_slice(&NODE_MAGIC);
        self.buf[O_TREE] = tree;
        self.buf[O_LEVEL] = level;
        put_u32(&mut self.buf, O_ZONE, zone);
        self.relocate(blk, gen);
    }

    /// Record a new home (copy-on-write shadow) in the header.
    pub(crate) fn relocate(&mut self, blk: u64, gen: u64) {
        put_u64(&mut self.buf, O_BLKNO, blk);
        put_u64(&mut self.buf, O_GEN, gen);
    }

    pub(crate) fn copy_from(&mut self, other: &NodeBuf) {
        self.buf.copy_from_slice(&other.buf);
    }
}

/// Store the checksum in a node image about to be written.
pub fn seal(b: &mut [u8]) {
    let crc = crc_with_hole(&b[..BLOCK_SIZE], O_CRC);
    put_u32(b, O_CRC, crc);
}

/// Slot geometry and typed slot access for tree type `O`.
pub(crate) struct Layout<O>(PhantomData<O>);

impl<O: BtreeOps> Layout<O> {
    /// Offset of the child pointer in an interior slot.
    const PTR_OFF: usize = if O::OVERLAPPING {
        2 * O::KEY_SIZE
    } else {
        O::KEY_SIZE
    };
    pub const ENTRY_SIZE: usize = Self::PTR_OFF + 8;
    pub const LEAF_MAX: usize = (BLOCK_SIZE - HDR_SIZE) / O::REC_SIZE;
    pub const NODE_MAX: usize = (BLOCK_SIZE - HDR_SIZE) / Self::ENTRY_SIZE;
    /// Compile-time sanity of an ops type: splitting and merging need at
    /// least 4 slots per node. Evaluated wherever a tree is instantiated.
    pub const VALID: () = assert!(
        O::KEY_SIZE > 0
            && O::REC_SIZE > 0
            && O::REC_SIZE <= BLOCK_SIZE
            && (BLOCK_SIZE - HDR_SIZE) / O::REC_SIZE >= 4
            && (BLOCK_SIZE - HDR_SIZE) / (O::KEY_SIZE * 2 + 8) >= 4
            && (BLOCK_SIZE - HDR_SIZE) / O::REC_SIZE <= u16::MAX as usize,
        "BtreeOps sizes leave fewer than 4 slots per node"
    );

    #[inline]
    pub fn slot_size(level: u8) -> usize {
        if level == 0 {
            O::REC_SIZE
        } else {
            Self::ENTRY_SIZE
        }
    }

    #[inline]
    pub fn max_slots(level: u8) -> usize {
        if level == 0 {
            Self::LEAF_MAX
        } else {
            Self::NODE_MAX
        }
    }

    /// Non-root nodes hold at least this many slots.
    #[inline]
    pub fn min_slots(level: u8) -> usize {
        Self::max_slots(level) / 2
    }

    /// Slot `i` of a node image (level read from its header).
    #[inline]
    fn slot_raw(b: &[u8], i: usize) -> &[u8] {
        let s = Self::slot_size(b[O_LEVEL]);
        let o = HDR_SIZE + i * s;
        &b[o..o + s]
    }

    #[inline]
    fn slot(n: &NodeBuf, i: usize) -> &[u8] {
        Self::slot_raw(n.bytes(), i)
    }

    #[inline]
    fn slot_mut(n: &mut NodeBuf, i: usize) -> &mut [u8] {
        let s = Self::slot_size(n.level());
        let o = HDR_SIZE + i * s;
        &mut n.bytes_mut()[o..o + s]
    }

    /// The key slot `i` sorts by: a record's key, or a child's low key.
    #[inline]
    pub fn key_at(n: &NodeBuf, i: usize) -> O::Key {
        Self::key_at_raw(n.bytes(), i)
    }

    #[inline]
    fn key_at_raw(b: &[u8], i: usize) -> O::Key {
        if b[O_LEVEL] == 0 {
            O::rec_key(Self::slot_raw(b, i))
        } else {
            O::decode_key(Self::slot_raw(b, i))
        }
    }

    pub fn rec(n: &NodeBuf, i: usize) -> O::Rec {
        O::decode_rec(Self::slot(n, i))
    }

    pub fn ptr(n: &NodeBuf, i: usize) -> u64 {
        get_u64(Self::slot(n, i), Self::PTR_OFF)
    }

    /// Largest high key in child `i`'s subtree (interval trees only).
    pub fn high(n: &NodeBuf, i: usize) -> O::Key {
        Self::high_raw(n.bytes(), i)
    }

    fn high_raw(b: &[u8], i: usize) -> O::Key {
        debug_assert!(O::OVERLAPPING);
        O::decode_key(&Self::slot_raw(b, i)[O::KEY_SIZE..])
    }

    pub fn write_rec(n: &mut NodeBuf, i: usize, rec: &O::Rec) {
        O::encode_rec(rec, Self::slot_mut(n, i));
    }

    /// Set child `i`'s low and (interval trees) high key.
    pub fn set_keys(n: &mut NodeBuf, i: usize, keys: &NodeKeys<O::Key>) {
        let s = Self::slot_mut(n, i);
        O::encode_key(&keys.low, s);
        if O::OVERLAPPING {
            O::encode_key(&keys.high, &mut s[O::KEY_SIZE..]);
        }
    }

    pub fn set_ptr(n: &mut NodeBuf, i: usize, blk: u64) {
        put_u64(Self::slot_mut(n, i), Self::PTR_OFF, blk);
    }

    /// Binary search by key: `Ok(i)` if slot `i` has `key`, else `Err(i)`
    /// where it would be inserted.
    pub fn search(n: &NodeBuf, key: &O::Key) -> std::result::Result<usize, usize> {
        let (mut lo, mut hi) = (0, n.nrecs());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match Self::key_at(n, mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// The child of an interior node whose subtree would hold `key`.
    pub fn child_index(n: &NodeBuf, key: &O::Key) -> usize {
        match Self::search(n, key) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        }
    }

    /// First slot whose key is `key` or greater.
    pub fn first_at_or_after(n: &NodeBuf, key: &O::Key) -> usize {
        match Self::search(n, key) {
            Ok(i) | Err(i) => i,
        }
    }

    /// First slot whose key is strictly greater than `key`.
    pub fn first_after(n: &NodeBuf, key: &O::Key) -> usize {
        match Self::search(n, key) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// The keys a parent stores for this node; `None` for an empty node.
    pub fn node_keys(n: &NodeBuf) -> Option<NodeKeys<O::Key>> {
        let cnt = n.nrecs();
        if cnt == 0 {
            return None;
        }
        let low = Self::key_at(n, 0);
        let high = if !O::OVERLAPPING {
            low
        } else if n.level() == 0 {
            (0..cnt)
                .map(|i| O::high_key(&Self::rec(n, i)))
                .max()
                .unwrap_or(low)
        } else {
            (0..cnt).map(|i| Self::high(n, i)).max().unwrap_or(low)
        };
        Some(NodeKeys { low, high })
    }

    /// Open a hole at slot `i` (shifting later slots right).
    pub fn open_slot(n: &mut NodeBuf, i: usize) {
        let s = Self::slot_size(n.level());
        let cnt = n.nrecs();
        debug_assert!(i <= cnt && cnt < Self::max_slots(n.level()));
        let o = HDR_SIZE + i * s;
        let end = HDR_SIZE + cnt * s;
        n.bytes_mut().copy_within(o..end, o + s);
        n.set_nrecs(cnt + 1);
    }

    pub fn insert_rec(n: &mut NodeBuf, i: usize, rec: &O::Rec) {
        Self::open_slot(n, i);
        Self::write_rec(n, i, rec);
    }

    pub fn insert_entry(n: &mut NodeBuf, i: usize, keys: &NodeKeys<O::Key>, blk: u64) {
        Self::open_slot(n, i);
        Self::set_keys(n, i, keys);
        Self::set_ptr(n, i, blk);
    }

    /// Remove slot `i`, shifting later slots left and zeroing the freed tail.
    pub fn remove_slot(n: &mut NodeBuf, i: usize) {
        let s = Self::slot_size(n.level());
        let cnt = n.nrecs();
        debug_assert!(i < cnt);
        let o = HDR_SIZE + i * s;
        let end = HDR_SIZE + cnt * s;
        let b = n.bytes_mut();
        b.copy_within(o + s..end, o);
        b[end - s..end].fill(0);
        n.set_nrecs(cnt - 1);
    }

    /// Append `src`'s slots `[from, nrecs)` to `dst` and drop them from `src`.
    /// Used by split (into an empty right node) and merge (`from` = 0).
    pub fn move_tail(src: &mut NodeBuf, from: usize, dst: &mut NodeBuf) {
        let s = Self::slot_size(src.level());
        let (sn, dn) = (src.nrecs(), dst.nrecs());
        debug_assert!(from <= sn && dn + sn - from <= Self::max_slots(src.level()));
        let (a, b) = (HDR_SIZE + from * s, HDR_SIZE + sn * s);
        let d = HDR_SIZE + dn * s;
        dst.bytes_mut()[d..d + (b - a)].copy_from_slice(&src.bytes()[a..b]);
        src.bytes_mut()[a..b].fill(0);
        dst.set_nrecs(dn + sn - from);
        src.set_nrecs(from);
    }

    /// Move `src`'s first `k` slots to the end of `dst` (right-to-left borrow).
    pub fn move_head(src: &mut NodeBuf, k: usize, dst: &mut NodeBuf) {
        let s = Self::slot_size(src.level());
        let (sn, dn) = (src.nrecs(), dst.nrecs());
        debug_assert!(k <= sn && dn + k <= Self::max_slots(src.level()));
        let d = HDR_SIZE + dn * s;
        dst.bytes_mut()[d..d + k * s].copy_from_slice(&src.bytes()[HDR_SIZE..HDR_SIZE + k * s]);
        dst.set_nrecs(dn + k);
        let sb = src.bytes_mut();
        sb.copy_within(HDR_SIZE + k * s..HDR_SIZE + sn * s, HDR_SIZE);
        sb[HDR_SIZE + (sn - k) * s..HDR_SIZE + sn * s].fill(0);
        src.set_nrecs(sn - k);
    }

    /// Move `src`'s last `k` slots to the front of `dst` (left-to-right borrow).
    pub fn move_last_to_front(src: &mut NodeBuf, k: usize, dst: &mut NodeBuf) {
        let s = Self::slot_size(src.level());
        let (sn, dn) = (src.nrecs(), dst.nrecs());
        debug_assert!(k <= sn && dn + k <= Self::max_slots(src.level()));
        let db = dst.bytes_mut();
        db.copy_within(HDR_SIZE..HDR_SIZE + dn * s, HDR_SIZE + k * s);
        let a = HDR_SIZE + (sn - k) * s;
        db[HDR_SIZE..HDR_SIZE + k * s].copy_from_slice(&src.bytes()[a..a + k * s]);
        dst.set_nrecs(dn + k);
        src.bytes_mut()[a..a + k * s].fill(0);
        src.set_nrecs(sn - k);
    }
}

/// The keys a parent keeps for a child: its first key and, for interval
/// trees, the largest high key below it (equal to `low` otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeKeys<K> {
    pub low: K,
    pub high: K,
}

/// Check a node image read from `blk` of `zone` for tree type `O`. Never
/// panics, whatever the bytes; the error names the block and what is wrong.
pub fn verify<O: BtreeOps>(b: &[u8], blk: u64, zone: u32) -> Result<()> {
    let () = Layout::<O>::VALID;
    let bad = |detail: String| Err(Error::corrupt(Structure::BtreeNode, blk, detail));
    if b.len() != BLOCK_SIZE {
        return bad(format!("node image is {} bytes, not {BLOCK_SIZE}", b.len()));
    }
    if b[O_MAGIC..O_MAGIC + 4] != NODE_MAGIC {
        return bad(format!("bad magic {:02x?}", &b[O_MAGIC..O_MAGIC + 4]));
    }
    let stored = get_u32(b, O_CRC);
    let computed = crc_with_hole(b, O_CRC);
    if stored != computed {
        return bad(format!(
            "crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let own = get_u64(b, O_BLKNO);
    if own != blk {
        return bad(format!("node says it lives at block {own}"));
    }
    if b[O_TREE] != O::TREE_ID {
        return bad(format!(
            "node of tree id {} where a {} node (id {}) was expected",
            b[O_TREE],
            O::NAME,
            O::TREE_ID
        ));
    }
    let z = get_u32(b, O_ZONE);
    if z != zone {
        return bad(format!("node belongs to zone {z}, not {zone}"));
    }
    let level = b[O_LEVEL];
    if level as usize >= MAX_LEVELS {
        return bad(format!("level {level} >= {MAX_LEVELS}"));
    }
    let nrecs = get_u16(b, O_NRECS) as usize;
    let max = Layout::<O>::max_slots(level);
    if nrecs > max {
        return bad(format!(
            "nrecs {nrecs} exceeds the maximum {max} for level {level}"
        ));
    }
    // The header is sane, so every slot below nrecs is in bounds.
    let mut prev: Option<O::Key> = None;
    for i in 0..nrecs {
        let k = Layout::<O>::key_at_raw(b, i);
        if let Some(p) = prev {
            if k <= p {
                return bad(format!(
                    "keys out of order: slot {} {:?} then slot {i} {:?}",
                    i - 1,
                    p,
                    k
                ));
            }
        }
        if level > 0 && O::OVERLAPPING {
            let h = Layout::<O>::high_raw(b, i);
            if h < k {
                return bad(format!("slot {i}: high key {h:?} below low key {k:?}"));
            }
        }
        prev = Some(k);
    }
    Ok(())
}
