//! Reactors: messages, calls, back-off, stop.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use sluice_engine::AlignedBuf;
use sluice_reactor::{
    current, current_handle, sleep, spawn_local, CallError, ReactorConfig, Reactors,
    ReactorsHandle, RingConfig, SendError, UringStream,
};

fn cores() -> Vec<usize> {
    let n = core_count();
    if n >= 2 {
        vec![0, 1]
    } else {
        vec![0, 0]
    }
}

fn core_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn start() -> Reactors {
    Reactors::start(&cores(), RingConfig::default()).unwrap()
}

/// One message bounces between reactor 0 and 1 `left` more times.
fn bounce(h: ReactorsHandle, counts: Arc<[AtomicU64; 2]>, left: u64, done: mpsc::Sender<()>) {
    let me = current().expect("on a reactor").index;
    counts[me].fetch_add(1, Ordering::Relaxed);
    if left == 0 {
        done.send(()).unwrap();
        return;
    }
    let h2 = h.clone();
    h.send(1 - me, move || bounce(h2, counts, left - 1, done))
        .unwrap();
}

#[test]
fn ping_pong_100k_messages() {
    let r = start();
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let (tx, rx) = mpsc::channel();
    let h = r.handle();
    let c = counts.clone();
    let t0 = Instant::now();
    r.send(0, move || bounce(h, c, 99_999, tx)).unwrap();
    rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let dt = t0.elapsed();
    assert_eq!(counts[0].load(Ordering::Relaxed), 50_000);
    assert_eq!(counts[1].load(Ordering::Relaxed), 50_000);
    eprintln!("100k ping-pong messages in {dt:?}");

    // 64 chains at once: more messages in flight than one per queue.
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let (tx, rx) = mpsc::channel();
    for i in 0..64 {
        let (h, c, tx) = (r.handle(), counts.clone(), tx.clone());
        r.send(i % 2, move || bounce(h, c, 1_999, tx)).unwrap();
    }
    for _ in 0..64 {
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    let total: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    assert_eq!(total, 64 * 2_000);
    r.stop().unwrap();
    // Stats are published once per iteration; after stop they are final.
    let msgs: u64 = r.stats().iter().map(|s| s.msgs).sum();
    assert!(msgs >= 100_000 + 128_000, "stats count {msgs} messages");
}

#[test]
fn external_senders_never_lose_messages_on_full_inboxes() {
    let r = Reactors::start_with(
        &cores(),
        ReactorConfig {
            inbox_capacity: 8,
            ..ReactorConfig::default()
        },
    )
    .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..3)
        .map(|t| {
            let (h, c) = (r.handle(), count.clone());
            std::thread::spawn(move || {
                for i in 0..50_000u64 {
                    let c = c.clone();
                    h.send(((i + t) % 2) as usize, move || {
                        c.fetch_add(1, Ordering::Relaxed);
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    // Everything sent before stop() is run by the drain at stop.
    r.stop().unwrap();
    assert_eq!(count.load(Ordering::Relaxed), 150_000);
}

#[test]
fn reactor_senders_defer_in_order_when_the_target_is_full() {
    let r = Reactors::start_with(
        &cores(),
        ReactorConfig {
            inbox_capacity: 16,
            ..ReactorConfig::default()
        },
    )
    .unwrap();
    const N: u64 = 50_000;
    let next = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let n2 = next.clone();
    // One message on reactor 0 sends N messages to reactor 1 in one go:
    // far more than its inbox holds, so most wait in 0's overflow queue.
    r.send(0, move || {
        let h = current_handle().unwrap();
        for seq in 0..N {
            let (n, tx) = (n2.clone(), tx.clone());
            h.send(1, move || {
                let prev = n.fetch_add(1, Ordering::Relaxed);
                assert_eq!(prev, seq, "out of order");
                if seq == N - 1 {
                    tx.send(()).unwrap();
                }
            })
            .unwrap();
        }
    })
    .unwrap();
    rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(next.load(Ordering::Relaxed), N);
    r.stop().unwrap();
    let st = r.stats();
    assert!(st[0].msgs_deferred > 0, "overflow path not exercised");
}

#[test]
fn call_from_outside_and_between_reactors() {
    let r = start();
    assert!(current().is_none());
    let info = r.call(1, || async { current().unwrap() }).unwrap();
    assert_eq!((info.index, info.count), (1, 2));
    assert_eq!(info.core, cores()[1]);

    // The called future does I/O on the target's ring.
    let v = r
        .call(0, || async {
            sleep(Duration::from_millis(2)).await.unwrap();
            7u32
        })
        .unwrap();
    assert_eq!(v, 7);

    // call_async from reactor 0 to reactor 1 (and to itself).
    let (a, b) = r
        .call(0, || async {
            let h = current_handle().unwrap();
            let a = h
                .call_async(1, || async { current().unwrap().index * 10 })
                .await
                .unwrap();
            let b = h
                .call_async(0, || async { current().unwrap().index + 5 })
                .await
                .unwrap();
            (a, b)
        })
        .unwrap();
    assert_eq!((a, b), (10, 5));

    // Many concurrent cross-reactor calls from tasks on reactor 0.
    let sum = r
        .call(0, || async {
            let h = current_handle().unwrap();
            let tasks: Vec<_> = (0..1000u64)
                .map(|i| {
                    let h = h.clone();
                    spawn_local(async move { h.call_async(1, move || async move { i }).await })
                })
                .collect();
            let mut s = 0;
            for t in tasks {
                s += t.await.unwrap();
            }
            s
        })
        .unwrap();
    assert_eq!(sum, 999 * 1000 / 2);

    // A blocking call from a reactor thread is refused, not a deadlock.
    let refused = r
        .call(0, || async {
            let h = current_handle().unwrap();
            h.call(1, || async {}).err()
        })
        .unwrap();
    assert_eq!(refused, Some(CallError::OnReactorThread));

    assert!(matches!(
        r.call(5, || async {}),
        Err(CallError::Send(SendError::NoSuchReactor(5)))
    ));
    r.stop().unwrap();
}

#[test]
fn idle_reactors_sleep_and_wake_on_messages() {
    let r = start();
    std::thread::sleep(Duration::from_millis(100));
    let st = r.stats();
    for s in &st {
        assert!(s.sleeps >= 1, "reactor {} never slept: {s:?}", s.index);
    }
    // Asleep now; a call must wake it promptly (eventfd).
    for i in 0..50 {
        std::thread::sleep(Duration::from_millis(3));
        let t0 = Instant::now();
        assert_eq!(r.call(i % 2, move || async move { i }).unwrap(), i);
        assert!(t0.elapsed() < Duration::from_millis(500));
    }
    // Busy-poll while there is work: iterations while idle stay bounded.
    let st2 = r.stats();
    for (a, b) in st.iter().zip(&st2) {
        assert!(b.wakeups > a.wakeups);
        assert!(b.busy_iters > a.busy_iters);
    }
    r.stop().unwrap();
}

#[test]
fn stop_joins_with_tasks_pending() {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("sluice-rt-stop-{}", std::process::id()));
    std::fs::write(&path, vec![7u8; 4 << 20]).unwrap();
    let r = start();
    let (a, b) = UnixStream::pair().unwrap();
    let b = Arc::new(std::sync::Mutex::new(Some(b)));
    let reads = Arc::new(AtomicU64::new(0));
    for idx in 0..2 {
        let p = path.clone();
        let b = b.clone();
        let reads = reads.clone();
        r.call(idx, move || async move {
            // Never completes, holds no waker anywhere.
            spawn_local(std::future::pending::<()>()).detach();
            // A long timer in the ring.
            spawn_local(async {
                let _ = sleep(Duration::from_secs(3600)).await;
            })
            .detach();
            // A recv that never gets data (the peer stays open).
            if let Some(s) = b.lock().unwrap().take() {
                let s = UringStream::from_fd(s.into());
                spawn_local(async move {
                    let _ = s.recv(AlignedBuf::zeroed(4096)).await;
                })
                .detach();
            }
            // Endless disk reads.
            let dev = std::rc::Rc::new(sluice_reactor::UringDev::open(&p).unwrap());
            for _ in 0..16 {
                let (dev, reads) = (dev.clone(), reads.clone());
                spawn_local(async move {
                    let mut buf = AlignedBuf::zeroed(4096);
                    let mut off = 0;
                    loop {
                        let (b, r) = sluice_engine::dev::BlockDev::read_at(&*dev, buf, off).await;
                        if r.is_err() {
                            return;
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                        buf = b;
                        off = (off + 4096) % (4 << 20);
                    }
                })
                .detach();
            }
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(reads.load(Ordering::Relaxed) > 0);
    let h = r.handle();
    let t0 = Instant::now();
    r.stop().unwrap();
    let dt = t0.elapsed();
    assert!(dt < Duration::from_secs(3), "stop took {dt:?}");
    for s in r.stats() {
        assert_eq!(s.inflight, 0, "reactor {} left ops in flight", s.index);
    }
    // After stop: clean errors, no hangs.
    assert_eq!(h.send(0, || {}), Err(SendError::Stopped(0)));
    assert!(h.call(1, || async { 1 }).is_err());
    r.stop().unwrap(); // idempotent
    drop(a);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bad_configs_are_errors() {
    assert!(matches!(
        Reactors::start(&[], RingConfig::default()),
        Err(sluice_reactor::Error::NoCores)
    ));
    assert!(matches!(
        Reactors::start(&[4096], RingConfig::default()),
        Err(sluice_reactor::Error::NoSuchCore(4096))
    ));
    let bad_ring = RingConfig {
        sq_entries: 1024,
        cq_entries: 16,
        ..RingConfig::default()
    };
    assert!(Reactors::start(&cores(), bad_ring).is_err());
}

#[test]
fn a_panicking_reactor_fails_calls_instead_of_hanging() {
    let r = start();
    r.send(0, || panic!("boom (expected by the test)")).unwrap();
    let t0 = Instant::now();
    let res = r.call(0, || async { 1 });
    assert!(
        matches!(
            res,
            Err(CallError::Canceled) | Err(CallError::Send(SendError::Stopped(0)))
        ),
        "{res:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The other reactor is unaffected.
    assert_eq!(r.call(1, || async { 2 }).unwrap(), 2);
    assert!(matches!(r.stop(), Err(sluice_reactor::Error::Panicked(0))));
}
