//! Messages between threads and the one-shot reply channel.
//!
//! This file owns what travels between reactors: [`Msg`] (a boxed closure
//! run on the target reactor, usually to `spawn_local` an engine task) and
//! a lock-free one-shot channel that carries a call's result back. The
//! inboxes themselves (bounded `ArrayQueue`s, one per sending reactor plus
//! one for external threads) live with the reactors in [`crate::reactor`].

use std::cell::UnsafeCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

/// A message: runs once on the target reactor's thread.
pub type Msg = Box<dyn FnOnce() + Send + 'static>;

/// The sending side dropped without a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canceled;

const RX_WAKER: usize = 1;
const SENT: usize = 2;
const TX_DROPPED: usize = 4;

/// One-shot slot: the sender writes `value` once, then publishes `SENT`;
/// the receiver writes `waker` only while `RX_WAKER` is clear and the
/// sender only reads it (by reference) after seeing `RX_WAKER` set — the
/// tokio oneshot protocol, without a lock.
struct OneshotCell<T> {
    state: AtomicUsize,
    value: UnsafeCell<Option<T>>,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: access to the cells is serialised by `state` as described above;
// T crosses threads, so it must be Send.
unsafe impl<T: Send> Send for OneshotCell<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for OneshotCell<T> {}

pub struct Sender<T> {
    inner: Option<Arc<OneshotCell<T>>>,
}

pub struct Receiver<T> {
    inner: Arc<OneshotCell<T>>,
}

/// A lock-free one-shot channel. Either side may live on any thread.
pub fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(OneshotCell {
        state: AtomicUsize::new(0),
        value: UnsafeCell::new(None),
        waker: UnsafeCell::new(None),
    });
    (
        Sender {
            inner: Some(inner.clone()),
        },
        Receiver { inner },
    )
}

impl<T> Sender<T> {
    /// Deliver `value` (dropped with the channel if the receiver is gone).
    pub fn send(mut self, value: T) {
        let inner = self.inner.take().expect("send once");
        // SAFETY: only the sender writes `value`, and only before SENT is
        // published; the receiver reads it only after observing SENT.
        unsafe { *inner.value.get() = Some(value) };
        let prev = inner.state.fetch_or(SENT, Ordering::AcqRel);
        if prev & RX_WAKER != 0 {
            // SAFETY: RX_WAKER was set when we published SENT, so the
            // receiver will not write the waker again (it would first clear
            // RX_WAKER and then see SENT); shared reads only.
            if let Some(w) = unsafe { (*inner.waker.get()).as_ref() } {
                w.wake_by_ref();
            }
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let prev = inner.state.fetch_or(TX_DROPPED, Ordering::AcqRel);
            if prev & RX_WAKER != 0 {
                // SAFETY: as in `send`.
                if let Some(w) = unsafe { (*inner.waker.get()).as_ref() } {
                    w.wake_by_ref();
                }
            }
        }
    }
}

impl<T> Receiver<T> {
    fn take(&self) -> Poll<Result<T, Canceled>> {
        // SAFETY: SENT was observed with Acquire: the sender is done with
        // `value` and never touches it again.
        let v = unsafe { (*self.inner.value.get()).take() };
        Poll::Ready(Ok(v.expect("oneshot value taken twice")))
    }

    fn check(&self, state: usize) -> Option<Poll<Result<T, Canceled>>> {
        if state & SENT != 0 {
            Some(self.take())
        } else if state & TX_DROPPED != 0 {
            Some(Poll::Ready(Err(Canceled)))
        } else {
            None
        }
    }

    /// Block the calling thread until the value arrives. For non-reactor
    /// threads only (a reactor must `.await` instead).
    pub fn recv_blocking(mut self) -> Result<T, Canceled> {
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(r) = Pin::new(&mut self).poll(&mut cx) {
                return r;
            }
            std::thread::park();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, Canceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &*self.inner;
        let state = inner.state.load(Ordering::Acquire);
        if let Some(r) = self.check(state) {
            return r;
        }
        if state & RX_WAKER != 0 {
            // SAFETY: RX_WAKER is set, so the sender may read the waker
            // concurrently; we only read too.
            let same =
                unsafe { (*inner.waker.get()).as_ref() }.is_some_and(|w| w.will_wake(cx.waker()));
            if same {
                return Poll::Pending;
            }
            let state = inner.state.fetch_and(!RX_WAKER, Ordering::AcqRel);
            if let Some(r) = self.check(state) {
                return r;
            }
        }
        // SAFETY: RX_WAKER is clear and the sender has not completed, so
        // the sender will not read the waker until we set RX_WAKER below.
        unsafe { *inner.waker.get() = Some(cx.waker().clone()) };
        let state = inner.state.fetch_or(RX_WAKER, Ordering::AcqRel);
        if let Some(r) = self.check(state) {
            return r;
        }
        Poll::Pending
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oneshot_across_threads() {
        for i in 0..2000u32 {
            let (tx, rx) = oneshot();
            let h = std::thread::spawn(move || tx.send(i));
            assert_eq!(rx.recv_blocking(), Ok(i));
            h.join().unwrap();
        }
    }

    #[test]
    fn oneshot_sender_dropped() {
        let (tx, rx) = oneshot::<u32>();
        let h = std::thread::spawn(move || drop(tx));
        assert_eq!(rx.recv_blocking(), Err(Canceled));
        h.join().unwrap();
    }
}
