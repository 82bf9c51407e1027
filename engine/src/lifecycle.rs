//! The volume lifecycle, written once: create, delete (and finishing an
//! interrupted delete at open), resize, block status, usage, check, flush
//! and checkpoint of a whole pool.
//!
//! Every function takes the pool's catalog ([`PoolCatalog`]) and its zones
//! through [`Zones`], so the same code runs in [`crate::Pool`] (every zone on
//! one thread, under the crash simulator) and in the daemon (zones spread
//! over reactors; the functions run on the reactor that owns the catalog).
//! Changes to volumes (delete, resize) hold the catalog's change lock, so
//! they apply one at a time.

use crate::buf::BLOCK_SIZE;
use crate::dev::BlockDev;
use crate::error::{Error, Result};
use crate::format::{Catalog, Compression, Geometry, VolumeEntry, VOL_DELETING};
use crate::pool_catalog::PoolCatalog;
use crate::volume::{check_size, VolInfo};
use crate::zone::{Problem, VolumeSpace, ZoneStats};
use crate::zones::{ZoneOp, ZoneOut, ZoneUsage, Zones};
use futures::future::join_all;
use std::collections::HashMap;
use std::sync::Arc;

/// Space figures for reporting.
#[derive(Debug, Clone, Default)]
pub struct PoolUsage {
    pub size_bytes: u64,
    /// Physical bytes in use: data, metadata areas, logs, headers.
    pub used_bytes: u64,
    /// Physical bytes holding chunk data.
    pub data_bytes: u64,
    /// Logical bytes of all mapped chunks.
    pub logical_used_bytes: u64,
    pub zones: u32,
    /// Zones shut down after an error: (zone, reason).
    pub failed_zones: Vec<(u32, String)>,
    /// Activity counters summed over the zones.
    pub stats: ZoneStats,
}

impl PoolUsage {
    /// Logical bytes per physical data byte (1.0 when nothing is stored).
    pub fn compression_ratio(&self) -> f64 {
        if self.data_bytes == 0 {
            1.0
        } else {
            self.logical_used_bytes as f64 / self.data_bytes as f64
        }
    }

    /// The pool's figures from every zone's share.
    pub fn gather(geo: &Geometry, zones: impl IntoIterator<Item = ZoneUsage>) -> Self {
        let bs = BLOCK_SIZE as u64;
        let mut u = PoolUsage {
            size_bytes: geo.size_bytes(),
            used_bytes: geo.pool_header_blocks() * bs,
            zones: geo.nzones,
            ..Default::default()
        };
        for z in zones {
            u.used_bytes += z.used_blocks as u64 * bs;
            u.data_bytes += z.counters.data_blocks * bs;
            u.logical_used_bytes += z.counters.logical_bytes;
            let (s, t) = (&mut u.stats, &z.stats);
            s.chunk_reads += t.chunk_reads;
            s.chunk_writes += t.chunk_writes;
            s.rmw_reads += t.rmw_reads;
            s.data_blocks_written += t.data_blocks_written;
            s.log_blocks_written += t.log_blocks_written;
            s.log_flushes += t.log_flushes;
            s.checkpoints += t.checkpoints;
            s.replayed_records += t.replayed_records;
            if let Some(why) = z.failed {
                u.failed_zones.push((z.zone, why));
            }
        }
        u.failed_zones.sort();
        u
    }
}

/// Add a volume. Only the catalog changes: zones learn of a volume from
/// its first write.
pub async fn create_volume<D: BlockDev>(
    meta: &PoolCatalog<D>,
    name: &str,
    size: u64,
    chunk_size: u64,
    compression: Compression,
) -> Result<VolumeEntry> {
    let _g = meta.lock_changes().await;
    meta.create_volume(name, size, chunk_size, compression)
        .await
}

/// Rename a volume (catalog only: zones know volumes by id).
pub async fn rename_volume<D: BlockDev>(
    meta: &PoolCatalog<D>,
    name: &str,
    new_name: &str,
) -> Result<VolumeEntry> {
    let _g = meta.lock_changes().await;
    meta.rename_volume(name, new_name).await
}

/// Set a volume's read-only flag (catalog only: the data path checks the
/// flag it is handed by the host, see the reactor's volume export).
pub async fn set_read_only<D: BlockDev>(
    meta: &PoolCatalog<D>,
    name: &str,
    read_only: bool,
) -> Result<VolumeEntry> {
    let _g = meta.lock_changes().await;
    meta.set_read_only(name, read_only).await
}

/// Delete a volume: mark it deleting (durable), drop its chunks in every
/// zone and make that durable, then drop the catalog entry. A crash in
/// between leaves it marked; [`finish_deletes`] completes it at open.
pub async fn delete_volume<D: BlockDev, Z: Zones>(
    meta: &PoolCatalog<D>,
    zones: &Z,
    name: &str,
) -> Result<()> {
    let _g = meta.lock_changes().await;
    let id = meta.volume(name)?.id;
    meta.update(|c| {
        entry_mut(c, id)?.flags |= VOL_DELETING;
        Ok(())
    })
    .await?;
    finish_delete(meta, zones, id).await
}

/// Take a snapshot of `volume` named `name`: a read-only volume sharing
/// every block `volume` maps at one point in time, with no data copied.
///
/// The point in time is when every zone has begun its share job
/// ([`ZoneOp::ShareBegin`], no I/O, nothing logged): a write replied
/// before the call is in the snapshot, one sent after it returns is not.
/// The zones then fill the snapshot in bounded steps, in parallel; a write
/// of `volume` meanwhile only first advances its zone's job past the chunk
/// it changes. The snapshot is marked creating in the catalog until every
/// zone's share is durable; a crash before that leaves it creating, and
/// opening the pool deletes it (the call never returned).
pub async fn snapshot_volume<D: BlockDev, Z: Zones>(
    meta: &PoolCatalog<D>,
    zones: &Z,
    volume: &str,
    name: &str,
) -> Result<VolumeEntry> {
    let _g = meta.lock_changes().await;
    let src = meta.volume(volume)?;
    let dst = meta.create_copy_of(&src, name, true).await?;
    fill_copy(meta, zones, &src, dst).await
}

/// Make `name` a clone of `snapshot` (a read-only volume): a volume
/// sharing every block of it, writable unless `read_only`. As
/// [`snapshot_volume`], with a source nothing writes to.
pub async fn clone_volume<D: BlockDev, Z: Zones>(
    meta: &PoolCatalog<D>,
    zones: &Z,
    snapshot: &str,
    name: &str,
    read_only: bool,
) -> Result<VolumeEntry> {
    let _g = meta.lock_changes().await;
    let src = meta.volume(snapshot)?;
    if !src.read_only() {
        return Err(Error::Invalid(format!(
            "volume '{snapshot}' is writable: clone a snapshot of it \
             (volume_snapshot), or set it read-only first"
        )));
    }
    let dst = meta.create_copy_of(&src, name, read_only).await?;
    fill_copy(meta, zones, &src, dst).await
}

/// Share every block of `src` into `dst` (just added, creating) in every
/// zone, then mark `dst` complete. On failure the jobs are dropped and
/// `dst` deleted (or left marked, for the next open to delete).
async fn fill_copy<D: BlockDev, Z: Zones>(
    meta: &PoolCatalog<D>,
    zones: &Z,
    src: &VolumeEntry,
    dst: VolumeEntry,
) -> Result<VolumeEntry> {
    let (s, d) = (VolInfo::from_entry(src), VolInfo::from_entry(&dst));
    let filled = async {
        zones
            .on_every_zone(ZoneOp::ShareBegin { src: s, dst: d })
            .await?;
        zones.on_every_zone(ZoneOp::ShareRun { dst: d.id }).await?;
        meta.finish_creating(d.id).await
    }
    .await;
    let err = match filled {
        Ok(e) => return Ok(e),
        Err(e) => e,
    };
    let undo = async {
        zones.on_every_zone(ZoneOp::ShareEnd { dst: d.id }).await?;
        meta.update(|c| {
            entry_mut(c, d.id)?.flags |= VOL_DELETING;
            Ok(())
        })
        .await?;
        finish_delete(meta, zones, d.id).await
    };
    // Undoing fails only with a zone down or the catalog unwritable, both
    // reported on their own (the zone in the pool's failed zones); `dst`
    // stays marked, and the next open removes it. The caller needs the
    // error that stopped the copy.
    let _undone = undo.await;
    Err(err)
}

/// Finish every delete a crash interrupted, and remove every snapshot or
/// clone a crash left half made (at open).
pub async fn finish_deletes<D: BlockDev, Z: Zones>(meta: &PoolCatalog<D>, zones: &Z) -> Result<()> {
    let _g = meta.lock_changes().await;
    let dying: Vec<u32> = meta
        .catalog()
        .volumes
        .iter()
        .filter(|v| v.deleting() || v.creating())
        .map(|v| v.id)
        .collect();
    for id in dying {
        finish_delete(meta, zones, id).await?;
    }
    Ok(())
}

async fn finish_delete<D: BlockDev, Z: Zones>(
    meta: &PoolCatalog<D>,
    zones: &Z,
    id: u32,
) -> Result<()> {
    zones
        .on_every_zone(ZoneOp::DeleteVolume { vol: id })
        .await?;
    meta.update(|c| {
        c.volumes.retain(|x| x.id != id);
        Ok(())
    })
    .await
}

/// Grow or shrink a volume.
///
/// Shrink: every zone, in parallel, first refuses I/O past the new end
/// (open connections keep their old size; the zone is what stops them),
/// then zeroes the cut tail of the last chunk, unmaps the chunks past the
/// end and flushes; only then does the catalog get the new size. A crash
/// before that leaves the old size, with the cut part zeroed or not.
///
/// Grow: the catalog first, then the zones' ends, so a failed catalog
/// write never lets a zone accept writes past the size on disk. Growing
/// reads zeros past the old end: a shrink left nothing there.
pub async fn resize_volume<D: BlockDev, Z: Zones>(
    meta: &PoolCatalog<D>,
    zones: &Z,
    name: &str,
    size: u64,
) -> Result<VolumeEntry> {
    check_size(size)?;
    let _g = meta.lock_changes().await;
    let v = VolInfo::from_entry(&meta.volume(name)?);
    if size < v.size {
        zones.on_every_zone(ZoneOp::Shrink { vol: v, size }).await?;
    }
    let e = meta
        .update(|c| {
            let e = entry_mut(c, v.id)?;
            e.size = size;
            Ok(e.clone())
        })
        .await?;
    if size > v.size {
        zones
            .on_every_zone(ZoneOp::SetEnd { vol: v.id, size })
            .await?;
    }
    Ok(e)
}

fn entry_mut(c: &mut Catalog, id: u32) -> Result<&mut VolumeEntry> {
    c.volumes
        .iter_mut()
        .find(|x| x.id == id)
        .ok_or_else(|| Error::NotFound(format!("volume {id}")))
}

/// Allocation status by chunk over a range: (offset, length, mapped) runs,
/// merged. Chunks are looked up in parallel.
pub async fn block_status<Z: Zones>(
    zones: &Z,
    v: &VolInfo,
    offset: u64,
    len: u64,
) -> Result<Vec<(u64, u64, bool)>> {
    v.check_range(offset, len)?;
    let nz = zones.nzones();
    let looks = v.split(offset, len).map(|s| async move {
        let op = ZoneOp::IsMapped {
            vol: *v,
            chunk: s.chunk,
        };
        match zones.on_zone(v.zone_of(s.chunk, nz), op).await? {
            ZoneOut::Mapped(m) => Ok((offset + s.buf_off as u64, s.len as u64, m)),
            other => Err(unexpected(other)),
        }
    });
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for r in join_all(looks).await {
        let (o, l, m) = r?;
        match out.last_mut() {
            Some(last) if last.2 == m => last.1 += l,
            _ => out.push((o, l, m)),
        }
    }
    Ok(out)
}

/// Space and counters of the whole pool.
pub async fn usage<Z: Zones>(geo: &Geometry, zones: &Z) -> Result<PoolUsage> {
    let outs = zones.on_every_zone(ZoneOp::Usage).await?;
    let parts = outs.into_iter().map(|o| match o {
        ZoneOut::Usage(u) => Ok(u),
        other => Err(unexpected(other)),
    });
    Ok(PoolUsage::gather(geo, parts.collect::<Result<Vec<_>>>()?))
}

/// Space each volume takes, summed over every zone, by volume id: chunks
/// mapped, their logical bytes, and the data blocks they occupy (see
/// [`VolumeSpace`]). Volumes with nothing mapped are absent. Each zone
/// builds its table from its forward map on first use.
pub async fn volume_space<Z: Zones>(zones: &Z) -> Result<HashMap<u32, VolumeSpace>> {
    let mut out: HashMap<u32, VolumeSpace> = HashMap::new();
    for o in zones.on_every_zone(ZoneOp::VolumeSpace).await? {
        match o {
            ZoneOut::VolumeSpace(vols) => {
                for (v, s) in vols {
                    out.entry(v).or_default().add(&s);
                }
            }
            other => return Err(unexpected(other)),
        }
    }
    Ok(out)
}

/// Scrub every zone against the catalog (`deep` reads every chunk);
/// problems in zone order.
pub async fn check<Z: Zones>(catalog: &Catalog, zones: &Z, deep: bool) -> Result<Vec<Problem>> {
    let vols: HashMap<u32, VolInfo> = catalog
        .volumes
        .iter()
        .map(|e| (e.id, VolInfo::from_entry(e)))
        .collect();
    let op = ZoneOp::Check {
        vols: Arc::new(vols),
        deep,
    };
    let mut out = Vec::new();
    for o in zones.on_every_zone(op).await? {
        match o {
            ZoneOut::Problems(p) => out.extend(p),
            other => return Err(unexpected(other)),
        }
    }
    out.sort_by_key(|p| p.zone);
    Ok(out)
}

/// Make every completed write durable on every zone (NBD FLUSH).
pub async fn flush<Z: Zones>(zones: &Z) -> Result<()> {
    zones.on_every_zone(ZoneOp::Flush).await.map(drop)
}

/// Checkpoint every zone (clean shutdown leaves nothing to replay).
pub async fn checkpoint<Z: Zones>(zones: &Z) -> Result<()> {
    zones.on_every_zone(ZoneOp::Checkpoint).await.map(drop)
}

/// A router answered with the output of another operation: a bug.
fn unexpected(o: ZoneOut) -> Error {
    Error::Invalid(format!("zone router returned {o:?} for another operation"))
}
