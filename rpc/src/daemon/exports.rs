//! NBD exports: the provider the NBD server asks for export names and
//! backends, and the server's lifecycle.

use super::{Daemon, ExportEntry};
use crate::jsonrpc::RpcError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_engine::volume::VolInfo;
use sluice_reactor::nbd::{
    ExportInfo, ExportProvider, ListenSpec, NbdServer, NbdServerError, ServerConfig, TlsConfig,
    TlsCredentials, TlsServer,
};
use sluice_reactor::volume_export::VolumeBackend;
use sluice_reactor::PoolHost;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// Resolves export names to volumes; shared with every reactor.
pub struct Provider {
    exports: Arc<RwLock<BTreeMap<String, ExportEntry>>>,
    pools: Arc<RwLock<BTreeMap<String, Arc<PoolHost>>>>,
}

impl Provider {
    fn resolve(&self, name: &str) -> Option<(ExportEntry, Arc<PoolHost>, VolInfo)> {
        let e = self.exports.read().ok()?.get(name)?.clone();
        let host = self.pools.read().ok()?.get(&e.pool)?.clone();
        let v = host.volume(&e.volume).ok()?;
        Some((e, host, VolInfo::from_entry(&v)))
    }
}

impl ExportProvider for Provider {
    type Backend = VolumeBackend;

    fn list(&self) -> Vec<String> {
        self.exports
            .read()
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        let (e, host, v) = self.resolve(name)?;
        Some(ExportInfo {
            name: e.name.clone(),
            size: v.size,
            read_only: e.read_only || v.read_only,
            description: Some(format!("sluice volume {} of pool {}", e.volume, host.name)),
        })
    }

    fn open(&self, name: &str) -> Option<VolumeBackend> {
        let (e, host, v) = self.resolve(name)?;
        Some(VolumeBackend::new(host, v, e.read_only || v.read_only))
    }
}

pub struct NbdState {
    server: NbdServer,
    pub unix: Option<PathBuf>,
    pub tcp: Option<String>,
}

impl NbdState {
    pub fn stop(self) {
        self.server.stop();
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
    pub fn nbd_start(
        &self,
        unix: Option<PathBuf>,
        tcp: Option<String>,
        tls: Option<&NbdTlsParams>,
        insecure: bool,
    ) -> Result<Value, RpcError> {
        let mut g = self
            .nbd
            .lock()
            .map_err(|_| RpcError::internal("poisoned"))?;
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
            exports: self.exports.clone(),
            pools: self.pools_arc(),
        });
        let tls = match tls {
            Some(t) => Some(
                TlsServer::load(&t.config()?)
                    .map_err(|e| RpcError::invalid_params(format!("tls: {e}")))?,
            ),
            None => None,
        };
        let config = ServerConfig {
            tls,
            insecure,
            ..ServerConfig::default()
        };
        let server = NbdServer::start_with(&self.reactors.handle(), listen, provider, config)
            .map_err(|e| match e {
                NbdServerError::Insecure(_) => RpcError::invalid_params(e),
                e => RpcError::io(format!("NBD server: {e}")),
            })?;
        *g = Some(NbdState {
            server,
            unix: unix.clone(),
            tcp: tcp.clone(),
        });
        Ok(json!({"unix": unix, "tcp": tcp}))
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

    pub fn iostat(&self, name: Option<&str>) -> Result<Vec<Value>, RpcError> {
        let stats = sluice_reactor::iostat::gather(&self.reactors.handle(), self.reactors.len());
        let pools = self
            .pools
            .read()
            .map_err(|_| RpcError::internal("poisoned"))?;
        let mut out = Vec::new();
        for pool in pools.values() {
            for v in pool.catalog().volumes.iter().filter(|v| !v.deleting()) {
                if name.is_some_and(|n| n != v.name) {
                    continue;
                }
                let s = stats.get(&(pool.name.clone(), v.id));
                let ops = |i: usize| s.map(|s| s.ops[i]).unwrap_or(0);
                let bytes = |i: usize| s.map(|s| s.bytes[i]).unwrap_or(0);
                out.push(json!({
                    "name": v.name, "pool": pool.name,
                    "read_ops": ops(0), "read_bytes": bytes(0),
                    "write_ops": ops(1), "write_bytes": bytes(1),
                    "flush_ops": ops(2), "trim_ops": ops(3), "errors": s.map(|s| s.errors).unwrap_or(0),
                    "read_lat_us": latency(s.map(|s| &s.read_us)),
                    "write_lat_us": latency(s.map(|s| &s.write_us)),
                }));
            }
        }
        if let (Some(n), true) = (name, out.is_empty()) {
            return Err(RpcError::not_found(format!("volume '{n}' not found")));
        }
        Ok(out)
    }
}

/// p50/p99/p99.9/max of a latency histogram (nulls when nothing was recorded).
fn latency(h: Option<&hdrhistogram::Histogram<u64>>) -> Value {
    let h = h.filter(|h| !h.is_empty());
    let q = |q: f64| h.map(|h| h.value_at_quantile(q));
    json!({"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": h.map(|h| h.max())})
}
