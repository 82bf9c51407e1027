//! Single-threaded async synchronisation: a FIFO mutex and a keyed
//! reader/writer lock. A zone's state is touched by one thread only, so these
//! are plain cells plus wakers — no atomics, no OS locks.

use foldhash::{HashMap, HashMapExt};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::hash::Hash;
use std::rc::Rc;
use std::task::{Poll, Waker};

struct Waiter {
    write: bool,
    granted: Rc<Cell<bool>>,
    waker: Option<Waker>,
}

#[derive(Default)]
struct LockState {
    writer: bool,
    readers: u32,
    queue: VecDeque<Waiter>,
}

impl LockState {
    fn idle(&self) -> bool {
        !self.writer && self.readers == 0 && self.queue.is_empty()
    }

    /// Take the lock if what is held allows it (the queue aside).
    fn take(&mut self, write: bool) -> bool {
        if self.writer || (write && self.readers > 0) {
            return false;
        }
        if write {
            self.writer = true;
        } else {
            self.readers += 1;
        }
        true
    }

    /// Take the lock at once if nobody holds it against us and nobody waits
    /// (FIFO: a reader never passes a queued writer).
    fn try_take(&mut self, write: bool) -> bool {
        self.queue.is_empty() && self.take(write)
    }

    fn unlock(&mut self, write: bool) {
        if write {
            self.writer = false;
        } else {
            self.readers -= 1;
        }
        self.grant();
    }

    /// Grant the lock to waiters at the head of the queue, in order.
    fn grant(&mut self) {
        while let Some(w) = self.queue.front() {
            if !self.take(w.write) {
                break;
            }
            let Some(mut w) = self.queue.pop_front() else {
                break;
            };
            w.granted.set(true);
            if let Some(k) = w.waker.take() {
                k.wake();
            }
            if self.writer {
                break;
            }
        }
    }
}

/// The lock states a lock keeps: one per key in a map (the keyed lock) or a
/// single one (the mutex). The acquire/release logic is written once over it.
trait LockStates {
    type Key: Copy;
    /// Run `f` on the state of `key`, created idle if missing.
    fn with<R>(&self, key: Self::Key, f: impl FnOnce(&mut LockState) -> R) -> R;
    /// Run `f` on the state of `key` if it exists; forget it once idle.
    fn update(&self, key: Self::Key, f: impl FnOnce(&mut LockState));
}

/// Take the lock on `key`. Uncontended (the common case on the I/O path):
/// no allocation and no waker. Contended: queue a waiter and sleep until
/// [`LockState::grant`] hands the lock over.
async fn acquire<S: LockStates>(locks: &S, key: S::Key, write: bool) -> Held<'_, S> {
    let granted = locks.with(key, |st| {
        if st.try_take(write) {
            return None;
        }
        let granted = Rc::new(Cell::new(false));
        st.queue.push_back(Waiter {
            write,
            granted: granted.clone(),
            waker: None,
        });
        Some(granted)
    });
    if let Some(granted) = granted {
        let mut pending = Pending {
            locks,
            key,
            granted: granted.clone(),
            write,
            done: false,
        };
        poll_fn(|cx| {
            if granted.get() {
                return Poll::Ready(());
            }
            locks.update(key, |st| {
                for w in st.queue.iter_mut() {
                    if Rc::ptr_eq(&w.granted, &granted) {
                        w.waker = Some(cx.waker().clone());
                    }
                }
            });
            Poll::Pending
        })
        .await;
        pending.done = true;
    }
    Held { locks, key, write }
}

/// A held lock; releases on drop.
struct Held<'a, S: LockStates> {
    locks: &'a S,
    key: S::Key,
    write: bool,
}

impl<S: LockStates> Drop for Held<'_, S> {
    fn drop(&mut self) {
        let write = self.write;
        self.locks.update(self.key, |st| st.unlock(write));
    }
}

/// Cleans up a waiter whose future was dropped before or after being granted.
struct Pending<'a, S: LockStates> {
    locks: &'a S,
    key: S::Key,
    granted: Rc<Cell<bool>>,
    write: bool,
    done: bool,
}

impl<S: LockStates> Drop for Pending<'_, S> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (granted, write) = (&self.granted, self.write);
        self.locks.update(self.key, |st| {
            if granted.get() {
                st.unlock(write);
            } else {
                st.queue.retain(|w| !Rc::ptr_eq(&w.granted, granted));
                st.grant();
            }
        });
    }
}

/// A reader/writer lock per key, FIFO-fair: a reader queued behind a writer
/// waits for it, so reads of a chunk see every write submitted before them.
pub struct KeyedRwLock<K: Hash + Eq + Copy> {
    map: RefCell<HashMap<K, LockState>>,
}

impl<K: Hash + Eq + Copy> Default for KeyedRwLock<K> {
    fn default() -> Self {
        KeyedRwLock {
            map: RefCell::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Copy> LockStates for KeyedRwLock<K> {
    type Key = K;
    fn with<R>(&self, key: K, f: impl FnOnce(&mut LockState) -> R) -> R {
        f(self.map.borrow_mut().entry(key).or_default())
    }
    fn update(&self, key: K, f: impl FnOnce(&mut LockState)) {
        let mut map = self.map.borrow_mut();
        if let Some(st) = map.get_mut(&key) {
            f(st);
            if st.idle() {
                map.remove(&key);
            }
        }
    }
}

/// Held lock on one key; releases on drop (also when the owning future is dropped).
pub struct KeyGuard<'a, K: Hash + Eq + Copy> {
    _held: Held<'a, KeyedRwLock<K>>,
}

impl<K: Hash + Eq + Copy> KeyedRwLock<K> {
    pub async fn read(&self, key: K) -> KeyGuard<'_, K> {
        KeyGuard {
            _held: acquire(self, key, false).await,
        }
    }

    pub async fn write(&self, key: K) -> KeyGuard<'_, K> {
        KeyGuard {
            _held: acquire(self, key, true).await,
        }
    }

    /// Whether anyone holds or waits for `key` (tests, diagnostics).
    pub fn is_busy(&self, key: K) -> bool {
        self.map.borrow().get(&key).is_some_and(|s| !s.idle())
    }
}

/// A FIFO async mutex for one thread.
#[derive(Default)]
pub struct LocalMutex {
    state: RefCell<LockState>,
}

impl LockStates for LocalMutex {
    type Key = ();
    fn with<R>(&self, _: (), f: impl FnOnce(&mut LockState) -> R) -> R {
        f(&mut self.state.borrow_mut())
    }
    fn update(&self, _: (), f: impl FnOnce(&mut LockState)) {
        f(&mut self.state.borrow_mut())
    }
}

/// Held [`LocalMutex`]; releases on drop.
pub struct LocalGuard<'a> {
    _held: Held<'a, LocalMutex>,
}

impl LocalMutex {
    pub async fn lock(&self) -> LocalGuard<'_> {
        LocalGuard {
            _held: acquire(self, (), true).await,
        }
    }

    pub fn is_locked(&self) -> bool {
        !self.state.borrow().idle()
    }
}

/// An async mutex owning its value, for state that must stay consistent
/// across `.await` points (a zone's trees during a multi-step update).
pub struct Mutex<T> {
    lock: LocalMutex,
    val: std::cell::UnsafeCell<T>,
}

pub struct MutexGuard<'a, T> {
    _g: LocalGuard<'a>,
    val: &'a std::cell::UnsafeCell<T>,
}

impl<T> Mutex<T> {
    pub fn new(v: T) -> Self {
        Mutex {
            lock: LocalMutex::default(),
            val: std::cell::UnsafeCell::new(v),
        }
    }

    pub async fn lock(&self) -> MutexGuard<'_, T> {
        let g = self.lock.lock().await;
        MutexGuard {
            _g: g,
            val: &self.val,
        }
    }

    pub fn into_inner(self) -> T {
        self.val.into_inner()
    }
}

impl<T> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the exclusive lock; Mutex is !Sync (UnsafeCell),
        // so no other thread can reach the value.
        unsafe { &*self.val.get() }
    }
}

impl<T> std::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above; exactly one guard exists at a time.
        unsafe { &mut *self.val.get() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;

    /// A gate per task: the task holds its lock until its gate opens.
    struct Gates {
        open: Vec<Cell<bool>>,
        wakers: RefCell<Vec<Option<Waker>>>,
    }

    impl Gates {
        fn new(n: usize) -> Rc<Self> {
            Rc::new(Gates {
                open: (0..n).map(|_| Cell::new(false)).collect(),
                wakers: RefCell::new(vec![None; n]),
            })
        }
        async fn wait(&self, i: usize) {
            poll_fn(|cx| {
                if self.open[i].get() {
                    Poll::Ready(())
                } else {
                    self.wakers.borrow_mut()[i] = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await
        }
        fn release(&self, i: usize) {
            self.open[i].set(true);
            if let Some(w) = self.wakers.borrow_mut()[i].take() {
                w.wake();
            }
        }
    }

    #[test]
    fn writers_exclusive_readers_fifo() {
        let lock = Rc::new(KeyedRwLock::<u32>::default());
        let log = Rc::new(RefCell::new(Vec::<String>::new()));
        let mut pool = LocalPool::new();
        let sp = pool.spawner();
        let gates = Gates::new(5);
        for (i, w) in [(0, true), (1, false), (2, false), (3, true), (4, false)] {
            let (lock, log, gates) = (lock.clone(), log.clone(), gates.clone());
            sp.spawn_local(async move {
                let _g = if w {
                    lock.write(7).await
                } else {
                    lock.read(7).await
                };
                log.borrow_mut().push(format!("start{i}"));
                gates.wait(i).await;
                log.borrow_mut().push(format!("end{i}"));
            })
            .unwrap();
        }
        let step = |pool: &mut LocalPool, open: &[usize]| {
            for &i in open {
                gates.release(i);
            }
            pool.run_until_stalled();
            log.borrow().join(",")
        };
        assert_eq!(step(&mut pool, &[]), "start0");
        // writer 0 done: readers 1 and 2 hold the lock together; writer 3 waits.
        assert_eq!(step(&mut pool, &[0]), "start0,end0,start1,start2");
        assert_eq!(step(&mut pool, &[2]), "start0,end0,start1,start2,end2");
        // reader 4 queued behind writer 3 must not jump ahead of it.
        assert_eq!(
            step(&mut pool, &[1]),
            "start0,end0,start1,start2,end2,end1,start3"
        );
        assert_eq!(
            step(&mut pool, &[3, 4]),
            "start0,end0,start1,start2,end2,end1,start3,end3,start4,end4"
        );
        assert!(!lock.is_busy(7));
    }

    #[test]
    fn dropped_waiter_does_not_wedge() {
        let lock = KeyedRwLock::<u32>::default();
        futures::executor::block_on(async {
            let g = lock.write(1).await;
            {
                let fut = lock.write(1);
                futures::pin_mut!(fut);
                assert!(futures::poll!(fut.as_mut()).is_pending());
            }
            drop(g);
            let _g2 = lock.write(1).await;
        });
        assert!(!lock.is_busy(1));
    }
}
