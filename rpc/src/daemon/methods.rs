//! Every JSON-RPC method of the daemon, registered on a [`MethodTable`].
//! Parameter names follow SPDK's style; sizes accept bytes or "4G" strings.

use super::logger::short_json;
use super::{rpc_err, Daemon, ExportEntry};
use crate::fsmap_json::{parse_record, record_json};
use crate::jsonrpc::{parse_params, MethodTable, NoParams, RpcError, Shutdown};
use crate::size::ByteSize;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_engine::format::{probe_file, uuid_hex, Catalog, Probe, VolumeEntry};
use sluice_engine::fsmap::FsmapQuery;
use sluice_engine::{Compression, VolumeSpace};
use sluice_reactor::PoolHost;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolCreate {
    name: String,
    path: PathBuf,
    size: Option<ByteSize>,
    zone_size: Option<ByteSize>,
    /// Format over a device that holds a pool not open anywhere.
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolImport {
    name: Option<String>,
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolArg {
    pool: Option<String>,
    #[serde(default)]
    deep: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FsmapArgs {
    pool: Option<String>,
    start: Option<ByteSize>,
    end: Option<ByteSize>,
    count: Option<usize>,
    /// The last record of the previous page, as returned.
    after: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeCreate {
    name: String,
    size: ByteSize,
    chunk_size: Option<ByteSize>,
    compression: Option<String>,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeName {
    name: String,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeResize {
    name: String,
    size: ByteSize,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeSnapshot {
    /// The volume to snapshot.
    volume: String,
    /// Name of the new, read-only volume.
    name: String,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeClone {
    /// A read-only volume (a snapshot) to clone.
    snapshot: String,
    /// Name of the new volume.
    name: String,
    #[serde(default)]
    read_only: bool,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeFilter {
    name: Option<String>,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IostatArgs {
    name: Option<String>,
    pool: Option<String>,
    #[serde(default)]
    reset: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolClose {
    name: String,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeRename {
    name: String,
    new_name: String,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeReadOnly {
    name: String,
    read_only: bool,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NbdStart {
    unix: Option<PathBuf>,
    tcp: Option<String>,
    tls: Option<super::exports::NbdTlsParams>,
    #[serde(default)]
    insecure: bool,
    /// In-flight buffer budget of all connections (default 256 MiB).
    memory: Option<ByteSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportAdd {
    volume: String,
    name: Option<String>,
    #[serde(default)]
    read_only: bool,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRemove {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveConfig {
    path: Option<PathBuf>,
}

fn pool_json(p: &PoolHost) -> Result<Value, RpcError> {
    let r = p.report().map_err(rpc_err)?;
    let g = p.geometry();
    let ratio = if r.data_bytes == 0 {
        1.0
    } else {
        r.logical_used_bytes as f64 / r.data_bytes as f64
    };
    let uuid = uuid_hex(&g.uuid);
    Ok(json!({
        "name": p.name,
        "path": p.path,
        "uuid": uuid,
        "size_bytes": r.size_bytes,
        "used_bytes": r.used_bytes,
        "data_bytes": r.data_bytes,
        "logical_used_bytes": r.logical_used_bytes,
        "compression_ratio": (ratio * 1000.0).round() / 1000.0,
        "zones": r.zones,
        "zone_size": g.zone_blocks as u64 * 4096,
        "volumes": p.catalog().volumes.iter().filter(|v| v.live()).count(),
        "failed_zones": r.failed_zones.iter().map(|(z, why)| json!({"zone": z, "reason": why})).collect::<Vec<_>>(),
    }))
}

fn volume_json(pool: &str, v: &VolumeEntry) -> Value {
    json!({
        "name": v.name,
        "id": v.id,
        "pool": pool,
        "size": v.size,
        "chunk_size": v.chunk_size(),
        "compression": v.compression.name(),
        "read_only": v.read_only(),
    })
}

/// A volume as `volume_get_volumes` lists it: [`volume_json`] plus its
/// space, after `size`: `mapped_bytes` (logical bytes of its mapped chunks)
/// and `allocated_bytes` (the 4 KiB data blocks those chunks occupy on the
/// pool, x 4096; a block shared with other volumes counts for each of
/// them), and `parent`: the name of the volume it was snapshotted or cloned
/// from, `null` when it has none or that volume is gone. See
/// docs/decisions.md, "Space".
fn volume_listing(pool: &str, v: &VolumeEntry, space: &VolumeSpace, catalog: &Catalog) -> Value {
    let parent = (v.parent != 0)
        .then(|| catalog.by_id(v.parent).filter(|p| p.live()))
        .flatten()
        .map(|p| p.name.clone());
    json!({
        "name": v.name,
        "id": v.id,
        "pool": pool,
        "size": v.size,
        "mapped_bytes": space.mapped_bytes,
        "allocated_bytes": space.allocated_bytes(),
        "chunk_size": v.chunk_size(),
        "compression": v.compression.name(),
        "read_only": v.read_only(),
        "parent": parent,
    })
}

/// Register a method that changes state: the call is logged (method and
/// shortened params) when it arrives, and its failure when it fails.
fn register_change<P, R, F>(reg: &mut MethodTable, name: &'static str, handler: F)
where
    P: DeserializeOwned,
    R: Serialize,
    F: Fn(P) -> Result<R, RpcError> + Send + Sync + 'static,
{
    reg.register(name, move |params: Value| {
        log::info!("rpc {name} {}", short_json(&params));
        let r = parse_params(params).and_then(&handler).and_then(|r| {
            serde_json::to_value(r)
                .map_err(|e| RpcError::internal(format!("cannot serialize the result: {e}")))
        });
        if let Err(e) = &r {
            log::warn!("rpc {name} failed: {}", e.message);
        }
        r
    });
}

/// Register every method. `stop` is triggered by the `shutdown` method.
pub fn register(reg: &mut MethodTable, d: &Arc<Daemon>, stop: Shutdown) {
    let dd = d.clone();
    register_change(reg, "pool_create", move |p: PoolCreate| {
        let size = p.size.map(|s| s.bytes()).unwrap_or(0);
        if size == 0 && !p.path.exists() {
            return Err(RpcError::invalid_params(
                "size is required to create a new pool file",
            ));
        }
        let zone = p.zone_size.map(|s| s.bytes()).unwrap_or(256 << 20);
        // Reserve name and device; the slow format runs with no table lock.
        let slot = dd.reserve(&p.name, &p.path, None)?;
        let host = PoolHost::create(
            dd.reactors.handle(),
            dd.reactors.len(),
            &p.name,
            &p.path,
            size,
            zone,
            p.force,
            dd.opts.zone.clone(),
        )
        .map_err(rpc_err)?;
        let out = pool_json(&host);
        log::info!(
            "pool '{}' created on {}: {}, {} zones",
            p.name,
            p.path.display(),
            crate::size::format_size(host.geometry().size_bytes()),
            host.geometry().nzones
        );
        slot.commit(host)?;
        dd.journal_pool(&p.name, &p.path);
        out
    });

    let dd = d.clone();
    register_change(reg, "pool_import", move |p: PoolImport| {
        let name = p.name.unwrap_or_else(|| "pool0".into());
        // The UUID catches the same pool under another path (a hard link, a
        // copy, a loop device over the file), which the lock cannot see.
        let uuid = match std::fs::File::open(&p.path).map(|f| probe_file(&f)) {
            Ok(Ok(Probe::Pool { uuid, .. })) => Some(uuid),
            _ => None,
        };
        let slot = dd.reserve(&name, &p.path, uuid).map_err(|e| {
            if e.code == crate::jsonrpc::codes::BUSY {
                RpcError::exists(e.message)
            } else {
                e
            }
        })?;
        let host = PoolHost::open(
            dd.reactors.handle(),
            dd.reactors.len(),
            &name,
            &p.path,
            dd.opts.zone.clone(),
        )
        .map_err(rpc_err)?;
        let out = pool_json(&host);
        log::info!(
            "pool '{name}' opened from {}: {}, {} zones, {} volume(s)",
            p.path.display(),
            crate::size::format_size(host.geometry().size_bytes()),
            host.geometry().nzones,
            host.catalog().volumes.iter().filter(|v| v.live()).count()
        );
        slot.commit(host)?;
        dd.journal_pool(&name, &p.path);
        out
    });

    let dd = d.clone();
    register_change(reg, "pool_export", move |p: PoolClose| {
        let (host, _slot, _) = dd.take_pool(&p.name, p.force)?;
        dd.journal_drop_pool(&p.name);
        host.close().map_err(rpc_err)?;
        log::info!(
            "pool '{}' closed ({}, {})",
            p.name,
            crate::size::format_size(host.geometry().size_bytes()),
            host.path.display()
        );
        Ok(json!({"name": p.name}))
    });

    let dd = d.clone();
    register_change(reg, "pool_delete", move |p: PoolClose| {
        let (host, _slot, _) = dd.take_pool(&p.name, p.force)?;
        dd.journal_drop_pool(&p.name);
        let file_removed = host.close_and_erase().map_err(rpc_err)?;
        log::info!(
            "pool '{}' deleted ({}, {}{})",
            p.name,
            crate::size::format_size(host.geometry().size_bytes()),
            host.path.display(),
            if file_removed {
                ", file removed"
            } else {
                ", header erased"
            }
        );
        Ok(json!({"name": p.name, "path": host.path, "file_removed": file_removed}))
    });

    let dd = d.clone();
    reg.register_typed("pool_get_pools", move |_: NoParams| {
        dd.pool_list()?
            .iter()
            .map(|p| pool_json(p))
            .collect::<Result<Vec<_>, _>>()
    });

    let dd = d.clone();
    reg.register_typed("pool_scrub", move |p: PoolArg| {
        let pool = dd.pool(p.pool.as_deref())?;
        let problems = pool.check(p.deep).map_err(rpc_err)?;
        for pr in &problems {
            log::error!("pool '{}': corruption found by scrub: {pr}", pool.name);
        }
        Ok(json!({
            "pool": pool.name,
            "clean": problems.is_empty(),
            "problems": problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        }))
    });

    let dd = d.clone();
    reg.register_typed("pool_get_fsmap", move |p: FsmapArgs| {
        let pool = dd.pool(p.pool.as_deref())?;
        let after = match &p.after {
            None => None,
            Some(a) => {
                Some(parse_record(a).map_err(|e| RpcError::invalid_params(format!("after: {e}")))?)
            }
        };
        let q = FsmapQuery {
            start: p.start.map_or(0, |s| s.bytes()),
            end: p.end.map(|e| e.bytes()),
            count: p.count,
            after,
        };
        let recs = pool.fsmap(q).map_err(rpc_err)?;
        Ok(json!({"records": recs.iter().map(record_json).collect::<Vec<_>>()}))
    });

    let dd = d.clone();
    register_change(reg, "volume_create", move |p: VolumeCreate| {
        let pool = dd.pool(p.pool.as_deref())?;
        let comp =
            Compression::parse(p.compression.as_deref().unwrap_or("lz4")).map_err(rpc_err)?;
        let cs = p.chunk_size.map(|c| c.bytes()).unwrap_or(64 * 1024);
        let v = pool
            .create_volume(&p.name, p.size.bytes(), cs, comp)
            .map_err(rpc_err)?;
        Ok(volume_json(&pool.name, &v))
    });

    let dd = d.clone();
    register_change(reg, "volume_delete", move |p: VolumeName| {
        let pool = dd.pool_of_volume(p.pool.as_deref(), &p.name)?;
        let id = pool.volume(&p.name).map_err(rpc_err)?.id;
        if let Some(e) = dd.exports_of(&pool.name, id).first() {
            return Err(RpcError::busy(format!(
                "volume '{}' is exported as '{e}': remove the export first",
                p.name
            )));
        }
        pool.delete_volume(&p.name).map_err(rpc_err)?;
        Ok(true)
    });

    let dd = d.clone();
    register_change(reg, "volume_resize", move |p: VolumeResize| {
        let pool = dd.pool_of_volume(p.pool.as_deref(), &p.name)?;
        let v = pool
            .resize_volume(&p.name, p.size.bytes())
            .map_err(rpc_err)?;
        Ok(volume_json(&pool.name, &v))
    });

    let dd = d.clone();
    register_change(reg, "volume_snapshot", move |p: VolumeSnapshot| {
        let pool = dd.pool_of_volume(p.pool.as_deref(), &p.volume)?;
        let v = pool.snapshot_volume(&p.volume, &p.name).map_err(rpc_err)?;
        Ok(volume_json(&pool.name, &v))
    });

    let dd = d.clone();
    register_change(reg, "volume_clone", move |p: VolumeClone| {
        let pool = dd.pool_of_volume(p.pool.as_deref(), &p.snapshot)?;
        let v = pool
            .clone_volume(&p.snapshot, &p.name, p.read_only)
            .map_err(rpc_err)?;
        Ok(volume_json(&pool.name, &v))
    });

    let dd = d.clone();
    register_change(reg, "volume_rename", move |p: VolumeRename| {
        let pool = dd.pool_of_volume(p.pool.as_deref(), &p.name)?;
        let v = pool.rename_volume(&p.name, &p.new_name).map_err(rpc_err)?;
        for e in dd.exports_follow_rename(&pool.name, v.id, &v.name)? {
            dd.journal_export(&e.name, export_params(&e));
        }
        Ok(volume_json(&pool.name, &v))
    });

    let dd = d.clone();
    register_change(reg, "volume_set_read_only", move |p: VolumeReadOnly| {
        let pool = dd.pool_of_volume(p.pool.as_deref(), &p.name)?;
        let v = pool.set_read_only(&p.name, p.read_only).map_err(rpc_err)?;
        Ok(volume_json(&pool.name, &v))
    });

    let dd = d.clone();
    reg.register_typed("volume_get_volumes", move |p: VolumeFilter| {
        let pools = match &p.pool {
            Some(n) => vec![dd.pool(Some(n))?],
            None => dd.pool_list()?,
        };
        let mut out = Vec::new();
        for pool in &pools {
            let catalog = pool.catalog();
            let picked: Vec<_> = catalog
                .volumes
                .iter()
                .filter(|v| v.live() && p.name.as_ref().is_none_or(|n| n == &v.name))
                .collect();
            if picked.is_empty() {
                continue;
            }
            // One fan-out per pool: every zone reports all its volumes.
            let space = pool.volume_space().map_err(rpc_err)?;
            for v in picked {
                let s = space.get(&v.id).copied().unwrap_or_default();
                out.push(volume_listing(&pool.name, v, &s, &catalog));
            }
        }
        if let (Some(n), true) = (&p.name, out.is_empty()) {
            return Err(RpcError::not_found(format!("volume '{n}' not found")));
        }
        Ok(out)
    });

    let dd = d.clone();
    reg.register_typed("volume_get_iostat", move |p: IostatArgs| {
        if p.reset {
            log::info!(
                "rpc volume_get_iostat reset (volume {}, pool {})",
                p.name.as_deref().unwrap_or("*"),
                p.pool.as_deref().unwrap_or("*")
            );
        }
        dd.iostat(p.name.as_deref(), p.pool.as_deref(), p.reset)
    });

    let dd = d.clone();
    register_change(reg, "nbd_server_start", move |p: NbdStart| {
        let unix = p.unix.unwrap_or_else(|| dd.opts.data_dir.join("nbd.sock"));
        let tls = p.tls.map(|t| t.resolved()).transpose()?;
        let memory = p.memory.map(|m| m.bytes());
        let out = dd.nbd_start(super::exports::NbdStartOptions {
            unix: Some(unix.clone()),
            tcp: p.tcp.clone(),
            tls: tls.clone(),
            insecure: p.insecure,
            memory,
        })?;
        let mut saved = json!({"unix": unix, "tcp": p.tcp, "tls": tls, "insecure": p.insecure});
        if let Some(m) = memory {
            saved["memory"] = json!(m);
        }
        dd.journal_nbd(Some(saved));
        Ok(out)
    });

    let dd = d.clone();
    register_change(reg, "nbd_server_stop", move |_: NoParams| {
        dd.nbd_stop()?;
        dd.journal_nbd(None);
        Ok(true)
    });

    let dd = d.clone();
    register_change(reg, "nbd_export_add", move |p: ExportAdd| {
        let pool = dd.pool_of_volume(p.pool.as_deref(), &p.volume)?;
        let vol = pool.volume(&p.volume).map_err(rpc_err)?;
        let name = p.name.clone().unwrap_or_else(|| p.volume.clone());
        let e = ExportEntry {
            name: name.clone(),
            pool: pool.name.clone(),
            volume: vol.name.clone(),
            volume_id: vol.id,
            read_only: p.read_only,
        };
        dd.export_add(e.clone())?;
        log::info!(
            "export '{name}' added: volume '{}' of pool '{}', {}{}",
            vol.name,
            pool.name,
            crate::size::format_size(vol.size),
            if p.read_only || vol.read_only() {
                ", read-only"
            } else {
                ""
            }
        );
        dd.journal_export(&name, export_params(&e));
        Ok(
            json!({"name": name, "volume": p.volume, "pool": pool.name, "read_only": p.read_only || vol.read_only(), "size": vol.size}),
        )
    });

    let dd = d.clone();
    register_change(reg, "nbd_export_remove", move |p: ExportRemove| {
        let e = dd.export_remove(&p.name)?;
        log::info!(
            "export '{}' removed (volume '{}' of pool '{}')",
            e.name,
            e.volume,
            e.pool
        );
        dd.journal_unexport(&p.name);
        Ok(true)
    });

    let dd = d.clone();
    reg.register_typed("nbd_get_exports", move |_: NoParams| {
        Ok(dd
            .export_list()?
            .into_iter()
            .map(|e| {
                let vol = dd.pool(Some(&e.pool)).ok().and_then(|p| p.volume_by_id(e.volume_id).ok());
                let ro = e.read_only || vol.as_ref().is_some_and(|v| v.read_only());
                json!({"name": e.name, "volume": e.volume, "pool": e.pool, "read_only": ro, "size": vol.map(|v| v.size), "connections": dd.nbd_connections(&e.name)})
            })
            .collect::<Vec<_>>())
    });

    let dd = d.clone();
    reg.register_typed("framework_get_reactors", move |_: NoParams| {
        let pools = dd.pool_list()?;
        Ok(dd
            .reactors
            .stats()
            .iter()
            .map(|s| {
                let zones: Vec<Value> = pools.iter().map(|p| json!({"pool": p.name, "zones": p.zones_of(s.index)})).collect();
                json!({
                    "index": s.index, "core": s.core,
                    "busy_iters": s.busy_iters, "idle_iters": s.idle_iters,
                    "sleeps": s.sleeps, "wakeups": s.wakeups, "msgs": s.msgs,
                    "tasks_polled": s.tasks_polled, "ios_submitted": s.ios_submitted, "ios_completed": s.ios_completed,
                    "heap_allocs": s.heap_allocs,
                    "zones": zones,
                })
            })
            .collect::<Vec<_>>())
    });

    let dd = d.clone();
    reg.register_typed("save_config", move |p: SaveConfig| {
        let path = p.path.unwrap_or_else(|| dd.opts.config_path.clone());
        dd.save_config_to(&path)?;
        Ok(json!({"path": path}))
    });

    register_change(reg, "shutdown", move |_: NoParams| {
        stop.trigger();
        Ok(true)
    });
}

/// The `nbd_export_add` params that re-create an export.
fn export_params(e: &ExportEntry) -> Value {
    json!({"volume": e.volume, "name": e.name, "read_only": e.read_only, "pool": e.pool})
}

impl Daemon {
    pub(super) fn journal_pool(&self, name: &str, path: &std::path::Path) {
        if let Ok(mut j) = self.journal.lock() {
            let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            j.pools.retain(|(n, _)| n != name);
            j.pools.push((name.to_string(), abs.display().to_string()));
        }
        self.autosave();
    }

    pub(super) fn journal_drop_pool(&self, name: &str) {
        if let Ok(mut j) = self.journal.lock() {
            j.pools.retain(|(n, _)| n != name);
        }
        self.autosave();
    }

    pub(super) fn journal_nbd(&self, params: Option<Value>) {
        if let Ok(mut j) = self.journal.lock() {
            j.nbd_server = params;
        }
        self.autosave();
    }

    pub(super) fn journal_export(&self, name: &str, params: Value) {
        if let Ok(mut j) = self.journal.lock() {
            match j.exports.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = params,
                None => j.exports.push((name.to_string(), params)),
            }
        }
        self.autosave();
    }

    pub(super) fn journal_unexport(&self, name: &str) {
        if let Ok(mut j) = self.journal.lock() {
            j.exports.retain(|(n, _)| n != name);
        }
        self.autosave();
    }

    /// Keep `<data-dir>/config.json` current so a restart rebuilds this state.
    fn autosave(&self) {
        if let Err(e) = self.save_config_to(&self.opts.config_path) {
            log::error!(
                "cannot save {}: {}",
                self.opts.config_path.display(),
                e.message
            );
        }
    }

    pub fn save_config_to(&self, path: &std::path::Path) -> Result<(), RpcError> {
        let calls = self
            .journal
            .lock()
            .map_err(|_| RpcError::internal("poisoned"))?
            .to_calls();
        super::config::write_atomic(path, &calls)
            .map_err(|e| RpcError::io(format!("{}: {e}", path.display())))
    }
}
