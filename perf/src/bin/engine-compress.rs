//! `engine-compress`: the engine's compressing write path and decompressing
//! read path on one core, next to `lz4 -b1` on the same bytes.
//!
//! The question it answers: how much of LZ4's own speed survives the trip
//! through the engine (chunking, zero check, compression, crc32c, block
//! allocation, intent records, B+tree updates; on reads: lookup, crc32c,
//! decompression, copies)? The device is a `MemDev` (pre-faulted), so the
//! figures are CPU figures, not disk figures.
//!
//! For every chunk size it measures, on one thread:
//! - the engine: a fresh pool, one LZ4 volume of that chunk size, the whole
//!   data set written in 1 MiB writes plus a flush, then read back in 1 MiB
//!   reads (verified against the input outside the timed section);
//! - `lz4_flex`, the LZ4 the engine links, compressing and decompressing
//!   each chunk on its own: the codec's ceiling inside this process;
//! - the `lz4` CLI (`lz4 -b1 -B<chunk size>`): C LZ4, level 1, the input cut
//!   into independent blocks of the chunk size — the reference.
//!
//! Throughput is in MB/s of logical (uncompressed) bytes, MB = 10^6 bytes as
//! `lz4 -b` prints it; each figure is the best of `--runs`.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use futures::executor::block_on;
use serde::Serialize;
use sluice_engine::dev::{BlockDev, MemDev};
use sluice_engine::{AlignedBuf, Compression, Pool, PoolOptions};
use sluice_perf::datagen::stored_bytes;
use sluice_perf::table::Table;
use sluice_perf::units::{fmt_bytes, mb_per_s, parse_size};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// Size of each write and read issued to the engine.
const IO: usize = MIB;

#[derive(Parser, Debug)]
#[command(about = "Engine LZ4 write/read throughput on one core, next to `lz4 -b1`")]
struct Opts {
    /// Data set size (rounded down to 1 MiB). Built from files under
    /// `--source` dirs, repeated if they hold less; ignored with `--input`.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    size: u64,
    /// Use this file as the data set (its first `--size` bytes, whole MiBs).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Directories whose regular files, in sorted path order, are
    /// concatenated into the data set.
    #[arg(long, default_values = ["/usr/include", "/usr/share/doc"])]
    source: Vec<PathBuf>,
    /// Chunk sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "4K,16K,64K,256K", value_parser = parse_size)]
    chunks: Vec<u64>,
    /// Runs per measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// The lz4 command-line tool.
    #[arg(long, default_value = "/usr/bin/lz4")]
    lz4: PathBuf,
    /// Minimum seconds `lz4 -b` spends on each of compression and
    /// decompression (`-i#`).
    #[arg(long, default_value_t = 3)]
    lz4_secs: u32,
    /// Where the data set file for `lz4 -b` is written.
    #[arg(long, default_value = "/var/tmp/sluice-compress-bench.dat")]
    data_file: PathBuf,
    /// Keep the data set file afterwards.
    #[arg(long)]
    keep: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One chunk size's figures.
#[derive(Debug, Default, Serialize)]
struct Row {
    chunk: u64,
    engine_write_mbs: f64,
    engine_read_mbs: f64,
    /// Physical data blocks / logical bytes.
    engine_phys_pct: f64,
    flex_comp_mbs: f64,
    flex_decomp_mbs: f64,
    /// lz4_flex output / input.
    flex_pct: f64,
    /// lz4_flex output rounded to 4 KiB blocks by the engine's rule.
    flex_stored_pct: f64,
    lz4_comp_mbs: f64,
    lz4_decomp_mbs: f64,
    lz4_pct: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    data_bytes: u64,
    unique_bytes: u64,
    source: String,
    runs: u32,
    lz4_version: String,
    rows: Vec<Row>,
}

fn main() -> Result<()> {
    let o = Opts::parse();
    ensure!(o.runs > 0, "--runs must be at least 1");
    for &c in &o.chunks {
        ensure!(
            c.is_power_of_two() && (4096..=MIB as u64).contains(&c),
            "chunk size {c} must be a power of two from 4K to 1M"
        );
    }
    let (data, unique, source) = build_data(&o)?;
    ensure!(!data.is_empty(), "the data set is empty");
    std::fs::write(&o.data_file, &data)
        .with_context(|| format!("writing {}", o.data_file.display()))?;
    let res = run_all(&o, &data);
    if !o.keep {
        let _ = std::fs::remove_file(&o.data_file);
    }
    let rows = res?;
    let report = Report {
        data_bytes: data.len() as u64,
        unique_bytes: unique,
        source,
        runs: o.runs,
        lz4_version: lz4_version(&o.lz4),
        rows,
    };
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn run_all(o: &Opts, data: &[u8]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &chunk in &o.chunks {
        let cs = chunk as usize;
        eprintln!("-- chunk {}", fmt_bytes(chunk));
        let mut row = Row {
            chunk,
            ..Row::default()
        };
        for run in 0..o.runs {
            let e = block_on(engine_run(data, cs))?;
            eprintln!(
                "   engine run {}: write {:.0} MB/s, read {:.0} MB/s",
                run + 1,
                e.write_mbs,
                e.read_mbs
            );
            row.engine_write_mbs = row.engine_write_mbs.max(e.write_mbs);
            row.engine_read_mbs = row.engine_read_mbs.max(e.read_mbs);
            row.engine_phys_pct = e.phys_pct;
            let f = flex_run(data, cs)?;
            row.flex_comp_mbs = row.flex_comp_mbs.max(f.0);
            row.flex_decomp_mbs = row.flex_decomp_mbs.max(f.1);
            row.flex_pct = f.2;
            row.flex_stored_pct = f.3;
        }
        let (c, d, pct) = lz4_bench(o, cs)?;
        eprintln!("   lz4 -b1 -B{cs}: {c:.0} MB/s, {d:.0} MB/s, {pct:.1} %");
        row.lz4_comp_mbs = c;
        row.lz4_decomp_mbs = d;
        row.lz4_pct = pct;
        rows.push(row);
    }
    Ok(rows)
}

/// The data set: `--input`, or files of the source dirs concatenated (and
/// repeated to fill `--size`). Returns (data, unique bytes, description).
fn build_data(o: &Opts) -> Result<(Vec<u8>, u64, String)> {
    let want = (o.size as usize / MIB) * MIB;
    ensure!(want > 0, "--size must be at least 1 MiB");
    if let Some(p) = &o.input {
        let mut d = Vec::new();
        std::fs::File::open(p)
            .with_context(|| format!("opening {}", p.display()))?
            .take(want as u64)
            .read_to_end(&mut d)?;
        d.truncate(d.len() / MIB * MIB);
        let n = d.len() as u64;
        return Ok((d, n, p.display().to_string()));
    }
    let mut files = Vec::new();
    for dir in &o.source {
        collect_files(dir, &mut files);
    }
    files.sort();
    let mut d = Vec::with_capacity(want);
    for f in &files {
        if d.len() >= want {
            break;
        }
        if let Ok(mut file) = std::fs::File::open(f) {
            let _ = file
                .by_ref()
                .take((want - d.len()) as u64)
                .read_to_end(&mut d);
        }
    }
    let unique = d.len();
    ensure!(unique > 0, "no readable files under {:?}", o.source);
    // Repeat to fill: the copies lie far more than LZ4's 64 KiB window
    // apart, so they change no chunk's compressibility.
    while d.len() < want {
        let n = (want - d.len()).min(unique);
        d.extend_from_within(..n);
    }
    let desc = format!(
        "{} files under {}",
        files.len(),
        o.source
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((d, unique as u64, desc))
}

/// Regular files below `dir` (symlinks not followed).
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            collect_files(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

struct EngineRun {
    write_mbs: f64,
    read_mbs: f64,
    phys_pct: f64,
}

/// Write the data set through a fresh pool on a `MemDev`, flush, read it all
/// back; only the engine calls are timed.
async fn engine_run(data: &[u8], cs: usize) -> Result<EngineRun> {
    let zone = 256 * MIB as u64;
    // Room for the data stored raw plus per-zone fixed regions, in whole zones.
    let size = (2 * data.len() as u64).div_ceil(zone) * zone + 2 * zone;
    let dev = Rc::new(MemDev::new(size));
    prefault(&dev).await?;
    let pool = Pool::format(
        dev,
        &PoolOptions {
            zone_size: zone,
            ..PoolOptions::default()
        },
    )
    .await?;
    let vol = pool
        .create_volume("bench", data.len() as u64, cs as u64, Compression::Lz4)
        .await?;

    let t = Instant::now();
    for (i, piece) in data.chunks(IO).enumerate() {
        pool.write(&vol, (i * IO) as u64, piece).await?;
    }
    pool.flush().await?;
    let write_s = t.elapsed().as_secs_f64();
    let u = pool.usage();

    let mut buf = vec![0u8; IO];
    let mut read_time = Duration::ZERO;
    for (i, piece) in data.chunks(IO).enumerate() {
        let t = Instant::now();
        pool.read(&vol, (i * IO) as u64, &mut buf[..piece.len()])
            .await?;
        read_time += t.elapsed();
        if buf[..piece.len()] != *piece {
            bail!(
                "chunk size {cs}: read back of bytes {}..+{} differs from what was written",
                i * IO,
                piece.len()
            );
        }
    }
    Ok(EngineRun {
        write_mbs: mb_per_s(data.len() as u64, write_s),
        read_mbs: mb_per_s(data.len() as u64, read_time.as_secs_f64()),
        phys_pct: 100.0 * u.data_bytes as f64 / u.logical_used_bytes.max(1) as f64,
    })
}

/// Touch every page of the memory device so that page faults are not
/// charged to the engine's first writes.
async fn prefault(dev: &MemDev) -> Result<()> {
    let piece = 64 * MIB;
    let mut buf = AlignedBuf::zeroed(piece);
    let mut off = 0;
    while off < dev.size() {
        let n = piece.min((dev.size() - off) as usize);
        buf.set_len(n);
        let (b, r) = dev.write_at(buf, off).await;
        r?;
        buf = b;
        off += n as u64;
    }
    Ok(())
}

/// lz4_flex alone on each chunk: (compress MB/s, decompress MB/s, size %,
/// block-rounded size %).
fn flex_run(data: &[u8], cs: usize) -> Result<(f64, f64, f64, f64)> {
    let max = lz4_flex::block::get_maximum_output_size(cs);
    let nchunks = data.len().div_ceil(cs);
    // Filled (not calloc'ed) so first-touch page faults are not timed.
    let mut comp = vec![1u8; nchunks * max];
    let mut lens = Vec::with_capacity(nchunks);
    let t = Instant::now();
    for (c, out) in data.chunks(cs).zip(comp.chunks_mut(max)) {
        lens.push(lz4_flex::block::compress_into(c, out)?);
    }
    let comp_s = t.elapsed().as_secs_f64();
    let mut out = vec![0u8; cs];
    let t = Instant::now();
    for ((c, src), &n) in data.chunks(cs).zip(comp.chunks(max)).zip(&lens) {
        let m = lz4_flex::block::decompress_into(&src[..n], &mut out[..c.len()])?;
        ensure!(
            m == c.len(),
            "lz4_flex decompressed {m} bytes of {}",
            c.len()
        );
    }
    let decomp_s = t.elapsed().as_secs_f64();
    let total: usize = lens.iter().sum();
    let stored: usize = lens.iter().map(|&n| stored_bytes(cs, n)).sum();
    let len = data.len() as u64;
    Ok((
        mb_per_s(len, comp_s),
        mb_per_s(len, decomp_s),
        100.0 * total as f64 / len as f64,
        100.0 * stored as f64 / len as f64,
    ))
}

/// Run `lz4 -b1 -B<cs>` on the data file: (compress MB/s, decompress MB/s,
/// size %), parsed from its last progress line.
fn lz4_bench(o: &Opts, cs: usize) -> Result<(f64, f64, f64)> {
    let out = Command::new(&o.lz4)
        .arg("-b1")
        .arg(format!("-B{cs}"))
        .arg(format!("-i{}", o.lz4_secs))
        .arg(&o.data_file)
        .output()
        .with_context(|| format!("running {}", o.lz4.display()))?;
    ensure!(out.status.success(), "lz4 -b failed: {}", out.status);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    text.split(['\r', '\n'])
        .rev()
        .find_map(parse_lz4_line)
        .with_context(|| format!("no result line in lz4 output: {text:?}"))
}

/// Parse ` 1#name : 536870912 -> 268435456 (2.000), 700.0 MB/s , 3000.0 MB/s`.
fn parse_lz4_line(l: &str) -> Option<(f64, f64, f64)> {
    let (_, rest) = l.split_once(" : ")?;
    let (src, rest) = rest.split_once("->")?;
    let src: f64 = src.trim().parse().ok()?;
    let (dst, rest) = rest.trim_start().split_once(' ')?;
    let dst: f64 = dst.trim().parse().ok()?;
    let (_, speeds) = rest.split_once("),")?;
    let mut it = speeds
        .split("MB/s")
        .map(|s| s.trim().trim_start_matches(',').trim());
    let c: f64 = it.next()?.parse().ok()?;
    let d: f64 = it.next()?.parse().ok()?;
    Some((c, d, 100.0 * dst / src))
}

fn lz4_version(lz4: &Path) -> String {
    Command::new(lz4)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let s = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            s.split_whitespace()
                .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
                .map(|v| v.trim_end_matches(',').to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn render(r: &Report) -> String {
    let mut s = format!(
        "engine-compress: {} data set ({} unique, {}), one thread, best of {} runs; \
         lz4 {} -b1; MB = 10^6 bytes\n",
        fmt_bytes(r.data_bytes),
        fmt_bytes(r.unique_bytes),
        r.source,
        r.runs,
        r.lz4_version
    );
    let mut t = Table::new([
        "chunk",
        "engine wr MB/s",
        "engine rd MB/s",
        "engine phys %",
        "lz4_flex c MB/s",
        "lz4_flex d MB/s",
        "lz4_flex %",
        "(4K-rounded %)",
        "lz4 -b1 c MB/s",
        "lz4 -b1 d MB/s",
        "lz4 -b1 %",
        "wr/lz4 c",
        "rd/lz4 d",
    ]);
    for x in &r.rows {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        t.row([
            fmt_bytes(x.chunk),
            format!("{:.0}", x.engine_write_mbs),
            format!("{:.0}", x.engine_read_mbs),
            format!("{:.1}", x.engine_phys_pct),
            format!("{:.0}", x.flex_comp_mbs),
            format!("{:.0}", x.flex_decomp_mbs),
            format!("{:.1}", x.flex_pct),
            format!("{:.1}", x.flex_stored_pct),
            format!("{:.0}", x.lz4_comp_mbs),
            format!("{:.0}", x.lz4_decomp_mbs),
            format!("{:.1}", x.lz4_pct),
            format!("{:.2}", ratio(x.engine_write_mbs, x.lz4_comp_mbs)),
            format!("{:.2}", ratio(x.engine_read_mbs, x.lz4_decomp_mbs)),
        ]);
    }
    s += &t.render();
    s += "engine phys % = data blocks stored / logical bytes (whole 4 KiB blocks; a chunk is stored raw \
          unless LZ4 saves a block, so 4 KiB chunks are never compressed and their reads skip LZ4).\n";
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_lz4_bench_line() {
        let l = " 1#sluice-compress-b :  27017546 ->  27136176 (0.996),1474.0 MB/s ,9736.2 MB/s ";
        let (c, d, p) = super::parse_lz4_line(l).unwrap();
        assert_eq!((c, d), (1474.0, 9736.2));
        assert!((p - 100.44).abs() < 0.01, "{p}");
        assert!(super::parse_lz4_line(" 1#").is_none());
    }
}
