//! Pinned per-core reactors: threads, inboxes, the loop, stop.
//!
//! This file owns the reactor threads. Each reactor is one thread pinned to
//! one core, with its own [`crate::ring::Ring`], executor and eventfd, and
//! one bounded `ArrayQueue` inbox *per sending reactor* plus one shared by
//! external (non-reactor) threads such as the RPC thread. One producer per
//! queue keeps the queues uncontended between reactors.
//!
//! The loop, per iteration:
//! 1. retry messages this reactor could not deliver earlier (overflow);
//! 2. run up to `msg_batch` messages from the inboxes (round-robin start),
//!    then every registered `Poller` (typed queues drained whole, such as
//!    the chunk operations other reactors forward, `crate::forward`);
//! 3. run up to `task_budget` ready tasks, submitting early only when the
//!    device would run dry (`submit_batch`, [`crate::ring::Ring::submit_early`]);
//! 4. one `submit` of every SQE still queued;
//! 5. reap CQEs, waking their tasks (they run next iteration).
//!
//! An iteration that did nothing counts as idle; see
//! [`crate::runtime::IdlePolicy`] for the spin → yield → sleep back-off and
//! [`crate::runtime`] for how senders wake a sleeping reactor.
//!
//! **Full inboxes.** Nothing is ever dropped. An external sender backs off
//! (spin, yield, then 20 µs sleeps) until there is room. A reactor must not
//! block (two reactors sending to each other could deadlock), so it parks
//! the message in a local FIFO overflow queue that the loop retries every
//! iteration, preserving per-target order.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::error::{CallError, Error, SendError};
use crate::executor::spawn_local;
use crate::msg::{oneshot, Msg, Receiver};
use crate::ring::RingConfig;
use crate::runtime::{Backoff, Idle, IdlePolicy, LocalRuntime, Notifier};
use crate::stats::{ReactorStats, StatsCell};

/// Reactor settings.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    pub ring: RingConfig,
    /// Capacity of each inbox queue (one per sender).
    pub inbox_capacity: usize,
    /// Messages run per loop iteration at most.
    pub msg_batch: usize,
    /// Task polls per loop iteration at most.
    pub task_budget: usize,
    /// Submit mid-iteration once this many SQEs are queued (or as soon as
    /// the queued ones are as many as the kernel holds). See
    /// [`crate::ring::Ring::submit_early`].
    pub submit_batch: usize,
    /// Idle back-off.
    pub idle: IdlePolicy,
    /// Pin each thread to its core.
    pub pin: bool,
    /// At stop, keep running messages/tasks/completions for at most this
    /// long while they make progress, before cancelling what is left.
    pub stop_grace: Duration,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            ring: RingConfig::default(),
            inbox_capacity: 4096,
            msg_batch: 256,
            task_budget: 256,
            submit_batch: crate::runtime::DEFAULT_SUBMIT_BATCH,
            idle: IdlePolicy::default(),
            pin: true,
            stop_grace: Duration::from_millis(100),
        }
    }
}

/// The part of a reactor other threads see: its inboxes, notifier, published
/// stats and whether it still runs messages.
struct ReactorMailbox {
    core: usize,
    /// `inboxes[j]` is written only by reactor j; the last by external
    /// threads.
    inboxes: Box<[ArrayQueue<Msg>]>,
    notifier: Arc<Notifier>,
    stats: StatsCell,
    /// Set once the reactor no longer runs messages.
    closed: AtomicBool,
}

impl ReactorMailbox {
    fn inboxes_empty(&self) -> bool {
        self.inboxes.iter().all(|q| q.is_empty())
    }

    /// After pushing into a closed reactor's inbox: nobody will run it, so
    /// drop what is there (reply senders inside see their receivers
    /// cancelled instead of waiting forever).
    fn discard_if_closed(&self) {
        if self.closed.load(Ordering::SeqCst) {
            for q in self.inboxes.iter() {
                while let Some(m) = q.pop() {
                    drop(m);
                }
            }
        }
    }
}

/// What every handle to a set of reactors shares: each reactor's mailbox
/// and the stop flag.
struct ReactorSet {
    mailboxes: Box<[ReactorMailbox]>,
    stop: AtomicBool,
}

/// Cheap, cloneable, `Send + Sync` handle to a set of reactors: send
/// messages, make calls, read stats — from any thread.
#[derive(Clone)]
pub struct ReactorsHandle {
    shared: Arc<ReactorSet>,
}

/// A running set of reactors. Stops (and joins) on drop.
pub struct Reactors {
    handle: ReactorsHandle,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Where the calling code runs, if on a reactor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactorInfo {
    /// This reactor's index (0..count).
    pub index: usize,
    /// Number of reactors in its set.
    pub count: usize,
    /// The core it is pinned to.
    pub core: usize,
}

/// Reactor-thread-local state.
struct Ctx {
    shared: Arc<ReactorSet>,
    index: usize,
    overflow: RefCell<VecDeque<(usize, Msg)>>,
    /// Messages per target waiting in `overflow` (to keep FIFO order).
    overflow_per: RefCell<Vec<usize>>,
    deferred: std::cell::Cell<u64>,
}

thread_local! {
    static CTX: RefCell<Option<Rc<Ctx>>> = const { RefCell::new(None) };
    static POLLERS: RefCell<Vec<(u64, Rc<dyn Poller>)>> = const { RefCell::new(Vec::new()) };
    static NEXT_POLLER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Work a reactor checks every loop iteration besides its inboxes and ring
/// (SPDK's poller): typed, fixed-size queues that need no message per item.
pub(crate) trait Poller {
    /// Do what is pending; how many items were handled (0: idle).
    fn poll(&self) -> usize;
    /// Whether `poll` would find work (checked before the reactor sleeps,
    /// after it announced that it is going to, so a producer that pushes
    /// and then notifies is never missed).
    fn has_work(&self) -> bool;
}

/// Run `p` on this reactor's loop until [`remove_poller`] with the
/// returned id.
pub(crate) fn add_poller(p: Rc<dyn Poller>) -> u64 {
    let id = NEXT_POLLER.with(|n| n.replace(n.get() + 1));
    POLLERS.with(|v| v.borrow_mut().push((id, p)));
    id
}

pub(crate) fn remove_poller(id: u64) {
    POLLERS.with(|v| v.borrow_mut().retain(|(i, _)| *i != id));
}

fn run_pollers() -> usize {
    let mut n = 0;
    let mut i = 0;
    // One poller at a time, outside the borrow: a poller may add or remove
    // pollers (a pool opening or closing).
    while let Some(p) = POLLERS.with(|v| v.borrow().get(i).map(|(_, p)| p.clone())) {
        n += p.poll();
        i += 1;
    }
    n
}

fn pollers_have_work() -> bool {
    POLLERS.with(|v| v.borrow().iter().any(|(_, p)| p.has_work()))
}

fn ctx() -> Option<Rc<Ctx>> {
    CTX.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// The cores this process may run on (its affinity mask), in order; the
/// default core list for reactors. Falls back to 0..available_parallelism.
pub fn allowed_cores() -> Vec<usize> {
    let mask = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .collect::<Vec<usize>>()
        });
    match mask {
        Some(v) if !v.is_empty() => v,
        _ => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// The default reactor cores: every allowed core but the last, at least one.
///
/// A polling reactor on every core leaves nothing for the clients on the same
/// machine (fio, a VM's vCPUs), for io_uring's workers, or for the control
/// plane; on a 2-core box two reactors ran 4 KiB random I/O at 0.8x of one
/// (docs/profile.md). SPDK defaults to one core for the same reason. `--cores`
/// chooses any set.
pub fn default_cores() -> Vec<usize> {
    spare_one(allowed_cores())
}

fn spare_one(mut cores: Vec<usize>) -> Vec<usize> {
    if cores.len() > 1 {
        cores.pop();
    }
    cores
}

/// Index, count and core of the reactor running the caller (None off a
/// reactor thread).
pub fn current() -> Option<ReactorInfo> {
    CTX.try_with(|c| {
        c.borrow().as_ref().map(|ctx| ReactorInfo {
            index: ctx.index,
            count: ctx.shared.mailboxes.len(),
            core: ctx.shared.mailboxes[ctx.index].core,
        })
    })
    .ok()
    .flatten()
}

/// Handle to the reactor set the caller runs on (None off a reactor).
pub fn current_handle() -> Option<ReactorsHandle> {
    ctx().map(|c| ReactorsHandle {
        shared: c.shared.clone(),
    })
}

impl Reactors {
    /// Start one reactor per entry of `cores` (pinned), with default
    /// settings and the given ring configuration.
    pub fn start(cores: &[usize], ring: RingConfig) -> Result<Reactors, Error> {
        Self::start_with(
            cores,
            ReactorConfig {
                ring,
                ..ReactorConfig::default()
            },
        )
    }

    /// Start with full settings. Returns once every reactor has its ring
    /// and is pinned, or an error (after stopping the ones that started).
    pub fn start_with(cores: &[usize], cfg: ReactorConfig) -> Result<Reactors, Error> {
        if cores.is_empty() {
            return Err(Error::NoCores);
        }
        // Buffers cross between reactors: give them a way back.
        crate::buf_depot::install();
        if cfg.pin {
            let avail: Vec<usize> = core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect();
            if let Some(&bad) = cores.iter().find(|c| !avail.contains(c)) {
                return Err(Error::NoSuchCore(bad));
            }
        }
        let n = cores.len();
        let mut mailboxes = Vec::with_capacity(n);
        for (index, &core) in cores.iter().enumerate() {
            mailboxes.push(ReactorMailbox {
                core,
                inboxes: (0..=n)
                    .map(|_| ArrayQueue::new(cfg.inbox_capacity.max(1)))
                    .collect(),
                notifier: Arc::new(Notifier::new()?),
                stats: StatsCell {
                    index,
                    core,
                    ..StatsCell::default()
                },
                closed: AtomicBool::new(false),
            });
        }
        let shared = Arc::new(ReactorSet {
            mailboxes: mailboxes.into_boxed_slice(),
            stop: AtomicBool::new(false),
        });
        let reactors = Reactors {
            handle: ReactorsHandle {
                shared: shared.clone(),
            },
            threads: Mutex::new(Vec::with_capacity(n)),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        for index in 0..n {
            let shared = shared.clone();
            let cfg = cfg.clone();
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("sluice-r{index}"))
                .spawn(move || reactor_main(shared, index, cfg, ready))
                .map_err(Error::Spawn);
            match t {
                Ok(t) => reactors.threads.lock().expect("threads").push(t),
                Err(e) => {
                    let _ = reactors.stop();
                    return Err(e);
                }
            }
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = reactors.stop();
                    return Err(e);
                }
                Err(_) => {
                    let _ = reactors.stop();
                    return Err(Error::Panicked(usize::MAX));
                }
            }
        }
        Ok(reactors)
    }

    /// A cloneable handle (for other threads, or to keep after `stop`).
    pub fn handle(&self) -> ReactorsHandle {
        self.handle.clone()
    }

    /// Stop every reactor and join its thread. Each reactor first keeps
    /// running messages, ready tasks and completions while they make
    /// progress (up to `stop_grace`), then drops undelivered messages,
    /// drops its tasks, cancels its in-flight ops and waits for the kernel
    /// to return their buffers. Idempotent.
    pub fn stop(&self) -> Result<(), Error> {
        if ctx().is_some_and(|c| Arc::ptr_eq(&c.shared, &self.handle.shared)) {
            return Err(Error::StopFromReactor);
        }
        let shared = &self.handle.shared;
        shared.stop.store(true, Ordering::SeqCst);
        for s in shared.mailboxes.iter() {
            s.notifier.kick();
        }
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads"));
        let mut res = Ok(());
        for (i, t) in threads.into_iter().enumerate() {
            if t.join().is_err() {
                res = Err(Error::Panicked(i));
            }
        }
        res
    }
}

impl Drop for Reactors {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl Deref for Reactors {
    type Target = ReactorsHandle;
    fn deref(&self) -> &ReactorsHandle {
        &self.handle
    }
}

impl ReactorsHandle {
    /// Number of reactors.
    pub fn len(&self) -> usize {
        self.shared.mailboxes.len()
    }

    /// Always false (a set has at least one reactor); for clippy.
    pub fn is_empty(&self) -> bool {
        self.shared.mailboxes.is_empty()
    }

    /// The core each reactor is pinned to, by index.
    pub fn cores(&self) -> Vec<usize> {
        self.shared.mailboxes.iter().map(|s| s.core).collect()
    }

    /// Whether `stop` has been requested.
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// Run `f` on reactor `idx` (from any thread). See [`Self::send_msg`].
    pub fn send(&self, idx: usize, f: impl FnOnce() + Send + 'static) -> Result<(), SendError> {
        self.send_msg(idx, Box::new(f))
    }

    /// Deliver a message to reactor `idx`. Never drops it while the target
    /// runs: an external sender waits for room; a reactor sender defers it
    /// to its overflow queue and returns at once. Messages from one sender
    /// to one target run in order.
    pub fn send_msg(&self, idx: usize, msg: Msg) -> Result<(), SendError> {
        let mailbox = self
            .shared
            .mailboxes
            .get(idx)
            .ok_or(SendError::NoSuchReactor(idx))?;
        if let Some(c) = ctx() {
            if Arc::ptr_eq(&c.shared, &self.shared) {
                return c.send(idx, msg);
            }
        }
        let q = &mailbox.inboxes[self.shared.mailboxes.len()];
        let mut msg = msg;
        let mut spins = 0u32;
        loop {
            if mailbox.closed.load(Ordering::Acquire) {
                return Err(SendError::Stopped(idx));
            }
            match q.push(msg) {
                Ok(()) => break,
                Err(m) => {
                    msg = m;
                    mailbox.notifier.notify();
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else if spins < 256 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(20));
                    }
                }
            }
        }
        mailbox.notifier.notify();
        mailbox.discard_if_closed();
        Ok(())
    }

    fn start_call<F, Fut, T>(&self, idx: usize, f: F) -> Result<Receiver<T>, SendError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot();
        self.send(idx, move || {
            let fut = f();
            spawn_local(async move { tx.send(fut.await) }).detach();
        })?;
        Ok(rx)
    }

    /// Run the future `f()` builds on reactor `idx` and wait for its
    /// output. Blocking: for non-reactor threads (RPC, tests); on a reactor
    /// it returns `CallError::OnReactorThread` — use [`Self::call_async`].
    pub fn call<F, Fut, T>(&self, idx: usize, f: F) -> Result<T, CallError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        if ctx().is_some() {
            return Err(CallError::OnReactorThread);
        }
        let rx = self.start_call(idx, f)?;
        rx.recv_blocking().map_err(|_| CallError::Canceled)
    }

    /// [`Self::call`] as a future: the reply wakes the caller's task (on a
    /// reactor, through its remote queue and eventfd).
    pub async fn call_async<F, Fut, T>(&self, idx: usize, f: F) -> Result<T, CallError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let rx = self.start_call(idx, f)?;
        rx.await.map_err(|_| CallError::Canceled)
    }

    /// Wake reactor `idx` if it sleeps (after pushing work into a queue
    /// one of its pollers drains).
    pub(crate) fn notify(&self, idx: usize) {
        if let Some(s) = self.shared.mailboxes.get(idx) {
            s.notifier.notify();
        }
    }

    /// Counters of every reactor, by index.
    pub fn stats(&self) -> Vec<ReactorStats> {
        self.shared
            .mailboxes
            .iter()
            .map(|s| {
                let mut st = s.stats.snapshot();
                st.wakeups = s.notifier.wakeups();
                st
            })
            .collect()
    }
}

impl Ctx {
    /// Send from this reactor: never blocks.
    fn send(&self, idx: usize, msg: Msg) -> Result<(), SendError> {
        let mailbox = &self.shared.mailboxes[idx];
        if mailbox.closed.load(Ordering::Acquire) {
            return Err(SendError::Stopped(idx));
        }
        let mut msg = msg;
        if self.overflow_per.borrow()[idx] == 0 {
            match mailbox.inboxes[self.index].push(msg) {
                Ok(()) => {
                    mailbox.notifier.notify();
                    mailbox.discard_if_closed();
                    return Ok(());
                }
                Err(m) => msg = m,
            }
        }
        self.overflow_per.borrow_mut()[idx] += 1;
        self.overflow.borrow_mut().push_back((idx, msg));
        self.deferred.set(self.deferred.get() + 1);
        Ok(())
    }

    fn has_overflow(&self) -> bool {
        !self.overflow.borrow().is_empty()
    }

    /// Retry deferred messages in order; returns how many were delivered.
    fn flush_overflow(&self) -> usize {
        let mailboxes = &self.shared.mailboxes;
        let mut blocked = 0u128; // targets that are still full (bit per index < 128)
        let mut dead = Vec::new();
        let mut moved = 0;
        {
            let mut q = self.overflow.borrow_mut();
            let mut per = self.overflow_per.borrow_mut();
            for _ in 0..q.len() {
                let (t, m) = q.pop_front().expect("len");
                let bit = 1u128 << (t % 128);
                if blocked & bit != 0 {
                    q.push_back((t, m));
                    continue;
                }
                if mailboxes[t].closed.load(Ordering::Acquire) {
                    per[t] -= 1;
                    dead.push(m);
                    continue;
                }
                match mailboxes[t].inboxes[self.index].push(m) {
                    Ok(()) => {
                        per[t] -= 1;
                        moved += 1;
                        mailboxes[t].notifier.notify();
                    }
                    Err(m) => {
                        blocked |= bit;
                        q.push_back((t, m));
                    }
                }
            }
        }
        drop(dead);
        moved
    }

    fn drop_overflow(&self) {
        let msgs: Vec<_> = self.overflow.borrow_mut().drain(..).collect();
        self.overflow_per
            .borrow_mut()
            .iter_mut()
            .for_each(|c| *c = 0);
        drop(msgs);
    }
}

/// Run up to `budget` messages, starting at inbox `start`.
fn drain_inboxes(mailbox: &ReactorMailbox, start: usize, budget: usize) -> usize {
    let k = mailbox.inboxes.len();
    let mut n = 0;
    for i in 0..k {
        let q = &mailbox.inboxes[(start + i) % k];
        while n < budget {
            match q.pop() {
                Some(m) => {
                    m();
                    n += 1;
                }
                None => break,
            }
        }
        if n >= budget {
            break;
        }
    }
    n
}

fn reactor_main(
    shared: Arc<ReactorSet>,
    index: usize,
    cfg: ReactorConfig,
    ready: mpsc::Sender<Result<(), Error>>,
) {
    let me = &shared.mailboxes[index];
    if cfg.pin && !core_affinity::set_for_current(core_affinity::CoreId { id: me.core }) {
        let _ = ready.send(Err(Error::Pin(me.core)));
        return;
    }
    let mut rt = match LocalRuntime::new(&cfg.ring, me.notifier.clone()) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let ctx = Rc::new(Ctx {
        shared: shared.clone(),
        index,
        overflow: RefCell::new(VecDeque::new()),
        overflow_per: RefCell::new(vec![0; shared.mailboxes.len()]),
        deferred: std::cell::Cell::new(0),
    });
    CTX.with(|c| *c.borrow_mut() = Some(ctx.clone()));
    let _ = ready.send(Ok(()));
    // Whatever way this thread ends (a panicking message or task included),
    // mark the reactor closed and drop what waits in its inboxes, so that
    // senders get errors and callers get `Canceled` instead of hanging.
    let _closed = CloseOnExit(me);

    let mut st = ReactorStats {
        index,
        core: me.core,
        ..ReactorStats::default()
    };
    let mut backoff = Backoff::new(cfg.idle);
    let mut start = 0usize;
    let k = me.inboxes.len();

    while !shared.stop.load(Ordering::Relaxed) {
        let mut work = 0;
        if ctx.has_overflow() {
            work += ctx.flush_overflow();
        }
        let m = drain_inboxes(me, start, cfg.msg_batch);
        start = (start + 1) % k;
        let p = run_pollers();
        let (t, s, c) = rt.turn(cfg.task_budget, cfg.submit_batch);
        work += m + p + t + s + c;
        st.msgs += m as u64;
        st.tasks_polled += t as u64;
        if work > 0 {
            st.busy_iters += 1;
            backoff.busy();
        } else {
            st.idle_iters += 1;
            match backoff.idle(rt.ring.device_inflight() > 0) {
                Idle::Sleep => {
                    let quiet = rt.prepare_sleep(|| {
                        !me.inboxes_empty()
                            || ctx.has_overflow()
                            || pollers_have_work()
                            || shared.stop.load(Ordering::Relaxed)
                    });
                    if quiet {
                        st.sleeps += 1;
                        publish(&mut st, &rt, &ctx, me);
                        rt.sleep();
                    }
                }
                p => backoff.pause(p),
            }
        }
        publish(&mut st, &rt, &ctx, me);
    }

    // Grace period: let work that is moving finish.
    let deadline = Instant::now() + cfg.stop_grace;
    loop {
        if ctx.has_overflow() {
            ctx.flush_overflow();
        }
        let m = drain_inboxes(me, 0, usize::MAX);
        let p = run_pollers();
        let (t, _s, c) = rt.turn(cfg.task_budget, cfg.submit_batch);
        st.msgs += m as u64;
        st.tasks_polled += t as u64;
        if m + p + t + c == 0 && me.inboxes_empty() && !rt.exec.has_ready() {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
    }
    me.closed.store(true, Ordering::SeqCst);
    for q in me.inboxes.iter() {
        while let Some(m) = q.pop() {
            drop(m);
        }
    }
    ctx.drop_overflow();
    rt.shutdown();
    me.discard_if_closed();
    publish(&mut st, &rt, &ctx, me);
    POLLERS.with(|v| v.borrow_mut().clear());
    CTX.with(|c| c.borrow_mut().take());
}

struct CloseOnExit<'a>(&'a ReactorMailbox);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.discard_if_closed();
    }
}

#[inline]
fn publish(st: &mut ReactorStats, rt: &LocalRuntime, ctx: &Ctx, me: &ReactorMailbox) {
    let r = rt.ring.stats();
    st.ios_started = r.ops_started;
    st.ios_submitted = r.sqes_submitted;
    st.ios_completed = r.cqes_reaped;
    st.submit_calls = r.submit_calls;
    st.sq_full = r.sq_full;
    st.orphaned = r.orphaned;
    st.inflight = r.inflight;
    st.msgs_deferred = ctx.deferred.get();
    st.heap_allocs = crate::alloc_count::thread_allocations();
    me.stats.publish(st);
}

#[cfg(test)]
mod tests {
    use super::spare_one;

    #[test]
    fn the_default_leaves_one_core_but_keeps_one_reactor() {
        assert_eq!(spare_one(vec![0, 1]), vec![0]);
        assert_eq!(spare_one(vec![2, 5, 7]), vec![2, 5]);
        assert_eq!(spare_one(vec![3]), vec![3]);
        assert_eq!(spare_one(vec![]), Vec::<usize>::new());
    }
}
