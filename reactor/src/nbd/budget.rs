//! The server-wide memory budget for in-flight NBD request and reply
//! buffers.
//!
//! This file owns [`MemoryBudget`]: one counter shared by every connection
//! on every reactor. Before a connection reads a WRITE payload or starts a
//! READ it acquires the request's buffer bytes; the bytes come back when
//! the reply has been sent (or dropped). A connection that cannot get its
//! bytes waits its turn — it stops reading from its socket — so the
//! process does not grow with the number of clients. Waiters are served
//! first come, first served across all reactors (a big request is not
//! starved by a stream of small ones), and their wakers may fire on any
//! thread (the executor accepts foreign wakes).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A byte budget shared by all connections of a server.
#[derive(Debug)]
pub struct MemoryBudget {
    total: usize,
    st: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    used: usize,
    peak: usize,
    next_ticket: u64,
    /// Waiters in arrival order: (ticket, bytes, waker).
    queue: VecDeque<(u64, usize, Option<Waker>)>,
}

impl MemoryBudget {
    /// A budget of `total` bytes (at least 1).
    pub fn new(total: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            total: total.max(1),
            st: Mutex::new(BudgetState::default()),
        })
    }

    fn st(&self) -> MutexGuard<'_, BudgetState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes currently granted.
    pub fn in_use(&self) -> usize {
        self.st().used
    }

    /// Most bytes ever granted at once.
    pub fn peak(&self) -> usize {
        self.st().peak
    }

    /// Connections waiting for bytes.
    pub fn waiting(&self) -> usize {
        self.st().queue.len()
    }

    /// What a request of `bytes` is charged: at most the whole budget, so
    /// a request larger than a small configured budget still runs (alone).
    pub fn charge_for(&self, bytes: usize) -> usize {
        bytes.min(self.total)
    }

    /// Wait for [`Self::charge_for`]`(bytes)` bytes. Resolve to the number
    /// granted, which the caller hands back with [`Self::release`].
    /// Dropping the future before it resolves leaves the queue cleanly.
    pub fn acquire(self: &Arc<Self>, bytes: usize) -> Acquire {
        Acquire {
            budget: self.clone(),
            bytes: self.charge_for(bytes),
            ticket: None,
        }
    }

    /// Give back `bytes` granted by [`Self::acquire`].
    pub fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut st = self.st();
        st.used = st.used.saturating_sub(bytes);
        wake_front(&mut st);
    }
}

/// Wake the first waiter (it re-checks under the lock).
fn wake_front(st: &mut BudgetState) {
    if let Some((_, _, w)) = st.queue.front_mut() {
        if let Some(w) = w.take() {
            w.wake();
        }
    }
}

/// Future of [`MemoryBudget::acquire`].
pub struct Acquire {
    budget: Arc<MemoryBudget>,
    bytes: usize,
    /// Our place in the queue once we had to wait.
    ticket: Option<u64>,
}

impl Future for Acquire {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let this = &mut *self;
        let total = this.budget.total;
        let mut st = this.budget.st();
        let fits = st.used + this.bytes <= total;
        match this.ticket {
            None if fits && st.queue.is_empty() => {
                st.used += this.bytes;
                st.peak = st.peak.max(st.used);
                Poll::Ready(this.bytes)
            }
            None => {
                let t = st.next_ticket;
                st.next_ticket += 1;
                st.queue
                    .push_back((t, this.bytes, Some(cx.waker().clone())));
                this.ticket = Some(t);
                Poll::Pending
            }
            Some(t) => {
                let front = st.queue.front().map(|q| q.0) == Some(t);
                if front && fits {
                    st.queue.pop_front();
                    st.used += this.bytes;
                    st.peak = st.peak.max(st.used);
                    this.ticket = None;
                    // The next waiter may fit too.
                    wake_front(&mut st);
                    Poll::Ready(this.bytes)
                } else {
                    if let Some(q) = st.queue.iter_mut().find(|q| q.0 == t) {
                        q.2 = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            let mut st = self.budget.st();
            let was_front = st.queue.front().map(|q| q.0) == Some(t);
            st.queue.retain(|q| q.0 != t);
            if was_front {
                wake_front(&mut st);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Acquire, w: &Arc<CountWake>) -> Poll<usize> {
        let waker = Waker::from(w.clone());
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn grants_until_full_then_queues_in_order() {
        let b = MemoryBudget::new(100);
        let w = Arc::new(CountWake(AtomicUsize::new(0)));
        let mut a = b.acquire(60);
        assert_eq!(poll(&mut a, &w), Poll::Ready(60));
        let mut big = b.acquire(50);
        assert_eq!(poll(&mut big, &w), Poll::Pending);
        // A small request that would fit must not overtake the queued one.
        let mut small = b.acquire(10);
        assert_eq!(poll(&mut small, &w), Poll::Pending);
        assert_eq!((b.in_use(), b.waiting()), (60, 2));
        b.release(60);
        assert!(w.0.load(Ordering::SeqCst) >= 1, "release wakes the front");
        assert_eq!(poll(&mut big, &w), Poll::Ready(50));
        assert_eq!(poll(&mut small, &w), Poll::Ready(10));
        assert_eq!((b.in_use(), b.waiting(), b.peak()), (60, 0, 60));
    }

    #[test]
    fn oversized_request_is_charged_the_whole_budget() {
        let b = MemoryBudget::new(100);
        let w = Arc::new(CountWake(AtomicUsize::new(0)));
        let mut a = b.acquire(1000);
        assert_eq!(poll(&mut a, &w), Poll::Ready(100));
        let mut c = b.acquire(1);
        assert_eq!(poll(&mut c, &w), Poll::Pending);
        b.release(100);
        assert_eq!(poll(&mut c, &w), Poll::Ready(1));
    }

    #[test]
    fn dropped_waiter_leaves_the_queue_and_passes_its_turn() {
        let b = MemoryBudget::new(10);
        let w = Arc::new(CountWake(AtomicUsize::new(0)));
        let mut a = b.acquire(10);
        assert_eq!(poll(&mut a, &w), Poll::Ready(10));
        let mut first = b.acquire(5);
        let mut second = b.acquire(5);
        assert_eq!(poll(&mut first, &w), Poll::Pending);
        assert_eq!(poll(&mut second, &w), Poll::Pending);
        drop(first);
        assert_eq!(b.waiting(), 1);
        b.release(10);
        assert_eq!(poll(&mut second, &w), Poll::Ready(5));
    }
}
