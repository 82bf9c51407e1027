//! When a loop iteration hands its SQEs to the kernel: not all at the end of
//! a burst (the device idles while the burst runs), not one syscall per
//! task (a doorbell per I/O), but early while the kernel holds fewer than
//! are queued, and in batches after that.

use std::time::Duration;

use sluice_reactor::ring::current_stats;
use sluice_reactor::{block_on, sleep, spawn_local, yield_now};

/// 64 tasks woken together each start one long-lived op (a timeout that
/// stays in the kernel). With the ratio rule and batches of 8 they go in
/// 1, 1, 2, 4, 8, 8, ... : 10 submits. One submit at the end would leave
/// the first 63 waiting; one per task would be 64 syscalls.
#[test]
fn a_burst_reaches_the_kernel_early_and_in_batches() {
    let submits = block_on(async {
        let before = current_stats().expect("ring").submit_calls;
        let tasks: Vec<_> = (0..64)
            .map(|_| spawn_local(async { sleep(Duration::from_millis(200)).await }))
            .collect();
        // Let the spawned tasks run (one turn) before looking.
        yield_now().await;
        let s = current_stats().expect("ring");
        assert_eq!(s.inflight, 64, "every task's op is with the kernel");
        let submits = s.submit_calls - before;
        for t in tasks {
            t.await.expect("sleep");
        }
        submits
    });
    assert!(
        (4..=16).contains(&submits),
        "64 ops went in {submits} submits (expected early batches: ~10)"
    );
}
