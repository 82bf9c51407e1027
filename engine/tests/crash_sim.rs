//! Crash simulator: random workloads on a device that loses unflushed
//! writes, tears multi-block writes and can fail; crash at a random point
//! (sometimes again during recovery), recover, and check that
//! - every write replied before the last completed FLUSH reads back exactly,
//! - later writes read back as the old or the new data, per sector,
//! - a volume whose resize was cut short has the old or the new size, and
//!   what a shrink cut off reads as zeros (or, if the shrink did not finish,
//!   as before); a grow reads zeros,
//! - scrub (`check`, deep) finds nothing,
//! - each volume's space (`Pool::volume_space`) is what the data says: a
//!   chunk is mapped exactly when it holds a non-zero byte, it occupies at
//!   least one and at most chunk-size / 4 KiB blocks, and the volumes'
//!   blocks add up to the zones' data-block counters.
//!
//! The same space check (plus a scrub, which compares each zone's
//! per-volume table with its trees) also runs now and then during the
//! workload, so the table is checked both as kept up by commits and as
//! rebuilt after recovery.
//!
//! Volumes also share blocks: a new volume in a volume's family gets a
//! range of its chunks (`Pool::share`); the model says each shared sector
//! reads what the source held at the share (or zeros if the share was
//! lost in the crash), until either volume overwrites it. Scrub then also
//! checks every block's reference count against its owners, and the space
//! check counts a shared block once in the zones and once per volume.
//!
//! The workload also checks that after a shrink, I/O through a `VolInfo`
//! with the old size (an NBD connection opened before) is refused.
//!
//! After every crash one metadata block of the image is damaged (a random
//! byte flipped in even seeds, the whole block zeroed in odd ones): the pool
//! header, a catalog copy, a superblock, a bitmap, a log block or a B+tree
//! node. Every structure but the B+tree nodes is kept twice, so there
//! recovery must lose nothing; a damaged node may instead make recovery, a
//! read or scrub fail with an error naming the B+tree node (its repair is a
//! later step), but no read may ever return different bytes.
//!
//! Seeds: `SLUICE_CRASH_SEEDS=N` (default 2000) runs seeds 0..N;
//! `SLUICE_CRASH_SEED=S` replays one seed. A failure prints the command.

use futures::executor::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_engine::dev::{SimConfig, SimDev};
use sluice_engine::error::Structure;
use sluice_engine::format::{Geometry, PoolHeader};
use sluice_engine::{Compression, Error, Pool, PoolOptions, VolInfo, ZoneConfig, BLOCK_SIZE};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

const SECTOR: usize = 512;
const DEV_SIZE: u64 = 10 << 20;

/// What data a write id puts in a sector.
#[derive(Clone, Copy)]
enum Kind {
    Random,
    Compressible,
    Zero,
}

fn sector_data(w: u64, kind: Kind, sector: u64, out: &mut [u8]) {
    if w == 0 {
        out.fill(0);
        return;
    }
    let mut x = (w << 24) ^ sector ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match kind {
        Kind::Zero => out.fill(0),
        Kind::Random => {
            for c in out.chunks_mut(8) {
                c.copy_from_slice(&next().to_le_bytes()[..c.len()]);
            }
        }
        Kind::Compressible => {
            out.fill(0);
            // A tag so sectors differ, then a compressible body.
            out[..8].copy_from_slice(&next().to_le_bytes());
            out[8..16].copy_from_slice(&w.to_le_bytes());
            for (i, b) in out[16..].iter_mut().enumerate() {
                *b = (i % 7) as u8;
            }
        }
    }
}

struct VolModel {
    info: VolInfo,
    /// Per sector: acceptable write ids, the last one current (0 = zeros).
    cands: Vec<Vec<u64>>,
    /// The size a resize in flight at the crash would give (else `None`).
    resizing: Option<u64>,
}

impl VolModel {
    fn new(info: VolInfo) -> Self {
        VolModel {
            info,
            cands: vec![vec![0]; info.size as usize / SECTOR],
            resizing: None,
        }
    }

    /// The volume now has `info` (its size settled): sectors past a
    /// shrink are gone, sectors a grow adds read as zeros.
    fn resized(&mut self, info: VolInfo) {
        self.cands.resize(info.size as usize / SECTOR, vec![0]);
        self.info = info;
        self.resizing = None;
    }
}

struct Model {
    /// Ordered, so a seed replays the same choices.
    vols: BTreeMap<String, VolModel>,
    kinds: HashMap<u64, Kind>,
    /// Volumes whose create/delete was in flight at the crash.
    uncertain: Vec<String>,
    next_w: u64,
    flushes: u64,
    resizes: Resizes,
    /// An invariant the workload found broken (ends the episode).
    violation: Option<String>,
    /// Space checks passed.
    space_checks: u64,
    /// Snapshots and clones made.
    copies: u64,
    /// Chunks shared by completed shares.
    shared_chunks: u64,
}

/// What the resizes of an episode did.
#[derive(Default, Debug, Clone, Copy)]
struct Resizes {
    grows: u64,
    shrinks: u64,
    /// I/O with the pre-shrink size refused after a shrink.
    stale_refused: u64,
}

impl Model {
    fn flushed(&mut self) {
        for v in self.vols.values_mut() {
            for c in v.cands.iter_mut() {
                let last = *c.last().unwrap_or(&0);
                c.clear();
                c.push(last);
            }
        }
    }
}

/// Runtime settings vary by seed: small caches force node write-back and
/// eviction; large group commits give multi-block (tearable) log writes.
fn opts(seed: u64) -> PoolOptions {
    PoolOptions {
        zone_size: 2 << 20,
        zone: ZoneConfig {
            cache_nodes: [8, 24, 256][(seed % 3) as usize],
            max_pending_records: [16, 64, 400, 1000][(seed / 3 % 4) as usize],
        },
    }
}

fn pick_chunk(rng: &mut SmallRng) -> u64 {
    [4096u64, 16384, 65536][rng.gen_range(0..3)]
}

#[derive(Default, Debug)]
struct Totals {
    ops: u64,
    /// Power losses simulated: one per round plus those during recovery.
    crash_points: u64,
    flushes_before_crash: u64,
    sectors_verified: u64,
    exact_sectors: u64,
    replayed: u64,
    recovery_crashes: u64,
    nospace: u64,
    resizes: Resizes,
    /// Metadata blocks damaged after a crash, by structure.
    damaged: HashMap<&'static str, u64>,
    /// Snapshots and clones made.
    copies: u64,
    /// Damaged B+tree nodes that recovery, a read or scrub reported.
    damage_reported: u64,
    /// Per-volume space checks passed (during workloads and after recovery).
    space_checks: u64,
    /// Chunks shared between volumes by completed shares.
    shared_chunks: u64,
}

/// The structure a pool-absolute metadata block belongs to.
fn structure_of(g: &Geometry, blk: u64) -> &'static str {
    if blk == 0 || blk == g.header_backup_blk() {
        return "pool-header";
    }
    if blk < g.zone0_start {
        return "catalog";
    }
    let rel = ((blk - g.zone0_start) % g.zone_blocks as u64) as u32;
    if rel < g.bitmap_rel(0, 0) {
        "superblock"
    } else if rel < g.log_start {
        "bitmap"
    } else if rel < g.meta_start {
        "log"
    } else {
        "btree-node"
    }
}

/// Damage one written metadata block of `image`: flip a random byte, or
/// zero the block. Returns the block and its structure.
fn damage(image: &mut [u8], rng: &mut SmallRng, zero: bool) -> (u64, &'static str) {
    let dev_blocks = (image.len() / BLOCK_SIZE) as u64;
    let g = PoolHeader::decode(&image[..BLOCK_SIZE], dev_blocks)
        .expect("the pool header is intact before damage")
        .geo;
    let meta = (0..g.zone0_start).chain((0..g.nzones).flat_map(|z| {
        let g = &g;
        (0..g.data_start).map(move |r| g.abs(z, r))
    }));
    let written: Vec<u64> = meta
        .filter(|&b| {
            let o = b as usize * BLOCK_SIZE;
            image[o..o + BLOCK_SIZE].iter().any(|&x| x != 0)
        })
        .collect();
    let blk = written[rng.gen_range(0..written.len())];
    let o = blk as usize * BLOCK_SIZE;
    if zero {
        image[o..o + BLOCK_SIZE].fill(0);
    } else {
        image[o + rng.gen_range(0..BLOCK_SIZE)] ^= 1 << rng.gen_range(0..8);
    }
    (blk, structure_of(&g, blk))
}

/// Whether an error names a damaged B+tree node (or what it made
/// impossible to trust: its records checked against the others).
fn names_node(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt {
            structure: Structure::BtreeNode,
            ..
        }
    )
}

/// One episode: 1-3 rounds of workload, crash, recovery and verification.
/// Err(description) on a violated invariant.
fn episode(seed: u64, tot: &mut Totals) -> Result<(), String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dev = Rc::new(SimDev::new(
        DEV_SIZE,
        SimConfig {
            seed,
            ..Default::default()
        },
    ));
    let mut pool = block_on(Pool::format_with_uuid(dev.clone(), &opts(seed), [1; 16]))
        .map_err(|e| format!("format: {e}"))?;
    let mut dev = dev;
    let mut m = Model {
        vols: BTreeMap::new(),
        kinds: HashMap::new(),
        uncertain: vec![],
        next_w: 1,
        flushes: 0,
        resizes: Resizes::default(),
        violation: None,
        space_checks: 0,
        copies: 0,
        shared_chunks: 0,
    };
    let fill = seed % 7 == 3;
    let rounds = rng.gen_range(1..=3);
    for round in 0..rounds {
        let inject_errors = seed % 5 == 4;
        let nops = rng.gen_range(10..120);
        let crash_at = dev.ops() + rng.gen_range(1..(nops as u64 * 6));
        dev.configure(|c| {
            c.crash_after_ops = Some(crash_at);
            if inject_errors {
                c.write_error_rate = 0.01;
                c.read_error_rate = 0.005;
                c.flush_error_rate = 0.01;
            }
        });
        block_on(async {
            for i in 0..nops {
                let r = step(&pool, &mut m, &mut rng, round * 1000 + i, fill).await;
                tot.ops += 1;
                match r {
                    Ok(()) => {}
                    Err(Error::NoSpace(_)) => tot.nospace += 1,
                    Err(_) => break, // power lost or an injected error: crash here
                }
            }
        });
        if let Some(v) = m.violation.take() {
            return Err(format!("round {round}, during the workload: {v}"));
        }
        tot.flushes_before_crash += m.flushes;
        tot.crash_points += 1;
        dev.crash();
        let mut image = dev.crash_image();
        drop(pool);
        let (bad_blk, bad) = damage(&mut image, &mut rng, seed % 2 == 1);
        *tot.damaged.entry(bad).or_default() += 1;
        let node_damaged = bad == "btree-node";

        // Recover, possibly crashing during recovery too.
        let (p, d) = loop {
            let crash_again = rng.gen_bool(0.25);
            let d = Rc::new(SimDev::from_image(
                image.clone(),
                SimConfig {
                    seed: seed ^ (0xabc + round as u64),
                    ..Default::default()
                },
            ));
            if crash_again {
                d.configure(|c| c.crash_after_ops = Some(rng.gen_range(1..40)));
            }
            match block_on(Pool::open(d.clone(), &opts(seed))) {
                Ok(p) if !d.crashed() => {
                    d.configure(|c| c.crash_after_ops = None);
                    break (p, d);
                }
                Ok(_) | Err(_) if crash_again => {
                    tot.recovery_crashes += 1;
                    tot.crash_points += 1;
                    image = d.crash_image();
                }
                Err(e) if node_damaged && names_node(&e) => {
                    tot.damage_reported += 1;
                    return Ok(());
                }
                Err(e) => {
                    return Err(format!(
                        "round {round}: recovery failed after damage to {bad} block {bad_blk}: {e}"
                    ))
                }
                Ok(_) => unreachable!(),
            }
        };
        pool = p;
        dev = d;
        tot.replayed += pool
            .zones()
            .iter()
            .map(|z| z.stats().replayed_records)
            .sum::<u64>();
        let reported = verify(&pool, &mut m, tot, node_damaged)
            .map_err(|e| format!("round {round}, after damage to {bad} block {bad_blk}: {e}"))?;
        if reported {
            // The damaged node was found; what it held is not known any more.
            tot.damage_reported += 1;
            return Ok(());
        }
    }
    tot.space_checks += m.space_checks;
    tot.copies += m.copies;
    tot.shared_chunks += m.shared_chunks;
    tot.resizes.grows += m.resizes.grows;
    tot.resizes.shrinks += m.resizes.shrinks;
    tot.resizes.stale_refused += m.resizes.stale_refused;
    Ok(())
}

/// Scrub, then compare every sector with the model, chunk by chunk.
/// Afterwards the model holds exactly what was read (the state the next
/// round starts from). With `node_damaged`, scrub findings and read errors
/// that name a B+tree node are accepted (returns true when there were any);
/// a read that succeeds must still return exactly an acceptable write.
fn verify(
    pool: &Pool<SimDev>,
    m: &mut Model,
    tot: &mut Totals,
    node_damaged: bool,
) -> Result<bool, String> {
    let mut reported = false;
    match block_on(pool.check(true)) {
        Ok(problems) if problems.is_empty() => {}
        Ok(_) if node_damaged => reported = true,
        Err(e) if node_damaged && names_node(&e) => reported = true,
        Ok(problems) => {
            let p: Vec<String> = problems.iter().take(10).map(|p| p.to_string()).collect();
            return Err(format!("check found {} problems: {:#?}", problems.len(), p));
        }
        Err(e) => return Err(format!("check: {e}")),
    }
    let names: Vec<String> = pool.volumes().iter().map(|v| v.name.clone()).collect();
    let mut gone = Vec::new();
    let kinds = m.kinds.clone();
    for (name, vm) in m.vols.iter_mut() {
        let Ok(info) = pool.volume(name) else {
            if m.uncertain.contains(name) {
                gone.push(name.clone());
                continue;
            }
            return Err(format!("volume {name} vanished (have {names:?})"));
        };
        if m.uncertain.contains(name) && info.id != vm.info.id {
            // A snapshot or clone the crash left made: its id was not
            // known before the call.
            vm.info = info;
        }
        if info.id != vm.info.id {
            return Err(format!(
                "volume {name} has id {} not {}",
                info.id, vm.info.id
            ));
        }
        if info.size != vm.info.size && vm.resizing != Some(info.size) {
            return Err(format!(
                "volume {name} has size {} not {} (resizing to {:?})",
                info.size, vm.info.size, vm.resizing
            ));
        }
        vm.resized(info);
        let mut buf = vec![0u8; info.size as usize];
        let cs = info.chunk_size();
        let mut unreadable = vec![false; buf.len().div_ceil(cs)];
        for (c, piece) in buf.chunks_mut(cs).enumerate() {
            match block_on(pool.read(&info, (c * cs) as u64, piece)) {
                Ok(()) => {}
                Err(e) if node_damaged && names_node(&e) => {
                    reported = true;
                    unreadable[c] = true;
                }
                Err(e) => return Err(format!("read {name} chunk {c}: {e}")),
            }
        }
        let mut want = vec![0u8; SECTOR];
        for (s, cands) in vm.cands.iter_mut().enumerate() {
            if unreadable[s * SECTOR / cs] {
                continue;
            }
            let got = &buf[s * SECTOR..(s + 1) * SECTOR];
            let hit = cands.iter().rev().copied().find(|&w| {
                sector_data(
                    w,
                    kinds.get(&w).copied().unwrap_or(Kind::Zero),
                    s as u64,
                    &mut want,
                );
                want == got
            });
            tot.sectors_verified += 1;
            if cands.len() == 1 && cands[0] != 0 {
                tot.exact_sectors += 1;
            }
            match hit {
                Some(w) => *cands = vec![w],
                None => {
                    return Err(format!(
                        "volume {name} sector {s}: content matches none of the acceptable writes {cands:?}"
                    ))
                }
            }
        }
    }
    for n in &names {
        if !m.vols.contains_key(n) && !m.uncertain.contains(n) {
            return Err(format!("unexpected volume {n} after recovery"));
        }
    }
    // Settle volumes whose create/delete was cut short.
    for n in gone {
        m.vols.remove(&n);
    }
    let unsettled: Vec<String> = m.uncertain.drain(..).collect();
    for n in unsettled {
        if let (false, Ok(info)) = (m.vols.contains_key(&n), pool.volume(&n)) {
            {
                // A volume created just before the crash: it exists, empty.
                let mut buf = vec![0u8; info.size as usize];
                match block_on(pool.read(&info, 0, &mut buf)) {
                    Ok(()) => {}
                    Err(e) if node_damaged && names_node(&e) => {
                        reported = true;
                        continue;
                    }
                    Err(e) => return Err(format!("read {n}: {e}")),
                }
                if buf.iter().any(|&b| b != 0) {
                    return Err(format!("new volume {n} is not empty"));
                }
                m.vols.insert(n, VolModel::new(info));
            }
        }
    }
    // The rebuilt per-volume table against the data just read back.
    if !node_damaged {
        match block_on(space_matches(pool, m)) {
            Ok(()) => m.space_checks += 1,
            Err(SpaceCheck::Violated(v)) => return Err(format!("after recovery: {v}")),
            Err(SpaceCheck::Failed(e)) => return Err(format!("volume space: {e}")),
        }
    }
    Ok(reported)
}

enum SpaceCheck {
    /// The figures disagree with the data.
    Violated(String),
    /// The pool failed to answer (an I/O error or a crash).
    Failed(Error),
}

/// Each volume's space against the model's current data: a chunk is
/// mapped exactly when one of its sectors holds a write that is not zeros;
/// its blocks are between one and chunk-size / 4 KiB; the volumes' blocks
/// and logical bytes add up to the zones' counters.
async fn space_matches(pool: &Pool<SimDev>, m: &Model) -> Result<(), SpaceCheck> {
    let space = pool.volume_space().await.map_err(SpaceCheck::Failed)?;
    let bad = |s: String| Err(SpaceCheck::Violated(s));
    for (name, vm) in &m.vols {
        let cs = vm.info.chunk_size();
        let per_chunk = cs / SECTOR;
        let chunks = vm
            .cands
            .chunks(per_chunk)
            .filter(|secs| {
                secs.iter().any(|c| {
                    let w = *c.last().unwrap_or(&0);
                    w != 0 && !matches!(m.kinds.get(&w), Some(Kind::Zero) | None)
                })
            })
            .count() as u64;
        let got = space.get(&vm.info.id).copied().unwrap_or_default();
        let max_blocks = chunks * (cs / BLOCK_SIZE) as u64;
        if got.chunks != chunks || got.mapped_bytes != chunks * cs as u64 {
            return bad(format!(
                "volume {name}: {got:?}, but {chunks} of its {cs}-byte chunks hold data"
            ));
        }
        if got.data_blocks < chunks || got.data_blocks > max_blocks {
            return bad(format!(
                "volume {name}: {got:?}: {chunks} chunks need 1..={} blocks each",
                cs / BLOCK_SIZE
            ));
        }
    }
    let u = pool.usage();
    // A block shared n times counts in n volumes but once in the zones.
    let mut extra = 0u64;
    for z in pool.zones() {
        let t = z.tree_records().await.map_err(SpaceCheck::Failed)?;
        extra += t
            .refcount
            .iter()
            .map(|r| (r.refcount as u64 - 1) * r.len as u64 * BLOCK_SIZE as u64)
            .sum::<u64>();
    }
    let blocks: u64 = space.values().map(|s| s.allocated_bytes()).sum::<u64>() - extra;
    let logical: u64 = space.values().map(|s| s.mapped_bytes).sum();
    if blocks != u.data_bytes || logical != u.logical_used_bytes {
        return bad(format!(
            "volumes add up to {blocks} allocated (shared blocks once) / {logical} mapped \
             bytes, the zones count {} / {}",
            u.data_bytes, u.logical_used_bytes
        ));
    }
    Ok(())
}

async fn step(
    pool: &Pool<SimDev>,
    m: &mut Model,
    rng: &mut SmallRng,
    i: usize,
    fill: bool,
) -> Result<(), Error> {
    let live: Vec<String> = m.vols.keys().cloned().collect();
    let choice = if live.is_empty() {
        0
    } else {
        rng.gen_range(0..100)
    };
    match choice {
        0..=4 if m.vols.len() < 4 => {
            let name = format!("v{i}");
            let cs = pick_chunk(rng);
            let size = cs * rng.gen_range(4..if fill { 160 } else { 40 });
            let comp = if rng.gen_bool(0.7) {
                Compression::Lz4
            } else {
                Compression::None
            };
            m.uncertain.push(name.clone());
            let info = pool.create_volume(&name, size, cs, comp).await?;
            m.uncertain.retain(|n| n != &name);
            m.vols.insert(name, VolModel::new(info));
        }
        5..=6 if live.len() > 1 => {
            let name = live[rng.gen_range(0..live.len())].clone();
            m.uncertain.push(name.clone());
            pool.delete_volume(&name).await?;
            m.vols.remove(&name);
            m.uncertain.retain(|n| n != &name);
        }
        17..=20 => {
            let name = live[rng.gen_range(0..live.len())].clone();
            return resize(pool, m, rng, &name, fill).await;
        }
        7..=16 => {
            pool.flush().await?;
            m.flushes += 1;
            m.flushed();
        }
        24..=26 if m.vols.len() < 4 => {
            let src = live[rng.gen_range(0..live.len())].clone();
            return share(pool, m, rng, &src, &format!("s{i}")).await;
        }
        27..=29 if m.vols.len() < 5 => {
            let src = live[rng.gen_range(0..live.len())].clone();
            if !m.uncertain.contains(&src) {
                return copy(pool, m, &src, &format!("p{i}"), false).await;
            }
        }
        30..=31 if m.vols.len() < 5 => {
            let snaps: Vec<&String> = live
                .iter()
                .filter(|n| m.vols[*n].info.read_only && !m.uncertain.contains(n))
                .collect();
            if let Some(&src) = snaps.get(rng.gen_range(0..snaps.len().max(1))) {
                let src = src.clone();
                return copy(pool, m, &src, &format!("c{i}"), true).await;
            }
        }
        21..=23 => {
            // Space as the commits keep it, then a scrub that compares
            // each zone's per-volume table with its trees.
            match space_matches(pool, m).await {
                Ok(()) => m.space_checks += 1,
                Err(SpaceCheck::Failed(e)) => return Err(e),
                Err(SpaceCheck::Violated(v)) => {
                    m.violation = Some(v);
                    return Err(Error::Invalid("space check failed".into()));
                }
            }
            let problems = pool.check(false).await?;
            if !problems.is_empty() {
                let p: Vec<String> = problems.iter().take(10).map(|p| p.to_string()).collect();
                m.violation = Some(format!("scrub found {} problems: {p:#?}", problems.len()));
                return Err(Error::Invalid("scrub failed".into()));
            }
        }
        _ if live.iter().any(|n| !m.vols[n].info.read_only) => {
            let writable: Vec<&String> =
                live.iter().filter(|n| !m.vols[*n].info.read_only).collect();
            let name = writable[rng.gen_range(0..writable.len())];
            let (info, nsec) = {
                let v = &m.vols[name];
                (v.info, v.cands.len() as u64)
            };
            let start = rng.gen_range(0..nsec);
            let big = if fill { 4096 } else { 512 };
            let max = (nsec - start).min(if rng.gen_bool(0.3) { big } else { 40 });
            let n = rng.gen_range(1..=max);
            let op = rng.gen_range(0..10);
            let w = m.next_w;
            m.next_w += 1;
            let (kind, zeroing) = match op {
                0..=3 => (Kind::Random, false),
                4..=7 => (Kind::Compressible, false),
                8 => (Kind::Zero, false),
                _ => (Kind::Zero, true),
            };
            m.kinds.insert(w, kind);
            let mut data = vec![0u8; (n as usize) * SECTOR];
            for k in 0..n {
                sector_data(
                    w,
                    kind,
                    start + k,
                    &mut data[k as usize * SECTOR..(k as usize + 1) * SECTOR],
                );
            }
            {
                let v = m.vols.get_mut(name).unwrap();
                for k in start..start + n {
                    v.cands[k as usize].push(w);
                }
            }
            let r = if zeroing {
                pool.write_zeroes(&info, start * SECTOR as u64, n * SECTOR as u64)
                    .await
            } else {
                pool.write(&info, start * SECTOR as u64, &data).await
            };
            if let Err(Error::NoSpace(_)) = &r {
                // Part of the write may have landed: learn what each sector holds now.
                learn(pool, m, name, start, n).await?;
            }
            r?;
        }
        _ => {}
    }
    Ok(())
}

/// After a no-space error cut an operation short, read sectors
/// `start .. start + n` of `name` and make the candidate they hold (if
/// any) the current one.
async fn learn(
    pool: &Pool<SimDev>,
    m: &mut Model,
    name: &str,
    start: u64,
    n: u64,
) -> Result<(), Error> {
    let info = m.vols[name].info;
    let mut buf = vec![0u8; n as usize * SECTOR];
    pool.read(&info, start * SECTOR as u64, &mut buf).await?;
    let v = m.vols.get_mut(name).expect("live volume");
    let mut want = vec![0u8; SECTOR];
    for k in 0..n as usize {
        let c = &mut v.cands[start as usize + k];
        let got = &buf[k * SECTOR..(k + 1) * SECTOR];
        let cur = c.iter().rev().copied().find(|&cw| {
            let kk = m.kinds.get(&cw).copied().unwrap_or(Kind::Zero);
            sector_data(cw, kk, start + k as u64, &mut want);
            want == got
        });
        if let Some(cw) = cur {
            c.push(cw);
        }
    }
    Ok(())
}

/// Make `dst`, a new volume in `src`'s family of the same size, and share
/// a random range of `src`'s chunks into it. Each sector of the range then
/// reads as `src` holds it now, or (the share lost in a crash, or cut
/// short) as zeros.
async fn share(
    pool: &Pool<SimDev>,
    m: &mut Model,
    rng: &mut SmallRng,
    src: &str,
    dst: &str,
) -> Result<(), Error> {
    let s = m.vols[src].info;
    m.uncertain.push(dst.to_string());
    let d = pool.create_volume_in_family(dst, s.size, &s).await?;
    m.uncertain.retain(|n| n != dst);
    m.vols.insert(dst.to_string(), VolModel::new(d));
    let n = s.nchunks();
    let from = rng.gen_range(0..n);
    let to = rng.gen_range(from + 1..=n);
    let per = (s.chunk_size() / SECTOR) as u64;
    let (a, b) = (from * per, (to * per).min(s.size / SECTOR as u64));
    let now: Vec<u64> = m.vols[src].cands[a as usize..b as usize]
        .iter()
        .map(|c| *c.last().unwrap_or(&0))
        .collect();
    let v = m.vols.get_mut(dst).expect("just made");
    for (c, w) in v.cands[a as usize..b as usize].iter_mut().zip(now) {
        c.push(w);
    }
    match pool.share(&s, &d, from, to).await {
        Ok(n) => {
            m.shared_chunks += n;
            Ok(())
        }
        Err(Error::NoSpace(e)) => {
            learn(pool, m, dst, a, b - a).await?;
            Err(Error::NoSpace(e))
        }
        Err(e) => Err(e),
    }
}

/// Snapshot `src` as `dst` (or clone it, `clone`: `src` is a snapshot).
/// `dst` then reads, every sector, as `src` held it at the call, forever;
/// a crash or error before the call returns leaves it either so or gone.
async fn copy(
    pool: &Pool<SimDev>,
    m: &mut Model,
    src: &str,
    dst: &str,
    clone: bool,
) -> Result<(), Error> {
    let now: Vec<u64> = m.vols[src]
        .cands
        .iter()
        .map(|c| *c.last().unwrap_or(&0))
        .collect();
    // Known before the call: a crash may leave the copy made (the
    // catalog says so) even if the call did not return.
    let e = if clone {
        pool.volume(src)?
    } else {
        VolInfo {
            read_only: true,
            ..pool.volume(src)?
        }
    };
    let mut v = VolModel::new(e);
    for (c, w) in v.cands.iter_mut().zip(now) {
        *c = vec![w];
    }
    m.uncertain.push(dst.to_string());
    m.vols.insert(dst.to_string(), v);
    let r = if clone {
        pool.clone_volume(src, dst, false).await
    } else {
        pool.snapshot_volume(src, dst).await
    };
    let d = match r {
        Ok(d) => d,
        Err(Error::NoSpace(e)) => {
            // Given up and removed (or marked for the next open to
            // remove): the workload goes on without it.
            m.vols.remove(dst);
            return Err(Error::NoSpace(e));
        }
        // A crash: the copy is made or gone.
        Err(e) => return Err(e),
    };
    m.uncertain.retain(|n| n != dst);
    m.vols.get_mut(dst).expect("just added").info = d;
    m.copies += 1;
    Ok(())
}

/// Grow or shrink `name` to a random size (not always whole chunks), then,
/// after a shrink, try I/O past the new end with the old size.
async fn resize(
    pool: &Pool<SimDev>,
    m: &mut Model,
    rng: &mut SmallRng,
    name: &str,
    fill: bool,
) -> Result<(), Error> {
    let old = m.vols[name].info;
    let cs = old.chunk_size() as u64;
    let max_sec = cs * if fill { 160 } else { 40 } / SECTOR as u64;
    let size = rng.gen_range(1..=max_sec) * SECTOR as u64;
    let v = m.vols.get_mut(name).expect("live volume");
    v.resizing = Some(size);
    // Until the shrink is done, what it cuts off may already read as zeros.
    for c in v.cands.iter_mut().skip(size as usize / SECTOR) {
        c.push(0);
    }
    match pool.resize_volume(name, size).await {
        Ok(info) => {
            v.resized(info);
            if size < old.size {
                m.resizes.shrinks += 1;
            } else {
                m.resizes.grows += 1;
            }
        }
        // Zones may refuse I/O past the new end while the catalog has the
        // old size: the model cannot follow; end the round as a crash.
        Err(Error::NoSpace(e)) => return Err(Error::Invalid(format!("resize: {e}"))),
        Err(e) => return Err(e),
    }
    if size < old.size {
        let at = rng.gen_range(size / SECTOR as u64..old.size / SECTOR as u64) * SECTOR as u64;
        let len = (old.size - at).min(8 * SECTOR as u64);
        let data = vec![0x5a; len as usize];
        match pool.write(&old, at, &data).await {
            Err(Error::OutOfRange(_)) => m.resizes.stale_refused += 1,
            Ok(()) => panic!(
                "write at {at} with the old size {} accepted after a shrink to {size}",
                old.size
            ),
            Err(e) => return Err(e),
        }
        let mut buf = vec![0; len as usize];
        match pool.read(&old, at, &mut buf).await {
            Err(Error::OutOfRange(_)) => m.resizes.stale_refused += 1,
            Ok(()) => panic!(
                "read at {at} with the old size {} accepted after a shrink to {size}",
                old.size
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[test]
fn crash_simulator() {
    let seeds: Vec<u64> = match std::env::var("SLUICE_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("SLUICE_CRASH_SEED must be a number")],
        Err(_) => {
            let n: u64 = std::env::var("SLUICE_CRASH_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(2000);
            let first: u64 = std::env::var("SLUICE_CRASH_FIRST")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (first..first + n).collect()
        }
    };
    let t = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut tot = Totals::default();
    for &seed in &seeds {
        if let Err(e) = episode(seed, &mut tot) {
            eprintln!(
                "crash seed {seed} FAILED: {e}\n  replay: SLUICE_CRASH_SEED={seed} cargo test -p sluice-engine --test crash_sim -- --nocapture"
            );
            failures.push(seed);
            if failures.len() >= 5 {
                break;
            }
        }
    }
    eprintln!("{tot:?}");
    eprintln!(
        "crash simulator: {} seeds in {:.1}s, {} failed",
        seeds.len(),
        t.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    if seeds.len() >= 500 {
        // Every kind of metadata block was damaged somewhere, and damaged
        // nodes were reported (not only damaged where nothing reads them).
        for kind in [
            "pool-header",
            "catalog",
            "superblock",
            "bitmap",
            "log",
            "btree-node",
        ] {
            assert!(
                tot.damaged.get(kind).is_some_and(|&n| n > 0),
                "no {kind} damaged: {tot:?}"
            );
        }
        assert!(
            tot.damage_reported > 0,
            "no damaged node was reported: {tot:?}"
        );
        assert!(tot.shared_chunks > 0, "nothing was shared: {tot:?}");
        assert!(tot.copies > 0, "no snapshot or clone was made: {tot:?}");
    }
}
