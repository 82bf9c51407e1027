//! `BtreeOps`: what makes one tree different from another (record and key
//! types, their fixed-size encodings, whether records are intervals).
//!
//! This is the counterpart of XFS's `xfs_btree_ops`: the tree code in this
//! module is written once and instantiated per tree type (lmap, rmap,
//! refcount, test trees), so a fix to splitting or checking fixes all trees.

use std::fmt::Debug;

/// Describes one kind of tree. Encodings are fixed-size and little-endian;
/// decoding only ever sees checksum-verified bytes, so it cannot fail.
pub trait BtreeOps: 'static {
    /// Totally ordered and unique per record.
    type Key: Copy + Ord + Debug;
    type Rec: Copy + Debug + PartialEq;

    /// Stored in every node header so a pointer into another tree is caught.
    const TREE_ID: u8;
    /// Human-readable name for error messages and `check` reports.
    const NAME: &'static str;
    /// Bytes of an encoded key (interior nodes store one or two per child).
    const KEY_SIZE: usize;
    /// Bytes of an encoded record (leaves).
    const REC_SIZE: usize;
    /// Records are intervals `[key, high_key]` that may overlap; interior
    /// nodes then also store the largest high key of each subtree, so
    /// `query_overlap` can skip subtrees that end before the query starts.
    const OVERLAPPING: bool;

    fn key(rec: &Self::Rec) -> Self::Key;

    /// For interval trees, the last key the record covers.
    fn high_key(rec: &Self::Rec) -> Self::Key {
        Self::key(rec)
    }

    /// Writes exactly `KEY_SIZE` bytes at the start of `out`.
    fn encode_key(key: &Self::Key, out: &mut [u8]);
    fn decode_key(b: &[u8]) -> Self::Key;
    /// Writes exactly `REC_SIZE` bytes at the start of `out`.
    fn encode_rec(rec: &Self::Rec, out: &mut [u8]);
    fn decode_rec(b: &[u8]) -> Self::Rec;

    /// What a damaged subtree whose keys run from `lo` up to (not
    /// including) `hi` held, for the error that reports it (`None`: no
    /// bound known on that side).
    fn describe_keys(lo: Option<&Self::Key>, hi: Option<&Self::Key>) -> String {
        format!("{} records from {lo:?} up to {hi:?}", Self::NAME)
    }

    /// The key of an encoded record. Binary search in leaves calls this for
    /// every probe; override it when the key can be read without decoding
    /// the whole record.
    fn rec_key(b: &[u8]) -> Self::Key {
        Self::key(&Self::decode_rec(b))
    }
}
