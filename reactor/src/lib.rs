//! sluice runtime: reactors, io_uring block devices, and the NBD export server.
pub mod nbd;

pub mod alloc_count;
mod buf_depot;
pub mod error;
pub mod executor;
mod forward;
pub mod iostat;
pub mod msg;
pub mod net;
pub mod pool_host;
pub mod reactor;
pub mod ring;
pub mod runtime;
pub mod stats;
pub mod uring_dev;
pub mod volume_export;
mod workers;
pub mod zone_router;

pub use error::{CallError, Error, SendError};
pub use executor::{block_on, spawn_local, yield_now, Task};
pub use msg::Msg;
pub use net::{UringListener, UringStream};
pub use pool_host::{ChunkReads, PoolHost, PoolReport};
pub use reactor::{
    allowed_cores, current, current_handle, default_cores, ReactorConfig, ReactorInfo, Reactors,
    ReactorsHandle,
};
pub use ring::{sleep, RingConfig, RingStats, TaskRun};
pub use runtime::IdlePolicy;
pub use stats::ReactorStats;
pub use uring_dev::{UringDev, UringDevOptions};
pub use zone_router::ZoneRouter;
