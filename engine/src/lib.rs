//! sluice-engine: everything about what is on disk and what it means.
//!
//! No threads, sockets or io_uring live here: the engine talks to storage
//! through [`dev::BlockDev`], so all of it runs in tests on an in-memory or a
//! simulated, crashing device.

pub mod buf;
pub mod dev;
pub mod error;

pub use buf::{AlignedBuf, BLOCK_SIZE};
pub use error::{Error, Result};
