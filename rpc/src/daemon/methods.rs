//! Every JSON-RPC method of the daemon, registered on a [`Registry`].
//! Parameter names follow SPDK's style; sizes accept bytes or "4G" strings.

use super::{rpc_err, Daemon, ExportEntry};
use crate::jsonrpc::{NoParams, Registry, RpcError, Shutdown};
use crate::size::ByteSize;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_engine::format::{probe_file, uuid_hex, Probe};
use sluice_engine::Compression;
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
struct VolumeFilter {
    name: Option<String>,
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
        "volumes": p.catalog().volumes.iter().filter(|v| !v.deleting()).count(),
        "failed_zones": r.failed_zones.iter().map(|(z, why)| json!({"zone": z, "reason": why})).collect::<Vec<_>>(),
    }))
}

fn volume_json(pool: &str, v: &sluice_engine::format::VolumeEntry) -> Value {
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

/// Register every method. `stop` is triggered by the `shutdown` method.
pub fn register(reg: &mut Registry, d: &Arc<Daemon>, stop: Shutdown) {
    let dd = d.clone();
    reg.register_typed("pool_create", move |p: PoolCreate| {
        let mut pools = dd
            .pools
            .write()
            .map_err(|_| RpcError::internal("poisoned"))?;
        if pools.contains_key(&p.name) {
            return Err(RpcError::exists(format!(
                "pool '{}' already exists",
                p.name
            )));
        }
        if let Some(other) = Daemon::pool_open_as(&pools, &p.path, None) {
            return Err(RpcError::busy(format!(
                "{} is already open as pool '{other}'",
                p.path.display()
            )));
        }
        let size = p.size.map(|s| s.bytes()).unwrap_or(0);
        if size == 0 && !p.path.exists() {
            return Err(RpcError::invalid_params(
                "size is required to create a new pool file",
            ));
        }
        let zone = p.zone_size.map(|s| s.bytes()).unwrap_or(256 << 20);
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
        let out = pool_json(&host)?;
        pools.insert(p.name.clone(), host);
        drop(pools);
        dd.journal_pool(&p.name, &p.path);
        Ok(out)
    });

    let dd = d.clone();
    reg.register_typed("pool_import", move |p: PoolImport| {
        let name = p.name.unwrap_or_else(|| "pool0".into());
        let mut pools = dd
            .pools
            .write()
            .map_err(|_| RpcError::internal("poisoned"))?;
        if pools.contains_key(&name) {
            return Err(RpcError::exists(format!("pool '{name}' already exists")));
        }
        // The UUID catches the same pool under another path (a hard link, a
        // copy, a loop device over the file), which the lock cannot see.
        let uuid = match std::fs::File::open(&p.path).map(|f| probe_file(&f)) {
            Ok(Ok(Probe::Pool { uuid, .. })) => Some(uuid),
            _ => None,
        };
        if let Some(other) = Daemon::pool_open_as(&pools, &p.path, uuid) {
            return Err(RpcError::exists(format!(
                "{} is already open as pool '{other}'",
                p.path.display()
            )));
        }
        let host = PoolHost::open(
            dd.reactors.handle(),
            dd.reactors.len(),
            &name,
            &p.path,
            dd.opts.zone.clone(),
        )
        .map_err(rpc_err)?;
        let out = pool_json(&host)?;
        pools.insert(name.clone(), host);
        drop(pools);
        dd.journal_pool(&name, &p.path);
        Ok(out)
    });

    let dd = d.clone();
    reg.register_typed("pool_get_pools", move |_: NoParams| {
        let pools = dd
            .pools
            .read()
            .map_err(|_| RpcError::internal("poisoned"))?;
        pools
            .values()
            .map(|p| pool_json(p))
            .collect::<Result<Vec<_>, _>>()
    });

    let dd = d.clone();
    reg.register_typed("pool_scrub", move |p: PoolArg| {
        let pool = dd.pool(p.pool.as_deref())?;
        let problems = pool.check(p.deep).map_err(rpc_err)?;
        Ok(json!({
            "pool": pool.name,
            "clean": problems.is_empty(),
            "problems": problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        }))
    });

    let dd = d.clone();
    reg.register_typed("volume_create", move |p: VolumeCreate| {
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
    reg.register_typed("volume_delete", move |p: VolumeName| {
        let pool = dd.pool_of_volume(p.pool.as_deref(), &p.name)?;
        if let Some(e) = dd.exports_of(&pool.name, &p.name).first() {
            return Err(RpcError::busy(format!(
                "volume '{}' is exported as '{e}': remove the export first",
                p.name
            )));
        }
        pool.delete_volume(&p.name).map_err(rpc_err)?;
        Ok(true)
    });

    let dd = d.clone();
    reg.register_typed("volume_resize", move |p: VolumeResize| {
        let pool = dd.pool_of_volume(p.pool.as_deref(), &p.name)?;
        let v = pool
            .resize_volume(&p.name, p.size.bytes())
            .map_err(rpc_err)?;
        Ok(volume_json(&pool.name, &v))
    });

    let dd = d.clone();
    reg.register_typed("volume_get_volumes", move |p: VolumeFilter| {
        let pools = dd
            .pools
            .read()
            .map_err(|_| RpcError::internal("poisoned"))?;
        let mut out = Vec::new();
        for pool in pools.values() {
            if p.pool.as_ref().is_some_and(|n| n != &pool.name) {
                continue;
            }
            for v in pool.catalog().volumes.iter().filter(|v| !v.deleting()) {
                if p.name.as_ref().is_none_or(|n| n == &v.name) {
                    out.push(volume_json(&pool.name, v));
                }
            }
        }
        if let (Some(n), true) = (&p.name, out.is_empty()) {
            return Err(RpcError::not_found(format!("volume '{n}' not found")));
        }
        Ok(out)
    });

    let dd = d.clone();
    reg.register_typed("volume_get_iostat", move |p: VolumeFilter| {
        dd.iostat(p.name.as_deref())
    });

    let dd = d.clone();
    reg.register_typed("nbd_server_start", move |p: NbdStart| {
        let unix = p.unix.unwrap_or_else(|| dd.opts.data_dir.join("nbd.sock"));
        let tls = p.tls.map(|t| t.resolved()).transpose()?;
        let out = dd.nbd_start(Some(unix.clone()), p.tcp.clone(), tls.as_ref(), p.insecure)?;
        dd.journal_nbd(json!({"unix": unix, "tcp": p.tcp, "tls": tls, "insecure": p.insecure}));
        Ok(out)
    });

    let dd = d.clone();
    reg.register_typed("nbd_export_add", move |p: ExportAdd| {
        let pool = dd.pool_of_volume(p.pool.as_deref(), &p.volume)?;
        let vol = pool.volume(&p.volume).map_err(rpc_err)?;
        let name = p.name.clone().unwrap_or_else(|| p.volume.clone());
        {
            let mut ex = dd.exports.write().map_err(|_| RpcError::internal("poisoned"))?;
            if ex.contains_key(&name) {
                return Err(RpcError::exists(format!("export '{name}' already exists")));
            }
            ex.insert(
                name.clone(),
                ExportEntry { name: name.clone(), pool: pool.name.clone(), volume: p.volume.clone(), read_only: p.read_only || vol.read_only() },
            );
        }
        dd.journal_export(&name, json!({"volume": p.volume, "name": name, "read_only": p.read_only, "pool": pool.name}));
        Ok(json!({"name": name, "volume": p.volume, "pool": pool.name, "read_only": p.read_only, "size": vol.size}))
    });

    let dd = d.clone();
    reg.register_typed("nbd_export_remove", move |p: ExportRemove| {
        let removed = dd
            .exports
            .write()
            .map_err(|_| RpcError::internal("poisoned"))?
            .remove(&p.name);
        if removed.is_none() {
            return Err(RpcError::not_found(format!(
                "export '{}' not found",
                p.name
            )));
        }
        dd.nbd_disconnect(&p.name);
        dd.journal_unexport(&p.name);
        Ok(true)
    });

    let dd = d.clone();
    reg.register_typed("nbd_get_exports", move |_: NoParams| {
        let ex = dd.exports.read().map_err(|_| RpcError::internal("poisoned"))?;
        Ok(ex
            .values()
            .map(|e| {
                let size = dd.pool(Some(&e.pool)).ok().and_then(|p| p.volume(&e.volume).ok()).map(|v| v.size);
                json!({"name": e.name, "volume": e.volume, "pool": e.pool, "read_only": e.read_only, "size": size, "connections": dd.nbd_connections(&e.name)})
            })
            .collect::<Vec<_>>())
    });

    let dd = d.clone();
    reg.register_typed("framework_get_reactors", move |_: NoParams| {
        let pools = dd.pools.read().map_err(|_| RpcError::internal("poisoned"))?;
        Ok(dd
            .reactors
            .stats()
            .iter()
            .map(|s| {
                let zones: Vec<Value> = pools.values().map(|p| json!({"pool": p.name, "zones": p.zones_of(s.index)})).collect();
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

    reg.register_typed("shutdown", move |_: NoParams| {
        stop.trigger();
        Ok(true)
    });
}

impl Daemon {
    fn exports_of(&self, pool: &str, volume: &str) -> Vec<String> {
        self.exports
            .read()
            .map(|ex| {
                ex.values()
                    .filter(|e| e.pool == pool && e.volume == volume)
                    .map(|e| e.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn journal_pool(&self, name: &str, path: &std::path::Path) {
        if let Ok(mut j) = self.journal.lock() {
            let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            j.pools.retain(|(n, _)| n != name);
            j.pools.push((name.to_string(), abs.display().to_string()));
        }
        self.autosave();
    }

    fn journal_nbd(&self, params: Value) {
        if let Ok(mut j) = self.journal.lock() {
            j.nbd_server = Some(params);
        }
        self.autosave();
    }

    fn journal_export(&self, name: &str, params: Value) {
        if let Ok(mut j) = self.journal.lock() {
            j.exports.retain(|(n, _)| n != name);
            j.exports.push((name.to_string(), params));
        }
        self.autosave();
    }

    fn journal_unexport(&self, name: &str) {
        if let Ok(mut j) = self.journal.lock() {
            j.exports.retain(|(n, _)| n != name);
        }
        self.autosave();
    }

    /// Keep `<data-dir>/config.json` current so a restart rebuilds this state.
    fn autosave(&self) {
        if let Err(e) = self.save_config_to(&self.opts.config_path) {
            eprintln!(
                "sluiced: cannot save {}: {}",
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
