//! One thread's runtime: ring + executor + wake-up eventfd, the idle
//! back-off policy, and [`block_on`].
//!
//! This file owns the sleep/wake protocol shared by reactors and `block_on`:
//!
//! * A thread about to sleep arms a read on its eventfd through its ring,
//!   sets `sleeping` (SeqCst), re-checks every queue that other threads can
//!   push to, and only then blocks in `io_uring_enter(min_complete = 1)`.
//! * A thread that pushes work for it (message, cross-thread wake) does a
//!   SeqCst fence after the push and writes the eventfd only if it sees
//!   `sleeping` — so a busy reactor costs its senders one load, not a
//!   syscall.
//!
//! Either the sleeper sees the pushed item in its re-check, or the sender
//! sees the flag (both sides: store, full fence, load), so no wake-up is
//! lost. Any CQE (I/O completion) also ends the sleep.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::executor::Executor;
use crate::ring::{self, Ring, RingConfig};

/// Wakes a (possibly sleeping) runtime thread from any thread.
pub struct Notifier {
    eventfd: OwnedFd,
    sleeping: AtomicBool,
    /// eventfd writes done for this thread.
    wakeups: AtomicU64,
}

impl Notifier {
    pub(crate) fn new() -> Result<Notifier, Error> {
        // SAFETY: plain syscall; the fd is checked and then owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::Eventfd(std::io::Error::last_os_error()));
        }
        Ok(Notifier {
            // SAFETY: fd is a fresh, valid descriptor we own.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
        })
    }

    /// Call after pushing work for the owner thread: wakes it if it sleeps.
    #[inline]
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.kick();
        }
    }

    /// Write the eventfd unconditionally (stop requests).
    pub(crate) fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd. EAGAIN
        // (counter saturated) still leaves the eventfd readable: fine.
        unsafe {
            libc::write(
                self.eventfd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }
}

/// Back-off knobs. Under load every iteration finds work and the loop just
/// busy-polls; these only apply after consecutive idle iterations.
#[derive(Debug, Clone, Copy)]
pub struct IdlePolicy {
    /// Busy-spin (with `spin_loop` hints) this long after the last work.
    pub spin: Duration,
    /// Then `sched_yield` until this long after the last work...
    pub yield_until: Duration,
    /// ...then sleep in `io_uring_enter` until a CQE or an eventfd write.
    /// `false` keeps yielding forever (pure polling, SPDK style).
    pub sleep: bool,
    /// While storage I/O is in flight ([`crate::ring::Ring::device_inflight`]),
    /// keep yielding instead of sleeping until this long after the last
    /// work: a completion is due, and waking a sleeping thread costs
    /// latency on every I/O (see [`DEVICE_POLL_US`]).
    pub device_poll: Duration,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            spin: Duration::from_micros(SPIN_US),
            yield_until: Duration::from_micros(YIELD_UNTIL_US),
            sleep: true,
            device_poll: Duration::from_micros(DEVICE_POLL_US),
        }
    }
}

/// Default spin phase. Under load completions arrive closer together than
/// this, so the loop never leaves busy-polling; when they are further apart
/// (a slow device, a quiet socket) spinning longer only burns a core that
/// io-wq workers or other reactors could use. Measured on the 2-core dev VM
/// (virtio disk, 4 KiB randread qd 32): 10–20 µs spin beat 50 µs spin +
/// 1 ms yield by ~20 % IOPS at half the CPU.
pub const SPIN_US: u64 = 20;
/// Default end of the yield phase: sleep in `io_uring_enter` after 50 µs
/// without work.
pub const YIELD_UNTIL_US: u64 = 50;
/// Default `device_poll`: poll, do not sleep, for up to 1 ms after the last
/// work while storage I/O is in flight — busy-poll is the mode under load.
/// On the dev VM (guest halt-polling off, so a sleeping vCPU halts and its
/// wake-up goes through the host) sleeping after 50 µs idle held NBD 4 KiB
/// randread qd 32 at 54.1k IOPS against 57.6k polling (median of 8
/// alternating runs): the reactor slept ~1,700 times a second between
/// bursts of device completions and paid a wake-up each time. The bound
/// keeps a hung device from pinning a core forever.
pub const DEVICE_POLL_US: u64 = 1000;
/// A `sched_yield` that returns after this long gave the core to another
/// thread (with nothing else runnable it returns in a few µs).
pub const SHARED_YIELD: Duration = Duration::from_micros(20);
/// After such a yield, the core counts as shared for this long: the loop
/// then sleeps in `io_uring_enter` (woken by the completion) once the short
/// yield phase is over, instead of polling for device completions for up to
/// `device_poll`. On a dedicated core nothing else runs and polling stays.
pub const SHARED_HOLD: Duration = Duration::from_millis(50);
/// Default `submit_batch`: measured on the 2-core dev VM with sluice-perf,
/// one reactor, qd 32: 4 KiB randread 57–59k → 68–71k IOPS (raw fio
/// 72–75k), randwrite 90–104k → 107–115k; a batch of 4 read about the same
/// but cost randwrite ~15 % (a doorbell per 4 writes).
pub const DEFAULT_SUBMIT_BATCH: usize = 8;

/// What an idle iteration should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idle {
    Spin,
    Yield,
    Sleep,
}

/// Tracks how long the loop has been idle. Reads the clock every 32 idle
/// iterations only.
pub(crate) struct Backoff {
    policy: IdlePolicy,
    idle_iters: u32,
    since: Option<Instant>,
    phase: Idle,
    /// Until then this core is taken to be shared: a `sched_yield` gave it
    /// to another thread (see [`SHARED_YIELD`]), so polling for device
    /// completions would take the core from whoever else needs it.
    shared_until: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(policy: IdlePolicy) -> Self {
        Backoff {
            policy,
            idle_iters: 0,
            since: None,
            phase: Idle::Spin,
            shared_until: None,
        }
    }

    #[inline]
    pub(crate) fn busy(&mut self) {
        self.idle_iters = 0;
        self.since = None;
        self.phase = Idle::Spin;
    }

    /// One more idle iteration; `device_busy`: storage I/O is in flight.
    pub(crate) fn idle(&mut self, device_busy: bool) -> Idle {
        self.idle_iters += 1;
        if self.phase == Idle::Spin && self.idle_iters % 32 != 1 {
            return Idle::Spin;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        let idle_for = since.elapsed();
        self.phase = if idle_for < self.policy.spin {
            Idle::Spin
        } else if idle_for < self.policy.yield_until
            || !self.policy.sleep
            || (device_busy && idle_for < self.policy.device_poll && !self.core_shared())
        {
            Idle::Yield
        } else {
            Idle::Sleep
        };
        self.phase
    }

    /// Apply spin / yield (sleeping is the caller's job).
    pub(crate) fn pause(&mut self, phase: Idle) {
        match phase {
            Idle::Spin => std::hint::spin_loop(),
            Idle::Yield => {
                let t = Instant::now();
                std::thread::yield_now();
                self.yielded(t.elapsed());
            }
            Idle::Sleep => {}
        }
    }

    /// A `sched_yield` took `took`: long enough that another thread ran on
    /// this core means the core is shared for the next [`SHARED_HOLD`].
    pub(crate) fn yielded(&mut self, took: Duration) {
        if took >= SHARED_YIELD {
            self.shared_until = Some(Instant::now() + SHARED_HOLD);
        }
    }

    fn core_shared(&self) -> bool {
        self.shared_until.is_some_and(|t| Instant::now() < t)
    }
}

/// The ring, executor and notifier of one thread, installed in its
/// thread-locals for as long as this value lives.
pub(crate) struct LocalRuntime {
    pub ring: Rc<Ring>,
    pub exec: Executor,
    pub notifier: Arc<Notifier>,
    down: bool,
}

/// Tasks still waiting after this long at shutdown have their ops leaked.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

impl LocalRuntime {
    pub(crate) fn new(cfg: &RingConfig, notifier: Arc<Notifier>) -> Result<Self, Error> {
        if ring::with_ring(|_| ()).is_some() || crate::executor::in_runtime() {
            return Err(Error::AlreadyInstalled);
        }
        let ring = Rc::new(Ring::new(cfg)?);
        ring::install(ring.clone())?;
        let exec = match Executor::install(notifier.clone()) {
            Ok(e) => e,
            Err(e) => {
                ring::uninstall();
                return Err(e);
            }
        };
        Ok(LocalRuntime {
            ring,
            exec,
            notifier,
            down: false,
        })
    }

    /// Run up to `task_budget` ready tasks, submitting early when the device
    /// would otherwise run dry (see [`Ring::submit_early`] and
    /// `submit_batch`), then submit what is left and reap once. Returns
    /// (tasks polled, SQEs submitted, CQEs reaped).
    #[inline]
    pub(crate) fn turn(&self, task_budget: usize, submit_batch: usize) -> (usize, usize, usize) {
        let mut t = 0;
        let mut s = 0;
        while t < task_budget && self.exec.run_ready(1) == 1 {
            t += 1;
            s += self.ring.submit_early(submit_batch);
        }
        s += self.ring.submit();
        let c = self.ring.reap();
        (t, s, c)
    }

    /// Announce a sleep: arm the eventfd read, set `sleeping`, then check
    /// `has_work` (and the run queues). Returns false — and withdraws the
    /// announcement — if there is work; then do not call [`Self::sleep`].
    pub(crate) fn prepare_sleep(&self, has_work: impl Fn() -> bool) -> bool {
        self.ring.arm_eventfd(self.notifier.eventfd.as_raw_fd());
        self.notifier.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if has_work() || self.exec.has_ready() {
            self.notifier.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Block until a CQE or an eventfd write (after `prepare_sleep`
    /// returned true).
    pub(crate) fn sleep(&self) {
        self.ring.wait(None);
        self.notifier.sleeping.store(false, Ordering::Relaxed);
    }

    /// Drop every task still queued or woken, cancel all in-flight ops and
    /// wait for the kernel to hand their buffers back, then uninstall.
    pub(crate) fn shutdown(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        self.exec.close();
        self.exec.drop_queued();
        let exec = &self.exec;
        self.ring.shutdown(SHUTDOWN_DEADLINE, || {
            exec.drop_queued();
        });
        self.exec.drop_queued();
        ring::uninstall();
    }
}

impl Drop for LocalRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waker of `block_on`'s main future: sets a flag and pokes the notifier.
struct MainWaker {
    woken: AtomicBool,
    notifier: Arc<Notifier>,
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.notifier.notify();
    }
}

/// Run `future` to completion on the current thread with a fresh runtime
/// (ring with default config, executor): `spawn_local`, `UringDev`, sockets
/// and `sleep` all work inside. For tests, tools and examples; reactors run
/// their own loop.
///
/// # Panics
/// If this thread already runs a sluice runtime (a reactor, or a nested
/// `block_on`), or if the ring cannot be created.
pub fn block_on<F: Future>(future: F) -> F::Output {
    block_on_with(&RingConfig::default(), future)
}

/// [`block_on`] with an explicit ring configuration.
pub fn block_on_with<F: Future>(cfg: &RingConfig, future: F) -> F::Output {
    let notifier = Arc::new(Notifier::new().expect("eventfd"));
    let mut rt = LocalRuntime::new(cfg, notifier.clone())
        .expect("block_on: cannot start a runtime on this thread");
    let main = Arc::new(MainWaker {
        woken: AtomicBool::new(true),
        notifier,
    });
    let waker = Waker::from(main.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let mut backoff = Backoff::new(IdlePolicy::default());
    let out = loop {
        let mut work = 0;
        if main.woken.swap(false, Ordering::AcqRel) {
            work += 1;
            if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                break v;
            }
        }
        let (t, s, c) = rt.turn(256, DEFAULT_SUBMIT_BATCH);
        work += t + s + c;
        if work > 0 {
            backoff.busy();
            continue;
        }
        match backoff.idle(rt.ring.device_inflight() > 0) {
            Idle::Sleep => {
                if rt.prepare_sleep(|| main.woken.load(Ordering::Acquire)) {
                    rt.sleep();
                }
            }
            p => backoff.pause(p),
        }
    };
    rt.shutdown();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(device_poll: Duration) -> IdlePolicy {
        IdlePolicy {
            spin: Duration::ZERO,
            yield_until: Duration::ZERO,
            sleep: true,
            device_poll,
        }
    }

    /// Past the yield phase a loop sleeps, unless storage I/O is in flight
    /// and the device-poll window is still open.
    #[test]
    fn backoff_polls_while_device_io_is_in_flight() {
        let mut b = Backoff::new(policy(Duration::from_secs(3600)));
        assert_eq!(b.idle(false), Idle::Sleep);
        b.busy();
        assert_eq!(b.idle(true), Idle::Yield);
        assert_eq!(b.idle(true), Idle::Yield);
        assert_eq!(b.idle(false), Idle::Sleep, "device idle again: sleep");

        // The window is bounded: a device that never answers does not keep
        // the thread polling.
        let mut b = Backoff::new(policy(Duration::from_millis(2)));
        assert_eq!(b.idle(true), Idle::Yield);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(b.idle(true), Idle::Sleep);
        b.busy();
        assert_eq!(b.idle(true), Idle::Yield, "work restarts the window");
    }

    /// A yield that gave the core away makes the loop stop polling for
    /// device completions (it sleeps instead) for a while; quick yields
    /// (a dedicated core) leave polling on.
    #[test]
    fn a_shared_core_is_given_back_instead_of_polled() {
        let mut b = Backoff::new(policy(Duration::from_secs(3600)));
        b.yielded(Duration::from_micros(2));
        assert_eq!(b.idle(true), Idle::Yield, "dedicated core: poll");
        b.yielded(SHARED_YIELD * 5);
        b.busy();
        assert_eq!(b.idle(true), Idle::Sleep, "shared core: sleep on the ring");
        b.shared_until = Some(Instant::now() - Duration::from_millis(1));
        b.busy();
        assert_eq!(b.idle(true), Idle::Yield, "the hold expires");
    }
}
