//! The daemon's state and lifecycle: reactors, hosted pools, NBD exports,
//! the saved configuration, and an orderly shutdown.
//!
//! Control-plane methods run on RPC threads and reach the data path only
//! through [`PoolHost`] calls (messages to reactors). The tables here are
//! control-plane state: their locks are held only for short lookups and
//! updates, never across a reactor call. Reactors read exports from an
//! immutable snapshot ([`exports::ExportTable`]) the control plane replaces
//! whole after each change, so a reactor never waits on the control plane.

pub mod config;
pub mod exports;
pub mod logger;
pub mod methods;

use crate::jsonrpc::RpcError;
use arc_swap::ArcSwap;
use sluice_engine::{Error as EngineError, ZoneConfig};
use sluice_reactor::{PoolHost, Reactors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Engine errors as JSON-RPC application errors.
pub fn rpc_err(e: EngineError) -> RpcError {
    match e {
        EngineError::NotFound(m) => RpcError::not_found(format!("{m} not found")),
        EngineError::Exists(m) => RpcError::exists(format!("{m} already exists")),
        EngineError::NoSpace(m) => RpcError::no_space(format!("no space left: {m}")),
        EngineError::Invalid(m) | EngineError::OutOfRange(m) => RpcError::invalid_params(m),
        EngineError::ReadOnly(m) => RpcError::invalid_state(format!("read-only: {m}")),
        e @ EngineError::Shutdown { .. } => RpcError::invalid_state(e.to_string()),
        e @ EngineError::Accounting { .. } => RpcError::internal(e.to_string()),
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
    /// The volume's current name (follows a rename).
    pub volume: String,
    /// What the export serves: ids survive a rename.
    pub volume_id: u32,
    /// Read-only as exported (the volume's own flag is checked live).
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    pub zone: ZoneConfig,
    /// Where `save_config` writes, and what a restart replays.
    pub config_path: PathBuf,
}

/// Open pools, and the names and devices of pools being created, imported,
/// exported or deleted (reserved under the lock, worked on without it).
#[derive(Default)]
pub struct PoolTable {
    pub open: BTreeMap<String, Arc<PoolHost>>,
    pending: BTreeMap<String, PathBuf>,
}

pub struct Daemon {
    pub opts: DaemonOptions,
    pub reactors: Reactors,
    /// Lock order: `exports` before `pools`, never the other way round.
    pools: Mutex<PoolTable>,
    /// The exports as the control plane defines them.
    exports: Mutex<BTreeMap<String, ExportEntry>>,
    /// What reactors read: a snapshot of `exports` with each pool's host.
    export_table: Arc<ArcSwap<exports::ExportTable>>,
    pub nbd: Mutex<Option<exports::NbdState>>,
    /// The methods (with params) that rebuild this state, in order.
    pub journal: Mutex<config::Journal>,
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, RpcError> {
    m.lock()
        .map_err(|_| RpcError::internal("daemon state poisoned"))
}

/// A path compared as the device it names.
fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A pool name and device reserved while a pool is created, imported,
/// exported or deleted; released on drop.
pub struct Reservation<'a> {
    d: &'a Daemon,
    name: String,
}

impl Reservation<'_> {
    /// Turn the reservation into an open pool.
    pub fn commit(self, host: Arc<PoolHost>) -> Result<(), RpcError> {
        let mut t = lock(&self.d.pools)?;
        t.pending.remove(&self.name);
        t.open.insert(self.name.clone(), host);
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.d.pools.lock() {
            t.pending.remove(&self.name);
        }
    }
}

impl Daemon {
    pub fn new(opts: DaemonOptions, reactors: Reactors) -> Arc<Self> {
        Arc::new(Daemon {
            opts,
            reactors,
            pools: Mutex::new(PoolTable::default()),
            exports: Mutex::new(BTreeMap::new()),
            export_table: Arc::new(ArcSwap::from_pointee(exports::ExportTable::default())),
            nbd: Mutex::new(None),
            journal: Mutex::new(config::Journal::default()),
        })
    }

    /// The open pools, in name order (a copy: no lock is held afterwards).
    pub fn pool_list(&self) -> Result<Vec<Arc<PoolHost>>, RpcError> {
        Ok(lock(&self.pools)?.open.values().cloned().collect())
    }

    pub fn pool(&self, name: Option<&str>) -> Result<Arc<PoolHost>, RpcError> {
        let t = lock(&self.pools)?;
        match name {
            Some(n) => t.open.get(n).cloned().ok_or_else(|| {
                if t.pending.contains_key(n) {
                    RpcError::busy(format!("pool '{n}' is being created, opened or closed"))
                } else {
                    RpcError::not_found(format!("pool '{n}' not found"))
                }
            }),
            None => match t.open.len() {
                0 => Err(RpcError::not_found("no pool: create or import one first")),
                1 => t
                    .open
                    .values()
                    .next()
                    .cloned()
                    .ok_or_else(|| RpcError::internal("empty")),
                _ => Err(RpcError::invalid_params(
                    "several pools exist: name one with \"pool\"",
                )),
            },
        }
    }

    /// Reserve pool `name` on the device at `path` (also known by `uuid`)
    /// before the slow work of creating or opening it: fails if the name or
    /// the device is taken, open or in progress.
    pub fn reserve(
        &self,
        name: &str,
        path: &Path,
        uuid: Option<[u8; 16]>,
    ) -> Result<Reservation<'_>, RpcError> {
        let mut t = lock(&self.pools)?;
        if t.open.contains_key(name) || t.pending.contains_key(name) {
            return Err(RpcError::exists(format!("pool '{name}' already exists")));
        }
        let path = canon(path);
        let open = t
            .open
            .values()
            .find(|p| canon(&p.path) == path || Some(p.geometry().uuid) == uuid)
            .map(|p| p.name.clone());
        let pending = t
            .pending
            .iter()
            .find(|(_, p)| **p == path)
            .map(|(n, _)| n.clone());
        if let Some(other) = open.or(pending) {
            return Err(RpcError::busy(format!(
                "{} is already open as pool '{other}'",
                path.display()
            )));
        }
        t.pending.insert(name.to_string(), path);
        Ok(Reservation {
            d: self,
            name: name.to_string(),
        })
    }

    /// Take pool `name` out of the open table (it stays reserved until the
    /// returned reservation drops), after its exports are gone: with any
    /// left, `busy` naming them unless `force`, which removes them
    /// (disconnecting their clients).
    pub fn take_pool(
        &self,
        name: &str,
        force: bool,
    ) -> Result<(Arc<PoolHost>, Reservation<'_>, Vec<String>), RpcError> {
        let removed = {
            let mut ex = lock(&self.exports)?;
            let mut t = lock(&self.pools)?;
            let host = t
                .open
                .get(name)
                .cloned()
                .ok_or_else(|| RpcError::not_found(format!("pool '{name}' not found")))?;
            let users: Vec<String> = ex
                .values()
                .filter(|e| e.pool == name)
                .map(|e| e.name.clone())
                .collect();
            if !users.is_empty() && !force {
                return Err(RpcError::busy(format!(
                    "pool '{name}' has exports {}: remove them first or pass \"force\"",
                    users.join(", ")
                )));
            }
            ex.retain(|_, e| e.pool != name);
            t.open.remove(name);
            t.pending.insert(name.to_string(), canon(&host.path));
            drop(t);
            self.publish(&ex);
            (host, users)
        };
        let (host, users) = removed;
        for e in &users {
            self.nbd_disconnect(e);
            self.journal_unexport(e);
            log::info!("export '{e}' removed (pool '{name}' closing)");
        }
        Ok((
            host,
            Reservation {
                d: self,
                name: name.to_string(),
            },
            users,
        ))
    }

    /// The pool that holds a volume. With no pool named, the volume must be
    /// in exactly one: a name in several pools is an error naming them.
    pub fn pool_of_volume(
        &self,
        pool: Option<&str>,
        volume: &str,
    ) -> Result<Arc<PoolHost>, RpcError> {
        if pool.is_some() {
            return self.pool(pool);
        }
        let mut found: Vec<Arc<PoolHost>> = self
            .pool_list()?
            .into_iter()
            .filter(|p| p.volume(volume).is_ok())
            .collect();
        match found.len() {
            0 => Err(RpcError::not_found(format!("volume '{volume}' not found"))),
            1 => Ok(found.remove(0)),
            _ => Err(RpcError::invalid_params(format!(
                "volume '{volume}' exists in pools {}: name one with \"pool\"",
                found
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Stop serving: close exports, checkpoint every pool, stop reactors.
    pub fn shutdown(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Ok(mut n) = self.nbd.lock() {
            if let Some(s) = n.take() {
                s.stop();
            }
        }
        for p in self.pool_list().unwrap_or_default() {
            match p.close() {
                Ok(()) => log::info!("pool '{}' closed", p.name),
                Err(e) => errors.push(format!("pool {}: {e}", p.name)),
            }
        }
        if let Err(e) = self.reactors.stop() {
            errors.push(format!("reactors: {e}"));
        }
        errors
    }
}
