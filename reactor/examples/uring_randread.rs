//! 4 KiB random reads at a fixed queue depth per reactor on an O_DIRECT
//! file, through `UringDev` on pinned reactors. Prints IOPS.
//!
//! ```text
//! uring_randread <file> [--reactors N] [--qd 32] [--secs 10] [--bs 4096]
//!                       [--create-mib M]   # (re)create the file with random data
//!                       [--taskrun signal|coop|defer] [--sqpoll]
//!                       [--spin-us 20] [--yield-us 50]   # idle back-off
//!                       [--no-pin]                       # let threads float
//! ```

use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::dev::BlockDev;
use sluice_engine::AlignedBuf;
use sluice_reactor::{
    spawn_local, IdlePolicy, ReactorConfig, Reactors, RingConfig, TaskRun, UringDev,
};

struct Args {
    path: PathBuf,
    reactors: usize,
    qd: usize,
    secs: u64,
    bs: usize,
    create_mib: Option<u64>,
    task_run: TaskRun,
    sqpoll: bool,
    idle: IdlePolicy,
    pin: bool,
}

fn parse() -> Args {
    let mut a = Args {
        path: PathBuf::new(),
        reactors: 1,
        qd: 32,
        secs: 10,
        bs: 4096,
        create_mib: None,
        task_run: RingConfig::default().task_run,
        sqpoll: false,
        idle: IdlePolicy::default(),
        pin: true,
    };
    let mut it = std::env::args().skip(1);
    let usage = "usage: uring_randread <file> [--reactors N] [--qd 32] [--secs 10] [--bs 4096] \
                 [--create-mib M] [--taskrun signal|coop|defer] [--sqpoll] \
                 [--spin-us 20] [--yield-us 50] [--no-pin]";
    while let Some(x) = it.next() {
        let mut val = || it.next().expect(usage);
        match x.as_str() {
            "--reactors" => a.reactors = val().parse().expect(usage),
            "--qd" => a.qd = val().parse().expect(usage),
            "--secs" => a.secs = val().parse().expect(usage),
            "--bs" => a.bs = val().parse().expect(usage),
            "--create-mib" => a.create_mib = Some(val().parse().expect(usage)),
            "--taskrun" => {
                a.task_run = match val().as_str() {
                    "signal" => TaskRun::Signal,
                    "coop" => TaskRun::Cooperative,
                    "defer" => TaskRun::Deferred,
                    _ => panic!("{usage}"),
                }
            }
            "--sqpoll" => a.sqpoll = true,
            "--no-pin" => a.pin = false,
            "--spin-us" => a.idle.spin = Duration::from_micros(val().parse().expect(usage)),
            "--yield-us" => a.idle.yield_until = Duration::from_micros(val().parse().expect(usage)),
            s if !s.starts_with('-') => a.path = PathBuf::from(s),
            _ => panic!("{usage}"),
        }
    }
    assert!(!a.path.as_os_str().is_empty(), "{usage}");
    a
}

fn create(path: &PathBuf, mib: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
}

fn main() {
    let a = parse();
    if let Some(m) = a.create_mib {
        create(&a.path, m);
    }
    let all: Vec<usize> = core_affinity::get_core_ids()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let cores: Vec<usize> = (0..a.reactors).map(|i| all[i % all.len()]).collect();
    let cfg = ReactorConfig {
        ring: RingConfig {
            // The kernel allows SQPOLL only with plain (signal) task work.
            task_run: if a.sqpoll {
                TaskRun::Signal
            } else {
                a.task_run
            },
            sqpoll_idle_ms: a.sqpoll.then_some(1000),
            ..RingConfig::default()
        },
        idle: a.idle,
        pin: a.pin,
        ..ReactorConfig::default()
    };
    let r = Reactors::start_with(&cores, cfg).unwrap();
    let dev = Arc::new(UringDev::open(&a.path).unwrap());
    let blocks = dev.size() / a.bs as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<Vec<AtomicU64>> =
        Arc::new((0..a.reactors).map(|_| AtomicU64::new(0)).collect());
    for i in 0..a.reactors {
        let (dev, stop, counts) = (dev.clone(), stop.clone(), counts.clone());
        let (qd, bs) = (a.qd, a.bs);
        r.send(i, move || {
            let local = Rc::new(Cell::new(0u64));
            for q in 0..qd {
                let (dev, stop, local, counts) =
                    (dev.clone(), stop.clone(), local.clone(), counts.clone());
                spawn_local(async move {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ ((i * 1000 + q) as u64 + 1);
                    let mut buf = AlignedBuf::zeroed(bs);
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let off = (x % blocks) * bs as u64;
                        let (b, res) = dev.read_at(buf, off).await;
                        res.expect("read");
                        buf = b;
                        local.set(local.get() + 1);
                        // Single writer per counter: a plain store, no RMW.
                        counts[i].store(local.get(), Ordering::Relaxed);
                    }
                })
                .detach();
            }
        })
        .unwrap();
    }
    let total = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    std::thread::sleep(Duration::from_secs(1)); // warm-up
    let (c0, s0, t0) = (total(), r.stats(), Instant::now());
    let ru0 = cpu_secs();
    std::thread::sleep(Duration::from_secs(a.secs));
    let (c1, s1, dt) = (total(), r.stats(), t0.elapsed().as_secs_f64());
    let ru1 = cpu_secs();
    stop.store(true, Ordering::Relaxed);
    let iops = (c1 - c0) as f64 / dt;
    println!(
        "reactors={} qd={} bs={} secs={:.1}: {:.0} IOPS ({:.1} MiB/s), process CPU {:.2} s/s",
        a.reactors,
        a.qd,
        a.bs,
        dt,
        iops,
        iops * a.bs as f64 / (1 << 20) as f64,
        (ru1 - ru0) / dt
    );
    for (x, y) in s0.iter().zip(&s1) {
        let subs = (y.submit_calls - x.submit_calls).max(1);
        println!(
            "  r{} core {}: busy {} idle {} sleeps {} | {:.1} SQEs/submit, {} submits/s",
            y.index,
            y.core,
            y.busy_iters - x.busy_iters,
            y.idle_iters - x.idle_iters,
            y.sleeps - x.sleeps,
            (y.ios_submitted - x.ios_submitted) as f64 / subs as f64,
            ((y.submit_calls - x.submit_calls) as f64 / dt) as u64,
        );
    }
    r.stop().unwrap();
}

/// User + system CPU seconds of this process.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
