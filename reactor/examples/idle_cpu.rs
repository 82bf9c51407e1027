//! How much CPU do idle reactors burn? Starts N reactors (default 2), lets
//! them idle for S seconds (default 5) and prints the process's user+system
//! CPU time over that window (getrusage) and each reactor's loop counters.
//!
//! ```text
//! idle_cpu [reactors] [secs]
//! ```

use std::time::{Duration, Instant};

use sluice_reactor::{Reactors, RingConfig};

fn cpu() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(2, |s| s.parse().expect("reactors"));
    let secs: u64 = args.next().map_or(5, |s| s.parse().expect("secs"));
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let cores: Vec<usize> = (0..n).map(|i| ids[i % ids.len()]).collect();
    let r = Reactors::start(&cores, RingConfig::default()).unwrap();
    // Give them something to do first, so the idle period follows work.
    for i in 0..n {
        r.call(i, || async {}).unwrap();
    }
    let (u0, s0) = cpu();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (u1, s1) = cpu();
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "{n} idle reactors for {dt:.2} s: user {:.4} s + sys {:.4} s = {:.3} % of one core",
        u1 - u0,
        s1 - s0,
        100.0 * ((u1 - u0) + (s1 - s0)) / dt
    );
    for s in r.stats() {
        println!(
            "  r{} core {}: busy {} idle {} sleeps {} wakeups {}",
            s.index, s.core, s.busy_iters, s.idle_iters, s.sleeps, s.wakeups
        );
    }
    r.stop().unwrap();
}
