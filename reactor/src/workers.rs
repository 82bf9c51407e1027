//! A pool of long-lived local tasks that run jobs one at a time: the way a
//! reactor runs many concurrent operations without allocating a task per
//! operation (NBD requests of one connection, chunk operations forwarded
//! from other reactors).
//!
//! A job goes into a FIFO queue; a parked worker is woken for it, or, when
//! every worker is busy, the caller spawns one more. The pool thus grows to
//! the peak concurrency once and allocates nothing after that.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Poll, Waker};

/// Invariant: `i` is in `idle` exactly when `parked[i]` holds a waker.
pub(crate) struct WorkerPool<J> {
    jobs: RefCell<VecDeque<J>>,
    parked: RefCell<Vec<Option<Waker>>>,
    idle: RefCell<Vec<usize>>,
    /// Set when the owner ends: workers exit once the queue is empty.
    closing: Cell<bool>,
}

impl<J> Default for WorkerPool<J> {
    fn default() -> Self {
        WorkerPool {
            jobs: RefCell::new(VecDeque::new()),
            parked: RefCell::new(Vec::new()),
            idle: RefCell::new(Vec::new()),
            closing: Cell::new(false),
        }
    }
}

impl<J> WorkerPool<J> {
    /// Queue `job` and wake a parked worker; or, when none is parked,
    /// return the index of a new worker the caller must spawn (a loop of
    /// [`Self::next`] with that index).
    pub(crate) fn dispatch(&self, job: J) -> Option<usize> {
        self.jobs.borrow_mut().push_back(job);
        let Some(i) = self.idle.borrow_mut().pop() else {
            let mut parked = self.parked.borrow_mut();
            parked.push(None);
            return Some(parked.len() - 1);
        };
        let w = self.parked.borrow_mut()[i].take();
        if let Some(w) = w {
            w.wake();
        }
        None
    }

    /// The next job for worker `i`; `None` once the pool is closing and
    /// nothing is queued.
    pub(crate) async fn next(&self, i: usize) -> Option<J> {
        std::future::poll_fn(|cx| {
            if let Some(j) = self.jobs.borrow_mut().pop_front() {
                return Poll::Ready(Some(j));
            }
            if self.closing.get() {
                return Poll::Ready(None);
            }
            let mut parked = self.parked.borrow_mut();
            if parked[i].is_none() {
                self.idle.borrow_mut().push(i);
            }
            parked[i] = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Workers finish what is queued, then exit.
    pub(crate) fn close(&self) {
        self.closing.set(true);
        self.idle.borrow_mut().clear();
        let wakers: Vec<Waker> = self
            .parked
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use std::rc::Rc;

    /// Workers are reused: 100 jobs dispatched in waves of 3 need 3 workers.
    #[test]
    fn pool_grows_to_peak_concurrency_only() {
        let pool = Rc::new(WorkerPool::<u32>::default());
        let done = Rc::new(RefCell::new(Vec::new()));
        let mut ex = LocalPool::new();
        let mut spawned = 0;
        for wave in 0..34 {
            for k in 0..3 {
                if let Some(i) = pool.dispatch(wave * 3 + k) {
                    spawned += 1;
                    let (pool, done) = (pool.clone(), done.clone());
                    ex.spawner()
                        .spawn_local(async move {
                            while let Some(j) = pool.next(i).await {
                                done.borrow_mut().push(j);
                            }
                        })
                        .unwrap();
                }
            }
            ex.run_until_stalled();
        }
        assert_eq!(spawned, 3);
        assert_eq!(*done.borrow(), (0..102).collect::<Vec<_>>());
        pool.close();
        ex.run_until_stalled();
        assert_eq!(Rc::strong_count(&pool), 1, "workers exit on close");
    }
}
