//! `engine-open`: opening a pool is cheap and its memory is bounded.
//!
//! The claim under test: opening a pool, after a clean stop or after a crash,
//! reads the headers and superblocks and replays the logs, so its time grows
//! with log length and zone count and never with the amount of data stored;
//! and the metadata cache stays within its configured budget however much
//! data the pool holds.
//!
//! Phases, each in a fresh child process (this binary re-executed with the
//! hidden `--child ROLE`), so that every resident-memory figure belongs to
//! that phase alone and an "exit without close" is a real process exit:
//! 1. `write`: format a pool file, create a volume, write `--data` bytes in
//!    1 MiB writes, flush, close cleanly;
//! 2. `open`: open after the clean close (timed, with RSS and the I/O the open
//!    did), then look up every chunk of the volume (a full forward-map walk
//!    through the bounded cache) and report RSS again;
//! 3. `crash`: open, overwrite `--crash-data` bytes with new bytes, flush, and
//!    exit without closing: the logs now hold records a checkpoint never saw;
//! 4. `verify`: open after that crash (timed: this one replays), then read
//!    `--verify` bytes at random offsets and compare them with the generator.
//!
//! Data comes from [`DataGen`], a function of (seed, generation, offset), so
//! the verifying process needs no copy of what was written. Wrong data makes
//! the benchmark exit non-zero. Timings are printed, never asserted.

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use futures::executor::block_on;
use serde::{Deserialize, Serialize};
use sluice_engine::dev::FileDev;
use sluice_engine::{Compression, Pool, PoolOptions, PoolUsage, ZoneConfig};
use sluice_perf::datagen::{DataGen, SplitMix};
use sluice_perf::meter::{IoCounts, Metered};
use sluice_perf::procstat::{mem, Mem};
use sluice_perf::table::Table;
use sluice_perf::units::{fmt_bytes, fmt_ms, mb_per_s, parse_size};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Size of each write in the write phases.
const WRITE_IO: u64 = MIB;
const VOLUME: &str = "bench";

#[derive(Parser, Debug)]
#[command(about = "Open time and resident memory of a pool holding many GiB of data")]
struct Opts {
    /// Pool file (sparse); O_DIRECT needs a filesystem that supports it.
    #[arg(long, default_value = "/var/tmp/sluice-open-bench.img")]
    path: PathBuf,
    /// Logical bytes to write (rounded up to 1 MiB).
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    data: u64,
    /// Size of the (sparse) pool file.
    #[arg(long, default_value = "24G", value_parser = parse_size)]
    pool_size: u64,
    /// Zone size at format.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    zone_size: u64,
    /// Chunk size of the volume (4K..1M).
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    chunk_size: u64,
    /// Generate data that LZ4 compresses to about this percentage (1..=100).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100))]
    compress_pct: u32,
    /// Metadata cache budget per zone, in 4 KiB nodes.
    #[arg(long, default_value_t = 256)]
    cache_nodes: usize,
    /// Bytes overwritten (from offset 0) by the crash phase, then flushed
    /// but never checkpointed.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    crash_data: u64,
    /// Bytes read back and verified after the crash, at random offsets.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    verify: u64,
    /// Size of each verifying read (a multiple of 4 KiB).
    #[arg(long, default_value = "128K", value_parser = parse_size)]
    verify_io: u64,
    /// Use the page cache instead of O_DIRECT.
    #[arg(long)]
    buffered: bool,
    /// Seed of the data generator and of the read offsets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also run everything with `--scale-small` bytes of data on a pool of the
    /// same geometry, and compare the two opens.
    #[arg(long)]
    scale_check: bool,
    /// Data size of the small run of `--scale-check`.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    scale_small: u64,
    /// Keep the pool file afterwards.
    #[arg(long)]
    keep: bool,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Internal: run one phase (the parent re-executes itself).
    #[arg(long, hide = true, value_enum)]
    child: Option<Role>,
    /// Internal: the phase's configuration, as JSON.
    #[arg(long, hide = true)]
    child_cfg: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Write,
    Open,
    Crash,
    Verify,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Write => "write",
            Role::Open => "open",
            Role::Crash => "crash",
            Role::Verify => "verify",
        }
    }
}

/// What a child needs to know: one run's parameters, already validated.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cfg {
    path: PathBuf,
    data: u64,
    pool_size: u64,
    zone_size: u64,
    chunk_size: u64,
    compress_pct: u32,
    cache_nodes: usize,
    crash_data: u64,
    verify: u64,
    verify_io: u64,
    direct: bool,
    seed: u64,
}

impl Cfg {
    fn pool_options(&self) -> PoolOptions {
        PoolOptions {
            zone_size: self.zone_size,
            zone: ZoneConfig {
                cache_nodes: self.cache_nodes,
                ..ZoneConfig::default()
            },
        }
    }

    fn gen(&self) -> DataGen {
        DataGen::new(self.seed, self.compress_pct)
    }

    /// Generation of the byte at `off` once the crash phase has run.
    fn generation_at(&self, off: u64) -> u64 {
        u64::from(off < self.crash_data)
    }

    /// Expected bytes at `off` after the crash phase (its overwrite included).
    fn expected(&self, off: u64, out: &mut [u8]) {
        let g = self.gen();
        let end = off + out.len() as u64;
        let split = self.crash_data.clamp(off, end);
        let (a, b) = out.split_at_mut((split - off) as usize);
        g.fill(self.generation_at(off), off, a);
        g.fill(0, split, b);
    }
}

/// Figures of phase 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WriteReport {
    nzones: u32,
    format_s: f64,
    /// Time in `Pool::write` calls only (data generation excluded).
    write_s: f64,
    gen_s: f64,
    flush_s: f64,
    close_s: f64,
    usage: UsageFig,
    io: IoCounts,
    log_blocks_written: u64,
    checkpoints: u64,
    mem: Mem,
}

/// `PoolUsage` in a serializable form.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct UsageFig {
    size_bytes: u64,
    used_bytes: u64,
    data_bytes: u64,
    logical_used_bytes: u64,
}

impl From<PoolUsage> for UsageFig {
    fn from(u: PoolUsage) -> Self {
        UsageFig {
            size_bytes: u.size_bytes,
            used_bytes: u.used_bytes,
            data_bytes: u.data_bytes,
            logical_used_bytes: u.logical_used_bytes,
        }
    }
}

/// One timed `Pool::open` in a fresh process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenFig {
    open_s: f64,
    replayed: u64,
    /// Device I/O the open did (reads of headers, bitmaps, logs; writes and
    /// flushes of the checkpoint that ends every open).
    io: IoCounts,
    before: Mem,
    after: Mem,
}

/// Figures of phase 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenReport {
    open: OpenFig,
    /// Looking up every chunk (block_status over the whole volume).
    walk_s: f64,
    walk_chunks: u64,
    walk_mapped_bytes: u64,
    walk_io: IoCounts,
    after_walk: Mem,
    close_s: f64,
}

/// Figures of phase 3.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CrashReport {
    open_s: f64,
    write_s: f64,
    flush_s: f64,
    log_blocks_written: u64,
}

/// Figures of phase 4.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VerifyReport {
    open: OpenFig,
    reads: u64,
    read_bytes: u64,
    read_s: f64,
    bad_reads: u64,
    first_bad: Option<String>,
    after_reads: Mem,
}

/// Everything one run (one data size) measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunReport {
    cfg: Cfg,
    lz4_fraction: f64,
    lz4_stored_fraction: f64,
    file_allocated: u64,
    write: WriteReport,
    open: OpenReport,
    crash: CrashReport,
    verify: VerifyReport,
}

fn main() -> Result<()> {
    let opts = Opts::parse();
    if let Some(role) = opts.child {
        let cfg: Cfg = serde_json::from_str(opts.child_cfg.as_deref().context("--child-cfg")?)?;
        return run_child(role, &cfg);
    }
    let base = base_cfg(&opts)?;
    let mut runs = Vec::new();
    if opts.scale_check {
        ensure!(
            opts.scale_small >= base.verify_io,
            "--scale-small must be at least --verify-io"
        );
        let small = Cfg {
            data: round_up(opts.scale_small, MIB),
            ..base.clone()
        };
        let small = Cfg {
            crash_data: small.crash_data.min(small.data),
            ..small
        };
        // The small run shares the path; only the last run honours --keep.
        runs.push(run_suite(&small, false)?);
    }
    runs.push(run_suite(&base, opts.keep)?);

    if opts.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else {
        for r in &runs {
            print!("{}", render_run(r));
            println!();
        }
        if runs.len() > 1 {
            print!("{}", render_scale(&runs));
        }
    }
    if runs.iter().any(|r| r.verify.bad_reads > 0) {
        bail!("read-back verification FAILED: the engine returned wrong data");
    }
    Ok(())
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn base_cfg(o: &Opts) -> Result<Cfg> {
    let data = round_up(o.data, MIB);
    ensure!(data > 0, "--data must be positive");
    ensure!(
        o.verify_io > 0 && o.verify_io.is_multiple_of(4096) && o.verify_io <= data,
        "--verify-io must be a positive multiple of 4 KiB, at most --data"
    );
    ensure!(
        o.chunk_size.is_power_of_two() && (4096..=MIB).contains(&o.chunk_size),
        "--chunk-size must be a power of two from 4K to 1M"
    );
    Ok(Cfg {
        path: o.path.clone(),
        data,
        pool_size: o.pool_size,
        zone_size: o.zone_size,
        chunk_size: o.chunk_size,
        compress_pct: o.compress_pct,
        cache_nodes: o.cache_nodes,
        crash_data: round_up(o.crash_data, MIB).min(data),
        verify: o.verify,
        verify_io: o.verify_io,
        direct: !o.buffered,
        seed: o.seed,
    })
}

/// Run the four phases for one configuration; deletes the pool file unless
/// `keep`.
fn run_suite(cfg: &Cfg, keep: bool) -> Result<RunReport> {
    eprintln!(
        "== engine-open: {} of data on {} ({} pool, chunk {}, {} % random bytes)",
        fmt_bytes(cfg.data),
        cfg.path.display(),
        fmt_bytes(cfg.pool_size),
        fmt_bytes(cfg.chunk_size),
        cfg.compress_pct
    );
    let _ = std::fs::remove_file(&cfg.path);
    let res = (|| -> Result<RunReport> {
        let sample = (64 * MIB / cfg.chunk_size).max(1) as usize;
        let (lz4_fraction, lz4_stored_fraction) =
            cfg.gen().lz4_fraction(cfg.chunk_size as usize, sample);
        let write: WriteReport = child(Role::Write, cfg)?;
        let file_allocated = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&cfg.path)?.blocks() * 512
        };
        let open: OpenReport = child(Role::Open, cfg)?;
        let crash: CrashReport = child(Role::Crash, cfg)?;
        let verify: VerifyReport = child(Role::Verify, cfg)?;
        Ok(RunReport {
            cfg: cfg.clone(),
            lz4_fraction,
            lz4_stored_fraction,
            file_allocated,
            write,
            open,
            crash,
            verify,
        })
    })();
    if !keep {
        let _ = std::fs::remove_file(&cfg.path);
    }
    res
}

/// Run one phase in a fresh process and parse the JSON line it prints.
fn child<T: for<'de> Deserialize<'de>>(role: Role, cfg: &Cfg) -> Result<T> {
    eprintln!("-- phase {} (child process)", role.name());
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("--child")
        .arg(role.name())
        .arg("--child-cfg")
        .arg(serde_json::to_string(cfg)?)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running phase {}", role.name()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    let parsed = line.map(serde_json::from_str::<T>);
    match (out.status.success(), parsed) {
        (true, Some(Ok(r))) => Ok(r),
        (_, Some(Err(e))) => bail!("phase {}: bad report: {e}", role.name()),
        (_, None) | (false, _) => bail!("phase {} failed: {}", role.name(), out.status),
    }
}

fn run_child(role: Role, cfg: &Cfg) -> Result<()> {
    let json = block_on(async {
        Ok::<_, anyhow::Error>(match role {
            Role::Write => serde_json::to_string(&phase_write(cfg).await?)?,
            Role::Open => serde_json::to_string(&phase_open(cfg).await?)?,
            Role::Crash => {
                // Report, then leave without closing the pool (no checkpoint,
                // no destructors): what a crash after a flush leaves behind.
                let r = phase_crash(cfg).await?;
                let mut so = std::io::stdout().lock();
                writeln!(so, "{}", serde_json::to_string(&r)?)?;
                so.flush()?;
                std::process::exit(0);
            }
            Role::Verify => serde_json::to_string(&phase_verify(cfg).await?)?,
        })
    })?;
    println!("{json}");
    Ok(())
}

type Dev = Metered<FileDev>;

fn open_dev(cfg: &Cfg) -> Result<Rc<Dev>> {
    let f = FileDev::open(&cfg.path, cfg.direct)
        .with_context(|| format!("opening {}", cfg.path.display()))?;
    Ok(Rc::new(Metered::new(f)))
}

/// Open the pool, measuring time, memory and I/O of the open alone.
async fn timed_open(cfg: &Cfg) -> Result<(Pool<Dev>, Rc<Dev>, OpenFig)> {
    let before = mem();
    let dev = open_dev(cfg)?;
    let t = Instant::now();
    let pool = Pool::open(dev.clone(), &cfg.pool_options()).await?;
    let open_s = t.elapsed().as_secs_f64();
    let after = mem();
    let replayed = pool
        .zones()
        .iter()
        .map(|z| z.stats().replayed_records)
        .sum();
    let fig = OpenFig {
        open_s,
        replayed,
        io: dev.counts(),
        before,
        after,
    };
    Ok((pool, dev, fig))
}

/// Write generation `generation` over `[0, len)` in 1 MiB writes; returns
/// (seconds in `Pool::write`, seconds generating data).
async fn write_range(
    pool: &Pool<Dev>,
    cfg: &Cfg,
    generation: u64,
    len: u64,
) -> Result<(Duration, Duration)> {
    let vol = pool.volume(VOLUME)?;
    let g = cfg.gen();
    let mut buf = vec![0u8; WRITE_IO as usize];
    let (mut in_write, mut in_gen) = (Duration::ZERO, Duration::ZERO);
    let mut last_report = Instant::now();
    let mut off = 0;
    while off < len {
        let n = WRITE_IO.min(len - off) as usize;
        let t = Instant::now();
        g.fill(generation, off, &mut buf[..n]);
        let t1 = Instant::now();
        pool.write(&vol, off, &buf[..n]).await?;
        in_gen += t1 - t;
        in_write += t1.elapsed();
        off += n as u64;
        if last_report.elapsed() >= Duration::from_secs(10) || off == len {
            last_report = Instant::now();
            eprintln!(
                "   wrote {} / {}  ({:.0} MB/s in the engine)",
                fmt_bytes(off),
                fmt_bytes(len),
                mb_per_s(off, in_write.as_secs_f64())
            );
        }
    }
    Ok((in_write, in_gen))
}

async fn phase_write(cfg: &Cfg) -> Result<WriteReport> {
    let f = FileDev::create(&cfg.path, cfg.pool_size, cfg.direct)
        .with_context(|| format!("creating {}", cfg.path.display()))?;
    let dev = Rc::new(Metered::new(f));
    let t = Instant::now();
    let pool = Pool::format(dev.clone(), &cfg.pool_options()).await?;
    let format_s = t.elapsed().as_secs_f64();
    pool.create_volume(VOLUME, cfg.data, cfg.chunk_size, Compression::Lz4)
        .await?;
    let (write, gen) = write_range(&pool, cfg, 0, cfg.data).await?;
    let t = Instant::now();
    pool.flush().await?;
    let flush_s = t.elapsed().as_secs_f64();
    let usage = pool.usage().into();
    let nzones = pool.zones().len() as u32;
    let t = Instant::now();
    let stats: Vec<_> = pool.zones().iter().map(|z| z.stats()).collect();
    pool.close().await?;
    let close_s = t.elapsed().as_secs_f64();
    Ok(WriteReport {
        nzones,
        format_s,
        write_s: write.as_secs_f64(),
        gen_s: gen.as_secs_f64(),
        flush_s,
        close_s,
        usage,
        io: dev.counts(),
        log_blocks_written: stats.iter().map(|s| s.log_blocks_written).sum(),
        // The close adds one checkpoint per zone, not counted here.
        checkpoints: stats.iter().map(|s| s.checkpoints).sum(),
        mem: mem(),
    })
}

async fn phase_open(cfg: &Cfg) -> Result<OpenReport> {
    let (pool, dev, open) = timed_open(cfg).await?;
    // Look up every chunk: the whole forward map passes through the cache,
    // which must stay within its budget.
    let vol = pool.volume(VOLUME)?;
    let io0 = dev.counts();
    let t = Instant::now();
    let runs = pool.block_status(&vol, 0, vol.size).await?;
    let walk_s = t.elapsed().as_secs_f64();
    let walk_io = dev.counts() - io0;
    let after_walk = mem();
    let walk_mapped_bytes = runs.iter().filter(|r| r.2).map(|r| r.1).sum();
    let t = Instant::now();
    pool.close().await?;
    Ok(OpenReport {
        open,
        walk_s,
        walk_chunks: vol.nchunks(),
        walk_mapped_bytes,
        walk_io,
        after_walk,
        close_s: t.elapsed().as_secs_f64(),
    })
}

async fn phase_crash(cfg: &Cfg) -> Result<CrashReport> {
    let (pool, _dev, open) = timed_open(cfg).await?;
    let (write, _gen) = write_range(&pool, cfg, 1, cfg.crash_data).await?;
    let t = Instant::now();
    pool.flush().await?;
    let flush_s = t.elapsed().as_secs_f64();
    let stats: Vec<_> = pool.zones().iter().map(|z| z.stats()).collect();
    let r = CrashReport {
        open_s: open.open_s,
        write_s: write.as_secs_f64(),
        flush_s,
        log_blocks_written: stats.iter().map(|s| s.log_blocks_written).sum(),
    };
    // Deliberately not closed: the caller exits the process.
    std::mem::forget(pool);
    Ok(r)
}

async fn phase_verify(cfg: &Cfg) -> Result<VerifyReport> {
    let (pool, _dev, open) = timed_open(cfg).await?;
    let vol = pool.volume(VOLUME)?;
    let io = cfg.verify_io;
    let nreads = cfg.verify.div_ceil(io).max(1);
    let mut rng = SplitMix::new(cfg.seed ^ 0x5EED_0F0F_F5E7);
    let mut got = vec![0u8; io as usize];
    let mut want = vec![0u8; io as usize];
    let (mut read_time, mut bad, mut first_bad) = (Duration::ZERO, 0u64, None);
    for i in 0..nreads {
        // A quarter of the reads land in the range the crash phase rewrote,
        // so replayed records are checked, not only checkpointed ones.
        let region = if i % 4 == 0 && cfg.crash_data >= io {
            cfg.crash_data
        } else {
            cfg.data
        };
        let off = rng.below((region - io) / 4096 + 1) * 4096;
        let t = Instant::now();
        pool.read(&vol, off, &mut got).await?;
        read_time += t.elapsed();
        cfg.expected(off, &mut want);
        if got != want {
            bad += 1;
            if first_bad.is_none() {
                let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                first_bad = Some(format!(
                    "read of {io} bytes at offset {off}: first wrong byte at offset {} \
                     (generation {} expected)",
                    off + at as u64,
                    cfg.generation_at(off + at as u64)
                ));
            }
        }
    }
    let after_reads = mem();
    pool.close().await?;
    Ok(VerifyReport {
        open,
        reads: nreads,
        read_bytes: nreads * io,
        read_s: read_time.as_secs_f64(),
        bad_reads: bad,
        first_bad,
        after_reads,
    })
}

fn io_summary(io: &IoCounts) -> String {
    format!(
        "read {} in {} I/Os ({}), wrote {} in {} ({}), {} flushes ({})",
        fmt_bytes(io.read_bytes),
        io.reads,
        fmt_ms(io.read_ns as f64 / 1e9),
        fmt_bytes(io.write_bytes),
        io.writes,
        fmt_ms(io.write_ns as f64 / 1e9),
        io.flushes,
        fmt_ms(io.flush_ns as f64 / 1e9),
    )
}

fn render_run(r: &RunReport) -> String {
    let c = &r.cfg;
    let w = &r.write;
    let u = &w.usage;
    let mut t = Table::new(["engine-open", "figure"]).text();
    t.row([
        "pool".to_string(),
        format!(
            "{} ({} zones of {}), chunk {}, lz4, {}",
            fmt_bytes(u.size_bytes),
            w.nzones,
            fmt_bytes(c.zone_size),
            fmt_bytes(c.chunk_size),
            if c.direct { "O_DIRECT" } else { "buffered" }
        ),
    ]);
    t.row([
        "metadata cache budget".to_string(),
        format!(
            "{} nodes/zone x {} zones = {} of 4 KiB nodes",
            c.cache_nodes,
            w.nzones,
            fmt_bytes(c.cache_nodes as u64 * 4096 * w.nzones as u64),
        ),
    ]);
    t.row([
        "data generator".to_string(),
        format!(
            "{} % random bytes: lz4 size {:.1} %, block-rounded {:.1} %",
            c.compress_pct,
            r.lz4_fraction * 100.0,
            r.lz4_stored_fraction * 100.0
        ),
    ]);
    t.row(["data written (logical)".to_string(), fmt_bytes(c.data)]);
    t.row([
        "physical used".to_string(),
        format!(
            "{} = {} chunk data + {} fixed per-zone regions (superblocks, bitmaps, log, metadata area) and pool header; the file allocates {}",
            fmt_bytes(u.used_bytes),
            fmt_bytes(u.data_bytes),
            fmt_bytes(u.used_bytes - u.data_bytes),
            fmt_bytes(r.file_allocated)
        ),
    ]);
    t.row([
        "ratio physical/logical".to_string(),
        format!(
            "{:.3} data only, {:.3} all used blocks",
            u.data_bytes as f64 / u.logical_used_bytes.max(1) as f64,
            u.used_bytes as f64 / u.logical_used_bytes.max(1) as f64
        ),
    ]);
    t.row([
        "write throughput".to_string(),
        format!(
            "{:.0} MB/s logical in Pool::write ({:.1} s; generator {:.1} s excluded); flush {}, close {}",
            mb_per_s(c.data, w.write_s),
            w.write_s,
            w.gen_s,
            fmt_ms(w.flush_s),
            fmt_ms(w.close_s)
        ),
    ]);
    t.row([
        "writer memory".to_string(),
        format!(
            "RSS {} at end, peak {}",
            fmt_bytes(w.mem.rss),
            fmt_bytes(w.mem.hwm)
        ),
    ]);
    let o = &r.open.open;
    t.row([
        "open after clean close".to_string(),
        format!("{}, {} records replayed", fmt_ms(o.open_s), o.replayed),
    ]);
    t.row(["  its I/O".to_string(), io_summary(&o.io)]);
    t.row([
        "  RSS before -> after open".to_string(),
        format!(
            "{} -> {} (peak {})",
            fmt_bytes(o.before.rss),
            fmt_bytes(o.after.rss),
            fmt_bytes(o.after.hwm)
        ),
    ]);
    let ow = &r.open;
    t.row([
        "  full map walk".to_string(),
        format!(
            "{} chunks looked up in {:.2} s, {} mapped; read {} in {} I/Os",
            ow.walk_chunks,
            ow.walk_s,
            fmt_bytes(ow.walk_mapped_bytes),
            fmt_bytes(ow.walk_io.read_bytes),
            ow.walk_io.reads
        ),
    ]);
    t.row([
        "  RSS after walk".to_string(),
        format!(
            "{} (peak {})",
            fmt_bytes(ow.after_walk.rss),
            fmt_bytes(ow.after_walk.hwm)
        ),
    ]);
    let cr = &r.crash;
    t.row([
        "crash phase".to_string(),
        format!(
            "overwrote {} at {:.0} MB/s, flushed ({}), exited without close",
            fmt_bytes(c.crash_data),
            mb_per_s(c.crash_data, cr.write_s),
            fmt_ms(cr.flush_s)
        ),
    ]);
    let v = &r.verify;
    let vo = &v.open;
    t.row([
        "open after crash".to_string(),
        format!("{}, {} records replayed", fmt_ms(vo.open_s), vo.replayed),
    ]);
    t.row(["  its I/O".to_string(), io_summary(&vo.io)]);
    t.row([
        "  RSS before -> after open".to_string(),
        format!(
            "{} -> {} (peak {})",
            fmt_bytes(vo.before.rss),
            fmt_bytes(vo.after.rss),
            fmt_bytes(vo.after.hwm)
        ),
    ]);
    t.row([
        "read-back verify".to_string(),
        format!(
            "{} in {} reads of {} at random offsets: {:.0} MB/s, {}",
            fmt_bytes(v.read_bytes),
            v.reads,
            fmt_bytes(c.verify_io),
            mb_per_s(v.read_bytes, v.read_s),
            if v.bad_reads == 0 {
                "all bytes match".to_string()
            } else {
                format!(
                    "{} READS WRONG; {}",
                    v.bad_reads,
                    v.first_bad.as_deref().unwrap_or("")
                )
            }
        ),
    ]);
    t.row([
        "  RSS after reads".to_string(),
        format!(
            "{} (peak {})",
            fmt_bytes(v.after_reads.rss),
            fmt_bytes(v.after_reads.hwm)
        ),
    ]);
    t.render()
}

/// Side by side: the same pool geometry holding different amounts of data.
fn render_scale(runs: &[RunReport]) -> String {
    let mut t = Table::new([
        "scale check: data",
        "zones",
        "phys used",
        "open clean",
        "open read",
        "open crash",
        "replayed",
        "RSS open",
        "RSS walk",
        "peak",
    ]);
    for r in runs {
        let o = &r.open.open;
        let v = &r.verify.open;
        t.row([
            fmt_bytes(r.cfg.data),
            r.write.nzones.to_string(),
            fmt_bytes(r.write.usage.used_bytes),
            fmt_ms(o.open_s),
            fmt_bytes(o.io.read_bytes),
            fmt_ms(v.open_s),
            v.replayed.to_string(),
            fmt_bytes(o.after.rss),
            fmt_bytes(r.open.after_walk.rss),
            fmt_bytes(r.open.after_walk.hwm.max(r.verify.after_reads.hwm)),
        ]);
    }
    if let [a, b] = runs {
        let ratio = |x: f64, y: f64| if x > 0.0 { y / x } else { 0.0 };
        t.row([
            format!("ratio {:.1}x", ratio(a.cfg.data as f64, b.cfg.data as f64)),
            String::new(),
            format!(
                "{:.1}x",
                ratio(
                    a.write.usage.used_bytes as f64,
                    b.write.usage.used_bytes as f64
                )
            ),
            format!("{:.2}x", ratio(a.open.open.open_s, b.open.open.open_s)),
            format!(
                "{:.2}x",
                ratio(
                    a.open.open.io.read_bytes as f64,
                    b.open.open.io.read_bytes as f64
                )
            ),
            format!("{:.2}x", ratio(a.verify.open.open_s, b.verify.open.open_s)),
            String::new(),
            format!(
                "{:.2}x",
                ratio(a.open.open.after.rss as f64, b.open.open.after.rss as f64)
            ),
            format!(
                "{:.2}x",
                ratio(a.open.after_walk.rss as f64, b.open.after_walk.rss as f64)
            ),
            String::new(),
        ]);
    }
    t.render()
}
