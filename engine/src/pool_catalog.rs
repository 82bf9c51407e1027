//! The pool header and the volume catalog: what a pool is and which volumes
//! it holds, kept crash-safely. Reactor 0 of the daemon and [`crate::Pool`]
//! both use it.

use crate::buf::{AlignedBuf, BLOCK_SIZE};
use crate::dev::BlockDev;
use crate::error::{Error, Result};
use crate::format::catalog::{validate_name, VOL_CREATING, VOL_READ_ONLY};
use crate::format::header::{FORMAT_VERSION, HEADER_BACKUP_BLK};
use crate::format::{Catalog, Compression, Geometry, PoolHeader, VolumeEntry};
use crate::sync::{LocalGuard, LocalMutex};
use crate::volume::{check_size, chunk_shift_for};
use std::cell::RefCell;
use std::rc::Rc;

/// A pool's catalog as kept on its device: the volume table ([`Catalog`],
/// two copies, replaced crash-safely by [`PoolCatalog::update`]) with the
/// locks that order changes to it, and the pool header it sits next to
/// (written at format, read-only after). Not to be confused with
/// [`Catalog`], the table value itself.
pub struct PoolCatalog<D: BlockDev> {
    pub header: PoolHeader,
    dev: Rc<D>,
    catalog: RefCell<Catalog>,
    lock: LocalMutex,
    /// Serializes volume changes that span the catalog and the zones
    /// (`crate::lifecycle`): a resize must not interleave with another.
    changes: LocalMutex,
}

impl<D: BlockDev> PoolCatalog<D> {
    pub fn geometry(&self) -> &Geometry {
        &self.header.geo
    }

    pub fn catalog(&self) -> Catalog {
        self.catalog.borrow().clone()
    }

    /// Write a new pool header (and its backup) and an empty catalog.
    pub async fn format(dev: Rc<D>, zone_size: u64, uuid: [u8; 16]) -> Result<Self> {
        let bs = BLOCK_SIZE as u64;
        let geo = Geometry::for_device(uuid, dev.size(), zone_size)?;
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = PoolHeader {
            version: FORMAT_VERSION,
            geo,
            created_unix,
        };
        // Clear both catalog copies and the backup header, then write
        // generation 1 to both copies.
        let g = &header.geo;
        let cat_len = (g.header_backup_blk() + 1 - g.catalog_start) as usize * BLOCK_SIZE;
        let off = g.catalog_start * bs;
        let (_b, r) = dev.write_at(AlignedBuf::zeroed(cat_len), off).await;
        r.map_err(|e| Error::io("format", off, e))?;
        let meta = PoolCatalog {
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
        let hdr = meta.header.encode();
        for blk in [meta.header.geo.header_backup_blk(), 0] {
            meta.write_block(&hdr, blk, "header write").await?;
        }
        dev.flush().await.map_err(|e| Error::io("flush", 0, e))?;
        Ok(meta)
    }

    /// Read and validate the header and the catalog. Each is kept twice: a
    /// bad copy is rewritten from the good one (one bad block loses
    /// nothing); both bad is an error naming the structure and block.
    pub async fn open(dev: Rc<D>) -> Result<Self> {
        let bs = BLOCK_SIZE as u64;
        if dev.size() < bs {
            return Err(Error::NotAPool("device is smaller than one block".into()));
        }
        let header = Self::read_header(&dev).await?;
        let g = &header.geo;
        let copy = g.catalog_blocks as usize * BLOCK_SIZE;
        let off = g.catalog_start * bs;
        let (b, r) = dev.read_at(AlignedBuf::zeroed(2 * copy), off).await;
        r.map_err(|e| Error::io("catalog read", off, e))?;
        let mut copies = Vec::with_capacity(2);
        for slot in 0..2usize {
            let blk = g.catalog_start + (slot * g.catalog_blocks as usize) as u64;
            copies.push(Catalog::decode(&b[slot * copy..(slot + 1) * copy], blk));
        }
        let best = copies
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .max_by_key(|c| c.generation)
            .cloned();
        let Some(catalog) = best else {
            // Both copies bad: name the first (a never-written catalog is
            // no pool at all).
            let e = copies.into_iter().find_map(|c| c.err());
            return Err(e.unwrap_or_else(|| Error::NotAPool("no volume catalog".into())));
        };
        let stale: Vec<usize> = (0..2)
            .filter(|&i| !matches!(&copies[i], Ok(c) if *c == catalog))
            .collect();
        let meta = PoolCatalog {
            header,
            dev,
            catalog: RefCell::new(catalog),
            lock: LocalMutex::default(),
            changes: LocalMutex::default(),
        };
        if !stale.is_empty() {
            // An update cut short by a crash, or a bad block: both copies
            // carry the newest generation again before anything else runs.
            let bytes = meta.catalog().encode(meta.header.geo.catalog_blocks)?;
            for i in stale {
                meta.write_catalog_copy(&bytes, i as u64).await?;
            }
        }
        Ok(meta)
    }

    /// The pool header from block 0, or from its backup when block 0 is bad
    /// (the bad copy is rewritten).
    async fn read_header(dev: &Rc<D>) -> Result<PoolHeader> {
        let bs = BLOCK_SIZE as u64;
        let dev_blocks = dev.size() / bs;
        let backup = HEADER_BACKUP_BLK;
        let mut found = Vec::with_capacity(2);
        for blk in [0, backup] {
            if blk >= dev_blocks {
                found.push(Err(Error::NotAPool("device is too small".into())));
                continue;
            }
            let (b, r) = dev.read_at(AlignedBuf::zeroed(BLOCK_SIZE), blk * bs).await;
            r.map_err(|e| Error::io("header read", blk * bs, e))?;
            found.push(PoolHeader::decode_at(&b, blk, dev_blocks).map(|h| (h, b)));
        }
        let good = found.iter().find_map(|h| h.as_ref().ok()).cloned();
        let Some((header, bytes)) = good else {
            let mut errs = found.into_iter().filter_map(|h| h.err());
            let first = errs.next();
            let second = errs.next();
            // A zeroed block 0 next to a damaged backup is a damaged pool, not
            // "not a pool"; a version error says more than either.
            return Err(match (first, second) {
                (Some(e @ Error::UnsupportedVersion { .. }), _)
                | (_, Some(e @ Error::UnsupportedVersion { .. })) => e,
                (Some(Error::NotAPool(_)), Some(e @ Error::Corrupt { .. })) => e,
                (Some(e), _) => e,
                (None, _) => Error::NotAPool("no pool header".into()),
            });
        };
        for (i, blk) in [0, backup].into_iter().enumerate() {
            if !matches!(&found[i], Ok((_, b)) if b[..] == bytes[..]) {
                let (_b, r) = dev.write_at(bytes.clone(), blk * bs).await;
                r.map_err(|e| Error::io("header repair", blk * bs, e))?;
                dev.flush().await.map_err(|e| Error::io("flush", 0, e))?;
            }
        }
        Ok(header)
    }

    async fn write_block(&self, bytes: &[u8], blk: u64, what: &'static str) -> Result<()> {
        let off = blk * BLOCK_SIZE as u64;
        let (_b, r) = self.dev.write_at(AlignedBuf::from_slice(bytes), off).await;
        r.map_err(|e| Error::io(what, off, e))
    }

    /// Write catalog copy `i` (0 or 1) and flush.
    async fn write_catalog_copy(&self, bytes: &[u8], i: u64) -> Result<()> {
        let g = &self.header.geo;
        let blk = g.catalog_start + i * g.catalog_blocks as u64;
        self.write_block(bytes, blk, "catalog write").await?;
        self.dev.flush().await.map_err(|e| Error::io("flush", 0, e))
    }

    /// Durably replace the catalog: copy A, flush, copy B, flush. A crash
    /// between leaves one copy of each generation (open takes the newer and
    /// rewrites the other); afterwards both carry the newest, so one bad
    /// copy never falls back to an older catalog.
    async fn write_catalog(&self, mut cat: Catalog) -> Result<()> {
        cat.generation += 1;
        let bytes = cat.encode(self.header.geo.catalog_blocks)?;
        for i in 0..2 {
            self.write_catalog_copy(&bytes, i).await?;
        }
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
            .filter(|v| v.live())
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("volume '{name}'")))
    }

    /// Add a volume to the catalog (a family of its own).
    pub async fn create_volume(
        &self,
        name: &str,
        size: u64,
        chunk_size: u64,
        compression: Compression,
    ) -> Result<VolumeEntry> {
        self.create_volume_in(name, size, chunk_size, compression, None)
            .await
    }

    /// Add a volume to the catalog in `family` (the id of a volume made
    /// earlier, live or not: ids are never reused), so its chunks have the
    /// same home zones as that family's and can share their blocks;
    /// `None` starts a family of its own.
    pub async fn create_volume_in(
        &self,
        name: &str,
        size: u64,
        chunk_size: u64,
        compression: Compression,
        family: Option<u32>,
    ) -> Result<VolumeEntry> {
        validate_name(name)?;
        let chunk_shift = chunk_shift_for(chunk_size)?;
        check_size(size)?;
        let proto = VolumeEntry {
            id: 0,
            family: family.unwrap_or(0),
            parent: 0,
            flags: 0,
            size,
            chunk_shift,
            compression,
            name: name.to_string(),
        };
        self.add_volume(proto, family.is_none()).await
    }

    /// Add `name` as a copy of `src` to be filled by sharing its blocks (a
    /// snapshot or clone): same family, size, chunk size and compression,
    /// `src` as parent, marked creating until [`Self::finish_creating`].
    pub async fn create_copy_of(
        &self,
        src: &VolumeEntry,
        name: &str,
        read_only: bool,
    ) -> Result<VolumeEntry> {
        let proto = VolumeEntry {
            id: 0,
            family: src.family,
            parent: src.id,
            flags: VOL_CREATING | if read_only { VOL_READ_ONLY } else { 0 },
            size: src.size,
            chunk_shift: src.chunk_shift,
            compression: src.compression,
            name: name.to_string(),
        };
        self.add_volume(proto, false).await
    }

    /// The volume made by [`Self::create_copy_of`] is complete: clear its
    /// creating flag, durably.
    pub async fn finish_creating(&self, id: u32) -> Result<VolumeEntry> {
        self.update(|c| {
            let e = entry_by_id(c, id)?;
            e.flags &= !VOL_CREATING;
            Ok(e.clone())
        })
        .await
    }

    /// Give `proto` the next id (and, with `own_family`, a family of its
    /// own) and add it, its name checked and free.
    async fn add_volume(&self, proto: VolumeEntry, own_family: bool) -> Result<VolumeEntry> {
        validate_name(&proto.name)?;
        self.update(|c| {
            if c.find(&proto.name).is_some() {
                return Err(Error::Exists(format!("volume '{}'", proto.name)));
            }
            let id = c.next_id;
            if id as u64 >= crate::format::owner::FIRST_SPECIAL.min(u32::MAX as u64) {
                return Err(Error::NoSpace("volume ids exhausted".into()));
            }
            if !own_family && proto.family >= id {
                return Err(Error::Invalid(format!(
                    "family {}: no volume with that id was made",
                    proto.family
                )));
            }
            c.next_id += 1;
            let v = VolumeEntry {
                id,
                family: if own_family { id } else { proto.family },
                ..proto
            };
            c.volumes.push(v.clone());
            Ok(v)
        })
        .await
    }

    /// Rename a volume: the new name must be valid and free. One catalog
    /// write (both copies, generation-checked), so a crash leaves either
    /// name, never both or neither.
    pub async fn rename_volume(&self, name: &str, new_name: &str) -> Result<VolumeEntry> {
        validate_name(new_name)?;
        self.update(|c| {
            let id = live(c, name)?.id;
            if name != new_name && c.find(new_name).is_some() {
                return Err(Error::Exists(format!("volume '{new_name}'")));
            }
            let e = entry_by_id(c, id)?;
            e.name = new_name.to_string();
            Ok(e.clone())
        })
        .await
    }

    /// Set or clear a volume's read-only flag, durably.
    pub async fn set_read_only(&self, name: &str, read_only: bool) -> Result<VolumeEntry> {
        self.update(|c| {
            let id = live(c, name)?.id;
            let e = entry_by_id(c, id)?;
            if read_only {
                e.flags |= VOL_READ_ONLY;
            } else {
                e.flags &= !VOL_READ_ONLY;
            }
            Ok(e.clone())
        })
        .await
    }
}

/// A volume that exists and is not being deleted.
fn live<'a>(c: &'a Catalog, name: &str) -> Result<&'a VolumeEntry> {
    c.find(name)
        .filter(|v| v.live())
        .ok_or_else(|| Error::NotFound(format!("volume '{name}'")))
}

fn entry_by_id(c: &mut Catalog, id: u32) -> Result<&mut VolumeEntry> {
    c.volumes
        .iter_mut()
        .find(|v| v.id == id)
        .ok_or_else(|| Error::NotFound(format!("volume {id}")))
}
