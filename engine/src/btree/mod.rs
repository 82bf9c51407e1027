//! One generic B+tree, written once and used for every per-zone tree (lmap,
//! rmap, refcount) and for the in-memory trees online repair builds, as
//! XFS's libxfs btree code is.
//!
//! - `ops`: [`BtreeOps`], what differs between trees (record/key types,
//!   encodings, interval or not).
//! - `node`: the 4 KiB on-disk node format, in-place slot manipulation,
//!   [`node::verify`].
//! - `target`: [`BufTarget`], where nodes live; `cache`: the write-back node
//!   cache both targets use; `dev_target`: [`DevTarget`], a device region
//!   with copy-on-write checkpoint epochs; `mem_target`: [`MemTarget`], a
//!   memfd.
//! - `tree`: [`Btree`] lookup/insert/remove; `scan`: range, overlap queries
//!   and full scans; `bulk`: bulk loading and destroy; `check`: the
//!   consistency walk.

mod bulk;
mod cache;
mod check;
mod dev_target;
mod mem_target;
pub mod node;
mod ops;
mod scan;
mod target;
mod tree;

pub use dev_target::{DevTarget, MetaCheckpoint};
pub use mem_target::MemTarget;
pub use node::NodeBuf;
pub use ops::BtreeOps;
pub use target::{BufTarget, CacheStats, NodeRef};
pub use tree::{Btree, TreeRoot};
