//! The report: what a run measured, as JSON and as text.

use super::*;

#[derive(Debug, Serialize)]
pub(crate) struct Lat {
    pub(crate) avg: f64,
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct OpReport {
    pub(crate) ios: u64,
    pub(crate) iops: f64,
    pub(crate) mib_s: f64,
    pub(crate) lat_us: Lat,
}

impl OpReport {
    pub(crate) fn new(s: &OpStats, secs: f64) -> Self {
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
pub(crate) struct Physical {
    /// Logical bytes the workload wrote, over the whole run (ramp and the
    /// I/Os in flight at the deadline included).
    pub(crate) logical_bytes_written: u64,
    /// Delta of the zones' `data_blocks_written` × 4 KiB over the same run:
    /// data blocks only (intent log, B+tree and checkpoint writes excluded).
    pub(crate) data_bytes_written: u64,
    pub(crate) data_bytes_per_logical_byte: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Space {
    /// Data blocks in use (all volumes of the pool) after the run.
    pub(crate) live_data_bytes: u64,
    /// Logical bytes those blocks hold (mapped chunks).
    pub(crate) live_logical_bytes: u64,
    pub(crate) live_data_per_logical: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Verify {
    /// Reads compared with the generator during the timed run (ramp and
    /// tail included).
    pub(crate) reads_verified_during_run: u64,
    /// Offsets written, each read back and compared after the run.
    pub(crate) offsets_written: u64,
    pub(crate) reads_verified_at_end: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) workload: Workload,
    pub(crate) io_size: u64,
    pub(crate) queue_depth: u32,
    pub(crate) reactors: usize,
    pub(crate) cores: Vec<usize>,
    pub(crate) time_s: u64,
    pub(crate) ramp_s: u64,
    pub(crate) pool: String,
    pub(crate) pool_bytes: u64,
    pub(crate) zones: u32,
    pub(crate) zone_bytes: u64,
    /// "reused", or how it was formatted.
    pub(crate) pool_setup: &'static str,
    pub(crate) volume: String,
    pub(crate) volume_bytes: u64,
    pub(crate) chunk_bytes: u64,
    pub(crate) compression: &'static str,
    pub(crate) read_pct: Option<u32>,
    pub(crate) compress_pct_target: u32,
    /// LZ4 output / input of the generated data, chunk by chunk.
    pub(crate) data_lz4_pct: f64,
    /// Share the engine stores (whole 4 KiB blocks, raw when compressing
    /// saves no block); 100 on uncompressed volumes.
    pub(crate) data_stored_pct: f64,
    pub(crate) prefill: bool,
    pub(crate) prefill_s: Option<f64>,
    pub(crate) elapsed_s: f64,
    pub(crate) read: Option<OpReport>,
    pub(crate) write: Option<OpReport>,
    pub(crate) total: OpReport,
    pub(crate) cpu_s: f64,
    pub(crate) cpu_s_per_million_ios: Option<f64>,
    /// Heap allocations on the reactor threads during the measured window,
    /// per I/O completed in it (the hot path's target is 0).
    pub(crate) allocs_per_io: Option<f64>,
    pub(crate) physical: Option<Physical>,
    pub(crate) space: Space,
    pub(crate) verify: Option<Verify>,
    pub(crate) per_reactor_ios: Vec<u64>,
}

pub(crate) fn render(r: &Report) -> String {
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
    if let Some(a) = r.allocs_per_io {
        s += &format!("  heap     {a:.3} allocations per I/O (reactor threads, measured window)\n");
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
