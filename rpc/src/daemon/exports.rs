//! NBD exports: the snapshot the NBD server reads on reactors to resolve
//! export names, the server's lifecycle, and per-volume I/O statistics.

use super::{lock, Daemon, ExportEntry};
use crate::jsonrpc::RpcError;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_engine::volume::VolInfo;
use sluice_reactor::nbd::server::DEFAULT_MEMORY_BUDGET;
use sluice_reactor::nbd::{
    ExportInfo, ExportProvider, ListenSpec, NbdServer, NbdServerError, ServerConfig, TlsConfig,
    TlsCredentials, TlsServer,
};
use sluice_reactor::volume_export::VolumeBackend;
use sluice_reactor::PoolHost;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One export as reactors see it: the entry and the pool serving it.
#[derive(Clone)]
pub struct ExportRoute {
    pub entry: ExportEntry,
    pub host: Arc<PoolHost>,
}

/// Every export by name: immutable once published; the control plane
/// replaces it whole (`Daemon::publish`).
#[derive(Default)]
pub struct ExportTable {
    pub routes: BTreeMap<String, ExportRoute>,
}

/// Resolves export names to volumes; shared with every reactor. Reads the
/// published snapshot only: no lock the control plane holds.
pub struct Provider {
    table: Arc<ArcSwap<ExportTable>>,
}

impl Provider {
    fn resolve(&self, name: &str) -> Option<(ExportRoute, VolInfo, bool)> {
        let r = self.table.load().routes.get(name)?.clone();
        let v = r.host.volume_by_id(r.entry.volume_id).ok()?;
        let ro = r.entry.read_only || v.read_only();
        Some((r, VolInfo::from_entry(&v), ro))
    }
}

impl ExportProvider for Provider {
    type Backend = VolumeBackend;

    fn list(&self) -> Vec<String> {
        self.table.load().routes.keys().cloned().collect()
    }

    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        let (r, v, read_only) = self.resolve(name)?;
        Some(ExportInfo {
            name: r.entry.name.clone(),
            size: v.size,
            read_only,
            description: Some(format!(
                "sluice volume {} of pool {}",
                r.entry.volume, r.host.name
            )),
        })
    }

    fn open(&self, name: &str) -> Option<VolumeBackend> {
        let (r, v, _) = self.resolve(name)?;
        Some(VolumeBackend::new(r.host, v, r.entry.read_only))
    }
}

pub struct NbdState {
    server: NbdServer,
    pub unix: Option<PathBuf>,
    pub tcp: Option<String>,
    /// The in-flight buffer budget of all connections, in bytes.
    pub memory: usize,
}

/// What `nbd_server_start` starts (its params, checked).
#[derive(Debug, Clone, Default)]
pub struct NbdStartOptions {
    pub unix: Option<PathBuf>,
    pub tcp: Option<String>,
    pub tls: Option<NbdTlsParams>,
    /// Allow plaintext on a TCP address that is not loopback.
    pub insecure: bool,
    /// In-flight buffer budget in bytes (`None`: [`DEFAULT_MEMORY_BUDGET`]).
    pub memory: Option<u64>,
}

/// The smallest `memory` `nbd_server_start` takes: below it every
/// connection would wait on every other for each request.
pub const MIN_NBD_MEMORY: u64 = 1 << 20;

impl NbdState {
    pub fn stop(self) {
        self.server.stop();
    }

    /// The listening addresses, for the log.
    pub fn addresses(&self) -> String {
        let mut a = Vec::new();
        if let Some(u) = &self.unix {
            a.push(format!("unix:{}", u.display()));
        }
        if let Some(t) = &self.tcp {
            a.push(format!("tcp:{t}"));
        }
        a.join(", ")
    }
}

/// The `tls` parameter of `nbd_server_start` (saved as given, with
/// absolute paths).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NbdTlsParams {
    /// `"x509"` or `"psk"`.
    pub mode: String,
    /// x509: directory with server-cert.pem, server-key.pem and optionally
    /// ca-cert.pem (client certificates then required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// psk: file of `username:hexkey` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk_file: Option<PathBuf>,
    /// Refuse plaintext option haggling (default true).
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

impl NbdTlsParams {
    /// Check the shape and make the paths absolute (the saved config is
    /// replayed from another working directory).
    pub fn resolved(mut self) -> Result<Self, RpcError> {
        let abs = |p: &PathBuf, what: &str| {
            std::fs::canonicalize(p)
                .map_err(|e| RpcError::invalid_params(format!("tls.{what} {}: {e}", p.display())))
        };
        match (self.mode.as_str(), &self.dir, &self.psk_file) {
            ("x509", Some(d), None) => self.dir = Some(abs(d, "dir")?),
            ("psk", None, Some(f)) => self.psk_file = Some(abs(f, "psk_file")?),
            ("x509", ..) => {
                return Err(RpcError::invalid_params(
                    "tls mode x509 takes \"dir\" (and no \"psk_file\")",
                ))
            }
            ("psk", ..) => {
                return Err(RpcError::invalid_params(
                    "tls mode psk takes \"psk_file\" (and no \"dir\")",
                ))
            }
            _ => {
                return Err(RpcError::invalid_params(
                    "tls.mode must be \"x509\" or \"psk\"",
                ))
            }
        }
        Ok(self)
    }

    fn config(&self) -> Result<TlsConfig, RpcError> {
        let credentials = match (&self.dir, &self.psk_file) {
            (Some(dir), _) => TlsCredentials::X509 { dir: dir.clone() },
            (None, Some(file)) => TlsCredentials::Psk { file: file.clone() },
            (None, None) => {
                return Err(RpcError::invalid_params(
                    "tls needs \"dir\" or \"psk_file\"",
                ))
            }
        };
        Ok(TlsConfig {
            credentials,
            required: self.required,
        })
    }
}

impl Daemon {
    /// Replace the reactors' export snapshot with `exports` (call with the
    /// exports lock held, so snapshots are published in change order).
    pub(super) fn publish(&self, exports: &BTreeMap<String, ExportEntry>) {
        let pools = self.pool_list().unwrap_or_default();
        let routes = exports
            .iter()
            .filter_map(|(n, e)| {
                let host = pools.iter().find(|p| p.name == e.pool)?.clone();
                Some((
                    n.clone(),
                    ExportRoute {
                        entry: e.clone(),
                        host,
                    },
                ))
            })
            .collect();
        self.export_table.store(Arc::new(ExportTable { routes }));
    }

    /// The defined exports (a copy).
    pub fn export_list(&self) -> Result<Vec<ExportEntry>, RpcError> {
        Ok(lock(&self.exports)?.values().cloned().collect())
    }

    /// Add an export of a volume; `exists` if the name is taken.
    pub fn export_add(&self, e: ExportEntry) -> Result<(), RpcError> {
        let mut ex = lock(&self.exports)?;
        if ex.contains_key(&e.name) {
            return Err(RpcError::exists(format!(
                "export '{}' already exists",
                e.name
            )));
        }
        // The pool may have been closed since it was looked up.
        if !lock(&self.pools)?.open.contains_key(&e.pool) {
            return Err(RpcError::not_found(format!("pool '{}' not found", e.pool)));
        }
        ex.insert(e.name.clone(), e);
        self.publish(&ex);
        Ok(())
    }

    /// Remove an export and disconnect its clients.
    pub fn export_remove(&self, name: &str) -> Result<ExportEntry, RpcError> {
        let removed = {
            let mut ex = lock(&self.exports)?;
            let e = ex
                .remove(name)
                .ok_or_else(|| RpcError::not_found(format!("export '{name}' not found")))?;
            self.publish(&ex);
            e
        };
        self.nbd_disconnect(name);
        Ok(removed)
    }

    /// Update the exports of volume `id` of `pool` after a rename; returns
    /// the changed entries.
    pub fn exports_follow_rename(
        &self,
        pool: &str,
        id: u32,
        new_name: &str,
    ) -> Result<Vec<ExportEntry>, RpcError> {
        let mut ex = lock(&self.exports)?;
        let mut changed = Vec::new();
        for e in ex.values_mut() {
            if e.pool == pool && e.volume_id == id {
                e.volume = new_name.to_string();
                changed.push(e.clone());
            }
        }
        if !changed.is_empty() {
            self.publish(&ex);
        }
        Ok(changed)
    }

    /// Names of the exports of a volume.
    pub fn exports_of(&self, pool: &str, id: u32) -> Vec<String> {
        self.export_list()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.pool == pool && e.volume_id == id)
            .map(|e| e.name)
            .collect()
    }

    pub fn nbd_start(&self, o: NbdStartOptions) -> Result<Value, RpcError> {
        let NbdStartOptions {
            unix,
            tcp,
            tls,
            insecure,
            memory,
        } = o;
        let memory = match memory {
            None => DEFAULT_MEMORY_BUDGET,
            Some(m) if m < MIN_NBD_MEMORY => {
                return Err(RpcError::invalid_params(format!(
                    "memory {m} is below the minimum of {MIN_NBD_MEMORY} bytes (1M)"
                )))
            }
            Some(m) => usize::try_from(m).map_err(|_| {
                RpcError::invalid_params(format!("memory {m} does not fit this machine"))
            })?,
        };
        let mut g = lock(&self.nbd)?;
        if g.is_some() {
            return Err(RpcError::exists("the NBD server is already running"));
        }
        let mut listen = Vec::new();
        if let Some(u) = &unix {
            listen.push(ListenSpec::Unix(u.clone()));
        }
        if let Some(t) = &tcp {
            listen.push(ListenSpec::Tcp(t.clone()));
        }
        if listen.is_empty() {
            return Err(RpcError::invalid_params("give \"unix\" and/or \"tcp\""));
        }
        let provider = Arc::new(Provider {
            table: self.export_table.clone(),
        });
        let tls = match &tls {
            Some(t) => Some(
                TlsServer::load(&t.config()?)
                    .map_err(|e| RpcError::invalid_params(format!("tls: {e}")))?,
            ),
            None => None,
        };
        let config = ServerConfig {
            tls,
            insecure,
            memory_budget: memory,
            ..ServerConfig::default()
        };
        let server = NbdServer::start_with(&self.reactors.handle(), listen, provider, config)
            .map_err(|e| match e {
                NbdServerError::Insecure(_) => RpcError::invalid_params(e),
                e => RpcError::io(format!("NBD server: {e}")),
            })?;
        let st = NbdState {
            server,
            unix: unix.clone(),
            tcp: tcp.clone(),
            memory,
        };
        log::info!(
            "NBD server started, listening on {}, in-flight buffer budget {}",
            st.addresses(),
            crate::size::format_size(memory as u64)
        );
        *g = Some(st);
        Ok(json!({"unix": unix, "tcp": tcp, "memory_bytes": memory}))
    }

    /// Stop the NBD server: listeners closed, clients disconnected; the
    /// exports stay defined for the next start.
    pub fn nbd_stop(&self) -> Result<(), RpcError> {
        let st = lock(&self.nbd)?
            .take()
            .ok_or_else(|| RpcError::invalid_state("the NBD server is not running"))?;
        let addrs = st.addresses();
        st.stop();
        log::info!("NBD server stopped (was listening on {addrs})");
        Ok(())
    }

    /// The NBD server's listening addresses, if it runs.
    pub fn nbd_addresses(&self) -> Option<String> {
        self.nbd
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.addresses()))
    }

    /// Close the connections of a removed export.
    pub fn nbd_disconnect(&self, name: &str) {
        if let Ok(g) = self.nbd.lock() {
            if let Some(s) = g.as_ref() {
                let _ = s.server.disconnect_export(name);
            }
        }
    }

    pub fn nbd_connections(&self, name: &str) -> usize {
        self.nbd
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.server.export_connections(name)))
            .unwrap_or(0)
    }

    /// Per-volume I/O counters; with `reset`, the reported volumes' counters
    /// are zeroed in the same step (the values returned are from before).
    pub fn iostat(
        &self,
        name: Option<&str>,
        pool: Option<&str>,
        reset: bool,
    ) -> Result<Vec<Value>, RpcError> {
        let pools: Vec<Arc<PoolHost>> = match (name, pool) {
            (_, Some(_)) => vec![self.pool(pool)?],
            (Some(n), None) => vec![self.pool_of_volume(None, n)?],
            (None, None) => self.pool_list()?,
        };
        let mut picked: Vec<(String, u32, String)> = Vec::new();
        for p in &pools {
            for v in p.catalog().volumes.iter().filter(|v| v.live()) {
                if name.is_none_or(|n| n == v.name) {
                    picked.push((p.name.clone(), v.id, v.name.clone()));
                }
            }
        }
        if let (Some(n), true) = (name, picked.is_empty()) {
            return Err(RpcError::not_found(format!("volume '{n}' not found")));
        }
        let filter: Option<sluice_reactor::iostat::ResetFilter> = reset.then(|| {
            let keys: Vec<(String, u32)> =
                picked.iter().map(|(p, id, _)| (p.clone(), *id)).collect();
            Arc::new(move |p: &str, id: u32| keys.iter().any(|(kp, kid)| kp == p && *kid == id))
                as sluice_reactor::iostat::ResetFilter
        });
        let stats = sluice_reactor::iostat::gather_and_reset(
            &self.reactors.handle(),
            self.reactors.len(),
            filter,
        );
        Ok(picked
            .into_iter()
            .map(|(pool, id, vname)| {
                let s = stats.get(&(pool.clone(), id));
                let ops = |i: usize| s.map(|s| s.ops[i]).unwrap_or(0);
                let bytes = |i: usize| s.map(|s| s.bytes[i]).unwrap_or(0);
                json!({
                    "name": vname, "pool": pool,
                    "read_ops": ops(0), "read_bytes": bytes(0),
                    "write_ops": ops(1), "write_bytes": bytes(1),
                    "flush_ops": ops(2), "trim_ops": ops(3), "errors": s.map(|s| s.errors).unwrap_or(0),
                    "read_lat_us": latency(s.map(|s| &s.read_us)),
                    "write_lat_us": latency(s.map(|s| &s.write_us)),
                })
            })
            .collect())
    }
}

/// p50/p99/p99.9/max of a latency histogram (nulls when nothing was recorded).
fn latency(h: Option<&hdrhistogram::Histogram<u64>>) -> Value {
    let h = h.filter(|h| !h.is_empty());
    let q = |q: f64| h.map(|h| h.value_at_quantile(q));
    json!({"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": h.map(|h| h.max())})
}
