//! The pool header and the volume catalog: what a pool is and which volumes
//! it holds, kept crash-safely. Reactor 0 of the daemon and [`crate::Pool`]
//! both use it.

use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::dev::BlockDev;
use crate::error::{Error, Result};
use crate::format::catalog::validate_name;
use crate::format::header::FORMAT_VERSION;
use crate::format::{Catalog, Compression, Geometry, PoolHeader, VolumeEntry};
use crate::sync::{LocalGuard, LocalMutex};
use crate::volume::{check_size, chunk_shift_for};
use std::cell::RefCell;
use std::rc::Rc;

/// The pool header plus the crash-safe catalog (two copies, A/B).
pub struct PoolMeta<D: BlockDev> {
    pub header: PoolHeader,
    dev: Rc<D>,
    catalog: RefCell<Catalog>,
    lock: LocalMutex,
    /// Serializes volume changes that span the catalog and the zones
    /// (`crate::lifecycle`): a resize must not interleave with another.
    changes: LocalMutex,
}

impl<D: BlockDev> PoolMeta<D> {
    pub fn geometry(&self) -> &Geometry {
        &self.header.geo
    }

    pub fn catalog(&self) -> Catalog {
        self.catalog.borrow().clone()
    }

    /// Write a new pool header and an empty catalog.
    pub async fn format(dev: Rc<D>, zone_size: u64, uuid: [u8; 16]) -> Result<Self> {
        let bs = BLOCK_SIZE as u64;
        if !zone_size.is_multiple_of(bs) || zone_size / bs > u32::MAX as u64 {
            return Err(Error::Invalid(format!(
                "zone size {zone_size} is not a multiple of 4 KiB"
            )));
        }
        let geo = Geometry::compute(uuid, dev.size() / bs, (zone_size / bs) as u32)?;
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = PoolHeader {
            version: FORMAT_VERSION,
            geo,
            created_unix,
        };
        // Clear both catalog copies, then write generation 1.
        let cat_len = 2 * header.geo.catalog_blocks as usize * BLOCK_SIZE;
        let off = header.geo.catalog_start * bs;
        let (_b, r) = dev.write_at(AlignedBuf::zeroed(cat_len), off).await;
        r.map_err(|e| Error::io("format", off, e))?;
        let meta = PoolMeta {
            header,
            dev: dev.clone(),
            catalog: RefCell::new(Catalog {
                generation: 0,
                next_id: 1,
                volumes: Vec::new(),
            }),
            lock: LocalMutex::default(),
            changes: LocalMutex::default(),
        };
        let cat = meta.catalog();
        meta.write_catalog(cat).await?;
        let (_b, r) = dev
            .write_at(AlignedBuf::from_slice(&meta.header.encode()), 0)
            .await;
        r.map_err(|e| Error::io("header write", 0, e))?;
        dev.flush().await.map_err(|e| Error::io("flush", 0, e))?;
        Ok(meta)
    }

    /// Read and validate the header and the newest valid catalog copy.
    pub async fn open(dev: Rc<D>) -> Result<Self> {
        let bs = BLOCK_SIZE as u64;
        if dev.size() < bs {
            return Err(Error::NotAPool("device is smaller than one block".into()));
        }
        let (b, r) = dev.read_at(AlignedBuf::zeroed(BLOCK_SIZE), 0).await;
        r.map_err(|e| Error::io("header read", 0, e))?;
        let header = PoolHeader::decode(&b, dev.size() / bs)?;
        let g = &header.geo;
        let copy = g.catalog_blocks as usize * BLOCK_SIZE;
        let off = g.catalog_start * bs;
        let (b, r) = dev.read_at(AlignedBuf::zeroed(2 * copy), off).await;
        r.map_err(|e| Error::io("catalog read", off, e))?;
        let mut best: Option<Catalog> = None;
        let mut err = None;
        for slot in 0..2usize {
            let blk = g.catalog_start + (slot * g.catalog_blocks as usize) as u64;
            match Catalog::decode(&b[slot * copy..(slot + 1) * copy], blk) {
                Ok(c) if (c.generation % 2) as usize == slot => {
                    if best.as_ref().is_none_or(|x| c.generation > x.generation) {
                        best = Some(c);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        let catalog = match (best, err) {
            (Some(c), _) => c,
            (None, Some(e)) => return Err(e),
            (None, None) => return Err(Error::NotAPool("no volume catalog".into())),
        };
        Ok(PoolMeta {
            header,
            dev,
            catalog: RefCell::new(catalog),
            lock: LocalMutex::default(),
            changes: LocalMutex::default(),
        })
    }

    /// Durably replace the catalog (write the other copy, then flush).
    async fn write_catalog(&self, mut cat: Catalog) -> Result<()> {
        let g = &self.header.geo;
        cat.generation += 1;
        let bytes = cat.encode(g.catalog_blocks)?;
        let slot = cat.generation % 2;
        let off = (g.catalog_start + slot * g.catalog_blocks as u64) * BLOCK_SIZE as u64;
        let (_b, r) = self.dev.write_at(AlignedBuf::from_slice(&bytes), off).await;
        r.map_err(|e| Error::io("catalog write", off, e))?;
        self.dev
            .flush()
            .await
            .map_err(|e| Error::io("flush", 0, e))?;
        *self.catalog.borrow_mut() = cat;
        Ok(())
    }

    /// Hold while changing a volume across the catalog and the zones.
    pub async fn lock_changes(&self) -> LocalGuard<'_> {
        self.changes.lock().await
    }

    /// Apply `f` to a copy of the catalog and persist the result.
    pub async fn update<T>(&self, f: impl FnOnce(&mut Catalog) -> Result<T>) -> Result<T> {
        let _g = self.lock.lock().await;
        let mut cat = self.catalog();
        let out = f(&mut cat)?;
        self.write_catalog(cat).await?;
        Ok(out)
    }

    pub fn volume(&self, name: &str) -> Result<VolumeEntry> {
        self.catalog
            .borrow()
            .find(name)
            .filter(|v| !v.deleting())
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("volume '{name}'")))
    }

    /// Add a volume to the catalog.
    pub async fn create_volume(
        &self,
        name: &str,
        size: u64,
        chunk_size: u64,
        compression: Compression,
    ) -> Result<VolumeEntry> {
        validate_name(name)?;
        let chunk_shift = chunk_shift_for(chunk_size)?;
        check_size(size)?;
        self.update(|c| {
            if c.find(name).is_some() {
                return Err(Error::Exists(format!("volume '{name}'")));
            }
            let id = c.next_id;
            if id as u64 >= crate::format::owner::FIRST_SPECIAL.min(u32::MAX as u64) {
                return Err(Error::NoSpace("volume ids exhausted".into()));
            }
            c.next_id += 1;
            let v = VolumeEntry {
                id,
                family: id,
                parent: 0,
                flags: 0,
                size,
                chunk_shift,
                compression,
                name: name.to_string(),
            };
            c.volumes.push(v.clone());
            Ok(v)
        })
        .await
    }
}
