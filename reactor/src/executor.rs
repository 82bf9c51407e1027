//! A small single-threaded executor on `async-task`.
//!
//! This file owns task spawning and the run queue of one runtime thread.
//! Engine code is `!Send`, so tasks are spawned with [`spawn_local`] and only
//! ever polled on the thread that spawned them. Wakers, however, are
//! `Send + Sync` and may fire anywhere:
//!
//! * a wake on the owning thread (the common case: a CQE reaped by this
//!   thread's ring) pushes onto a plain local queue — no atomics beyond
//!   async-task's own state word;
//! * a wake from another thread pushes onto a lock-free `SegQueue` and pokes
//!   the owner's [`Notifier`], which writes its eventfd only if the owner is
//!   asleep in `io_uring_enter` (see [`crate::runtime`]).
//!
//! The owner drains both queues in [`Executor::run_ready`], a bounded step so
//! the reactor loop can interleave messages, submission and reaping.
//!
//! Dropping a [`Task`] cancels it (async-task semantics); call
//! [`Task::detach`] to let it run to completion on its own.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_task::Runnable;
use crossbeam_queue::SegQueue;

use crate::runtime::Notifier;

/// Handle to a spawned task: await it for the output, drop it to cancel,
/// or `detach()` it.
pub use async_task::Task;

pub use crate::runtime::block_on;

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD_TOKEN: u64 = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    static CURRENT: RefCell<Option<Arc<RunQueue>>> = const { RefCell::new(None) };
}

/// A per-thread id that, unlike `ThreadId`, is cheap to read. 0 if the
/// thread's locals are already being destroyed (treated as "foreign").
fn thread_token() -> u64 {
    THREAD_TOKEN.try_with(|t| *t).unwrap_or(0)
}

/// The run queue of one executor (tasks woken on its thread, and wakes from
/// other threads), shared with every waker of its tasks.
struct RunQueue {
    owner: u64,
    /// Only touched on the owner thread (checked through `owner`).
    local: RefCell<VecDeque<Runnable>>,
    /// Wakes from other threads.
    remote: SegQueue<Runnable>,
    closed: AtomicBool,
    notifier: Arc<Notifier>,
}

// SAFETY: `local` (the only !Sync field) is accessed exclusively by the
// thread whose token is `owner`; every access site checks that first.
unsafe impl Sync for RunQueue {}
// SAFETY: Runnable is Send, and a `local` left non-empty when the last Arc
// goes away on another thread is leaked (see Drop), never touched there.
unsafe impl Send for RunQueue {}

impl RunQueue {
    fn schedule(&self, r: Runnable) {
        if thread_token() == self.owner {
            // Even when closed: the owner's shutdown drains and drops these.
            self.local.borrow_mut().push_back(r);
        } else if self.closed.load(Ordering::Acquire) {
            // A spawn_local task may only be dropped on its own thread, and
            // that thread is gone or going: leak it rather than panic.
            std::mem::forget(r);
        } else {
            self.remote.push(r);
            self.notifier.notify();
        }
    }
}

impl Drop for RunQueue {
    fn drop(&mut self) {
        let mine = thread_token() == self.owner;
        while let Some(r) = self.remote.pop() {
            if mine {
                drop(r)
            } else {
                std::mem::forget(r)
            }
        }
        if !mine {
            for r in self.local.get_mut().drain(..) {
                std::mem::forget(r);
            }
        }
    }
}

/// The executor of the current thread. Created by the runtime (a reactor
/// or `block_on`), not directly.
pub struct Executor {
    shared: Arc<RunQueue>,
}

impl Executor {
    /// Create an executor owned by this thread and make it current.
    pub(crate) fn install(notifier: Arc<Notifier>) -> Result<Executor, crate::Error> {
        let shared = Arc::new(RunQueue {
            owner: thread_token(),
            local: RefCell::new(VecDeque::with_capacity(1024)),
            remote: SegQueue::new(),
            closed: AtomicBool::new(false),
            notifier,
        });
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_some() {
                return Err(crate::Error::AlreadyInstalled);
            }
            *c = Some(shared.clone());
            Ok(())
        })?;
        Ok(Executor { shared })
    }

    /// Run up to `max` ready tasks (remote wakes first moved to the local
    /// queue). Returns how many were polled.
    pub fn run_ready(&self, max: usize) -> usize {
        let s = &*self.shared;
        if !s.remote.is_empty() {
            let mut local = s.local.borrow_mut();
            for _ in 0..max {
                match s.remote.pop() {
                    Some(r) => local.push_back(r),
                    None => break,
                }
            }
        }
        let mut n = 0;
        while n < max {
            // Pop under a short borrow: running the task may schedule others.
            let Some(r) = s.local.borrow_mut().pop_front() else {
                break;
            };
            r.run();
            n += 1;
        }
        n
    }

    /// Whether a task is ready to run (local or remote).
    pub fn has_ready(&self) -> bool {
        !self.shared.local.borrow().is_empty() || !self.shared.remote.is_empty()
    }

    /// Stop accepting work: later wakes from other threads leak their task
    /// instead of queueing it, and `spawn_local` on this thread panics.
    pub(crate) fn close(&self) {
        CURRENT.with(|c| c.borrow_mut().take());
        self.shared.closed.store(true, Ordering::Release);
    }

    /// Drop every queued task (their futures are dropped here, on the
    /// owning thread). Returns how many were dropped.
    pub(crate) fn drop_queued(&self) -> usize {
        let mut n = 0;
        loop {
            let r = self
                .shared
                .local
                .borrow_mut()
                .pop_front()
                .or_else(|| self.shared.remote.pop());
            match r {
                Some(r) => {
                    drop(r);
                    n += 1;
                }
                None => return n,
            }
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.close();
        self.drop_queued();
    }
}

/// Spawn a `!Send` future on the current thread's executor.
///
/// # Panics
/// If this thread runs no sluice runtime (not a reactor, not inside
/// `block_on`).
pub fn spawn_local<F>(future: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let shared = CURRENT
        .with(|c| c.borrow().clone())
        .expect("spawn_local outside a sluice runtime (reactor or block_on)");
    let s2 = shared.clone();
    let (runnable, task) =
        async_task::Builder::new().spawn_local(move |()| future, move |r: Runnable| s2.schedule(r));
    runnable.schedule();
    task
}

/// Whether the current thread runs a sluice executor.
pub fn in_runtime() -> bool {
    CURRENT.try_with(|c| c.borrow().is_some()).unwrap_or(false)
}

/// Yield once to let other ready tasks (and the reactor loop) run.
pub fn yield_now() -> impl Future<Output = ()> {
    YieldNow(false)
}

struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}
