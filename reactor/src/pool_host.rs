//! A pool hosted on the reactors: each reactor opens the backing file with
//! its own io_uring and owns the zones `z` with `z % reactors == index`
//! (no locks on the I/O path: only the owner touches a zone). Reactor 0 also
//! owns the pool header and catalog. Volume I/O is split by chunk; reads and
//! writes of chunks other reactors own travel through the forwarding lanes
//! (`crate::forward`), other per-zone work as messages ([`ZoneRouter`]).
//! Control work (delete, resize, usage, check, ...) is the engine's
//! [`lifecycle`], run on reactor 0 over the router: no rule about volumes
//! is repeated here.

use crate::forward::{self, Lanes, Service};
use crate::reactor::{current, ReactorsHandle};
use crate::uring_dev::UringDev;
use crate::zone_router::{call_err, ZoneRouter};
use foldhash::{HashMap, HashMapExt};
use futures::future::join_all;
use sluice_engine::dev::DeviceLock;
use sluice_engine::format::{probe_file, uuid_hex, Catalog, Geometry, Probe, VolumeEntry};
use sluice_engine::fsmap::{self, FsmapQuery, FsmapRecord};
use sluice_engine::lifecycle;
use sluice_engine::volume::{ChunkSpan, VolInfo, WritePiece};
use sluice_engine::{
    AlignedBuf, Compression, Error, PoolCatalog, PoolUsage, Problem, Result, VolumeSpace, Zone,
    ZoneConfig,
};
use smallvec::{smallvec, SmallVec};
use std::cell::RefCell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// What a read returns, chunk by chunk: `None` for a hole. Inline for one
/// chunk (every 4 KiB read): no heap allocation.
pub type ChunkReads = SmallVec<[(ChunkSpan, Option<AlignedBuf>); 1]>;

/// A chunk operation forwarded to the reactor owning the chunk's zone.
pub(crate) enum ChunkOp {
    Read {
        vol: VolInfo,
        span: ChunkSpan,
    },
    Write {
        vol: VolInfo,
        span: ChunkSpan,
        data: AlignedBuf,
    },
    Piece {
        vol: VolInfo,
        piece: WritePiece,
        data: AlignedBuf,
    },
}

/// Its result: the data of a read (`None` for a hole); `None` for writes.
pub(crate) type ChunkOut = Result<Option<AlignedBuf>>;

impl ChunkOp {
    async fn run(self, z: &Zone<UringDev>) -> ChunkOut {
        match self {
            ChunkOp::Read { vol, span } => z.read_span(&vol, span).await,
            ChunkOp::Write { vol, span, data } => z.write(&vol, span, data).await.map(|()| None),
            ChunkOp::Piece { vol, piece, data } => {
                z.write_piece(&vol, &piece, data).await.map(|()| None)
            }
        }
    }
}

/// Serves forwarded chunk operations on the reactor owning their zone.
struct ZoneService {
    pool: String,
}

impl Service for ZoneService {
    type Op = ChunkOp;
    type Out = ChunkOut;
    async fn serve(&self, zone: u32, op: ChunkOp) -> ChunkOut {
        op.run(&*local_zone(&self.pool, zone)?).await
    }
}

/// What one reactor holds of one pool: its zones, the catalog (reactor 0
/// only) and its end of the forwarding lanes.
struct PoolShard {
    zones: HashMap<u32, Rc<Zone<UringDev>>>,
    catalog: Option<Rc<PoolCatalog<UringDev>>>,
    /// This reactor's end of the chunk-operation lanes.
    lane_end: Option<Rc<forward::LaneEnd<ZoneService>>>,
}

thread_local! {
    /// Pools by name, on this reactor.
    static SHARDS: RefCell<HashMap<String, Rc<RefCell<PoolShard>>>> = RefCell::new(HashMap::new());
}

fn shard(pool: &str) -> Result<Rc<RefCell<PoolShard>>> {
    SHARDS
        .with(|l| l.borrow().get(pool).cloned())
        .ok_or_else(|| Error::NotFound(format!("pool '{pool}' on this reactor")))
}

pub(crate) fn local_zone(pool: &str, z: u32) -> Result<Rc<Zone<UringDev>>> {
    shard(pool)?
        .borrow()
        .zones
        .get(&z)
        .cloned()
        .ok_or_else(|| Error::NotFound(format!("zone {z} of pool '{pool}' on this reactor")))
}

/// The zones of `pool` this reactor owns.
pub(crate) fn local_zones(pool: &str) -> Result<Vec<Rc<Zone<UringDev>>>> {
    Ok(shard(pool)?.borrow().zones.values().cloned().collect())
}

fn local_catalog(pool: &str) -> Result<Rc<PoolCatalog<UringDev>>> {
    shard(pool)?
        .borrow()
        .catalog
        .clone()
        .ok_or_else(|| Error::Invalid(format!("pool '{pool}' catalog is not on this reactor")))
}

/// Space and counters of one pool (all zones).
pub type PoolReport = PoolUsage;

/// A pool served by a set of reactors. `Send + Sync`: the control plane and
/// every reactor share it through an `Arc`.
pub struct PoolHost {
    pub name: String,
    pub path: PathBuf,
    geo: Geometry,
    reactors: ReactorsHandle,
    nreact: usize,
    zones: ZoneRouter,
    /// The catalog as reactor 0 last returned it. Written only after a
    /// reactor call has returned (never held across one); read by handshakes.
    catalog: RwLock<Catalog>,
    /// How many volumes of the catalog are read-only: while 0 (the usual
    /// case) a write checks nothing else, no lock on the I/O path.
    read_only_vols: AtomicUsize,
    /// The device's one-owner lock, on a descriptor of its own (each reactor
    /// opens the device separately). Dropped by [`PoolHost::close`].
    lock: Mutex<Option<DeviceLock>>,
}

impl PoolHost {
    /// Create the backing file (sparse, `size` bytes) unless it exists, allocate
    /// its metadata ranges (a full host file system then fails only data
    /// writes), format a pool on it and host it.
    ///
    /// The device is locked before anything is written, and a device that
    /// holds a pool (valid or damaged) is formatted only with `force`; a
    /// device another process or pool has open is never touched. An existing
    /// file keeps its size and contents until those checks pass; a file this
    /// call created is removed again if it fails.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        reactors: ReactorsHandle,
        nreact: usize,
        name: &str,
        path: &Path,
        size: u64,
        zone_size: u64,
        force: bool,
        cfg: ZoneConfig,
    ) -> Result<Arc<Self>> {
        let (lock, created) = lock_or_create(path)?;
        // Declared after `lock`, so dropped first: removed while still locked.
        let mut undo = RemoveOnFailure {
            path,
            armed: created,
        };
        if !created {
            let what = match probe_file(lock.file())? {
                Probe::NotAPool => None,
                Probe::Pool { uuid, .. } => Some(format!("sluice pool {}", uuid_hex(&uuid))),
                Probe::Damaged(e) => Some(format!("a damaged sluice pool ({e})")),
            };
            if let (Some(what), false) = (what, force) {
                return Err(Error::PoolPresent {
                    path: path.to_path_buf(),
                    what,
                });
            }
        }
        let file = lock.file();
        let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if is_file && size > 0 {
            file.set_len(size)
                .map_err(|e| Error::io("size pool file", size, e))?;
        }
        sluice_engine::dev::preallocate_metadata(file, zone_size)?;
        let uuid = {
            use rand_like::fill;
            fill()
        };
        let (name_s, path_s) = (name.to_string(), path.to_path_buf());
        let (geo, catalog) = or_uninstall(&reactors, nreact, name, || {
            let geo = reactors
                .call(0, move || async move {
                    let dev = Rc::new(open_dev(&path_s)?);
                    let catalog = PoolCatalog::format(dev, zone_size, uuid).await?;
                    let geo = catalog.geometry().clone();
                    install(&name_s, Some(Rc::new(catalog)));
                    Ok::<_, Error>(geo)
                })
                .map_err(call_err)??;
            let lanes = Lanes::new(reactors.clone(), nreact);
            Self::start_zones(&reactors, nreact, name, path, &geo, cfg, true, &lanes)?;
            let catalog = reactors
                .call(0, {
                    let n = name.to_string();
                    move || async move { local_catalog(&n).map(|m| m.catalog()) }
                })
                .map_err(call_err)??;
            Ok((geo, catalog))
        })?;
        undo.armed = false;
        Ok(Arc::new(PoolHost {
            name: name.into(),
            path: path.into(),
            zones: ZoneRouter::new(name, reactors.clone(), nreact, geo.nzones),
            geo,
            reactors,
            nreact,
            read_only_vols: AtomicUsize::new(count_read_only(&catalog)),
            catalog: RwLock::new(catalog),
            lock: Mutex::new(Some(lock)),
        }))
    }

    /// Open an existing pool (replaying logs) and host it.
    pub fn open(
        reactors: ReactorsHandle,
        nreact: usize,
        name: &str,
        path: &Path,
        cfg: ZoneConfig,
    ) -> Result<Arc<Self>> {
        let lock = DeviceLock::acquire(path)?;
        let (name_s, path_s) = (name.to_string(), path.to_path_buf());
        let (geo, catalog) = or_uninstall(&reactors, nreact, name, || {
            let (geo, catalog) = reactors
                .call(0, move || async move {
                    let dev = Rc::new(open_dev(&path_s)?);
                    let catalog = PoolCatalog::open(dev)
                        .await
                        .map_err(|e| naming(e, &path_s))?;
                    let r = (catalog.geometry().clone(), catalog.catalog());
                    install(&name_s, Some(Rc::new(catalog)));
                    Ok::<_, Error>(r)
                })
                .map_err(call_err)??;
            let lanes = Lanes::new(reactors.clone(), nreact);
            Self::start_zones(&reactors, nreact, name, path, &geo, cfg, false, &lanes)?;
            Ok((geo, catalog))
        })?;
        let host = Arc::new(PoolHost {
            name: name.into(),
            path: path.into(),
            zones: ZoneRouter::new(name, reactors.clone(), nreact, geo.nzones),
            geo,
            reactors,
            nreact,
            read_only_vols: AtomicUsize::new(count_read_only(&catalog)),
            catalog: RwLock::new(catalog),
            lock: Mutex::new(Some(lock)),
        });
        host.control(|m, z| async move { lifecycle::finish_deletes(&m, &z).await })?;
        Ok(host)
    }

    /// Format or open every zone on its owning reactor, reactors in
    /// parallel, and set up each reactor's end of the forwarding lanes.
    #[allow(clippy::too_many_arguments)]
    fn start_zones(
        reactors: &ReactorsHandle,
        nreact: usize,
        name: &str,
        path: &Path,
        geo: &Geometry,
        cfg: ZoneConfig,
        format: bool,
        lanes: &Arc<Lanes<ChunkOp, ChunkOut>>,
    ) -> Result<()> {
        let mut rxs = Vec::new();
        for r in 0..nreact {
            let (name, path, geo, cfg, lanes) = (
                name.to_string(),
                path.to_path_buf(),
                geo.clone(),
                cfg.clone(),
                lanes.clone(),
            );
            let (tx, rx) = std::sync::mpsc::channel();
            reactors
                .send(r, move || {
                    crate::executor::spawn_local(async move {
                        let res = async {
                            let dev = Rc::new(open_dev(&path)?);
                            let geo = Rc::new(geo);
                            if r != 0 {
                                install(&name, None);
                            }
                            let lp = shard(&name)?;
                            let service = ZoneService { pool: name.clone() };
                            lp.borrow_mut().lane_end = Some(forward::LaneEnd::install(r, lanes, service));
                            for z in (0..geo.nzones).filter(|z| *z as usize % nreact == r) {
                                let zone = if format {
                                    Zone::format(dev.clone(), geo.clone(), z, cfg.clone()).await?
                                } else {
                                    Zone::open(dev.clone(), geo.clone(), z, cfg.clone()).await?
                                };
                                let pool = name.clone();
                                zone.on_shutdown(move |z, why| {
                                    log::error!(
                                        "pool '{pool}' zone {z} shut down: {why}; \
                                         it still serves reads, writes fail until the pool is reopened"
                                    )
                                });
                                lp.borrow_mut().zones.insert(z, Rc::new(zone));
                            }
                            Ok::<_, Error>(())
                        }
                        .await;
                        let _ = tx.send(res);
                    })
                    .detach();
                })
                .map_err(|e| Error::Shutdown {
                    zone: u32::MAX,
                    reason: e.to_string(),
                })?;
            rxs.push(rx);
        }
        for rx in rxs {
            rx.recv().map_err(|_| Error::Shutdown {
                zone: u32::MAX,
                reason: "reactor stopped".into(),
            })??;
        }
        Ok(())
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    pub fn catalog(&self) -> Catalog {
        self.catalog.read().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn volume(&self, name: &str) -> Result<VolumeEntry> {
        self.catalog()
            .volumes
            .into_iter()
            .find(|v| v.name == name && v.live())
            .ok_or_else(|| Error::NotFound(format!("volume '{name}'")))
    }

    /// The live volume with id `id` (ids survive a rename).
    pub fn volume_by_id(&self, id: u32) -> Result<VolumeEntry> {
        self.catalog
            .read()
            .ok()
            .and_then(|c| c.by_id(id).filter(|v| v.live()).cloned())
            .ok_or_else(|| Error::NotFound(format!("volume {id}")))
    }

    /// Whether volume `id` is read-only now (writes on open connections
    /// check this): one atomic load unless some volume of the pool is.
    #[inline]
    pub fn volume_read_only(&self, id: u32) -> bool {
        self.read_only_vols.load(Ordering::Acquire) != 0
            && self
                .catalog
                .read()
                .map(|c| c.by_id(id).is_some_and(|v| v.read_only()))
                .unwrap_or(true)
    }

    fn set_catalog(&self, c: Catalog) {
        if let Ok(mut g) = self.catalog.write() {
            self.read_only_vols
                .store(count_read_only(&c), Ordering::Release);
            *g = c;
        }
    }

    /// Run lifecycle work on reactor 0, which owns the catalog, over the
    /// zone router; then refresh the cached catalog (also after an error:
    /// part of the change may have been made). Blocking (control plane).
    fn control<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<PoolCatalog<UringDev>>, ZoneRouter) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + 'static,
    {
        let (name, zones) = (self.name.clone(), self.zones.clone());
        let (out, cat) = self
            .reactors
            .call(0, move || async move {
                let m = local_catalog(&name)?;
                let out = f(m.clone(), zones).await;
                Ok::<_, Error>((out, m.catalog()))
            })
            .map_err(call_err)??;
        self.set_catalog(cat);
        out
    }

    pub fn create_volume(
        &self,
        name: &str,
        size: u64,
        chunk_size: u64,
        compression: Compression,
    ) -> Result<VolumeEntry> {
        let n = name.to_string();
        self.control(move |m, _| async move {
            lifecycle::create_volume(&m, &n, size, chunk_size, compression).await
        })
    }

    /// Rename a volume ([`lifecycle::rename_volume`]).
    pub fn rename_volume(&self, name: &str, new_name: &str) -> Result<VolumeEntry> {
        let (n, nn) = (name.to_string(), new_name.to_string());
        self.control(move |m, _| async move { lifecycle::rename_volume(&m, &n, &nn).await })
    }

    /// Set a volume's read-only flag ([`lifecycle::set_read_only`]); open
    /// connections see it on their next write.
    pub fn set_read_only(&self, name: &str, read_only: bool) -> Result<VolumeEntry> {
        let n = name.to_string();
        self.control(move |m, _| async move { lifecycle::set_read_only(&m, &n, read_only).await })
    }

    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let n = name.to_string();
        self.control(move |m, z| async move { lifecycle::delete_volume(&m, &z, &n).await })
    }

    /// Grow or shrink a volume ([`lifecycle::resize_volume`]). Open
    /// connections keep their old size, but past the new end every zone
    /// refuses their requests from the moment the shrink reaches it.
    pub fn resize_volume(&self, name: &str, size: u64) -> Result<VolumeEntry> {
        let n = name.to_string();
        self.control(move |m, z| async move { lifecycle::resize_volume(&m, &z, &n, size).await })
    }

    /// Snapshot a volume ([`lifecycle::snapshot_volume`]): a read-only
    /// volume `name` sharing every block `volume` holds now.
    pub fn snapshot_volume(&self, volume: &str, name: &str) -> Result<VolumeEntry> {
        let (v, n) = (volume.to_string(), name.to_string());
        self.control(move |m, z| async move { lifecycle::snapshot_volume(&m, &z, &v, &n).await })
    }

    /// Clone a read-only volume ([`lifecycle::clone_volume`]): a volume
    /// `name` sharing every block of `snapshot`, writable unless `read_only`.
    pub fn clone_volume(&self, snapshot: &str, name: &str, read_only: bool) -> Result<VolumeEntry> {
        let (s, n) = (snapshot.to_string(), name.to_string());
        self.control(
            move |m, z| async move { lifecycle::clone_volume(&m, &z, &s, &n, read_only).await },
        )
    }

    /// Reactor owning zone `z`.
    #[inline]
    pub fn owner(&self, z: u32) -> usize {
        self.zones.owner(z)
    }

    /// How control work reaches this pool's zones.
    pub fn zones(&self) -> &ZoneRouter {
        &self.zones
    }

    /// Run a per-zone future on the zone's owner: directly when that is the
    /// calling reactor, else as a message.
    async fn on_zone<T, F, Fut>(&self, z: u32, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Zone<UringDev>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + 'static,
    {
        self.zones.run_on(z, f).await
    }

    /// Run a chunk operation on the zone's owner: through the forwarding
    /// lanes (no allocation) when the owner is another reactor, else (the
    /// calling reactor owns it, a lane is full, or the caller is not a
    /// reactor) as [`Self::on_zone`] does.
    async fn chunk_op(&self, z: u32, op: ChunkOp) -> ChunkOut {
        let owner = self.owner(z);
        let lane_end = match current() {
            Some(c) if c.index != owner => shard(&self.name)
                .ok()
                .and_then(|l| l.borrow().lane_end.clone()),
            _ => None,
        };
        let op = match lane_end {
            Some(f) => match f.call(owner, z, op).await {
                Ok(out) => return out,
                Err(op) => op,
            },
            None => op,
        };
        self.on_zone(z, move |zone| async move { op.run(&zone).await })
            .await
    }

    /// Read `len` bytes: per chunk, `None` for holes. Chunks are read in parallel.
    pub async fn read(&self, v: &VolInfo, offset: u64, len: u32) -> Result<ChunkReads> {
        v.check_range(offset, len as u64)?;
        let nz = self.geo.nzones;
        let mut spans = v.split(offset, len as u64);
        if let (Some(s), None) = (spans.next(), spans.next()) {
            // One chunk (every 4 KiB read): no join.
            let vol = *v;
            let data = self
                .chunk_op(v.zone_of(s.chunk, nz), ChunkOp::Read { vol, span: s })
                .await?;
            return Ok(smallvec![(s, data)]);
        }
        let futs = v.split(offset, len as u64).map(|s| {
            let vol = *v;
            async move {
                let data = self
                    .chunk_op(v.zone_of(s.chunk, nz), ChunkOp::Read { vol, span: s })
                    .await?;
                Ok::<_, Error>((s, data))
            }
        });
        join_all(futs).await.into_iter().collect()
    }

    /// Write `data` at `offset`. A request within one chunk (every 4 KiB
    /// write, and any write no larger than a chunk that does not cross one)
    /// hands its buffer to the zone as it is. Wider ones go as runs of
    /// whole chunks homed in one zone (one allocation and one device write
    /// each, `Zone::write_run`) plus the partial chunks at either end, in
    /// parallel; a request that is a single run keeps its buffer.
    pub async fn write(&self, v: &VolInfo, offset: u64, data: AlignedBuf) -> Result<()> {
        v.check_range(offset, data.len() as u64)?;
        let nz = self.geo.nzones;
        let v = *v;
        let mut spans = v.split(offset, data.len() as u64);
        if let (Some(span), None) = (spans.next(), spans.next()) {
            let op = ChunkOp::Write { vol: v, span, data };
            return self.chunk_op(v.zone_of(span.chunk, nz), op).await.map(drop);
        }
        let pieces = v.write_pieces(offset, data.len(), nz);
        let piece_on_zone = |piece: WritePiece, data: AlignedBuf| async move {
            let op = ChunkOp::Piece {
                vol: v,
                piece,
                data,
            };
            self.chunk_op(piece.zone, op).await.map(drop)
        };
        if let [p] = pieces[..] {
            // One run covering the request: its buffer as it is.
            return piece_on_zone(p, data).await;
        }
        let futs = pieces.into_iter().map(|p| {
            let piece = AlignedBuf::from_slice(&data[p.span.buf_off..p.span.buf_off + p.len]);
            piece_on_zone(p, piece)
        });
        join_all(futs).await.into_iter().collect()
    }

    pub async fn write_zeroes(&self, v: &VolInfo, offset: u64, len: u32) -> Result<()> {
        v.check_range(offset, len as u64)?;
        let nz = self.geo.nzones;
        let futs = v.split(offset, len as u64).map(|s| {
            let v = *v;
            async move {
                self.on_zone(v.zone_of(s.chunk, nz), move |z| async move {
                    z.write_zeroes(&v, s).await
                })
                .await
            }
        });
        join_all(futs).await.into_iter().collect()
    }

    /// Allocation runs over a range: (offset, len, mapped), merged.
    pub async fn block_status(
        &self,
        v: &VolInfo,
        offset: u64,
        len: u32,
    ) -> Result<Vec<(u64, u64, bool)>> {
        lifecycle::block_status(&self.zones, v, offset, len as u64).await
    }

    /// Make every completed write durable: every reactor flushes its zones.
    pub async fn flush(&self) -> Result<()> {
        lifecycle::flush(&self.zones).await
    }

    /// Blocking flush from a control-plane thread.
    pub fn flush_blocking(self: &Arc<Self>) -> Result<()> {
        let me = self.clone();
        self.reactors
            .call(0, move || async move { me.flush().await })
            .map_err(call_err)?
    }

    /// Checkpoint every zone (clean shutdown: nothing left to replay).
    pub fn checkpoint_all(&self) -> Result<()> {
        self.control(|_, z| async move { lifecycle::checkpoint(&z).await })
    }

    /// Space and counters gathered from every reactor.
    pub fn report(&self) -> Result<PoolReport> {
        let geo = self.geo.clone();
        self.control(move |_, z| async move { lifecycle::usage(&geo, &z).await })
    }

    /// Space each volume takes, by volume id ([`lifecycle::volume_space`]):
    /// every reactor asks its zones, in parallel. Blocking (control plane).
    pub fn volume_space(&self) -> Result<std::collections::HashMap<u32, VolumeSpace>> {
        self.control(|_, z| async move { lifecycle::volume_space(&z).await })
    }

    /// One page of GETFSMAP ([`fsmap::pool_fsmap`]): on reactor 0, which
    /// has the catalog; each zone's share runs on the zone's owner through
    /// the router. Blocking (control plane).
    pub fn fsmap(&self, q: FsmapQuery) -> Result<Vec<FsmapRecord>> {
        let geo = self.geo.clone();
        self.control(move |m, z| async move { fsmap::pool_fsmap(&geo, &m.catalog(), &z, &q).await })
    }

    /// Zones each reactor owns.
    pub fn zones_of(&self, r: usize) -> Vec<u32> {
        (0..self.geo.nzones)
            .filter(|z| self.owner(*z) == r)
            .collect()
    }

    /// Scrub every zone (`deep` reads every chunk).
    pub fn check(&self, deep: bool) -> Result<Vec<Problem>> {
        self.control(move |m, z| async move { lifecycle::check(&m.catalog(), &z, deep).await })
    }

    /// Drop this pool's state from every reactor (after a checkpoint), then
    /// release the device for the next owner.
    pub fn close(&self) -> Result<()> {
        let r = self.checkpoint_all();
        uninstall(&self.reactors, self.nreact, &self.name);
        if let Ok(mut l) = self.lock.lock() {
            l.take();
        }
        r
    }
}

fn count_read_only(c: &Catalog) -> usize {
    c.volumes.iter().filter(|v| v.read_only()).count()
}

impl PoolHost {
    /// Close the pool ([`Self::close`] but keeping the device lock until
    /// done), then erase it: both header copies zeroed
    /// ([`sluice_engine::format::wipe()`]) so it can no longer be imported,
    /// and a regular file removed. Says whether a file was removed.
    pub fn close_and_erase(&self) -> Result<bool> {
        let r = self.checkpoint_all();
        uninstall(&self.reactors, self.nreact, &self.name);
        let mut g = self
            .lock
            .lock()
            .map_err(|_| Error::Invalid("pool lock poisoned".into()))?;
        let Some(lock) = g.take() else {
            return Err(Error::Invalid(format!("pool '{}' is closed", self.name)));
        };
        // A failed checkpoint does not stop the erase: the pool is going.
        if let Err(e) = r {
            log::warn!("pool '{}': checkpoint before delete failed: {e}", self.name);
        }
        sluice_engine::format::wipe_file(lock.file())?;
        let is_file = lock.file().metadata().map(|m| m.is_file()).unwrap_or(false);
        if is_file {
            // Removed while still locked: nobody opens it in between.
            std::fs::remove_file(&self.path).map_err(|e| Error::open(&self.path, e))?;
        }
        drop(lock);
        Ok(is_file)
    }
}

/// Remove a pool's state from every reactor.
fn uninstall(reactors: &ReactorsHandle, nreact: usize, name: &str) {
    for i in 0..nreact {
        let name = name.to_string();
        let _ = reactors.call(i, move || async move {
            if let Some(lp) = SHARDS.with(|l| l.borrow_mut().remove(&name)) {
                if let Some(f) = lp.borrow_mut().lane_end.take() {
                    f.uninstall();
                }
            }
        });
    }
}

/// "Not a pool" names the device (other errors name their block).
fn naming(e: Error, path: &Path) -> Error {
    match e {
        Error::NotAPool(m) => Error::NotAPool(format!("{}: {m}", path.display())),
        e => e,
    }
}

/// Run the steps that install pool `name` on the reactors; should one fail,
/// remove what the others installed, so a failed create or open leaves no
/// zones (and no open descriptors) behind.
fn or_uninstall<T>(
    reactors: &ReactorsHandle,
    nreact: usize,
    name: &str,
    steps: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let r = steps();
    if r.is_err() {
        uninstall(reactors, nreact, name);
    }
    r
}

/// Lock the device at `path`, creating it as an empty file if nothing is
/// there; says whether it was created. Creation is exclusive (`O_EXCL`), so
/// a file someone else creates meanwhile is never claimed as ours.
fn lock_or_create(path: &Path) -> Result<(DeviceLock, bool)> {
    if path.exists() {
        return Ok((DeviceLock::acquire(path)?, false));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::open(path, e))?;
    // Should someone lock the new file before us, it is theirs: left alone.
    Ok((DeviceLock::lock(file, path)?, true))
}

/// Removes the file a failed create made, unless disarmed.
struct RemoveOnFailure<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for RemoveOnFailure<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

/// Open the backing file with O_DIRECT; where the filesystem refuses it
/// (tmpfs), fall back to buffered I/O — flushes still make data durable.
fn open_dev(path: &Path) -> Result<UringDev> {
    match UringDev::open(path) {
        Ok(d) => Ok(d),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => UringDev::open_with(
            path,
            crate::uring_dev::UringDevOptions {
                direct: false,
                read_only: false,
            },
        )
        .map_err(|e| Error::io("open", 0, e)),
        Err(e) => Err(Error::io("open", 0, e)),
    }
}

fn install(name: &str, catalog: Option<Rc<PoolCatalog<UringDev>>>) {
    SHARDS.with(|l| {
        l.borrow_mut().insert(
            name.to_string(),
            Rc::new(RefCell::new(PoolShard {
                zones: HashMap::new(),
                catalog,
                lane_end: None,
            })),
        );
    });
}

mod rand_like {
    /// A random pool UUID from the OS.
    pub fn fill() -> [u8; 16] {
        let mut u = [0u8; 16];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read;
            let _ = f.read_exact(&mut u);
        }
        u
    }
}
