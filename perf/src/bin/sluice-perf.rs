//! `sluice-perf`: a bdevperf-style load generator for the sluice engine.
//!
//! It runs the engine in-process on pinned reactors (no NBD, no kernel block
//! layer in between) against a pool on a file or a block device, drives one
//! volume with `--queue-depth` concurrent I/Os per reactor for `--time`
//! seconds, and reports IOPS, MiB/s, latency percentiles, CPU time per I/O
//! and, for writes, how many bytes of data blocks the engine wrote per
//! logical byte written.
//!
//! How a run goes:
//! 1. format the pool (or open it with `--reuse`) and create the volume;
//! 2. for read workloads, prefill: write the whole volume once in 1 MiB
//!    writes (a never-written chunk is a hole and reads for free, so reading
//!    an empty volume would measure nothing);
//! 3. on every reactor, `--queue-depth` tasks each loop "pick an offset,
//!    issue one I/O, record its latency" until the deadline; I/Os that
//!    complete during the `--ramp` seconds are not counted;
//! 4. flush, gather the per-reactor histograms and counters, close the pool
//!    cleanly, print the report.
//!
//! Write data comes from [`DataGen`] and compresses with LZ4 to about
//! `--compress-pct` % of its size (calibrated against the volume's chunk
//! size before the run). The `verify` workload writes generated data with a
//! per-offset generation counter and checks every read against the
//! generator, then reads back every offset it wrote; any difference makes
//! the run fail.
//!
//! Example:
//!
//! ```text
//! sluice-perf --pool /var/tmp/sp/p.img --pool-size 4G --volume-size 1G \
//!     --chunk-size 4K --compression none -w randread -q 32 -t 10
//! ```

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_engine::volume::{ChunkSpan, VolInfo};
use sluice_engine::{AlignedBuf, Compression, Error as EngineError, ZoneConfig, BLOCK_SIZE};
use sluice_perf::datagen::{DataGen, SplitMix};
use sluice_perf::table::Table;
use sluice_perf::units::{fmt_bytes, parse_size};
use sluice_reactor::{spawn_local, PoolHost, Reactors, ReactorsHandle, RingConfig};
use std::cell::RefCell;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Name the pool is hosted under on the reactors.
const POOL_NAME: &str = "perf";
/// Seed of all generated data and offsets (runs are reproducible).
const SEED: u64 = 0x5EED_51CE_0BE4_F001;
/// Prefill: size of each write, and writes in flight per reactor.
const PREFILL_IO: u64 = MIB;
const PREFILL_QD: usize = 4;
/// Bytes of pre-generated write data that writes copy their payload from.
const DATA_POOL: usize = 4 << 20;
/// Latency histogram: 1 µs .. 60 s, 3 significant figures.
const HIST_MAX_US: u64 = 60_000_000;
/// Failure messages kept for the report.
const MAX_MESSAGES: usize = 10;

const LONG_ABOUT: &str = "\
bdevperf-style load generator for sluice.

Runs the engine in-process on pinned reactors (no NBD) against a pool on a \
file or block device, drives one volume with QUEUE_DEPTH concurrent I/Os per \
reactor, and reports IOPS, MiB/s, latency percentiles (µs), CPU seconds per \
million I/Os and, for writes, data bytes written per logical byte written.

Read workloads (randread, read, randrw) prefill the volume first: chunks \
never written are holes and would read for free.

WARNING: without --reuse the pool is formatted: everything on PATH is lost.

Example:
  sluice-perf --pool /var/tmp/sp/p.img --pool-size 4G --volume-size 1G \\
      --chunk-size 4K --compression none -w randread -q 32 -t 10";

#[derive(Parser, Debug)]
#[command(
    name = "sluice-perf",
    about = "bdevperf-style load generator: the sluice engine on its reactors, in-process, \
             against a pool on a file or block device",
    long_about = LONG_ABOUT
)]
struct Opts {
    /// Pool file or block device. A missing file is created (sparse,
    /// --pool-size bytes); the pool is formatted unless --reuse.
    #[arg(long, value_name = "PATH")]
    pool: PathBuf,
    /// Size of the pool file (files only; a block device is used whole).
    #[arg(long, default_value = "4G", value_parser = parse_size, value_name = "SIZE")]
    pool_size: u64,
    /// Zone size when formatting.
    #[arg(long, default_value = "256M", value_parser = parse_size, value_name = "SIZE")]
    zone_size: u64,
    /// Open the existing pool instead of formatting it. The volume is looked
    /// up by name and created only if missing; an existing volume keeps its
    /// own size, chunk size and compression.
    #[arg(long)]
    reuse: bool,
    /// Name of the volume to run against.
    #[arg(long, default_value = "perf", value_name = "NAME")]
    volume: String,
    /// Size of the volume (when it is created).
    #[arg(long, default_value = "1G", value_parser = parse_size, value_name = "SIZE")]
    volume_size: u64,
    /// Chunk size of the volume (a power of two, 4K..1M; when it is created).
    #[arg(long, default_value = "64K", value_parser = parse_size, value_name = "SIZE")]
    chunk_size: u64,
    /// Compression of the volume (when it is created).
    #[arg(long, value_enum, default_value_t = CompArg::Lz4)]
    compression: CompArg,
    /// What to run.
    #[arg(short = 'w', long, value_enum, default_value_t = Workload::Randread)]
    workload: Workload,
    /// Reads as a percentage of all I/Os: randrw [default: 70] and verify
    /// [default: 50] only.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u32).range(0..=100))]
    mix: Option<u32>,
    /// Size of each I/O (a multiple of 512; of 4K for verify).
    #[arg(short = 'o', long, default_value = "4K", value_parser = parse_size, value_name = "SIZE")]
    io_size: u64,
    /// Concurrent I/Os per reactor.
    #[arg(short = 'q', long, default_value_t = 32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    queue_depth: u32,
    /// Seconds measured (after the ramp).
    #[arg(short = 't', long, default_value_t = 10, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    time: u64,
    /// Seconds of load before measuring starts (I/O runs but is not counted).
    #[arg(long, default_value_t = 1, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    ramp: u64,
    /// Cores to run one reactor each on, e.g. "0,1" or "0-3,5" [default: all
    /// cores this process may run on].
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,
    /// Generate write data that LZ4 compresses to about this percentage of
    /// its size (100: incompressible).
    #[arg(long, default_value_t = 50, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    compress_pct: u32,
    /// Write the whole volume (1 MiB writes) before the run [default: on for
    /// randread, read and randrw].
    #[arg(long, overrides_with = "no_prefill")]
    prefill: bool,
    /// Do not prefill (reads of never-written chunks are holes: no disk I/O).
    #[arg(long, overrides_with = "prefill")]
    no_prefill: bool,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Workload {
    /// Random reads, offsets aligned to the I/O size.
    Randread,
    /// Random writes, offsets aligned to the I/O size.
    Randwrite,
    /// Sequential reads, each task in its own stripe of the volume.
    Read,
    /// Sequential writes, each task in its own stripe of the volume.
    Write,
    /// Random reads and writes, --mix % reads.
    Randrw,
    /// Random writes of checkable data and reads that check it, then a
    /// read-back of every offset written.
    Verify,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Randread => "randread",
            Workload::Randwrite => "randwrite",
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::Randrw => "randrw",
            Workload::Verify => "verify",
        }
    }

    fn reads(self) -> bool {
        !matches!(self, Workload::Randwrite | Workload::Write)
    }

    fn writes(self) -> bool {
        !matches!(self, Workload::Randread | Workload::Read)
    }

    /// Read workloads whose reads would hit holes without a prefill.
    fn prefills_by_default(self) -> bool {
        matches!(self, Workload::Randread | Workload::Read | Workload::Randrw)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CompArg {
    Lz4,
    #[value(name = "none")]
    Off,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("sluice-perf: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let o = Opts::parse();
    ensure!(
        o.io_size > 0 && o.io_size.is_multiple_of(512),
        "--io-size {} must be a positive multiple of 512",
        o.io_size
    );
    ensure!(
        o.io_size <= 256 * MIB,
        "--io-size {} is above the 256 MiB this tool supports",
        fmt_bytes(o.io_size)
    );
    if o.workload == Workload::Verify {
        ensure!(
            o.io_size.is_multiple_of(BLOCK_SIZE as u64),
            "verify needs --io-size a multiple of 4K (data is generated per 4 KiB block)"
        );
    }
    let read_pct = match (o.workload, o.mix) {
        (Workload::Randrw, m) => Some(m.unwrap_or(70)),
        (Workload::Verify, m) => Some(m.unwrap_or(50)),
        (w, Some(_)) => {
            eprintln!(
                "sluice-perf: note: --mix applies to randrw and verify only; ignored for {}",
                w.name()
            );
            None
        }
        (_, None) => None,
    };
    let prefill = if o.no_prefill {
        false
    } else {
        o.prefill || o.workload.prefills_by_default()
    };
    let cores = match &o.cores {
        Some(s) => parse_cores(s)?,
        None => allowed_cores()?,
    };

    let reactors = Reactors::start(&cores, RingConfig::default())
        .with_context(|| format!("starting reactors on cores {}", fmt_cores(&cores)))?;
    let nreact = reactors.len();
    let (host, how) = match open_pool(&o, reactors.handle(), nreact) {
        Ok(h) => h,
        Err(e) => {
            let _ = reactors.stop();
            return Err(e);
        }
    };
    let res = bench(
        &o,
        &host,
        how,
        &reactors.handle(),
        &cores,
        read_pct,
        prefill,
    );
    let closed = host.close();
    drop(host);
    let stopped = reactors.stop();
    let report = res?;
    closed.context("closing the pool (checkpoint)")?;
    stopped.context("stopping the reactors")?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// Format (or with `--reuse`, open) the pool.
/// Also says how: opened, formatted on a new sparse file, or formatted over
/// an existing file or device (whose file extents are then already
/// allocated: first writes cost less than on a new sparse file).
fn open_pool(
    o: &Opts,
    handle: ReactorsHandle,
    nreact: usize,
) -> Result<(Arc<PoolHost>, &'static str)> {
    let p = &o.pool;
    if o.reuse {
        let h = PoolHost::open(handle, nreact, POOL_NAME, p, ZoneConfig::default())
            .with_context(|| format!("opening pool {}", p.display()))?;
        return Ok((h, "reused"));
    }
    let how = match std::fs::metadata(p) {
        Ok(m) if m.is_file() => "formatted over the existing file",
        Ok(_) => "formatted",
        Err(_) => "formatted on a new sparse file",
    };
    if !p.exists() {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
    }
    PoolHost::create(
        handle,
        nreact,
        POOL_NAME,
        p,
        o.pool_size,
        o.zone_size,
        ZoneConfig::default(),
    )
    .with_context(|| {
        format!(
            "formatting pool {} ({} bytes, zones of {})",
            p.display(),
            o.pool_size,
            fmt_bytes(o.zone_size)
        )
    })
    .map(|h| (h, how))
}

/// "0-3,5" → [0, 1, 2, 3, 5] (sorted, without duplicates).
fn parse_cores(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| -> Result<usize> {
            x.trim()
                .parse::<usize>()
                .with_context(|| format!("bad core '{x}' in core list '{s}'"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                ensure!(a <= b, "bad core range '{part}' in '{s}'");
                ensure!(b - a < 4096, "core range '{part}' is too wide");
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    ensure!(!out.is_empty(), "core list '{s}' names no core");
    Ok(out)
}

/// The cores this process may run on (`Cpus_allowed_list` of
/// /proc/self/status), else 0..available_parallelism.
fn allowed_cores() -> Result<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    {
        return parse_cores(list.trim());
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok((0..n).collect())
}

/// `4 KiB`, `1 GiB` for exact multiples; else like [`fmt_bytes`].
fn fmt_size(b: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) && b >> shift < 1024 {
            return format!("{} {unit}", b >> shift);
        }
    }
    fmt_bytes(b)
}

fn fmt_cores(c: &[usize]) -> String {
    c.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// This process's user + system CPU time, in seconds.
fn cpu_seconds() -> Result<f64> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    // SAFETY: zero-initialised and filled in by a successful getrusage.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

// ---------------------------------------------------------------------------
// Data

/// The `random_pct` of [`DataGen`] whose LZ4 output, chunk by chunk, is
/// closest to `target_pct` % of the input. `random_pct` is the share of
/// random bytes; LZ4 adds a few bytes of framing per literal/run pair, so
/// the compressed size sits slightly above it: measure instead of assuming.
/// Returns (random_pct, LZ4 fraction, fraction the engine stores).
fn calibrate(target_pct: u32, chunk: usize) -> (u32, f64, f64) {
    let chunks = ((2 * MIB) as usize / chunk).max(8);
    let measure = |rp: u32| DataGen::new(SEED, rp).lz4_fraction(chunk, chunks);
    let target = target_pct as f64 / 100.0;
    // The fraction grows with random_pct: find the first at or above target.
    let (mut lo, mut hi) = (1u32, 100u32);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if measure(mid).0 >= target {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut best = (lo, measure(lo));
    if lo > 1 {
        let below = measure(lo - 1);
        if (below.0 - target).abs() < (best.1 .0 - target).abs() {
            best = (lo - 1, below);
        }
    }
    let (rp, (f, stored)) = best;
    (rp, f, stored)
}

/// Copy `len` bytes of the data pool (a random 4 KiB-aligned place) into a
/// fresh I/O buffer and stamp 8 random bytes at the head of every 4 KiB
/// block, so no two writes carry the same bytes. Each generated block
/// starts with random bytes anyway, so stamping leaves its compressibility
/// as it was.
fn payload(data: &[u8], len: usize, rng: &mut SplitMix) -> AlignedBuf {
    let mut b = AlignedBuf::filled_later(len);
    let places = ((data.len() - len) / BLOCK_SIZE) as u64 + 1;
    let p = rng.below(places) as usize * BLOCK_SIZE;
    b.copy_from_slice(&data[p..p + len]);
    for blk in b.chunks_mut(BLOCK_SIZE) {
        let n = blk.len().min(8);
        blk[..n].copy_from_slice(&rng.next_u64().to_le_bytes()[..n]);
    }
    b
}

/// Task-unique random stream.
fn task_rng(kind: u64, global_task: usize) -> SplitMix {
    let mut s = SplitMix::new(SEED ^ kind.wrapping_mul(0xA24B_AED4_963E_E407));
    SplitMix::new(s.next_u64() ^ (global_task as u64 + 1).wrapping_mul(0x9FB2_1C65_1E98_DF25))
}

// ---------------------------------------------------------------------------
// Failures shared by every task

#[derive(Default)]
struct Failures {
    abort: AtomicBool,
    io_errors: AtomicU64,
    mismatches: AtomicU64,
    messages: Mutex<Vec<String>>,
}

impl Failures {
    fn note(&self, msg: String) {
        self.abort.store(true, Ordering::Relaxed);
        if let Ok(mut m) = self.messages.lock() {
            if m.len() < MAX_MESSAGES {
                m.push(msg);
            }
        }
    }

    fn io_error(&self, what: &str, off: u64, len: u64, e: &EngineError) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
        self.note(format!("{what} of {len} bytes at offset {off} failed: {e}"));
    }

    fn mismatch(&self, msg: String) {
        self.mismatches.fetch_add(1, Ordering::Relaxed);
        self.note(msg);
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Err with every message when anything failed.
    fn check(&self, phase: &str) -> Result<()> {
        let (e, m) = (
            self.io_errors.load(Ordering::Relaxed),
            self.mismatches.load(Ordering::Relaxed),
        );
        if e == 0 && m == 0 {
            return Ok(());
        }
        let msgs = self.messages.lock().map(|m| m.clone()).unwrap_or_default();
        for msg in &msgs {
            eprintln!("sluice-perf: {msg}");
        }
        bail!("{phase} failed: {e} failed I/O(s), {m} data mismatch(es) (the first ones above)")
    }
}

// ---------------------------------------------------------------------------
// Prefill

struct Prefill {
    host: Arc<PoolHost>,
    vol: VolInfo,
    data: Arc<Vec<u8>>,
    next: AtomicU64,
    done: AtomicU64,
    fail: Failures,
}

async fn prefill_task(pf: Arc<Prefill>, global_task: usize) {
    let mut rng = task_rng(1, global_task);
    while !pf.fail.aborted() {
        let off = pf.next.fetch_add(PREFILL_IO, Ordering::Relaxed);
        if off >= pf.vol.size {
            return;
        }
        let len = PREFILL_IO.min(pf.vol.size - off);
        let buf = payload(&pf.data, len as usize, &mut rng);
        match pf.host.write(&pf.vol, off, buf).await {
            Ok(()) => {
                pf.done.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => pf.fail.io_error("prefill write", off, len, &e),
        }
    }
}

/// Write the whole volume once, in 1 MiB writes from every reactor, with a
/// progress line on stderr; then flush.
fn prefill(
    handle: &ReactorsHandle,
    host: &Arc<PoolHost>,
    vol: VolInfo,
    data: &Arc<Vec<u8>>,
) -> Result<f64> {
    let nreact = handle.len();
    let pf = Arc::new(Prefill {
        host: host.clone(),
        vol,
        data: data.clone(),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        fail: Failures::default(),
    });
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel::<()>();
    for r in 0..nreact {
        let (pf, tx) = (pf.clone(), tx.clone());
        handle
            .send(r, move || {
                spawn_local(async move {
                    let tasks: Vec<_> = (0..PREFILL_QD)
                        .map(|t| spawn_local(prefill_task(pf.clone(), r * PREFILL_QD + t)))
                        .collect();
                    for t in tasks {
                        t.await;
                    }
                    let _ = tx.send(());
                })
                .detach();
            })
            .with_context(|| format!("sending the prefill to reactor {r}"))?;
    }
    drop(tx);
    let tty = std::io::stderr().is_terminal();
    let progress = |end: &str| {
        let done = pf.done.load(Ordering::Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        eprint!(
            "{}prefill: {} / {} ({:.0} %), {:.0} MB/s{end}",
            if tty { "\r" } else { "" },
            fmt_bytes(done),
            fmt_bytes(vol.size),
            done as f64 * 100.0 / vol.size as f64,
            done as f64 / 1e6 / secs.max(1e-9),
        );
    };
    let (mut finished, mut last_line) = (0, Instant::now());
    while finished < nreact {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(()) => finished += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if tty {
                    progress("   ");
                } else if last_line.elapsed() >= Duration::from_secs(5) {
                    progress("\n");
                    last_line = Instant::now();
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("a reactor stopped during the prefill")
            }
        }
    }
    progress(if tty { "   \n" } else { "\n" });
    pf.fail.check("prefill")?;
    let me = host.clone();
    handle
        .call(0, move || async move { me.flush().await })
        .context("flushing after the prefill")?
        .context("flushing after the prefill")?;
    Ok(t0.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------
// The measured run

/// Everything the tasks share (`Send + Sync`; one per run).
struct Job {
    host: Arc<PoolHost>,
    vol: VolInfo,
    workload: Workload,
    io: u64,
    qd: usize,
    nreact: usize,
    read_pct: u32,
    /// Bytes of volume each sequential task cycles through.
    stripe: u64,
    measure_start: Instant,
    deadline: Instant,
    data: Arc<Vec<u8>>,
    gen: DataGen,
    fail: Failures,
}

/// One kind of operation's figures on one reactor.
#[derive(Clone)]
struct OpStats {
    hist: Histogram<u64>,
    ios: u64,
    bytes: u64,
    lat_ns: u64,
}

impl OpStats {
    fn new() -> Result<Self> {
        Ok(OpStats {
            hist: Histogram::new_with_bounds(1, HIST_MAX_US, 3)
                .context("creating a latency histogram")?,
            ios: 0,
            bytes: 0,
            lat_ns: 0,
        })
    }

    fn add(&mut self, o: &OpStats) -> Result<()> {
        self.hist
            .add(&o.hist)
            .map_err(|e| anyhow::anyhow!("merging latency histograms: {e:?}"))?;
        self.ios += o.ios;
        self.bytes += o.bytes;
        self.lat_ns += o.lat_ns;
        Ok(())
    }
}

/// One reactor's figures.
#[derive(Clone)]
struct Local {
    read: OpStats,
    write: OpStats,
    /// Logical bytes written, ramp and tail included (for the
    /// physical/logical ratio, which is measured over the whole run).
    all_written: u64,
    verified_run: u64,
    verified_final: u64,
    offsets_written: u64,
}

impl Local {
    fn new() -> Result<Self> {
        Ok(Local {
            read: OpStats::new()?,
            write: OpStats::new()?,
            all_written: 0,
            verified_run: 0,
            verified_final: 0,
            offsets_written: 0,
        })
    }

    /// Account a completed I/O: counted only when it completed inside the
    /// measured window.
    fn done(&mut self, job: &Job, is_read: bool, t0: Instant, t1: Instant) {
        if !is_read {
            self.all_written += job.io;
        }
        if t1 < job.measure_start || t1 >= job.deadline {
            return;
        }
        let s = if is_read {
            &mut self.read
        } else {
            &mut self.write
        };
        let ns = t1.duration_since(t0).as_nanos() as u64;
        s.hist.saturating_record((ns + 500) / 1000);
        s.ios += 1;
        s.bytes += job.io;
        s.lat_ns += ns;
    }
}

/// On reactor `r`: run `qd` tasks until the deadline, return the figures.
async fn reactor_run(job: Arc<Job>, r: usize, st: Local) -> Local {
    let st = Rc::new(RefCell::new(st));
    let tasks: Vec<_> = (0..job.qd)
        .map(|t| {
            let g = r * job.qd + t;
            let (job, st) = (job.clone(), st.clone());
            spawn_local(async move {
                if job.workload == Workload::Verify {
                    verify_task(job, st, g).await
                } else {
                    load_task(job, st, g).await
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let out = st.borrow().clone();
    out
}

/// randread / randwrite / read / write / randrw.
async fn load_task(job: Arc<Job>, st: Rc<RefCell<Local>>, g: usize) {
    let mut rng = task_rng(2, g);
    let io = job.io;
    let slots = job.vol.size / io;
    let stripe_start = g as u64 * job.stripe;
    let mut seq = 0u64;
    loop {
        if job.fail.aborted() {
            return;
        }
        let is_read = match job.workload {
            Workload::Randread | Workload::Read => true,
            Workload::Randwrite | Workload::Write => false,
            _ => rng.below(100) < job.read_pct as u64,
        };
        let off = match job.workload {
            Workload::Read | Workload::Write => {
                let o = stripe_start + seq;
                seq = (seq + io) % job.stripe;
                o
            }
            _ => rng.below(slots) * io,
        };
        let buf = (!is_read).then(|| payload(&job.data, io as usize, &mut rng));
        let t0 = Instant::now();
        if t0 >= job.deadline {
            return;
        }
        let res = match buf {
            None => job.host.read(&job.vol, off, io as u32).await.map(drop),
            Some(b) => job.host.write(&job.vol, off, b).await,
        };
        let t1 = Instant::now();
        match res {
            Ok(()) => st.borrow_mut().done(&job, is_read, t0, t1),
            Err(e) => {
                let what = if is_read { "read" } else { "write" };
                job.fail.io_error(what, off, io, &e);
                return;
            }
        }
    }
}

/// verify: task `g` of `T` owns the I/O-size slots `s` with `s % T == g`
/// (no two tasks ever touch one offset, so "what must be there" is always
/// known), keeps a generation per owned slot, writes generated data and
/// reads back slots it wrote. Slots of different tasks share chunks, so
/// concurrent read-modify-writes of one chunk are exercised.
async fn verify_task(job: Arc<Job>, st: Rc<RefCell<Local>>, g: usize) {
    let mut rng = task_rng(3, g);
    let io = job.io;
    let tasks = (job.nreact * job.qd) as u64;
    let slots = job.vol.size / io;
    let own = if (g as u64) < slots {
        (slots - g as u64).div_ceil(tasks)
    } else {
        0
    };
    if own == 0 {
        return;
    }
    let offset_of = |i: u32| (g as u64 + i as u64 * tasks) * io;
    let mut gens = vec![0u32; own as usize];
    let mut written: Vec<u32> = Vec::new();
    let mut expect = vec![0u8; io as usize];
    loop {
        if job.fail.aborted() {
            return;
        }
        let is_read = !written.is_empty() && rng.below(100) < job.read_pct as u64;
        let i = if is_read {
            written[rng.below(written.len() as u64) as usize]
        } else {
            rng.below(own) as u32
        };
        let off = offset_of(i);
        if is_read {
            let t0 = Instant::now();
            if t0 >= job.deadline {
                break;
            }
            let res = job.host.read(&job.vol, off, io as u32).await;
            let t1 = Instant::now();
            match res {
                Ok(spans) => {
                    st.borrow_mut().done(&job, true, t0, t1);
                    st.borrow_mut().verified_run += 1;
                    let gen = gens[i as usize];
                    job.gen.fill(gen as u64, off, &mut expect);
                    if let Some(msg) = compare(&job.gen, &spans, &expect, off, gen) {
                        job.fail.mismatch(msg);
                        return;
                    }
                }
                Err(e) => return job.fail.io_error("verify read", off, io, &e),
            }
        } else {
            let gen = gens[i as usize] + 1;
            let mut b = AlignedBuf::filled_later(io as usize);
            job.gen.fill(gen as u64, off, &mut b);
            let t0 = Instant::now();
            if t0 >= job.deadline {
                break;
            }
            let res = job.host.write(&job.vol, off, b).await;
            let t1 = Instant::now();
            match res {
                Ok(()) => {
                    st.borrow_mut().done(&job, false, t0, t1);
                    gens[i as usize] = gen;
                    if gen == 1 {
                        written.push(i);
                    }
                }
                Err(e) => return job.fail.io_error("verify write", off, io, &e),
            }
        }
    }
    // Read back every offset this task wrote.
    st.borrow_mut().offsets_written += written.len() as u64;
    written.sort_unstable();
    for &i in &written {
        if job.fail.aborted() {
            return;
        }
        let off = offset_of(i);
        match job.host.read(&job.vol, off, io as u32).await {
            Ok(spans) => {
                st.borrow_mut().verified_final += 1;
                let gen = gens[i as usize];
                job.gen.fill(gen as u64, off, &mut expect);
                if let Some(msg) = compare(&job.gen, &spans, &expect, off, gen) {
                    job.fail.mismatch(format!("final read-back: {msg}"));
                    return;
                }
            }
            Err(e) => return job.fail.io_error("final read-back", off, io, &e),
        }
    }
}

/// Compare what a read returned with what must be there; a description of
/// the first difference if any.
fn compare(
    gen_of: &DataGen,
    spans: &[(ChunkSpan, Option<AlignedBuf>)],
    expect: &[u8],
    off: u64,
    gen: u32,
) -> Option<String> {
    let mut covered = 0usize;
    let mut ok = true;
    for (s, b) in spans {
        let Some(exp) = expect.get(s.buf_off..s.buf_off + s.len) else {
            ok = false;
            break;
        };
        covered += s.len;
        ok &= match b {
            Some(b) => b.len() == s.len && b[..] == *exp,
            None => exp.iter().all(|&x| x == 0),
        };
        if !ok {
            break;
        }
    }
    if ok && covered == expect.len() {
        return None;
    }
    // Slow path: assemble what was read and describe the difference.
    let mut got = vec![0u8; expect.len()];
    let mut shape = Vec::new();
    for (s, b) in spans {
        shape.push(format!(
            "chunk {} +{}..+{}{}",
            s.chunk,
            s.off,
            s.off + s.len,
            if b.is_some() { "" } else { " (hole)" }
        ));
        if let (Some(b), Some(dst)) = (b, got.get_mut(s.buf_off..s.buf_off + s.len)) {
            let n = b.len().min(s.len);
            dst[..n].copy_from_slice(&b[..n]);
        }
    }
    if covered != expect.len() {
        return Some(format!(
            "verify: the {}-byte read at offset {off} returned spans covering {covered} bytes: {}",
            expect.len(),
            shape.join(", ")
        ));
    }
    let k = got.iter().zip(expect).position(|(a, b)| a != b)?;
    let hex = |b: &[u8]| {
        b.iter()
            .take(16)
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let blk = k / BLOCK_SIZE * BLOCK_SIZE;
    let got_blk = &got[blk..blk + BLOCK_SIZE];
    let voff_blk = off + blk as u64;
    let holds = if got_blk.iter().all(|&x| x == 0) {
        "zeros (a hole, or never written)".to_string()
    } else {
        let mut tmp = vec![0u8; BLOCK_SIZE];
        (1..gen)
            .rev()
            .take(64)
            .find(|&g| {
                gen_of.fill(g as u64, voff_blk, &mut tmp);
                tmp == got_blk
            })
            .map_or_else(
                || "bytes of none of its recent generations".to_string(),
                |g| format!("generation {g} (a stale, earlier write)"),
            )
    };
    Some(format!(
        "verify MISMATCH at volume offset {} (byte {k} of the {}-byte read at offset {off}), \
         expected generation {gen}\n  expected: {}\n  got:      {}\n  \
         the 4 KiB block at offset {voff_blk} holds {holds}; spans: {}",
        off + k as u64,
        expect.len(),
        hex(&expect[k..]),
        hex(&got[k..]),
        shape.join(", ")
    ))
}

// ---------------------------------------------------------------------------
// Report

#[derive(Debug, Serialize)]
struct Lat {
    avg: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

#[derive(Debug, Serialize)]
struct OpReport {
    ios: u64,
    iops: f64,
    mib_s: f64,
    lat_us: Lat,
}

impl OpReport {
    fn new(s: &OpStats, secs: f64) -> Self {
        let q = |x: f64| s.hist.value_at_quantile(x);
        OpReport {
            ios: s.ios,
            iops: s.ios as f64 / secs,
            mib_s: s.bytes as f64 / MIB as f64 / secs,
            lat_us: Lat {
                avg: if s.ios > 0 {
                    s.lat_ns as f64 / s.ios as f64 / 1e3
                } else {
                    0.0
                },
                p50: q(0.5),
                p99: q(0.99),
                p999: q(0.999),
                max: s.hist.max(),
            },
        }
    }
}

#[derive(Debug, Serialize)]
struct Physical {
    /// Logical bytes the workload wrote, over the whole run (ramp and the
    /// I/Os in flight at the deadline included).
    logical_bytes_written: u64,
    /// Delta of the zones' `data_blocks_written` × 4 KiB over the same run:
    /// data blocks only (intent log, B+tree and checkpoint writes excluded).
    data_bytes_written: u64,
    data_bytes_per_logical_byte: f64,
}

#[derive(Debug, Serialize)]
struct Space {
    /// Data blocks in use (all volumes of the pool) after the run.
    live_data_bytes: u64,
    /// Logical bytes those blocks hold (mapped chunks).
    live_logical_bytes: u64,
    live_data_per_logical: f64,
}

#[derive(Debug, Serialize)]
struct Verify {
    /// Reads compared with the generator during the timed run (ramp and
    /// tail included).
    reads_verified_during_run: u64,
    /// Offsets written, each read back and compared after the run.
    offsets_written: u64,
    reads_verified_at_end: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    workload: Workload,
    io_size: u64,
    queue_depth: u32,
    reactors: usize,
    cores: Vec<usize>,
    time_s: u64,
    ramp_s: u64,
    pool: String,
    pool_bytes: u64,
    zones: u32,
    zone_bytes: u64,
    /// "reused", or how it was formatted.
    pool_setup: &'static str,
    volume: String,
    volume_bytes: u64,
    chunk_bytes: u64,
    compression: &'static str,
    read_pct: Option<u32>,
    compress_pct_target: u32,
    /// LZ4 output / input of the generated data, chunk by chunk.
    data_lz4_pct: f64,
    /// Share the engine stores (whole 4 KiB blocks, raw when compressing
    /// saves no block); 100 on uncompressed volumes.
    data_stored_pct: f64,
    prefill: bool,
    prefill_s: Option<f64>,
    elapsed_s: f64,
    read: Option<OpReport>,
    write: Option<OpReport>,
    total: OpReport,
    cpu_s: f64,
    cpu_s_per_million_ios: Option<f64>,
    physical: Option<Physical>,
    space: Space,
    verify: Option<Verify>,
    per_reactor_ios: Vec<u64>,
}

fn bench(
    o: &Opts,
    host: &Arc<PoolHost>,
    pool_setup: &'static str,
    handle: &ReactorsHandle,
    cores: &[usize],
    read_pct: Option<u32>,
    do_prefill: bool,
) -> Result<Report> {
    let nreact = handle.len();
    let comp = match o.compression {
        CompArg::Lz4 => Compression::Lz4,
        CompArg::Off => Compression::None,
    };
    let entry = if o.reuse {
        match host.volume(&o.volume) {
            Ok(e) => {
                if e.size != o.volume_size
                    || e.chunk_size() as u64 != o.chunk_size
                    || e.compression != comp
                {
                    eprintln!(
                        "sluice-perf: note: using the existing volume '{}' as it is: {}, {} \
                         chunks, compression {}",
                        e.name,
                        fmt_size(e.size),
                        fmt_size(e.chunk_size() as u64),
                        e.compression.name()
                    );
                }
                e
            }
            Err(EngineError::NotFound(_)) => {
                host.create_volume(&o.volume, o.volume_size, o.chunk_size, comp)?
            }
            Err(e) => return Err(e).context("looking up the volume"),
        }
    } else {
        host.create_volume(&o.volume, o.volume_size, o.chunk_size, comp)
            .with_context(|| {
                format!(
                    "creating volume '{}' ({}, {} chunks)",
                    o.volume,
                    fmt_bytes(o.volume_size),
                    fmt_bytes(o.chunk_size)
                )
            })?
    };
    let vol = VolInfo::from_entry(&entry);
    ensure!(!vol.read_only, "volume '{}' is read-only", o.volume);
    ensure!(
        o.io_size <= vol.size,
        "--io-size {} is larger than the volume ({})",
        fmt_bytes(o.io_size),
        fmt_bytes(vol.size)
    );

    // Data of the chosen compressibility.
    let cs = vol.chunk_size();
    let (random_pct, lz4_frac, mut stored_frac) = calibrate(o.compress_pct, cs);
    if vol.compression == Compression::None {
        stored_frac = 1.0;
    }
    let gen = DataGen::new(SEED, random_pct);
    let pool_len = (DATA_POOL.max(o.io_size as usize).max(PREFILL_IO as usize)
        + o.io_size.max(PREFILL_IO) as usize)
        .next_multiple_of(BLOCK_SIZE);
    let mut data = vec![0u8; pool_len];
    gen.fill(0, 0, &mut data);
    let data = Arc::new(data);

    // Sequential stripes: one per task, aligned to chunks where they fit.
    let tasks = (nreact * o.queue_depth as usize) as u64;
    let per_task = vol.size / tasks;
    let align = o.io_size.max(cs as u64).next_multiple_of(o.io_size);
    let stripe = if per_task >= align {
        per_task / align * align
    } else {
        per_task / o.io_size * o.io_size
    };
    if matches!(o.workload, Workload::Read | Workload::Write) {
        ensure!(
            stripe > 0,
            "the volume ({}) is too small for {tasks} sequential tasks of {} I/Os",
            fmt_bytes(vol.size),
            fmt_bytes(o.io_size)
        );
    }

    let prefill_s = if do_prefill {
        Some(prefill(handle, host, vol, &data)?)
    } else {
        None
    };

    let before = host.report().context("pool report before the run")?;
    let locals = (0..nreact)
        .map(|_| Local::new())
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let measure_start = start + Duration::from_secs(o.ramp);
    let deadline = measure_start + Duration::from_secs(o.time);
    let job = Arc::new(Job {
        host: host.clone(),
        vol,
        workload: o.workload,
        io: o.io_size,
        qd: o.queue_depth as usize,
        nreact,
        read_pct: read_pct.unwrap_or(0),
        stripe: stripe.max(o.io_size),
        measure_start,
        deadline,
        data,
        gen,
        fail: Failures::default(),
    });
    let (tx, rx) = mpsc::channel::<(usize, Local)>();
    for (r, st) in locals.into_iter().enumerate() {
        let (job, tx) = (job.clone(), tx.clone());
        handle
            .send(r, move || {
                spawn_local(async move {
                    let out = reactor_run(job, r, st).await;
                    let _ = tx.send((r, out));
                })
                .detach();
            })
            .with_context(|| format!("sending the workload to reactor {r}"))?;
    }
    drop(tx);
    if !o.json {
        eprintln!(
            "sluice-perf: running {} for {} s after a {} s ramp ...",
            o.workload.name(),
            o.time,
            o.ramp
        );
    }
    let sleep_until = |t: Instant| {
        while !job.fail.aborted() {
            let now = Instant::now();
            if now >= t {
                break;
            }
            std::thread::sleep((t - now).min(Duration::from_millis(50)));
        }
    };
    sleep_until(measure_start);
    let cpu0 = cpu_seconds()?;
    sleep_until(deadline);
    let cpu1 = cpu_seconds()?;

    let mut results: Vec<Option<Local>> = (0..nreact).map(|_| None).collect();
    let mut got = 0;
    let wait_start = Instant::now();
    while got < nreact {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((r, l)) => {
                results[r] = Some(l);
                got += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => eprintln!(
                "sluice-perf: still waiting for {} reactor(s) to finish ({:.0} s after the \
                 deadline{})",
                nreact - got,
                wait_start.elapsed().as_secs_f64(),
                if o.workload == Workload::Verify {
                    "; the final read-back runs now"
                } else {
                    ""
                }
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{} reactor(s) stopped without reporting", nreact - got)
            }
        }
    }
    job.fail.check(o.workload.name())?;
    let me = host.clone();
    handle
        .call(0, move || async move { me.flush().await })
        .context("flushing after the run")?
        .context("flushing after the run")?;
    let after = host.report().context("pool report after the run")?;
    if !after.failed_zones.is_empty() {
        bail!("zones failed during the run: {:?}", after.failed_zones);
    }

    // Merge.
    let mut read = OpStats::new()?;
    let mut write = OpStats::new()?;
    let (mut all_written, mut vrun, mut vfinal, mut voffs) = (0, 0, 0, 0);
    let mut per_reactor_ios = Vec::new();
    for l in results.into_iter().flatten() {
        read.add(&l.read)?;
        write.add(&l.write)?;
        all_written += l.all_written;
        vrun += l.verified_run;
        vfinal += l.verified_final;
        voffs += l.offsets_written;
        per_reactor_ios.push(l.read.ios + l.write.ios);
    }
    let mut total = OpStats::new()?;
    total.add(&read)?;
    total.add(&write)?;
    let secs = o.time as f64;
    let cpu_s = cpu1 - cpu0;
    let dbw = after
        .stats
        .data_blocks_written
        .saturating_sub(before.stats.data_blocks_written)
        * BLOCK_SIZE as u64;
    let geo = host.geometry();
    Ok(Report {
        workload: o.workload,
        io_size: o.io_size,
        queue_depth: o.queue_depth,
        reactors: nreact,
        cores: cores.to_vec(),
        time_s: o.time,
        ramp_s: o.ramp,
        pool: o.pool.display().to_string(),
        pool_bytes: after.size_bytes,
        zones: geo.nzones,
        zone_bytes: geo.zone_blocks as u64 * BLOCK_SIZE as u64,
        pool_setup,
        volume: entry.name.clone(),
        volume_bytes: vol.size,
        chunk_bytes: cs as u64,
        compression: vol.compression.name(),
        read_pct,
        compress_pct_target: o.compress_pct,
        data_lz4_pct: lz4_frac * 100.0,
        data_stored_pct: stored_frac * 100.0,
        prefill: do_prefill,
        prefill_s,
        elapsed_s: secs,
        read: o.workload.reads().then(|| OpReport::new(&read, secs)),
        write: o.workload.writes().then(|| OpReport::new(&write, secs)),
        total: OpReport::new(&total, secs),
        cpu_s,
        cpu_s_per_million_ios: (total.ios > 0).then(|| cpu_s / total.ios as f64 * 1e6),
        physical: (o.workload.writes() && all_written > 0).then(|| Physical {
            logical_bytes_written: all_written,
            data_bytes_written: dbw,
            data_bytes_per_logical_byte: dbw as f64 / all_written as f64,
        }),
        space: Space {
            live_data_bytes: after.data_bytes,
            live_logical_bytes: after.logical_used_bytes,
            live_data_per_logical: if after.logical_used_bytes > 0 {
                after.data_bytes as f64 / after.logical_used_bytes as f64
            } else {
                0.0
            },
        },
        verify: (o.workload == Workload::Verify).then_some(Verify {
            reads_verified_during_run: vrun,
            offsets_written: voffs,
            reads_verified_at_end: vfinal,
        }),
        per_reactor_ios,
    })
}

fn render(r: &Report) -> String {
    let mut s = format!(
        "sluice-perf: {} {} I/Os, queue depth {} x {} reactor(s) on core(s) {}, {} s measured \
         after {} s ramp\n",
        r.workload.name(),
        fmt_size(r.io_size),
        r.queue_depth,
        r.reactors,
        fmt_cores(&r.cores),
        r.time_s,
        r.ramp_s
    );
    if let Some(p) = r.read_pct {
        s += &format!("  mix      {p} % reads\n");
    }
    s += &format!(
        "  pool     {} ({}, {} zones of {}, {})\n",
        r.pool,
        fmt_size(r.pool_bytes),
        r.zones,
        fmt_size(r.zone_bytes),
        r.pool_setup
    );
    s += &format!(
        "  volume   '{}': {}, {} chunks, compression {}, {}\n",
        r.volume,
        fmt_size(r.volume_bytes),
        fmt_size(r.chunk_bytes),
        r.compression,
        match r.prefill_s {
            Some(t) => format!("prefilled in {t:.1} s"),
            None if r.workload.reads() && r.workload != Workload::Verify =>
                "NOT prefilled (reads of never-written chunks are holes: no disk I/O)".into(),
            None => "not prefilled".into(),
        }
    );
    s += &format!(
        "  data     LZ4 compresses it to {:.1} % (target {} %); {}\n\n",
        r.data_lz4_pct,
        r.compress_pct_target,
        if r.compression == Compression::None.name() {
            "the volume stores it raw".to_string()
        } else if r.chunk_bytes as usize <= BLOCK_SIZE {
            "4 KiB chunks are stored raw".to_string()
        } else {
            format!("the engine stores {:.1} %", r.data_stored_pct)
        }
    );
    let mut t = Table::new([
        "op", "I/Os", "IOPS", "MiB/s", "avg us", "p50 us", "p99 us", "p99.9 us", "max us",
    ]);
    let mut row = |name: &str, x: &OpReport| {
        t.row([
            name.to_string(),
            x.ios.to_string(),
            format!("{:.0}", x.iops),
            format!("{:.1}", x.mib_s),
            format!("{:.1}", x.lat_us.avg),
            x.lat_us.p50.to_string(),
            x.lat_us.p99.to_string(),
            x.lat_us.p999.to_string(),
            x.lat_us.max.to_string(),
        ])
    };
    let both = r.read.is_some() && r.write.is_some();
    if let Some(x) = &r.read {
        row("read", x);
    }
    if let Some(x) = &r.write {
        row("write", x);
    }
    if both {
        row("total", &r.total);
    }
    s += &t.render();
    s += "\n";
    match r.cpu_s_per_million_ios {
        Some(c) => {
            s += &format!(
                "  CPU      {c:.2} CPU s per million I/Os ({:.2} CPU s in {:.0} s, {:.0} % of {} \
                 core(s); includes the reactors' idle spinning)\n",
                r.cpu_s,
                r.elapsed_s,
                r.cpu_s / r.elapsed_s * 100.0 / r.reactors as f64,
                r.reactors
            )
        }
        None => s += &format!("  CPU      {:.2} CPU s, no I/O completed\n", r.cpu_s),
    }
    if let Some(p) = &r.physical {
        s += &format!(
            "  physical {:.3} bytes of data blocks written per logical byte written ({} of \
             data blocks for {} written, whole run incl. ramp; intent-log and metadata writes \
             not counted)\n",
            p.data_bytes_per_logical_byte,
            fmt_bytes(p.data_bytes_written),
            fmt_bytes(p.logical_bytes_written)
        );
    }
    s += &format!(
        "  space    {} of live data blocks hold {} of mapped logical data ({:.3} per byte, \
         whole pool)\n",
        fmt_bytes(r.space.live_data_bytes),
        fmt_bytes(r.space.live_logical_bytes),
        r.space.live_data_per_logical
    );
    if let Some(v) = &r.verify {
        s += &format!(
            "  verify   {} reads verified during the run, then all {} offsets written read back \
             and verified ({} reads): no mismatch\n",
            v.reads_verified_during_run, v.offsets_written, v.reads_verified_at_end
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        assert_eq!(parse_cores("0-3,5").unwrap(), vec![0, 1, 2, 3, 5]);
        assert_eq!(parse_cores("1, 0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("7").unwrap(), vec![7]);
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores("x").is_err());
        assert!(parse_cores("").is_err());
    }

    #[test]
    fn calibration_hits_target() {
        for pct in [25u32, 50, 75] {
            let (_, f, _) = calibrate(pct, 65536);
            assert!((f * 100.0 - pct as f64).abs() < 2.0, "{pct}: {f}");
        }
    }

    #[test]
    fn compare_finds_and_explains_differences() {
        let g = DataGen::new(3, 50);
        let (off, len) = (1 << 20, 3 * BLOCK_SIZE);
        let mut expect = vec![0u8; len];
        g.fill(5, off, &mut expect);
        // Two spans (4 KiB + 8 KiB), as a 4 KiB-chunk volume would return.
        let spans = |data: &[u8]| {
            vec![
                (
                    ChunkSpan {
                        chunk: 256,
                        off: 0,
                        len: BLOCK_SIZE,
                        buf_off: 0,
                    },
                    Some(AlignedBuf::from_slice(&data[..BLOCK_SIZE])),
                ),
                (
                    ChunkSpan {
                        chunk: 257,
                        off: 0,
                        len: 2 * BLOCK_SIZE,
                        buf_off: BLOCK_SIZE,
                    },
                    Some(AlignedBuf::from_slice(&data[BLOCK_SIZE..])),
                ),
            ]
        };
        assert!(compare(&g, &spans(&expect), &expect, off, 5).is_none());
        // The middle block holds an older generation.
        let mut stale = expect.clone();
        g.fill(
            3,
            off + BLOCK_SIZE as u64,
            &mut stale[BLOCK_SIZE..2 * BLOCK_SIZE],
        );
        let m = compare(&g, &spans(&stale), &expect, off, 5).unwrap();
        assert!(m.contains("MISMATCH") && m.contains("generation 3"), "{m}");
        // A hole where data must be.
        let mut hole = spans(&expect);
        hole[1].1 = None;
        let m = compare(&g, &hole, &expect, off, 5).unwrap();
        assert!(m.contains("zeros"), "{m}");
        // Spans that do not cover the request.
        let short = spans(&expect)[..1].to_vec();
        assert!(compare(&g, &short, &expect, off, 5)
            .unwrap()
            .contains("covering"));
    }

    #[test]
    fn payload_is_stamped() {
        let mut data = vec![0u8; 1 << 20];
        DataGen::new(1, 50).fill(0, 0, &mut data);
        let mut rng = SplitMix::new(1);
        let a = payload(&data, 8192, &mut rng);
        let b = payload(&data, 8192, &mut rng);
        assert_eq!(a.len(), 8192);
        assert_ne!(a[..], b[..]);
        let c = payload(&data, 512, &mut rng);
        assert_eq!(c.len(), 512);
    }
}
