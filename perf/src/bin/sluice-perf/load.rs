//! The load itself: prefill, and the per-reactor tasks of the measured run
//! (random/sequential I/O and the verify workload), with the failures they share.

use super::*;

#[derive(Default)]
pub(crate) struct Failures {
    pub(crate) abort: AtomicBool,
    pub(crate) io_errors: AtomicU64,
    pub(crate) mismatches: AtomicU64,
    pub(crate) messages: Mutex<Vec<String>>,
}

impl Failures {
    pub(crate) fn note(&self, msg: String) {
        self.abort.store(true, Ordering::Relaxed);
        if let Ok(mut m) = self.messages.lock() {
            if m.len() < MAX_MESSAGES {
                m.push(msg);
            }
        }
    }

    pub(crate) fn io_error(&self, what: &str, off: u64, len: u64, e: &EngineError) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
        self.note(format!("{what} of {len} bytes at offset {off} failed: {e}"));
    }

    pub(crate) fn mismatch(&self, msg: String) {
        self.mismatches.fetch_add(1, Ordering::Relaxed);
        self.note(msg);
    }

    pub(crate) fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Err with every message when anything failed.
    pub(crate) fn check(&self, phase: &str) -> Result<()> {
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

pub(crate) struct Prefill {
    pub(crate) host: Arc<PoolHost>,
    pub(crate) vol: VolInfo,
    pub(crate) data: Arc<Vec<u8>>,
    pub(crate) next: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) fail: Failures,
}

pub(crate) async fn prefill_task(pf: Arc<Prefill>, global_task: usize) {
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
pub(crate) fn prefill(
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
pub(crate) struct Job {
    pub(crate) host: Arc<PoolHost>,
    pub(crate) vol: VolInfo,
    pub(crate) workload: Workload,
    pub(crate) io: u64,
    pub(crate) qd: usize,
    pub(crate) nreact: usize,
    pub(crate) read_pct: u32,
    /// Bytes of volume each sequential task cycles through.
    pub(crate) stripe: u64,
    pub(crate) measure_start: Instant,
    pub(crate) deadline: Instant,
    pub(crate) data: Arc<Vec<u8>>,
    pub(crate) gen: DataGen,
    pub(crate) fail: Failures,
}

/// One kind of operation's figures on one reactor.
#[derive(Clone)]
pub(crate) struct OpStats {
    pub(crate) hist: Histogram<u64>,
    pub(crate) ios: u64,
    pub(crate) bytes: u64,
    pub(crate) lat_ns: u64,
}

impl OpStats {
    pub(crate) fn new() -> Result<Self> {
        Ok(OpStats {
            hist: Histogram::new_with_bounds(1, HIST_MAX_US, 3)
                .context("creating a latency histogram")?,
            ios: 0,
            bytes: 0,
            lat_ns: 0,
        })
    }

    pub(crate) fn add(&mut self, o: &OpStats) -> Result<()> {
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
pub(crate) struct ReactorFigures {
    pub(crate) read: OpStats,
    pub(crate) write: OpStats,
    /// Logical bytes written, ramp and tail included (for the
    /// physical/logical ratio, which is measured over the whole run).
    pub(crate) all_written: u64,
    pub(crate) verified_run: u64,
    pub(crate) verified_final: u64,
    pub(crate) offsets_written: u64,
}

impl ReactorFigures {
    pub(crate) fn new() -> Result<Self> {
        Ok(ReactorFigures {
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
    pub(crate) fn done(&mut self, job: &Job, is_read: bool, t0: Instant, t1: Instant) {
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
pub(crate) async fn reactor_run(job: Arc<Job>, r: usize, st: ReactorFigures) -> ReactorFigures {
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
pub(crate) async fn load_task(job: Arc<Job>, st: Rc<RefCell<ReactorFigures>>, g: usize) {
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
pub(crate) async fn verify_task(job: Arc<Job>, st: Rc<RefCell<ReactorFigures>>, g: usize) {
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
pub(crate) fn compare(
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
