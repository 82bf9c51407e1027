//! A whole pool on one thread: header, catalog and every zone.
//!
//! This is the engine's complete single-threaded API, used by tools, tests
//! and the crash simulator. The daemon uses the same parts (`PoolMeta` for
//! the header and catalog, `Zone`s distributed over reactors).

use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::dev::BlockDev;
use crate::error::{Error, Result};
use crate::format::{Compression, Geometry, VolumeEntry, VOL_DELETING};
use crate::pool_meta::PoolMeta;
use crate::volume::{VolInfo, SECTOR};
use crate::zone::{Problem, Zone, ZoneConfig};
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

/// Space figures for reporting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub size_bytes: u64,
    /// Physical bytes in use: data, metadata areas, logs, headers.
    pub used_bytes: u64,
    /// Physical bytes holding chunk data.
    pub data_bytes: u64,
    /// Logical bytes of all mapped chunks.
    pub logical_used_bytes: u64,
    pub zones: u32,
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
}

/// A pool with all zones on this thread.
pub struct Pool<D: BlockDev> {
    pub meta: PoolMeta<D>,
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
        let meta = PoolMeta::format(dev.clone(), opts.zone_size, uuid).await?;
        let geo = Rc::new(meta.header.geo.clone());
        let mut zones = Vec::with_capacity(geo.nzones as usize);
        for z in 0..geo.nzones {
            zones.push(Zone::format(dev.clone(), geo.clone(), z, opts.zone.clone()).await?);
        }
        Ok(Pool { meta, zones })
    }

    /// Open a pool: header, catalog, every zone (with log replay), then
    /// finish any volume deletion a crash interrupted.
    pub async fn open(dev: Rc<D>, opts: &PoolOptions) -> Result<Self> {
        let meta = PoolMeta::open(dev.clone()).await?;
        let geo = Rc::new(meta.header.geo.clone());
        let mut zones = Vec::with_capacity(geo.nzones as usize);
        for z in 0..geo.nzones {
            zones.push(Zone::open(dev.clone(), geo.clone(), z, opts.zone.clone()).await?);
        }
        let pool = Pool { meta, zones };
        let dying: Vec<VolumeEntry> = pool
            .meta
            .catalog()
            .volumes
            .into_iter()
            .filter(|v| v.deleting())
            .collect();
        for v in dying {
            pool.finish_delete(&v).await?;
        }
        Ok(pool)
    }

    pub fn zones(&self) -> &[Zone<D>] {
        &self.zones
    }

    pub fn geometry(&self) -> &Geometry {
        self.meta.geometry()
    }

    pub fn volumes(&self) -> Vec<VolumeEntry> {
        self.meta
            .catalog()
            .volumes
            .into_iter()
            .filter(|v| !v.deleting())
            .collect()
    }

    pub fn volume(&self, name: &str) -> Result<VolInfo> {
        Ok(VolInfo::from_entry(&self.meta.volume(name)?))
    }

    pub async fn create_volume(
        &self,
        name: &str,
        size: u64,
        chunk_size: u64,
        compression: Compression,
    ) -> Result<VolInfo> {
        let e = self
            .meta
            .create_volume(name, size, chunk_size, compression)
            .await?;
        Ok(VolInfo::from_entry(&e))
    }

    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        let v = self.meta.volume(name)?;
        let v = self
            .meta
            .update(|c| {
                let e = c
                    .volumes
                    .iter_mut()
                    .find(|x| x.id == v.id)
                    .ok_or_else(|| Error::NotFound(format!("volume '{name}'")))?;
                e.flags |= VOL_DELETING;
                Ok(e.clone())
            })
            .await?;
        self.finish_delete(&v).await
    }

    async fn finish_delete(&self, v: &VolumeEntry) -> Result<()> {
        for z in &self.zones {
            z.delete_volume(v.id).await?;
        }
        for z in &self.zones {
            z.flush().await?;
        }
        self.meta
            .update(|c| {
                c.volumes.retain(|x| x.id != v.id);
                Ok(())
            })
            .await
    }

    /// Grow or shrink a volume. Shrinking drops the data beyond the new end
    /// first, so growing again later reads zeros there.
    pub async fn resize_volume(&self, name: &str, size: u64) -> Result<VolInfo> {
        let e = self.meta.volume(name)?;
        if size == 0 || !size.is_multiple_of(SECTOR) || size > 1 << 50 {
            return Err(Error::Invalid(format!(
                "volume size {size} must be a positive multiple of 512 up to 1 PiB"
            )));
        }
        let v = VolInfo::from_entry(&e);
        if size < v.size {
            let cs = v.chunk_size() as u64;
            let tail_end = size.div_ceil(cs) * cs;
            if tail_end > size {
                self.write_zeroes(&v, size, tail_end.min(v.size) - size)
                    .await?;
            }
            let first = size.div_ceil(cs);
            for z in &self.zones {
                z.unmap_from(&v, first).await?;
            }
            for z in &self.zones {
                z.flush().await?;
            }
        }
        let id = v.id;
        let e = self
            .meta
            .update(|c| {
                let e = c
                    .volumes
                    .iter_mut()
                    .find(|x| x.id == id)
                    .ok_or_else(|| Error::NotFound(format!("volume '{name}'")))?;
                e.size = size;
                Ok(e.clone())
            })
            .await?;
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
        v.check_range(offset, len)?;
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        for s in v.split(offset, len) {
            let m = self.zone_for(v, s.chunk).is_mapped(v, s.chunk).await?;
            let start = offset + s.buf_off as u64;
            match out.last_mut() {
                Some(last) if last.2 == m => last.1 += s.len as u64,
                _ => out.push((start, s.len as u64, m)),
            }
        }
        Ok(out)
    }

    /// Make every completed write durable on every zone.
    pub async fn flush(&self) -> Result<()> {
        for z in &self.zones {
            z.flush().await?;
        }
        Ok(())
    }

    /// Checkpoint every zone (clean shutdown leaves nothing to replay).
    pub async fn close(self) -> Result<()> {
        for z in &self.zones {
            z.checkpoint().await?;
        }
        Ok(())
    }

    pub fn usage(&self) -> PoolUsage {
        let g = self.geometry();
        let bs = BLOCK_SIZE as u64;
        let mut u = PoolUsage {
            size_bytes: g.size_bytes(),
            used_bytes: g.pool_header_blocks() * bs,
            zones: g.nzones,
            ..Default::default()
        };
        for z in &self.zones {
            let c = z.counters();
            u.used_bytes += z.used_blocks() as u64 * bs;
            u.data_bytes += c.data_blocks * bs;
            u.logical_used_bytes += c.logical_bytes;
        }
        u
    }

    /// Scrub every zone; `deep` also reads and verifies every chunk.
    pub async fn check(&self, deep: bool) -> Result<Vec<Problem>> {
        let vols: HashMap<u32, VolInfo> = self
            .meta
            .catalog()
            .volumes
            .iter()
            .map(|e| (e.id, VolInfo::from_entry(e)))
            .collect();
        let mut out = Vec::new();
        for z in &self.zones {
            out.extend(z.check(&vols, deep).await?);
        }
        Ok(out)
    }
}
