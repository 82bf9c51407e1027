//! On-disk layout of a pool: header and geometry, the volume catalog, zone
//! superblocks and bitmaps. Every structure carries a magic and a crc32c so a
//! bit flip is reported, naming the structure and block, never trusted; and
//! every one but the B+tree nodes is written twice, so one bad block is
//! survived (B+tree nodes are rebuilt from the other trees by repair).
//!
//! ```text
//! block 0                 pool header (geometry, UUID)
//! blocks 1..1+C           volume catalog, copy A   (C = CATALOG_BLOCKS)
//! blocks 1+C..1+2C        volume catalog, copy B   (both hold the newest generation)
//! block 1+2C              backup pool header
//! zone 0, zone 1, ...     each zone_blocks long, starting at zone0_start
//!
//! zone (relative blocks):
//!   0, 1                  superblock slots A/B (slot = generation % 2)
//!   2, 3                  mirrors of slots A/B
//!   4 ..                  bitmaps: slot A copy 0, slot A copy 1, slot B copy 0,
//!                         slot B copy 1 (bm_blocks each)
//!   log_start ..          circular intent log (log_blocks), then its mirror
//!   meta_start ..         B+tree node area (meta_blocks)
//!   data_start .. end     chunk data
//! ```

pub mod catalog;
pub mod header;
pub mod probe;
pub mod superblock;
pub mod wipe;

pub use catalog::{Catalog, Compression, VolumeEntry, VOL_CREATING, VOL_DELETING, VOL_READ_ONLY};
pub use header::{Geometry, PoolHeader, FORMAT_VERSION};
pub use probe::{probe, probe_file, uuid_hex, Probe};
pub use superblock::{Superblock, ZoneCounters};
pub use wipe::{wipe, wipe_file};

/// Special rmap owners: who owns a block that is not volume data.
pub mod owner {
    pub const ZONE_HEADER: u64 = u64::MAX - 1;
    pub const LOG: u64 = u64::MAX - 2;
    pub const METADATA: u64 = u64::MAX - 3;
    pub const POOL_HEADER: u64 = u64::MAX - 4;
    /// Lowest special owner; volume ids are below it.
    pub const FIRST_SPECIAL: u64 = POOL_HEADER;

    pub fn name(o: u64) -> String {
        match o {
            ZONE_HEADER => "zone-header".into(),
            LOG => "log".into(),
            METADATA => "metadata".into(),
            POOL_HEADER => "pool-header".into(),
            v => format!("volume:{v}"),
        }
    }
}
