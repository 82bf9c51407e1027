//! The process-wide depot behind the engine's per-thread I/O buffer lists
//! ([`sluice_engine::buf::Depot`]): one lock-free bounded queue per size
//! class. Reactors hand buffers to each other (a chunk read on the reactor
//! owning its zone is freed on the reactor that asked); without the depot
//! one thread's list overflows into free() while the other's stays empty
//! and allocates (0.03 allocations per 4 KiB read on two reactors; 0 with
//! it). Installed by [`crate::Reactors::start_with`].

use crossbeam_queue::ArrayQueue;
use sluice_engine::buf::{self, class_bytes, Depot, FreeBlock, SIZE_CLASSES};
use std::sync::LazyLock;

/// Bytes kept per size class (at least 8 blocks).
const DEPOT_BYTES: usize = 8 << 20;

struct QueueDepot([ArrayQueue<FreeBlock>; SIZE_CLASSES]);

impl Depot for QueueDepot {
    fn put(&self, class: usize, block: FreeBlock) -> Result<(), FreeBlock> {
        self.0[class].push(block)
    }

    fn take(&self, class: usize) -> Option<FreeBlock> {
        self.0[class].pop()
    }
}

/// Never freed: what it holds at exit goes back with the process.
static DEPOT: LazyLock<QueueDepot> = LazyLock::new(|| {
    QueueDepot(std::array::from_fn(|k| {
        ArrayQueue::new((DEPOT_BYTES / class_bytes(k)).max(8))
    }))
});

/// Install the depot for this process (idempotent).
pub(crate) fn install() {
    buf::set_depot(&*DEPOT);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::buf::RECYCLE_BYTES;
    use sluice_engine::AlignedBuf;

    #[test]
    fn a_buffer_freed_by_another_thread_comes_back_through_the_depot() {
        install();
        // 512 KiB: a class no other unit test recycles. A thread keeps
        // RECYCLE_BYTES / 512 KiB = 4 of them; the fifth it frees goes to
        // the depot, where this thread (whose own list is empty) finds it.
        const CAP: usize = 512 << 10;
        let per_thread = RECYCLE_BYTES / CAP;
        let freed: Vec<usize> = std::thread::spawn(move || {
            let bufs: Vec<AlignedBuf> = (0..=per_thread)
                .map(|_| AlignedBuf::filled_later(CAP))
                .collect();
            bufs.iter().map(|b| b.as_ptr() as usize).collect()
        })
        .join()
        .expect("thread");
        let got = AlignedBuf::filled_later(CAP);
        assert!(got.recycled(), "a fresh allocation, not a recycled block");
        assert!(freed.contains(&(got.as_ptr() as usize)));
    }
}
