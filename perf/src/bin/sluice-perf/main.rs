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
use sluice_perf::units::{fmt_bytes, fmt_size, parse_size};
use sluice_reactor::{spawn_local, PoolHost, Reactors, ReactorsHandle, RingConfig};
use std::cell::RefCell;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts heap allocations: the report's allocations per I/O.
#[global_allocator]
static ALLOC: sluice_reactor::alloc_count::CountingAlloc =
    sluice_reactor::alloc_count::CountingAlloc;

mod data;
mod load;
mod report;

use data::*;
use load::*;
use report::*;

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
        None => sluice_reactor::allowed_cores(),
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
        true, // formatting over the previous run's pool is the point
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
        .map(|_| ReactorFigures::new())
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
    let (tx, rx) = mpsc::channel::<(usize, ReactorFigures)>();
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
    let reactor_allocs = || handle.stats().iter().map(|s| s.heap_allocs).sum::<u64>();
    let (cpu0, allocs0) = (cpu_seconds()?, reactor_allocs());
    sleep_until(deadline);
    let (cpu1, allocs1) = (cpu_seconds()?, reactor_allocs());

    let mut results: Vec<Option<ReactorFigures>> = (0..nreact).map(|_| None).collect();
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
        allocs_per_io: (total.ios > 0).then(|| (allocs1 - allocs0) as f64 / total.ios as f64),
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
