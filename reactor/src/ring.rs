//! The per-thread io_uring: SQE queueing, the op table, CQE reaping.
//!
//! This file owns every interaction with the kernel ring. Each reactor (and
//! each `block_on`) creates one [`Ring`] on its own thread and installs it in
//! a thread-local; the I/O front ends ([`crate::uring_dev`], [`crate::net`],
//! [`sleep`]) start operations on "the current thread's ring".
//!
//! **Owned-buffer rule.** An in-flight operation's buffers, iovecs, msghdr,
//! timespec and eventfd word live in its *slot* in the op table, never in the
//! future that started it. Slots sit in fixed-size chunks that are never moved
//! or freed while the ring lives, so every pointer handed to the kernel stays
//! valid until the CQE arrives. Dropping the future only marks the slot
//! *orphaned* (and, for socket ops that may wait forever, queues an
//! `ASYNC_CANCEL`); the buffers are freed when the CQE is reaped. Slots are
//! reused through a free list, so steady-state I/O allocates nothing.
//!
//! **Batching.** Starting an op only writes an SQE into the submission ring.
//! The owner calls [`Ring::submit`] once per loop iteration (one
//! `io_uring_enter` for everything queued) and [`Ring::reap`] to consume CQEs
//! and wake tasks. When the SQ is full the ring submits early and retries; if
//! the kernel still has no room the SQE waits in a backlog for the next
//! `submit`. An op is never dropped.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use sluice_engine::AlignedBuf;

use crate::error::{no_ring, Error};

/// How completions that need task work (sockets, most block I/O) are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRun {
    /// Kernel default: task work interrupts the thread (an IPI when it is
    /// busy in user space).
    Signal,
    /// `COOP_TASKRUN | TASKRUN_FLAG`: no interrupt; task work runs on the
    /// next `io_uring_enter`, which `submit()` makes whenever the kernel
    /// flags pending work. Cheapest for a loop that enters every iteration.
    Cooperative,
    /// `SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG`: completions are
    /// batched until this thread enters with GETEVENTS.
    Deferred,
}

/// Ring sizing and setup flags.
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// Submission queue entries (power of two; clamped by the kernel).
    pub sq_entries: u32,
    /// Completion queue entries (>= `sq_entries`).
    pub cq_entries: u32,
    /// Use a kernel SQ polling thread that sleeps after this many ms idle.
    /// Requires `task_run: TaskRun::Signal` (kernel rule).
    pub sqpoll_idle_ms: Option<u32>,
    /// Task-work mode, see [`TaskRun`].
    pub task_run: TaskRun,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            sq_entries: 1024,
            cq_entries: 4096,
            sqpoll_idle_ms: None,
            task_run: TaskRun::Deferred,
        }
    }
}

/// Counters of one ring (plain integers: the ring is single-threaded; the
/// reactor publishes them to atomics once per loop iteration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Operations started (SQEs queued for user-visible ops).
    pub ops_started: u64,
    /// SQEs the kernel accepted, summed over `io_uring_enter` calls.
    pub sqes_submitted: u64,
    /// `io_uring_enter` calls made to submit (not counting waits).
    pub submit_calls: u64,
    /// CQEs consumed (including internal ones: eventfd, close, cancel).
    pub cqes_reaped: u64,
    /// Times an SQE did not fit and forced an early submit.
    pub sq_full: u64,
    /// `io_uring_enter` failures other than EINTR/EAGAIN/EBUSY.
    pub submit_errors: u64,
    /// Operations whose future was dropped before the CQE arrived.
    pub orphaned: u64,
    /// Operations currently owned by the kernel (SQE queued or in flight),
    /// not counting the runtime's eventfd read.
    pub inflight: u64,
    /// Of those, storage I/O (see [`Ring::device_inflight`]).
    pub device_inflight: u64,
}

/// Largest header [`crate::net::UringStream::send_with_header`] copies inline.
pub const MAX_INLINE_HEADER: usize = 128;

/// Scratch memory an op may point the kernel at; lives in the op's slot.
pub(crate) struct Ext {
    pub iov: [libc::iovec; 2],
    pub msg: libc::msghdr,
    pub ts: types::Timespec,
    pub word: u64,
    pub hdr: [u8; MAX_INLINE_HEADER],
}

impl Ext {
    fn new() -> Self {
        Ext {
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
            // SAFETY: msghdr is a plain C struct; all-zero (null pointers,
            // zero lengths) is a valid value.
            msg: unsafe { std::mem::zeroed() },
            ts: types::Timespec::new(),
            word: 0,
            hdr: [0; MAX_INLINE_HEADER],
        }
    }
}

/// What an op owns while the kernel uses it.
pub(crate) struct OpData {
    pub buf: Option<AlignedBuf>,
    pub ext: Ext,
}

/// What a finished op hands back to its future.
pub(crate) struct Completion {
    pub res: i32,
    #[allow(dead_code)]
    pub flags: u32,
    pub buf: Option<AlignedBuf>,
}

/// What to do with an op whose future goes away before its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnDrop {
    /// Let it finish (file I/O: it completes soon anyway).
    Wait,
    /// Queue an `ASYNC_CANCEL` (socket ops that may wait forever).
    Cancel,
    /// Cancel, and if it still succeeds, close the descriptor it returns
    /// (accept), so an abandoned accept leaks no socket.
    CancelCloseFd,
}

/// Who owns an op slot and what its completion means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpState {
    Free,
    /// Owned by the kernel; a future is waiting.
    Pending,
    /// CQE arrived; result waits for the future to poll.
    Done,
    /// Owned by the kernel; the future was dropped. Freed on CQE.
    Orphaned,
    /// The runtime's eventfd read. Freed on CQE, clears `eventfd_armed`.
    EventFd,
}

/// One entry of the op table: an operation's state, result, waker and the
/// memory the kernel points into while it runs.
struct OpSlot {
    gen: u32,
    state: OpState,
    on_drop: OnDrop,
    res: i32,
    flags: u32,
    /// Storage I/O (counted in `Slab::device_owned`).
    device: bool,
    waker: Option<Waker>,
    data: OpData,
}

impl OpSlot {
    fn new() -> Self {
        OpSlot {
            gen: 0,
            state: OpState::Free,
            on_drop: OnDrop::Wait,
            res: 0,
            flags: 0,
            device: false,
            waker: None,
            data: OpData {
                buf: None,
                ext: Ext::new(),
            },
        }
    }
}

const CHUNK: usize = 256;
/// user_data of ASYNC_CANCEL SQEs; their CQEs carry no information we need.
const CANCEL_UD: u64 = u64::MAX;

/// The op table: chunks of slots that never move (their addresses are given
/// to the kernel), plus a free list.
struct Slab {
    chunks: Vec<Box<[OpSlot]>>,
    free: Vec<u32>,
    /// Slots in state Pending, Orphaned or EventFd.
    kernel_owned: usize,
    /// Of those, storage I/O: reads, writes and flushes on files and block
    /// devices, which complete on their own within a device latency.
    device_owned: usize,
}

impl Slab {
    fn new(initial: usize) -> Self {
        let mut s = Slab {
            chunks: Vec::new(),
            free: Vec::new(),
            kernel_owned: 0,
            device_owned: 0,
        };
        while s.chunks.len() * CHUNK < initial {
            s.grow();
        }
        s
    }

    fn grow(&mut self) {
        let base = (self.chunks.len() * CHUNK) as u32;
        let chunk: Box<[OpSlot]> = (0..CHUNK).map(|_| OpSlot::new()).collect();
        self.chunks.push(chunk);
        // Lowest index on top so slots are reused in a cache-friendly order.
        self.free.extend((0..CHUNK as u32).rev().map(|i| base + i));
    }

    fn alloc(&mut self) -> u32 {
        if self.free.is_empty() {
            self.grow();
        }
        self.free.pop().expect("slab grew")
    }

    fn get(&mut self, idx: u32) -> &mut OpSlot {
        let i = idx as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// The slot for `key` if its generation still matches.
    fn lookup(&mut self, key: u64) -> Option<&mut OpSlot> {
        let (idx, gen) = split_key(key);
        if idx as usize >= self.chunks.len() * CHUNK {
            return None;
        }
        let slot = self.get(idx);
        (slot.gen == gen && slot.state != OpState::Free).then_some(slot)
    }

    fn release(&mut self, idx: u32) -> Option<AlignedBuf> {
        let slot = self.get(idx);
        slot.state = OpState::Free;
        slot.waker = None;
        // A recycled slot must not inherit the last op's drop action (a
        // stale CancelCloseFd would close whatever fd a later op returns).
        slot.on_drop = OnDrop::Wait;
        slot.device = false;
        let buf = slot.data.buf.take();
        self.free.push(idx);
        buf
    }
}

fn make_key(idx: u32, gen: u32) -> u64 {
    ((gen as u64) << 32) | idx as u64
}

fn split_key(key: u64) -> (u32, u32) {
    (key as u32, (key >> 32) as u32)
}

/// The ring's mutable half: the kernel ring, the op table, the SQE backlog.
struct RingCore {
    uring: IoUring,
    slab: Slab,
    /// SQEs that did not fit even after an early submit.
    backlog: VecDeque<squeue::Entry>,
    /// Reused between reaps so waking allocates nothing.
    wakeq: Vec<Waker>,
    stats: RingStats,
    eventfd_armed: bool,
    /// Set by `shutdown`: the kernel side is gone or being drained.
    shut: bool,
    /// SQEs placed in the SQ since the kernel last took SQEs.
    fresh: usize,
    sqpoll: bool,
}

/// One io_uring and its op table. `!Send`: it belongs to the thread that
/// created it.
pub struct Ring {
    inner: RefCell<RingCore>,
}

impl Ring {
    /// Create a ring. Prefer running inside a reactor or `block_on`, which
    /// create and install one for you.
    pub fn new(cfg: &RingConfig) -> Result<Ring, Error> {
        if cfg.cq_entries < cfg.sq_entries {
            return Err(Error::RingConfig(format!(
                "cq_entries {} < sq_entries {}",
                cfg.cq_entries, cfg.sq_entries
            )));
        }
        if cfg.sqpoll_idle_ms.is_some() && cfg.task_run != TaskRun::Signal {
            // The kernel rejects COOP_TASKRUN / TASKRUN_FLAG / DEFER_TASKRUN
            // with SQPOLL (EINVAL): the SQ thread does the task work.
            return Err(Error::RingConfig(
                "SQPOLL requires task_run: TaskRun::Signal".into(),
            ));
        }
        let mut b = IoUring::builder();
        b.setup_cqsize(cfg.cq_entries).setup_clamp();
        match cfg.task_run {
            TaskRun::Signal => {}
            TaskRun::Cooperative => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            TaskRun::Deferred => {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag();
            }
        }
        if let Some(ms) = cfg.sqpoll_idle_ms {
            b.setup_sqpoll(ms);
        }
        let uring = b.build(cfg.sq_entries).map_err(Error::RingSetup)?;
        let sqpoll = uring.params().is_setup_sqpoll();
        Ok(Ring {
            inner: RefCell::new(RingCore {
                uring,
                slab: Slab::new(cfg.sq_entries as usize),
                backlog: VecDeque::new(),
                wakeq: Vec::with_capacity(256),
                stats: RingStats::default(),
                eventfd_armed: false,
                shut: false,
                fresh: 0,
                sqpoll,
            }),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> RingStats {
        let inner = self.inner.borrow();
        let mut s = inner.stats;
        s.inflight = inner.user_inflight() as u64;
        s.device_inflight = inner.slab.device_owned as u64;
        s
    }

    /// Operations the kernel still owns (queued or in flight), not counting
    /// the runtime's own eventfd read.
    pub fn inflight(&self) -> usize {
        self.inner.borrow().user_inflight()
    }

    /// Storage I/O the kernel still owns (see `Op::start_device`): when
    /// non-zero a completion is due within a device latency, so the reactor
    /// keeps polling rather than sleeping (see `IdlePolicy::device_poll`).
    pub fn device_inflight(&self) -> usize {
        self.inner.borrow().slab.device_owned
    }

    fn kernel_owned(&self) -> usize {
        self.inner.borrow().slab.kernel_owned
    }

    /// Submit everything queued since the last call with one
    /// `io_uring_enter` (none if nothing is queued and the kernel flags no
    /// pending task work). Returns the number of SQEs the kernel accepted.
    pub fn submit(&self) -> usize {
        let mut inner = self.inner.borrow_mut();
        inner.submit_inner(0, None)
    }

    /// Submit before the end of the loop iteration when holding the queued
    /// SQEs would starve the device: once `batch` are queued, or as soon as
    /// the queued ones are at least as many as the kernel is working on.
    /// Returns SQEs submitted.
    ///
    /// Why: a burst of completions wakes many tasks at once; if every SQE
    /// they queue waits for one submit after the last of them ran, the
    /// device idles meanwhile (4 KiB randread qd 32: 0 I/Os in flight a
    /// third of the time, 0.8x raw fio). Submitting at a fixed small batch
    /// fixes that but costs a syscall and a virtio doorbell (a VM exit)
    /// per few I/Os, which CPU-bound writes feel; the ratio rule keeps the
    /// kernel's share growing geometrically, so a burst of n costs about
    /// log2(n) submits.
    pub fn submit_early(&self, batch: usize) -> usize {
        let mut inner = self.inner.borrow_mut();
        let queued = inner.fresh + inner.backlog.len();
        if queued == 0 {
            return 0;
        }
        let working = inner.user_inflight().saturating_sub(queued);
        if queued < batch && queued < working {
            return 0;
        }
        inner.submit_inner(0, None)
    }

    /// Block until at least one CQE is available or `timeout` passes,
    /// submitting anything queued first.
    pub fn wait(&self, timeout: Option<Duration>) {
        let mut inner = self.inner.borrow_mut();
        inner.submit_inner(1, timeout);
    }

    /// Consume available CQEs, complete their ops and wake their tasks.
    /// Returns the number of CQEs consumed.
    pub fn reap(&self) -> usize {
        let (n, mut wakers) = {
            let mut guard = self.inner.borrow_mut();
            let inner = &mut *guard;
            let mut wakers = std::mem::take(&mut inner.wakeq);
            let mut n = 0;
            let mut eventfd_done = false;
            for cqe in inner.uring.completion() {
                n += 1;
                let ud = cqe.user_data();
                if ud == CANCEL_UD {
                    continue;
                }
                let (idx, _) = split_key(ud);
                let Some(state) = inner.slab.lookup(ud).map(|s| s.state) else {
                    debug_assert!(false, "CQE for unknown op {ud:#x}");
                    continue;
                };
                match state {
                    OpState::Pending => {
                        let slot = inner.slab.get(idx);
                        slot.state = OpState::Done;
                        slot.res = cqe.result();
                        slot.flags = cqe.flags();
                        if let Some(w) = slot.waker.take() {
                            wakers.push(w);
                        }
                        let device = slot.device as usize;
                        inner.slab.kernel_owned -= 1;
                        inner.slab.device_owned -= device;
                    }
                    OpState::Orphaned => {
                        // The kernel is done with the buffers: free them now.
                        inner.slab.kernel_owned -= 1;
                        let slot = inner.slab.get(idx);
                        let device = slot.device as usize;
                        if slot.on_drop == OnDrop::CancelCloseFd && cqe.result() >= 0 {
                            close_orphan_fd(cqe.result());
                        }
                        inner.slab.device_owned -= device;
                        drop(inner.slab.release(idx));
                    }
                    OpState::EventFd => {
                        inner.slab.kernel_owned -= 1;
                        inner.slab.release(idx);
                        eventfd_done = true;
                    }
                    OpState::Done | OpState::Free => debug_assert!(false, "duplicate CQE"),
                }
            }
            if eventfd_done {
                inner.eventfd_armed = false;
            }
            inner.stats.cqes_reaped += n as u64;
            (n, wakers)
        };
        // Wake outside the borrow: a waker may do anything, including
        // dropping a task whose op futures then call back into the ring.
        for w in wakers.drain(..) {
            w.wake();
        }
        let mut inner = self.inner.borrow_mut();
        if inner.wakeq.capacity() < wakers.capacity() {
            inner.wakeq = wakers;
        }
        n
    }

    /// Queue a read on `eventfd` (once; re-armed after it completes) so a
    /// blocking `wait` returns when another thread writes the eventfd.
    pub(crate) fn arm_eventfd(&self, fd: RawFd) {
        let mut inner = self.inner.borrow_mut();
        if inner.eventfd_armed || inner.shut {
            return;
        }
        inner.eventfd_armed = true;
        let idx = inner.slab.alloc();
        let slot = inner.slab.get(idx);
        slot.gen = slot.gen.wrapping_add(1);
        slot.state = OpState::EventFd;
        let key = make_key(idx, slot.gen);
        let ptr = &mut slot.data.ext.word as *mut u64 as *mut u8;
        let sqe = opcode::Read::new(types::Fd(fd), ptr, 8)
            .build()
            .user_data(key);
        inner.slab.kernel_owned += 1;
        inner.push_sqe(sqe);
    }

    /// Close `fd` through the ring, after every SQE already queued (so an op
    /// queued on this fd can never hit a recycled descriptor number).
    pub(crate) fn close_detached(&self, fd: RawFd) {
        let mut inner = self.inner.borrow_mut();
        if inner.shut {
            // SAFETY: the caller gave up ownership of `fd`.
            unsafe { libc::close(fd) };
            return;
        }
        let idx = inner.slab.alloc();
        let slot = inner.slab.get(idx);
        slot.gen = slot.gen.wrapping_add(1);
        slot.state = OpState::Orphaned;
        slot.on_drop = OnDrop::Wait;
        let key = make_key(idx, slot.gen);
        let sqe = opcode::Close::new(types::Fd(fd)).build().user_data(key);
        inner.slab.kernel_owned += 1;
        inner.push_sqe(sqe);
    }

    /// Start an op: `bufs` move into a fresh slot, then `prep` builds the SQE
    /// from the slot's (stable) data.
    ///
    /// # Safety
    /// Every pointer in the SQE `prep` returns must point into the `OpData`
    /// it was given (or to memory that outlives the ring), and describe
    /// memory valid for the access the opcode performs.
    pub(crate) unsafe fn start(
        &self,
        on_drop: OnDrop,
        device: bool,
        buf: Option<AlignedBuf>,
        prep: impl FnOnce(&mut OpData) -> squeue::Entry,
    ) -> u64 {
        let mut inner = self.inner.borrow_mut();
        assert!(!inner.shut, "op started on a ring that is shutting down");
        let idx = inner.slab.alloc();
        let slot = inner.slab.get(idx);
        slot.gen = slot.gen.wrapping_add(1);
        slot.state = OpState::Pending;
        slot.on_drop = on_drop;
        slot.device = device;
        slot.data.buf = buf;
        let key = make_key(idx, slot.gen);
        let sqe = prep(&mut slot.data).user_data(key);
        inner.slab.kernel_owned += 1;
        inner.slab.device_owned += device as usize;
        inner.stats.ops_started += 1;
        inner.push_sqe(sqe);
        key
    }

    fn poll_op(&self, key: u64, cx: &mut Context<'_>) -> Poll<Completion> {
        let mut inner = self.inner.borrow_mut();
        let slot = inner
            .slab
            .lookup(key)
            .expect("ring op polled after completion or on another ring");
        match slot.state {
            OpState::Done => {
                let res = slot.res;
                let flags = slot.flags;
                let (idx, _) = split_key(key);
                let buf = inner.slab.release(idx);
                Poll::Ready(Completion { res, flags, buf })
            }
            OpState::Pending => {
                let old = match &slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => None,
                    _ => slot.waker.replace(cx.waker().clone()),
                };
                drop(inner);
                drop(old);
                Poll::Pending
            }
            s => unreachable!("op future sees slot state {s:?}"),
        }
    }

    fn drop_op(&self, key: u64) {
        let mut inner = self.inner.borrow_mut();
        let Some(slot) = inner.slab.lookup(key) else {
            return;
        };
        match slot.state {
            OpState::Pending => {
                slot.state = OpState::Orphaned;
                let waker = slot.waker.take();
                let cancel = slot.on_drop != OnDrop::Wait;
                inner.stats.orphaned += 1;
                if cancel && !inner.shut {
                    let sqe = opcode::AsyncCancel::new(key).build().user_data(CANCEL_UD);
                    inner.push_sqe(sqe);
                }
                drop(inner);
                drop(waker);
            }
            OpState::Done => {
                if slot.on_drop == OnDrop::CancelCloseFd && slot.res >= 0 {
                    close_orphan_fd(slot.res);
                }
                let (idx, _) = split_key(key);
                let bufs = inner.slab.release(idx);
                drop(inner);
                drop(bufs);
            }
            _ => {}
        }
    }

    /// Cancel everything the kernel still owns and wait for the CQEs, so no
    /// buffer is freed while the kernel may touch it. Wakes waiting tasks
    /// (their ops complete with `ECANCELED` or their real result). If the
    /// kernel does not return every op within `deadline`, the op table is
    /// leaked rather than freed. Returns whether everything came back.
    pub(crate) fn shutdown(&self, deadline: Duration, mut between: impl FnMut()) -> bool {
        {
            let mut inner = self.inner.borrow_mut();
            let inner = &mut *inner;
            let mut cancels = Vec::new();
            for (c, chunk) in inner.slab.chunks.iter().enumerate() {
                for (i, slot) in chunk.iter().enumerate() {
                    if matches!(
                        slot.state,
                        OpState::Pending | OpState::Orphaned | OpState::EventFd
                    ) {
                        cancels.push(make_key((c * CHUNK + i) as u32, slot.gen));
                    }
                }
            }
            for key in cancels {
                let sqe = opcode::AsyncCancel::new(key).build().user_data(CANCEL_UD);
                inner.push_sqe(sqe);
            }
            inner.shut = true;
        }
        let start = Instant::now();
        loop {
            self.submit();
            self.reap();
            between();
            if self.kernel_owned() == 0 && self.inner.borrow().backlog.is_empty() {
                return true;
            }
            if start.elapsed() > deadline {
                // Leak the op table: the kernel may still write into it.
                let mut inner = self.inner.borrow_mut();
                let chunks = std::mem::take(&mut inner.slab.chunks);
                std::mem::forget(chunks);
                inner.slab.free.clear();
                inner.slab.kernel_owned = 0;
                inner.slab.device_owned = 0;
                return false;
            }
            self.wait(Some(Duration::from_millis(20)));
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if !self.inner.borrow().shut || self.kernel_owned() > 0 {
            self.shutdown(Duration::from_secs(10), || {});
        }
        // Accepts that completed but were never collected: close their fds.
        let inner = self.inner.get_mut();
        for slot in inner.slab.chunks.iter().flat_map(|c| c.iter()) {
            if slot.state == OpState::Done && slot.on_drop == OnDrop::CancelCloseFd && slot.res >= 0
            {
                close_orphan_fd(slot.res);
            }
        }
    }
}

impl RingCore {
    fn user_inflight(&self) -> usize {
        self.slab
            .kernel_owned
            .saturating_sub(self.eventfd_armed as usize)
    }

    fn push_sqe(&mut self, sqe: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(sqe);
            return;
        }
        // SAFETY: the SQE only points into slot data, which stays in place
        // until its CQE is reaped (the caller of `start` promised that).
        if unsafe { self.uring.submission().push(&sqe) }.is_ok() {
            self.fresh += 1;
            return;
        }
        self.stats.sq_full += 1;
        self.enter(0, None);
        // SAFETY: as above.
        if unsafe { self.uring.submission().push(&sqe) }.is_ok() {
            self.fresh += 1;
        } else {
            self.backlog.push_back(sqe);
        }
    }

    /// Move backlogged SQEs into the SQ while there is room.
    fn flush_backlog(&mut self) {
        while let Some(sqe) = self.backlog.front() {
            // SAFETY: as in `push_sqe`.
            if unsafe { self.uring.submission().push(sqe) }.is_err() {
                break;
            }
            self.fresh += 1;
            self.backlog.pop_front();
        }
    }

    fn submit_inner(&mut self, want: usize, timeout: Option<Duration>) -> usize {
        let mut total = 0;
        loop {
            self.flush_backlog();
            let flagged = {
                let sq = self.uring.submission();
                sq.cq_overflow() || sq.taskrun()
            };
            if self.fresh == 0 && !flagged && want == 0 {
                return total;
            }
            let n = self.enter(want, timeout);
            total += n;
            // Loop only to move a backlog in, and only while the kernel
            // takes SQEs (an EBUSY must not spin here without reaping).
            if self.backlog.is_empty() || want > 0 || n == 0 {
                return total;
            }
        }
    }

    /// One `io_uring_enter`. Transient errors leave SQEs queued for the
    /// next call.
    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> usize {
        let queued = self.fresh;
        let r = match timeout {
            Some(t) if want > 0 => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(want, &args)
            }
            _ => self.uring.submitter().submit_and_wait(want),
        };
        if queued > 0 {
            self.stats.submit_calls += 1;
        }
        match r {
            Ok(n) => {
                // With SQPOLL the kernel reports the SQ length (entries the
                // poll thread may not have taken yet), so count what we
                // handed over since the last call instead.
                let n = if self.sqpoll {
                    std::mem::take(&mut self.fresh)
                } else {
                    self.fresh = self.fresh.saturating_sub(n);
                    n
                };
                self.stats.sqes_submitted += n as u64;
                n
            }
            Err(e) => {
                match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    | Some(libc::ETIME) => {}
                    _ => self.stats.submit_errors += 1,
                }
                0
            }
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Ring>>> = const { RefCell::new(None) };
}

/// Make `ring` the current thread's ring.
pub(crate) fn install(ring: Rc<Ring>) -> Result<(), Error> {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_some() {
            return Err(Error::AlreadyInstalled);
        }
        *c = Some(ring);
        Ok(())
    })
}

pub(crate) fn uninstall() -> Option<Rc<Ring>> {
    CURRENT.try_with(|c| c.borrow_mut().take()).ok().flatten()
}

/// Run `f` on the current thread's ring, if there is one.
pub(crate) fn with_ring<R>(f: impl FnOnce(&Ring) -> R) -> Option<R> {
    CURRENT
        .try_with(|c| c.borrow().as_ref().map(|r| f(r)))
        .ok()
        .flatten()
}

/// Counters of the current thread's ring (None off a runtime thread).
pub fn current_stats() -> Option<RingStats> {
    with_ring(|r| r.stats())
}

/// A started operation. Resolves to its completion; dropping it early
/// orphans the op (see the module docs).
pub(crate) struct Op {
    key: u64,
    done: bool,
}

impl Op {
    /// Start an op on the current ring; gives the buffers back if there is
    /// no ring on this thread.
    ///
    /// # Safety
    /// As [`Ring::start`].
    pub(crate) unsafe fn start(
        on_drop: OnDrop,
        buf: Option<AlignedBuf>,
        prep: impl FnOnce(&mut OpData) -> squeue::Entry,
    ) -> Result<Op, Option<AlignedBuf>> {
        // SAFETY: forwarded from our caller.
        unsafe { Self::start_as(on_drop, false, buf, prep) }
    }

    /// Start storage I/O (a read, write or flush on a file or block device):
    /// like [`Op::start`] with [`OnDrop::Wait`], and counted in
    /// [`Ring::device_inflight`] until its CQE.
    ///
    /// # Safety
    /// As [`Ring::start`].
    pub(crate) unsafe fn start_device(
        buf: Option<AlignedBuf>,
        prep: impl FnOnce(&mut OpData) -> squeue::Entry,
    ) -> Result<Op, Option<AlignedBuf>> {
        // SAFETY: forwarded from our caller.
        unsafe { Self::start_as(OnDrop::Wait, true, buf, prep) }
    }

    unsafe fn start_as(
        on_drop: OnDrop,
        device: bool,
        buf: Option<AlignedBuf>,
        prep: impl FnOnce(&mut OpData) -> squeue::Entry,
    ) -> Result<Op, Option<AlignedBuf>> {
        let mut bufs = Some((buf, prep));
        let key = with_ring(|r| {
            if r.inner.borrow().shut {
                return None;
            }
            let (b, p) = bufs.take().expect("once");
            // SAFETY: forwarded from our caller.
            Some(unsafe { r.start(on_drop, device, b, p) })
        })
        .flatten();
        match key {
            Some(key) => Ok(Op { key, done: false }),
            None => {
                let (b, _) = bufs.take().expect("not consumed");
                Err(b)
            }
        }
    }
}

impl Future for Op {
    type Output = Completion;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        let key = self.key;
        let r = with_ring(|r| r.poll_op(key, cx)).expect("ring op polled off its ring thread");
        if r.is_ready() {
            self.done = true;
        }
        r
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if !self.done {
            let key = self.key;
            with_ring(|r| r.drop_op(key));
        }
    }
}

/// Close a descriptor an abandoned op (accept) produced. Rare path: a
/// plain `close(2)`.
fn close_orphan_fd(fd: i32) {
    // SAFETY: the kernel created this descriptor for an op nobody will
    // ever see the result of; we are its only owner.
    unsafe { libc::close(fd) };
}

/// Turn a CQE result into bytes transferred or an error.
pub(crate) fn cqe_result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

/// Sleep for `d` on the current ring (an `IORING_OP_TIMEOUT`; costs no
/// thread and no extra syscall).
pub async fn sleep(d: Duration) -> io::Result<()> {
    // SAFETY: the timeout SQE points at `ext.ts` in the op's own slot.
    let op = unsafe {
        Op::start(OnDrop::Wait, None, |data| {
            data.ext.ts = types::Timespec::from(d);
            opcode::Timeout::new(&data.ext.ts as *const types::Timespec).build()
        })
    }
    .map_err(|_| no_ring())?;
    let c = op.await;
    match c.res {
        r if r == -libc::ETIME || r >= 0 => Ok(()),
        r => Err(io::Error::from_raw_os_error(-r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_roundtrip() {
        let k = make_key(12345, 0xdead_beef);
        assert_eq!(split_key(k), (12345, 0xdead_beef));
        assert_ne!(k, CANCEL_UD);
    }

    #[test]
    fn slab_reuses_slots() {
        let mut s = Slab::new(1);
        assert_eq!(s.chunks.len(), 1);
        let a = s.alloc();
        s.release(a);
        assert_eq!(s.alloc(), a);
        for _ in 0..CHUNK {
            s.alloc();
        }
        assert_eq!(s.chunks.len(), 2);
    }
}
