//! Per-reactor counters, readable from any thread.
//!
//! The reactor keeps plain counters on its own stack and publishes them with
//! relaxed stores once per loop iteration, so the hot path never does an
//! atomic read-modify-write for statistics. Readers get a snapshot that may
//! be one iteration old and whose fields are not mutually consistent.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one reactor's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// Reactor index (position in the `cores` list).
    pub index: usize,
    /// CPU core it is pinned to.
    pub core: usize,
    /// Loop iterations that found work (messages, tasks, SQEs or CQEs).
    pub busy_iters: u64,
    /// Loop iterations that found nothing.
    pub idle_iters: u64,
    /// Times the reactor blocked in `io_uring_enter`.
    pub sleeps: u64,
    /// Eventfd writes other threads made to wake it.
    pub wakeups: u64,
    /// Messages run from its inboxes.
    pub msgs: u64,
    /// Messages it could not deliver at once (target inbox full) and held
    /// back in its local overflow queue.
    pub msgs_deferred: u64,
    /// Task polls.
    pub tasks_polled: u64,
    /// Ring ops started.
    pub ios_started: u64,
    /// SQEs accepted by the kernel.
    pub ios_submitted: u64,
    /// CQEs reaped.
    pub ios_completed: u64,
    /// `io_uring_enter` calls that submitted.
    pub submit_calls: u64,
    /// SQ-full events (forced an early submit).
    pub sq_full: u64,
    /// Ops whose future was dropped before completion.
    pub orphaned: u64,
    /// Ops currently owned by the kernel.
    pub inflight: u64,
    /// Heap allocations made on this reactor's thread (0 unless the binary
    /// installed [`crate::alloc_count::CountingAlloc`]). Steady 4 KiB I/O
    /// should not move it.
    pub heap_allocs: u64,
}

macro_rules! cell {
    ($($f:ident),* $(,)?) => {
        /// Atomic mirror of [`ReactorStats`].
        #[derive(Default)]
        pub(crate) struct StatsCell {
            pub index: usize,
            pub core: usize,
            $(pub $f: AtomicU64,)*
        }

        impl StatsCell {
            pub(crate) fn publish(&self, s: &ReactorStats) {
                $(self.$f.store(s.$f, Ordering::Relaxed);)*
            }

            pub(crate) fn snapshot(&self) -> ReactorStats {
                ReactorStats {
                    index: self.index,
                    core: self.core,
                    $($f: self.$f.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

cell!(
    busy_iters,
    idle_iters,
    sleeps,
    wakeups,
    msgs,
    msgs_deferred,
    tasks_polled,
    ios_started,
    ios_submitted,
    ios_completed,
    submit_calls,
    sq_full,
    orphaned,
    inflight,
    heap_allocs,
);
