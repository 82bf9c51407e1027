//! How the volume lifecycle reaches zones: the [`Zones`] trait and the
//! per-zone operations ([`ZoneOp`]) it carries.
//!
//! The lifecycle ([`crate::lifecycle`]) is written once against this trait.
//! [`crate::Pool`] runs an operation on its own `Vec<Zone>`; the daemon's
//! pool host sends it to the reactor that owns the zone. Operations are
//! plain `Send` data, not closures or futures (engine futures are `!Send`):
//! a router moves the value to the zone's thread and calls
//! [`ZoneOp::run`] there.

use crate::dev::BlockDev;
use crate::error::Result;
use crate::format::ZoneCounters;
use crate::fsmap::zone_walk::zone_fsmap;
use crate::fsmap::{ZoneQuery, ZoneRec};
use crate::volume::VolInfo;
use crate::zone::{Problem, VolumeSpace, Zone, ZoneStats};
use std::collections::HashMap;
use std::sync::Arc;

/// Zones of one pool, wherever they live.
///
/// `async fn` on purpose: engine futures are `!Send` and run on the thread
/// that calls them.
#[allow(async_fn_in_trait)]
pub trait Zones {
    fn nzones(&self) -> u32;
    /// Run `op` on zone `z`, on the thread that owns it.
    async fn on_zone(&self, z: u32, op: ZoneOp) -> Result<ZoneOut>;
    /// Run `op` on every zone, zones on different threads in parallel;
    /// one output per zone, in any order. Fails with the first error,
    /// after every zone has finished.
    async fn on_every_zone(&self, op: ZoneOp) -> Result<Vec<ZoneOut>>;
}

/// One step of the lifecycle on one zone.
#[derive(Debug, Clone)]
pub enum ZoneOp {
    /// Refuse I/O past `size` from now on (a grow, once the catalog has it).
    SetEnd {
        vol: u32,
        size: u64,
    },
    /// Shrink `vol` (its old geometry) to `size`: see [`Zone::shrink_volume`].
    Shrink {
        vol: VolInfo,
        size: u64,
    },
    /// Drop every chunk of a volume and make that durable.
    DeleteVolume {
        vol: u32,
    },
    /// Whether a chunk holds data (block status).
    IsMapped {
        vol: VolInfo,
        chunk: u64,
    },
    Flush,
    Checkpoint,
    /// Space and counters.
    Usage,
    /// Space of each volume with chunks in the zone.
    VolumeSpace,
    /// Scrub against the catalog's volumes (by id); `deep` reads every chunk.
    Check {
        vols: Arc<HashMap<u32, VolInfo>>,
        deep: bool,
    },
    /// The zone's share of GETFSMAP ([`crate::fsmap`]).
    Fsmap(ZoneQuery),
    /// Start filling `dst` with what `src` maps now ([`Zone::share_begin`]):
    /// the point in time of a snapshot or clone.
    ShareBegin {
        src: VolInfo,
        dst: VolInfo,
    },
    /// Fill `dst` to the end, durably ([`Zone::share_run`]).
    ShareRun {
        dst: u32,
    },
    /// Give up filling `dst` ([`Zone::share_end`]).
    ShareEnd {
        dst: u32,
    },
}

/// What a [`ZoneOp`] returns.
#[derive(Debug)]
pub enum ZoneOut {
    Done,
    Mapped(bool),
    Usage(ZoneUsage),
    /// (volume id, its space in the zone), by id.
    VolumeSpace(Vec<(u32, VolumeSpace)>),
    Problems(Vec<Problem>),
    Fsmap(Vec<ZoneRec>),
}

/// One zone's share of the pool's usage report.
#[derive(Debug, Clone, Default)]
pub struct ZoneUsage {
    pub zone: u32,
    /// Blocks in use, fixed regions included.
    pub used_blocks: u32,
    pub counters: ZoneCounters,
    pub stats: ZoneStats,
    /// Why the zone shut down, if it did.
    pub failed: Option<String>,
}

impl ZoneOp {
    /// Run on `z`, on the thread that owns it.
    pub async fn run<D: BlockDev>(self, z: &Zone<D>) -> Result<ZoneOut> {
        match self {
            ZoneOp::SetEnd { vol, size } => z.set_volume_end(vol, size),
            ZoneOp::Shrink { vol, size } => z.shrink_volume(&vol, size).await?,
            ZoneOp::DeleteVolume { vol } => {
                z.delete_volume(vol).await?;
                z.flush().await?;
                z.forget_volume_end(vol);
            }
            ZoneOp::IsMapped { vol, chunk } => {
                return Ok(ZoneOut::Mapped(z.is_mapped(&vol, chunk).await?))
            }
            ZoneOp::Flush => z.flush().await?,
            ZoneOp::Checkpoint => z.checkpoint().await?,
            ZoneOp::Usage => return Ok(ZoneOut::Usage(zone_usage(z))),
            ZoneOp::VolumeSpace => return Ok(ZoneOut::VolumeSpace(z.volume_space().await?)),
            ZoneOp::Check { vols, deep } => {
                return Ok(ZoneOut::Problems(z.check(&vols, deep).await?))
            }
            ZoneOp::Fsmap(q) => return Ok(ZoneOut::Fsmap(zone_fsmap(z, &q).await?)),
            ZoneOp::ShareBegin { src, dst } => z.share_begin(&src, &dst)?,
            ZoneOp::ShareRun { dst } => {
                z.share_run(dst).await?;
            }
            ZoneOp::ShareEnd { dst } => z.share_end(dst),
        }
        Ok(ZoneOut::Done)
    }
}

/// A zone's usage figures, taken now.
pub fn zone_usage<D: BlockDev>(z: &Zone<D>) -> ZoneUsage {
    ZoneUsage {
        zone: z.index(),
        used_blocks: z.used_blocks(),
        counters: z.counters(),
        stats: z.stats(),
        failed: z.is_failed(),
    }
}
