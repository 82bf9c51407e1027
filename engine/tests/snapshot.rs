//! Snapshots and clones (`Pool::snapshot_volume`, `Pool::clone_volume`,
//! the zones' share jobs): a snapshot reads, forever, as its source did
//! when the call began, also when the source is written while the zones
//! are still filling it; clones are writable and leave the snapshot as it
//! was; any volume can be deleted in any order and every block comes back;
//! scrub stays clean; a reopen keeps it all.

#[path = "data_common.rs"]
mod data;

use data::random;
use futures::executor::block_on;
use sluice_engine::dev::MemDev;
use sluice_engine::{Compression, Error, Pool, PoolOptions, VolInfo, ZoneConfig};
use std::rc::Rc;

const K: usize = 1024;
const OPTS_DEV: u64 = 72 << 20;

fn opts() -> PoolOptions {
    PoolOptions {
        zone_size: 16 << 20,
        zone: ZoneConfig::default(),
    }
}

fn read(pool: &Pool<MemDev>, v: &VolInfo) -> Vec<u8> {
    let mut b = vec![0u8; v.size as usize];
    block_on(pool.read(v, 0, &mut b)).expect("read");
    b
}

/// `got == want`, else the first byte that differs (not both buffers).
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!("{what}: byte {i} is {} not {}", got[i], want[i]);
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

fn assert_clean(pool: &Pool<MemDev>) {
    let problems = block_on(pool.check(true)).expect("scrub");
    assert!(problems.is_empty(), "scrub: {problems:#?}");
}

/// A pool of four 16 MiB zones and volume `a` (4 KiB chunks, 4 MiB
/// striped over the zones, LZ4), written with incompressible data except its first
/// 64 KiB (holes).
fn pool_with_a() -> (Rc<MemDev>, Pool<MemDev>, VolInfo, Vec<u8>) {
    let dev = Rc::new(MemDev::new(OPTS_DEV));
    let o = opts();
    let pool = block_on(Pool::format(dev.clone(), &o)).expect("format");
    let a = block_on(pool.create_volume("a", (4 << 20) as u64, 4096, Compression::Lz4)).unwrap();
    let mut data = random(1, a.size as usize);
    data[..64 * K].fill(0);
    block_on(pool.write(&a, 64 * K as u64, &data[64 * K..])).unwrap();
    (dev, pool, a, data)
}

/// Overwrite, partly write, unmap and fill holes of `a` at chunks all
/// over it, the last chunk of the volume too; returns what `a` then holds.
fn scribble(pool: &Pool<MemDev>, a: &VolInfo, mut now: Vec<u8>, seed: u64) -> Vec<u8> {
    let size = a.size as usize;
    let writes = [
        (size - 4 * K, 4 * K),         // the last chunk
        (8 * K, 8 * K),                // two holes
        (size / 3 + 100, 5000),        // partial chunks (read-modify-write)
        (size / 2, 128 * K),           // a run
        (size / 10 * 7, 4 * K),        // one chunk
        (size / 4 * 3 + 4 * K, 4 * K), // another zone
    ];
    for (i, &(off, len)) in writes.iter().enumerate() {
        let d = random(seed * 10 + i as u64, len);
        block_on(pool.write(a, off as u64, &d)).unwrap();
        now[off..off + len].copy_from_slice(&d);
    }
    // Unmap (whole chunks become holes) and zero part of a chunk.
    for &(off, len) in &[(size / 10 * 9, 16 * K), (size / 5 * 2 + 512, 1024)] {
        block_on(pool.write_zeroes(a, off as u64, len as u64)).unwrap();
        now[off..off + len].fill(0);
    }
    now
}

#[test]
fn a_snapshot_keeps_the_point_in_time_while_the_source_is_written_during_the_fill() {
    let (_dev, pool, a, point) = pool_with_a();
    // The snapshot's volume, and each zone's job begun: the point in time.
    let s = block_on(pool.create_volume_in_family("s", a.size, &a)).unwrap();
    for z in pool.zones() {
        z.share_begin(&a, &s).unwrap();
    }
    // Writes of `a` before any step ran: each first advances its zone's
    // job past the chunk it changes.
    let now = scribble(&pool, &a, point.clone(), 2);
    for z in pool.zones() {
        assert!(z.share_running(s.id));
        block_on(z.share_run(s.id)).unwrap();
        assert!(!z.share_running(s.id));
    }
    same(
        &read(&pool, &s),
        &point,
        "the snapshot reads as a did at the point",
    );
    same(&read(&pool, &a), &now, "now");
    assert_clean(&pool);
    // Writes after the fill are ordinary copy-on-write.
    let later = scribble(&pool, &a, now, 3);
    same(&read(&pool, &s), &point, "point");
    same(&read(&pool, &a), &later, "later");
    assert_clean(&pool);
}

#[test]
fn snapshot_and_clone_share_blocks_and_any_delete_order_frees_them() {
    let orders: [[&str; 3]; 6] = [
        ["a", "s", "c"],
        ["a", "c", "s"],
        ["s", "a", "c"],
        ["s", "c", "a"],
        ["c", "a", "s"],
        ["c", "s", "a"],
    ];
    for order in orders {
        let (dev, pool, a, point) = pool_with_a();
        block_on(pool.flush()).unwrap();
        let used0 = pool.usage().data_bytes;
        let s = block_on(pool.snapshot_volume("a", "s")).unwrap();
        assert!(s.read_only);
        assert_eq!(
            pool.usage().data_bytes,
            used0,
            "a snapshot allocates no data"
        );
        let e = block_on(pool.write(&s, 0, &[1u8; 4096])).unwrap_err();
        assert!(matches!(e, Error::ReadOnly(_)), "{e}");

        let now = scribble(&pool, &a, point.clone(), 4);
        let c = block_on(pool.clone_volume("s", "c", false)).unwrap();
        assert!(!c.read_only);
        let cdata = scribble(&pool, &c, point.clone(), 5);
        same(&read(&pool, &s), &point, "point");
        same(&read(&pool, &a), &now, "now");
        same(&read(&pool, &c), &cdata, "cdata");
        assert_clean(&pool);

        // A clean reopen keeps it all.
        block_on(pool.close()).unwrap();
        let pool = block_on(Pool::open(dev.clone(), &opts())).expect("reopen");
        let vol = |n: &str| pool.volume(n).unwrap();
        same(&read(&pool, &vol("s")), &point, "point");
        same(&read(&pool, &vol("a")), &now, "now");
        same(&read(&pool, &vol("c")), &cdata, "cdata");

        let mut left = vec![("a", now), ("s", point.clone()), ("c", cdata)];
        for n in order {
            block_on(pool.delete_volume(n)).unwrap();
            left.retain(|(m, _)| *m != n);
            for (m, want) in &left {
                let what = format!("{m} after deleting {n} ({order:?})");
                same(&read(&pool, &vol(m)), want, &what);
            }
            assert_clean(&pool);
        }
        block_on(pool.flush()).unwrap();
        assert_eq!(pool.usage().data_bytes, 0, "{order:?}: every block freed");
        assert_eq!(pool.usage().logical_used_bytes, 0);
    }
}

#[test]
fn snapshots_of_clones_at_any_depth_read_as_their_point() {
    let (_dev, pool, _a, point) = pool_with_a();
    let mut expect = vec![("a".to_string(), point.clone())];
    let mut src = "a".to_string();
    let mut data = point;
    for depth in 0..4 {
        let snap = format!("s{depth}");
        block_on(pool.snapshot_volume(&src, &snap)).unwrap();
        expect.push((snap.clone(), data.clone()));
        let clone = format!("c{depth}");
        let c = block_on(pool.clone_volume(&snap, &clone, false)).unwrap();
        data = scribble(&pool, &c, data, 10 + depth);
        expect.push((clone.clone(), data.clone()));
        src = clone;
    }
    for (n, want) in &expect {
        same(&read(&pool, &pool.volume(n).unwrap()), want, n);
    }
    assert_clean(&pool);
}

#[test]
fn bad_snapshot_and_clone_calls_are_refused_and_change_nothing() {
    let (_dev, pool, _a, _) = pool_with_a();
    let e = block_on(pool.snapshot_volume("nope", "s")).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    block_on(pool.snapshot_volume("a", "s")).unwrap();
    let e = block_on(pool.snapshot_volume("a", "s")).unwrap_err();
    assert!(matches!(e, Error::Exists(_)), "{e}");
    let e = block_on(pool.snapshot_volume("a", "bad/name")).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    let e = block_on(pool.clone_volume("a", "c", false)).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(e.to_string().contains("writable"), "{e}");
    let names: Vec<String> = pool.volumes().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a", "s"]);
    assert_clean(&pool);
}
