//! Typed errors of the runtime (reactors, rings, messages, calls).
//!
//! I/O on a [`crate::uring_dev::UringDev`] or a socket still reports
//! `std::io::Error`, because that is what the engine's `BlockDev` seam and
//! socket callers speak; the types here cover everything else.

use std::io;

/// Errors from setting up or driving the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("io_uring setup failed: {0}")]
    RingSetup(#[source] io::Error),
    #[error("invalid ring configuration: {0}")]
    RingConfig(String),
    #[error("eventfd creation failed: {0}")]
    Eventfd(#[source] io::Error),
    #[error("this thread already runs a sluice runtime")]
    AlreadyInstalled,
    #[error("no cores given to start reactors on")]
    NoCores,
    #[error("core {0} does not exist on this machine")]
    NoSuchCore(usize),
    #[error("could not pin reactor thread to core {0}")]
    Pin(usize),
    #[error("could not spawn reactor thread: {0}")]
    Spawn(#[source] io::Error),
    #[error("reactor {0} panicked")]
    Panicked(usize),
    #[error("stop() called on a reactor thread of the same set (it would join itself)")]
    StopFromReactor,
}

/// Why a message could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no reactor with index {0}")]
    NoSuchReactor(usize),
    #[error("reactor {0} is stopped")]
    Stopped(usize),
}

/// Why a cross-reactor call produced no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("the called task was dropped before it produced a result (reactor stopping?)")]
    Canceled,
    #[error("a blocking call from a reactor thread would stall its loop; use call_async")]
    OnReactorThread,
}

/// The io::Error returned by ring operations started on a thread without a
/// sluice runtime (no ring to submit to).
pub(crate) fn no_ring() -> io::Error {
    io::Error::other("no io_uring on this thread: run inside a reactor or block_on")
}
