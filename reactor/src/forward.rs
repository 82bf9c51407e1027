//! Operations forwarded to the reactor that owns their target, without a
//! heap allocation per operation, drained in batches.
//!
//! A request that reaches the wrong reactor (a chunk homed in a zone
//! another reactor owns) used to travel as a boxed closure with a one-shot
//! reply channel and a task spawned on the owner: four allocations each way.
//! Here every ordered pair of reactors (requester, owner) has a [`Lane`]:
//! two fixed-size lock-free queues, requests one way and replies the other,
//! carrying plain values. The owner's [`Poller`] drains its incoming request
//! queues whole every loop iteration and hands the operations to a
//! [`WorkerPool`]; a worker runs [`Service::serve`] and queues the reply; the
//! requester's poller drains its reply queues and wakes the waiting futures,
//! which sit in a slab of reusable slots. The target is only woken (an
//! eventfd write) when it sleeps.
//!
//! A requester keeps at most [`LANE_CAPACITY`] requests outstanding per lane,
//! so a reply always finds room. Past that (or whenever a queue is full) the
//! caller gets its operation back and uses the message path instead.

use crate::reactor::{add_poller, remove_poller, Poller, ReactorsHandle};
use crate::workers::WorkerPool;
use crossbeam_queue::ArrayQueue;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};

/// Requests a requester may have outstanding towards one owner.
pub(crate) const LANE_CAPACITY: usize = 1024;

/// What an owner runs for its requesters (one per reactor, `!Send`).
pub(crate) trait Service: 'static {
    type Op: Send + 'static;
    type Out: Send + 'static;
    /// Run `op` against `target` (a zone this reactor owns).
    fn serve(&self, target: u32, op: Self::Op) -> impl Future<Output = Self::Out> + '_;
}

struct Request<Op> {
    slot: u32,
    target: u32,
    op: Op,
}

struct Reply<Out> {
    slot: u32,
    out: Out,
}

/// The queues of one (requester, owner) pair.
struct Lane<Op, Out> {
    req: ArrayQueue<Request<Op>>,
    rep: ArrayQueue<Reply<Out>>,
}

/// Every lane between `n` reactors (`Send + Sync`: shared by all of them).
pub(crate) struct Lanes<Op, Out> {
    n: usize,
    lanes: Box<[Lane<Op, Out>]>,
    reactors: ReactorsHandle,
}

impl<Op, Out> Lanes<Op, Out> {
    pub(crate) fn new(reactors: ReactorsHandle, n: usize) -> Arc<Self> {
        let lanes = (0..n * n)
            .map(|_| Lane {
                req: ArrayQueue::new(LANE_CAPACITY),
                rep: ArrayQueue::new(LANE_CAPACITY),
            })
            .collect();
        Arc::new(Lanes { n, lanes, reactors })
    }

    fn lane(&self, from: usize, to: usize) -> &Lane<Op, Out> {
        &self.lanes[from * self.n + to]
    }
}

/// Where a forwarded call's reply lands and who waits for it.
struct ReplySlot<Out> {
    out: Option<Out>,
    waker: Option<Waker>,
    /// The waiting future was dropped: free the slot when the reply lands.
    abandoned: bool,
}

/// One reactor's end of every lane it is part of: as requester, the reply
/// slots of its forwarded calls; as owner, the workers serving what others
/// forward to it; and the poller that drains both directions.
pub(crate) struct LaneEnd<S: Service> {
    me: usize,
    lanes: Arc<Lanes<S::Op, S::Out>>,
    service: S,
    slots: RefCell<Vec<ReplySlot<S::Out>>>,
    free: RefCell<Vec<u32>>,
    /// Requests outstanding towards each owner.
    outstanding: Box<[Cell<usize>]>,
    workers: WorkerPool<(usize, Request<S::Op>)>,
    this: Weak<LaneEnd<S>>,
    poller: Cell<Option<u64>>,
}

impl<S: Service> LaneEnd<S> {
    /// Set up reactor `me`'s end and register its poller (on that reactor).
    pub(crate) fn install(me: usize, lanes: Arc<Lanes<S::Op, S::Out>>, service: S) -> Rc<Self> {
        let n = lanes.n;
        let end = Rc::new_cyclic(|this| LaneEnd {
            me,
            lanes,
            service,
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            outstanding: (0..n).map(|_| Cell::new(0)).collect(),
            workers: WorkerPool::default(),
            this: this.clone(),
            poller: Cell::new(None),
        });
        let p: Rc<dyn Poller> = end.clone();
        end.poller.set(Some(add_poller(p)));
        end
    }

    /// Stop polling and let the workers exit (pool closed on this reactor).
    pub(crate) fn uninstall(&self) {
        if let Some(id) = self.poller.take() {
            remove_poller(id);
        }
        self.workers.close();
    }

    /// Run `op` on reactor `to` (not this one). `Err(op)` when the lane is
    /// full: the caller forwards it another way.
    pub(crate) async fn call(&self, to: usize, target: u32, op: S::Op) -> Result<S::Out, S::Op> {
        if self.outstanding[to].get() >= LANE_CAPACITY {
            return Err(op);
        }
        let slot = self.take_slot();
        let req = Request { slot, target, op };
        if let Err(r) = self.lanes.lane(self.me, to).req.push(req) {
            self.free.borrow_mut().push(slot);
            return Err(r.op);
        }
        self.outstanding[to].set(self.outstanding[to].get() + 1);
        self.lanes.reactors.notify(to);
        // Frees the slot when done, or marks it abandoned if dropped early.
        let mut wait = Waiting {
            end: self,
            slot,
            done: false,
        };
        let out = std::future::poll_fn(|cx| {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[slot as usize];
            match s.out.take() {
                Some(o) => Poll::Ready(o),
                None => {
                    s.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        wait.done = true;
        Ok(out)
    }

    fn take_slot(&self) -> u32 {
        if let Some(i) = self.free.borrow_mut().pop() {
            return i;
        }
        let mut slots = self.slots.borrow_mut();
        slots.push(ReplySlot {
            out: None,
            waker: None,
            abandoned: false,
        });
        (slots.len() - 1) as u32
    }

    fn deliver(&self, rep: Reply<S::Out>) {
        let waker = {
            let mut slots = self.slots.borrow_mut();
            let Some(s) = slots.get_mut(rep.slot as usize) else {
                return;
            };
            if s.abandoned {
                s.abandoned = false;
                drop(slots);
                self.free.borrow_mut().push(rep.slot);
                return;
            }
            s.out = Some(rep.out);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The slot of a waiting call: freed once the call has its reply (or
/// dropped after the reply landed); marked abandoned if the call is dropped
/// before, so the reply frees it.
struct Waiting<'a, S: Service> {
    end: &'a LaneEnd<S>,
    slot: u32,
    done: bool,
}

impl<S: Service> Drop for Waiting<'_, S> {
    fn drop(&mut self) {
        let mut slots = self.end.slots.borrow_mut();
        let s = &mut slots[self.slot as usize];
        s.waker = None;
        if self.done || s.out.take().is_some() {
            drop(slots);
            self.end.free.borrow_mut().push(self.slot);
        } else {
            s.abandoned = true;
        }
    }
}

/// A worker of the owner side: serve, reply, wake the requester.
async fn worker<S: Service>(end: Rc<LaneEnd<S>>, i: usize) {
    while let Some((from, r)) = end.workers.next(i).await {
        let out = end.service.serve(r.target, r.op).await;
        // Room is guaranteed: the requester bounds what it has outstanding
        // by the queue's capacity.
        let _ = end
            .lanes
            .lane(from, end.me)
            .rep
            .push(Reply { slot: r.slot, out });
        end.lanes.reactors.notify(from);
    }
}

impl<S: Service> Poller for LaneEnd<S> {
    fn poll(&self) -> usize {
        let mut n = 0;
        for other in (0..self.lanes.n).filter(|&o| o != self.me) {
            while let Some(r) = self.lanes.lane(other, self.me).req.pop() {
                n += 1;
                if let Some(i) = self.workers.dispatch((other, r)) {
                    if let Some(me) = self.this.upgrade() {
                        crate::executor::spawn_local(worker(me, i)).detach();
                    }
                }
            }
            while let Some(rep) = self.lanes.lane(self.me, other).rep.pop() {
                n += 1;
                let o = &self.outstanding[other];
                o.set(o.get().saturating_sub(1));
                self.deliver(rep);
            }
        }
        n
    }

    fn has_work(&self) -> bool {
        (0..self.lanes.n).filter(|&o| o != self.me).any(|o| {
            !self.lanes.lane(o, self.me).req.is_empty()
                || !self.lanes.lane(self.me, o).rep.is_empty()
        })
    }
}
