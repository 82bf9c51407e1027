//! sluice-engine: everything about what is on disk and what it means.
//!
//! No threads, sockets or kernel rings live here: the engine talks to storage
//! through [`dev::BlockDev`], so all of it runs in tests on an in-memory or a
//! simulated, crashing device.
//!
//! Map of the crate:
//! - [`dev`]: the block-I/O seam and its file, memory and crash-simulating devices
//! - [`format`](mod@format): pool header, catalog and zone superblock layouts
//! - [`btree`]: the one generic B+tree and its device / memfd buffer targets
//! - [`lmap`], [`rmap`]: the forward and reverse maps (two uses of that B+tree)
//! - [`refcount`]: reference counts of shared physical blocks (a third use)
//! - [`intent_log`]: intent record and log block formats
//! - [`zone`]: a zone's read/write paths, commit, checkpoint, recovery, scrub
//! - [`volume`]: chunk geometry and placement of chunks on zones
//! - [`zones`]: how the lifecycle reaches a pool's zones, wherever they live
//! - [`fsmap`]: GETFSMAP, who owns every block of a pool, paged
//! - [`lifecycle`]: create, delete, resize, usage, block status, check — once
//! - [`pool`]: the whole pool on one thread (tools, tests, the crash simulator)

pub mod bitmap;
pub mod btree;
pub mod buf;
pub mod codec;
pub mod compress;
pub mod dev;
pub mod error;
pub mod format;
pub mod fsmap;
pub mod intent_log;
pub mod lifecycle;
pub mod lmap;
pub mod pool;
pub mod pool_catalog;
pub mod refcount;
pub mod rmap;
pub mod sync;
pub mod volume;
pub mod zone;
pub mod zones;

pub use buf::{AlignedBuf, BLOCK_SIZE};
pub use error::{Error, Result};
pub use format::Compression;
pub use lifecycle::PoolUsage;
pub use pool::{Pool, PoolOptions};
pub use pool_catalog::PoolCatalog;
pub use volume::VolInfo;
pub use zone::{Problem, VolumeSpace, Zone, ZoneConfig};
pub use zones::{ZoneOp, ZoneOut, ZoneUsage, Zones};
