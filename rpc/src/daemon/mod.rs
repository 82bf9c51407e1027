//! The daemon's state and lifecycle: reactors, hosted pools, NBD exports,
//! the saved configuration, and an orderly shutdown.
//!
//! Control-plane methods run on RPC threads and reach the data path only
//! through [`PoolHost`] calls (messages to reactors).

pub mod config;
pub mod exports;
pub mod methods;

use crate::jsonrpc::RpcError;
use sluice_engine::{Error as EngineError, ZoneConfig};
use sluice_reactor::{PoolHost, Reactors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Engine errors as JSON-RPC application errors.
pub fn rpc_err(e: EngineError) -> RpcError {
    match e {
        EngineError::NotFound(m) => RpcError::not_found(format!("{m} not found")),
        EngineError::Exists(m) => RpcError::exists(format!("{m} already exists")),
        EngineError::NoSpace(m) => RpcError::no_space(format!("no space left: {m}")),
        EngineError::Invalid(m) | EngineError::OutOfRange(m) => RpcError::invalid_params(m),
        EngineError::ReadOnly(m) => RpcError::invalid_state(format!("read-only: {m}")),
        e @ EngineError::Shutdown { .. } => RpcError::invalid_state(e.to_string()),
        e @ EngineError::DeviceInUse { .. } => RpcError::busy(e.to_string()),
        e @ EngineError::PoolPresent { .. } => RpcError::exists(e.to_string()),
        e => RpcError::io(e.to_string()),
    }
}

/// One NBD export: a volume of a pool under a name.
#[derive(Debug, Clone)]
pub struct ExportEntry {
    pub name: String,
    pub pool: String,
    pub volume: String,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    pub zone: ZoneConfig,
    /// Where `save_config` writes, and what a restart replays.
    pub config_path: PathBuf,
}

pub struct Daemon {
    pub opts: DaemonOptions,
    pub reactors: Reactors,
    pub pools: Arc<RwLock<BTreeMap<String, Arc<PoolHost>>>>,
    pub exports: Arc<RwLock<BTreeMap<String, ExportEntry>>>,
    pub nbd: Mutex<Option<exports::NbdState>>,
    /// The methods (with params) that rebuild this state, in order.
    pub journal: Mutex<config::Journal>,
}

impl Daemon {
    pub fn new(opts: DaemonOptions, reactors: Reactors) -> Arc<Self> {
        Arc::new(Daemon {
            opts,
            reactors,
            pools: Arc::new(RwLock::new(BTreeMap::new())),
            exports: Arc::new(RwLock::new(BTreeMap::new())),
            nbd: Mutex::new(None),
            journal: Mutex::new(config::Journal::default()),
        })
    }

    pub fn pools_arc(&self) -> Arc<RwLock<BTreeMap<String, Arc<PoolHost>>>> {
        self.pools.clone()
    }

    pub fn pool(&self, name: Option<&str>) -> Result<Arc<PoolHost>, RpcError> {
        let pools = self
            .pools
            .read()
            .map_err(|_| RpcError::internal("pool table poisoned"))?;
        match name {
            Some(n) => pools
                .get(n)
                .cloned()
                .ok_or_else(|| RpcError::not_found(format!("pool '{n}' not found"))),
            None => match pools.len() {
                0 => Err(RpcError::not_found("no pool: create or import one first")),
                1 => Ok(pools
                    .values()
                    .next()
                    .cloned()
                    .ok_or_else(|| RpcError::internal("empty"))?),
                _ => Err(RpcError::invalid_params(
                    "several pools exist: name one with \"pool\"",
                )),
            },
        }
    }

    /// The name of the open pool on the device at `path` (compared
    /// canonicalized) or with pool UUID `uuid`: one device, one pool object.
    pub fn pool_open_as(
        pools: &BTreeMap<String, Arc<PoolHost>>,
        path: &Path,
        uuid: Option<[u8; 16]>,
    ) -> Option<String> {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let path = canon(path);
        pools
            .values()
            .find(|p| canon(&p.path) == path || Some(p.geometry().uuid) == uuid)
            .map(|p| p.name.clone())
    }

    /// The pool that holds a volume (searching all pools when none is named).
    pub fn pool_of_volume(
        &self,
        pool: Option<&str>,
        volume: &str,
    ) -> Result<Arc<PoolHost>, RpcError> {
        if pool.is_some() {
            return self.pool(pool);
        }
        let pools = self
            .pools
            .read()
            .map_err(|_| RpcError::internal("pool table poisoned"))?;
        pools
            .values()
            .find(|p| p.volume(volume).is_ok())
            .cloned()
            .ok_or_else(|| RpcError::not_found(format!("volume '{volume}' not found")))
    }

    /// Stop serving: close exports, checkpoint every pool, stop reactors.
    pub fn shutdown(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Ok(mut n) = self.nbd.lock() {
            if let Some(s) = n.take() {
                s.stop();
            }
        }
        if let Ok(pools) = self.pools.read() {
            for p in pools.values() {
                if let Err(e) = p.close() {
                    errors.push(format!("pool {}: {e}", p.name));
                }
            }
        }
        if let Err(e) = self.reactors.stop() {
            errors.push(format!("reactors: {e}"));
        }
        errors
    }
}
