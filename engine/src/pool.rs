//! A whole pool on one thread: header, catalog and every zone.
//!
//! This is the engine's complete single-threaded API, used by tools, tests
//! and the crash simulator. Its lifecycle (delete, resize, usage, ...) is
//! [`crate::lifecycle`] over its own zones ([`Zones`]); the daemon runs the
//! same functions over zones distributed on reactors.

use crate::buf::AlignedBuf;
use crate::dev::BlockDev;
use crate::error::{Error, Result};
use crate::format::{Compression, Geometry, VolumeEntry};
use crate::fsmap::{self, FsmapQuery, FsmapRecord};
use crate::lifecycle::{self, PoolUsage};
use crate::pool_catalog::PoolCatalog;
use crate::volume::VolInfo;
use crate::zone::{Problem, VolumeSpace, Zone, ZoneConfig};
use crate::zones::{zone_usage, ZoneOp, ZoneOut, Zones};
use futures::future::join_all;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Zone size in bytes (format only).
    pub zone_size: u64,
    pub zone: ZoneConfig,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            zone_size: 256 << 20,
            zone: ZoneConfig::default(),
        }
    }
}

/// A pool with all zones on this thread.
pub struct Pool<D: BlockDev> {
    pub catalog: PoolCatalog<D>,
    zones: Vec<Zone<D>>,
}

fn random_uuid() -> [u8; 16] {
    use rand::RngCore;
    let mut u = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut u);
    u
}

impl<D: BlockDev> Pool<D> {
    pub async fn format(dev: Rc<D>, opts: &PoolOptions) -> Result<Self> {
        Self::format_with_uuid(dev, opts, random_uuid()).await
    }

    /// Format with a given UUID (deterministic tests).
    pub async fn format_with_uuid(dev: Rc<D>, opts: &PoolOptions, uuid: [u8; 16]) -> Result<Self> {
        let catalog = PoolCatalog::format(dev.clone(), opts.zone_size, uuid).await?;
        let geo = Rc::new(catalog.header.geo.clone());
        let mut zones = Vec::with_capacity(geo.nzones as usize);
        for z in 0..geo.nzones {
            zones.push(Zone::format(dev.clone(), geo.clone(), z, opts.zone.clone()).await?);
        }
        Ok(Pool { catalog, zones })
    }

    /// Open a pool: header, catalog, every zone (with log replay), then
    /// finish any volume deletion a crash interrupted.
    pub async fn open(dev: Rc<D>, opts: &PoolOptions) -> Result<Self> {
        let catalog = PoolCatalog::open(dev.clone()).await?;
        let geo = Rc::new(catalog.header.geo.clone());
        let mut zones = Vec::with_capacity(geo.nzones as usize);
        for z in 0..geo.nzones {
            zones.push(Zone::open(dev.clone(), geo.clone(), z, opts.zone.clone()).await?);
        }
        let pool = Pool { catalog, zones };
        lifecycle::finish_deletes(&pool.catalog, &pool).await?;
        Ok(pool)
    }

    pub fn zones(&self) -> &[Zone<D>] {
        &self.zones
    }

    pub fn geometry(&self) -> &Geometry {
        self.catalog.geometry()
    }

    pub fn volumes(&self) -> Vec<VolumeEntry> {
        self.catalog
            .catalog()
            .volumes
            .into_iter()
            .filter(|v| v.live())
            .collect()
    }

    pub fn volume(&self, name: &str) -> Result<VolInfo> {
        Ok(VolInfo::from_entry(&self.catalog.volume(name)?))
    }

    pub async fn create_volume(
        &self,
        name: &str,
        size: u64,
        chunk_size: u64,
        compression: Compression,
    ) -> Result<VolInfo> {
        let e =
            lifecycle::create_volume(&self.catalog, name, size, chunk_size, compression).await?;
        Ok(VolInfo::from_entry(&e))
    }

    /// A volume in the family of `like` (same home zones for its chunks),
    /// so [`Pool::share`] can share blocks between them.
    pub async fn create_volume_in_family(
        &self,
        name: &str,
        size: u64,
        like: &VolInfo,
    ) -> Result<VolInfo> {
        let _g = self.catalog.lock_changes().await;
        let e = self
            .catalog
            .create_volume_in(
                name,
                size,
                like.chunk_size() as u64,
                like.compression,
                Some(like.family),
            )
            .await?;
        Ok(VolInfo::from_entry(&e))
    }

    /// Make `dst` map the same blocks as `src` for chunks `[from, to)`
    /// ([`Zone::share`] in every zone). Refused before anything changes if
    /// `dst` maps any chunk of the range.
    pub async fn share(&self, src: &VolInfo, dst: &VolInfo, from: u64, to: u64) -> Result<u64> {
        crate::zone::check_share(src, dst, from, to)?;
        for z in &self.zones {
            if let Some(c) = z.first_mapped(dst.id, from, to).await? {
                return Err(Error::Exists(format!(
                    "volume {} chunk {c}, which a share into it would replace",
                    dst.id
                )));
            }
        }
        let mut n = 0;
        for z in &self.zones {
            n += z.share(src, dst, from, to).await?;
        }
        Ok(n)
    }

    /// A read-only snapshot of `volume` ([`lifecycle::snapshot_volume`]).
    pub async fn snapshot_volume(&self, volume: &str, name: &str) -> Result<VolInfo> {
        let e = lifecycle::snapshot_volume(&self.catalog, self, volume, name).await?;
        Ok(VolInfo::from_entry(&e))
    }

    /// A clone of a snapshot ([`lifecycle::clone_volume`]).
    pub async fn clone_volume(
        &self,
        snapshot: &str,
        name: &str,
        read_only: bool,
    ) -> Result<VolInfo> {
        let e = lifecycle::clone_volume(&self.catalog, self, snapshot, name, read_only).await?;
        Ok(VolInfo::from_entry(&e))
    }

    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        lifecycle::delete_volume(&self.catalog, self, name).await
    }

    /// Grow or shrink a volume ([`lifecycle::resize_volume`]).
    pub async fn resize_volume(&self, name: &str, size: u64) -> Result<VolInfo> {
        let e = lifecycle::resize_volume(&self.catalog, self, name, size).await?;
        Ok(VolInfo::from_entry(&e))
    }

    fn zone_for(&self, v: &VolInfo, chunk: u64) -> &Zone<D> {
        &self.zones[v.zone_of(chunk, self.zones.len() as u32) as usize]
    }

    pub async fn read(&self, v: &VolInfo, offset: u64, buf: &mut [u8]) -> Result<()> {
        v.check_range(offset, buf.len() as u64)?;
        for s in v.split(offset, buf.len() as u64) {
            self.zone_for(v, s.chunk)
                .read(v, s, &mut buf[s.buf_off..s.buf_off + s.len])
                .await?;
        }
        Ok(())
    }

    pub async fn write(&self, v: &VolInfo, offset: u64, data: &[u8]) -> Result<()> {
        v.check_range(offset, data.len() as u64)?;
        for p in v.write_pieces(offset, data.len(), self.zones.len() as u32) {
            let piece = AlignedBuf::from_slice(&data[p.span.buf_off..p.span.buf_off + p.len]);
            self.zone_for(v, p.span.chunk)
                .write_piece(v, &p, piece)
                .await?;
        }
        Ok(())
    }

    /// WRITE_ZEROES and TRIM: the range reads as zeros; whole chunks are freed.
    pub async fn write_zeroes(&self, v: &VolInfo, offset: u64, len: u64) -> Result<()> {
        v.check_range(offset, len)?;
        for s in v.split(offset, len) {
            self.zone_for(v, s.chunk).write_zeroes(v, s).await?;
        }
        Ok(())
    }

    /// Allocation status by chunk: (offset, length, mapped) runs merged.
    pub async fn block_status(
        &self,
        v: &VolInfo,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, bool)>> {
        lifecycle::block_status(self, v, offset, len).await
    }

    /// Make every completed write durable on every zone.
    pub async fn flush(&self) -> Result<()> {
        lifecycle::flush(self).await
    }

    /// Checkpoint every zone (clean shutdown leaves nothing to replay).
    pub async fn close(self) -> Result<()> {
        lifecycle::checkpoint(&self).await
    }

    pub fn usage(&self) -> PoolUsage {
        PoolUsage::gather(self.geometry(), self.zones.iter().map(zone_usage))
    }

    /// Space each volume takes, by volume id ([`lifecycle::volume_space`]).
    pub async fn volume_space(&self) -> Result<HashMap<u32, VolumeSpace>> {
        lifecycle::volume_space(self).await
    }

    /// One page of GETFSMAP ([`fsmap::pool_fsmap`]).
    pub async fn fsmap(&self, q: &FsmapQuery) -> Result<Vec<FsmapRecord>> {
        fsmap::pool_fsmap(self.geometry(), &self.catalog.catalog(), self, q).await
    }

    /// Scrub every zone; `deep` also reads and verifies every chunk.
    pub async fn check(&self, deep: bool) -> Result<Vec<Problem>> {
        lifecycle::check(&self.catalog.catalog(), self, deep).await
    }
}

/// Every zone is here: an operation runs on the calling thread.
impl<D: BlockDev> Zones for Pool<D> {
    fn nzones(&self) -> u32 {
        self.zones.len() as u32
    }

    async fn on_zone(&self, z: u32, op: ZoneOp) -> Result<ZoneOut> {
        let zone = self
            .zones
            .get(z as usize)
            .ok_or_else(|| Error::NotFound(format!("zone {z}")))?;
        op.run(zone).await
    }

    async fn on_every_zone(&self, op: ZoneOp) -> Result<Vec<ZoneOut>> {
        let runs = self.zones.iter().map(|z| op.clone().run(z));
        join_all(runs).await.into_iter().collect()
    }
}
