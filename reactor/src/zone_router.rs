//! Routing to the reactor that owns a zone: zone `z` of a pool hosted on
//! `n` reactors belongs to reactor `z % n`, and only that reactor touches
//! it. [`ZoneRouter`] runs work there — directly when the caller is that
//! reactor, else as a message — and is the [`Zones`] the engine's
//! lifecycle runs over in the daemon. It holds no rule of its own.

use crate::pool_host::{local_zone, local_zones};
use crate::reactor::{current, ReactorsHandle};
use crate::uring_dev::UringDev;
use futures::future::join_all;
use sluice_engine::{Error, Result, Zone, ZoneOp, ZoneOut, Zones};
use std::future::Future;
use std::rc::Rc;

/// Where each zone of one pool lives. Cheap to clone, `Send`: it travels
/// with control work to reactor 0, which runs the lifecycle.
#[derive(Clone)]
pub struct ZoneRouter {
    pool: String,
    reactors: ReactorsHandle,
    nreact: usize,
    nzones: u32,
}

impl ZoneRouter {
    pub(crate) fn new(pool: &str, reactors: ReactorsHandle, nreact: usize, nzones: u32) -> Self {
        ZoneRouter {
            pool: pool.to_string(),
            reactors,
            nreact,
            nzones,
        }
    }

    /// Reactor owning zone `z`.
    #[inline]
    pub fn owner(&self, z: u32) -> usize {
        z as usize % self.nreact
    }

    /// Run `job` on reactor `r`: directly when that is the calling reactor,
    /// else as a message.
    async fn on_reactor<T, F, Fut>(&self, r: usize, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + 'static,
    {
        if current().map(|c| c.index) == Some(r) {
            return job().await;
        }
        self.reactors.call_async(r, job).await.map_err(call_err)?
    }

    /// Run a per-zone future on the zone's owner. On the owner itself this
    /// must not allocate (the I/O path's fallback runs here).
    pub(crate) async fn run_on<T, F, Fut>(&self, z: u32, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Zone<UringDev>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + 'static,
    {
        if current().map(|c| c.index) == Some(self.owner(z)) {
            return f(local_zone(&self.pool, z)?).await;
        }
        let pool = self.pool.clone();
        self.on_reactor(self.owner(z), move || async move {
            f(local_zone(&pool, z)?).await
        })
        .await
    }
}

impl Zones for ZoneRouter {
    fn nzones(&self) -> u32 {
        self.nzones
    }

    async fn on_zone(&self, z: u32, op: ZoneOp) -> Result<ZoneOut> {
        self.run_on(z, move |zone| async move { op.run(&zone).await })
            .await
    }

    /// Every reactor runs `op` on its zones, all reactors in parallel and
    /// a reactor's zones concurrently.
    async fn on_every_zone(&self, op: ZoneOp) -> Result<Vec<ZoneOut>> {
        let per_reactor = (0..self.nreact).map(|r| {
            let (pool, op) = (self.pool.clone(), op.clone());
            self.on_reactor(r, move || async move {
                let zones = local_zones(&pool)?;
                let runs = zones.iter().map(|z| op.clone().run(z));
                Ok(join_all(runs).await)
            })
        });
        let outs: Vec<Vec<Result<ZoneOut>>> = join_all(per_reactor)
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        outs.into_iter().flatten().collect()
    }
}

pub(crate) fn call_err(e: crate::error::CallError) -> Error {
    Error::Shutdown {
        zone: u32::MAX,
        reason: format!("reactor unavailable: {e}"),
    }
}
