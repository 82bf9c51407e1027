//! The stop signal shared by servers and whoever may ask them to stop.
//!
//! A [`Shutdown`] is created first, so that the daemon's `shutdown` method can capture
//! it before the server exists, and may be shared by several servers. Each server's
//! event loop registers a wake-up socket here (`Shutdown::waker`) and `poll`s it, so
//! [`Shutdown::trigger`] reaches a loop that is blocked in `poll`.

use std::fmt;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here is left inconsistent by a panic while holding these locks.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stop signal shared by servers and whoever may ask them to stop (the `shutdown`
/// method, a signal handler, tests). Cheap to clone.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    triggered: Mutex<bool>,
    cond: Condvar,
    /// Write ends of the event loops' wake-up sockets.
    wakers: Mutex<Vec<UnixStream>>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every server sharing this signal to stop. Returns at once; use
    /// `ServerHandle::join` or [`Shutdown::wait`] to wait. Idempotent.
    pub fn trigger(&self) {
        *lock(&self.inner.triggered) = true;
        self.inner.cond.notify_all();
        for waker in lock(&self.inner.wakers).iter() {
            // Non-blocking; a full pipe already holds a wake-up.
            let _ = (&*waker).write(&[1]);
        }
    }

    pub fn is_triggered(&self) -> bool {
        *lock(&self.inner.triggered)
    }

    /// Blocks until [`Shutdown::trigger`] is called (the daemon's main thread).
    pub fn wait(&self) {
        let mut triggered = lock(&self.inner.triggered);
        while !*triggered {
            triggered = self
                .inner
                .cond
                .wait(triggered)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A read end that becomes readable on trigger (after a trigger, immediately).
    pub(super) fn waker(&self) -> io::Result<UnixStream> {
        let (rx, tx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        // The event loop drains it after `poll` and must not block there.
        rx.set_nonblocking(true)?;
        lock(&self.inner.wakers).push(tx);
        if self.is_triggered() {
            self.trigger();
        }
        Ok(rx)
    }
}
