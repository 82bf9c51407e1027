//! UringDev and the ring's owned-buffer rule, on real O_DIRECT files.

use std::cell::Cell;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use sluice_engine::dev::{BlockDev, FileDev};
use sluice_engine::{AlignedBuf, BLOCK_SIZE};
use sluice_reactor::ring::current_stats;
use sluice_reactor::{block_on, sleep, spawn_local, yield_now, UringDev, UringDevOptions};

/// A file under /var/tmp (ext4 here: O_DIRECT works), removed on drop.
struct TmpFile(PathBuf);

impl TmpFile {
    fn new(name: &str, size: u64, fill: impl Fn(u64, &mut [u8])) -> TmpFile {
        let p = PathBuf::from(format!("/var/tmp/sluice-rt-{}-{name}", std::process::id()));
        let mut f = std::fs::File::create(&p).unwrap();
        let mut block = vec![0u8; BLOCK_SIZE];
        let mut chunk = Vec::with_capacity(1 << 20);
        for b in 0..size / BLOCK_SIZE as u64 {
            fill(b, &mut block);
            chunk.extend_from_slice(&block);
            if chunk.len() == 1 << 20 {
                f.write_all(&chunk).unwrap();
                chunk.clear();
            }
        }
        f.write_all(&chunk).unwrap();
        f.sync_all().unwrap();
        TmpFile(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Block `b` at version `v`: every u64 word distinct per (b, v, word).
fn stamp(b: u64, v: u64, out: &mut [u8]) {
    for (i, w) in out.chunks_exact_mut(8).enumerate() {
        let x = b
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(v.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
            .wrapping_add(i as u64);
        w.copy_from_slice(&x.to_le_bytes());
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn round_trip_against_filedev() {
    const SIZE: u64 = 16 << 20;
    let f = TmpFile::new("roundtrip", SIZE, |_, blk| blk.fill(0));
    let dev = UringDev::open(f.path()).unwrap();
    assert_eq!(dev.size(), SIZE);
    let cases: &[(u64, usize)] = &[
        (0, 4096),
        (4096 * 7, 65536),
        (1 << 20, 1 << 20),
        (SIZE - 8192, 8192),
        (5 << 20, 3 << 20),
    ];
    block_on(async {
        for (i, &(off, len)) in cases.iter().enumerate() {
            let mut b = AlignedBuf::zeroed(len);
            for (j, x) in b.iter_mut().enumerate() {
                *x = (j as u8).wrapping_mul(31).wrapping_add(i as u8 + 1);
            }
            let (_, r) = dev.write_at(b, off).await;
            r.unwrap();
        }
        dev.flush().await.unwrap();
    });
    // Written through the ring, read back with the engine's FileDev.
    let fdev = FileDev::open(f.path(), true).unwrap();
    futures::executor::block_on(async {
        for (i, &(off, len)) in cases.iter().enumerate() {
            let (b, r) = fdev.read_at(AlignedBuf::zeroed(len), off).await;
            r.unwrap();
            for (j, &x) in b.iter().enumerate() {
                assert_eq!(x, (j as u8).wrapping_mul(31).wrapping_add(i as u8 + 1));
            }
        }
        // Now the other way: FileDev writes, UringDev reads.
        let mut b = AlignedBuf::zeroed(1 << 20);
        stamp(42, 7, &mut b);
        let (_, r) = fdev.write_at(b, 9 << 20).await;
        r.unwrap();
        fdev.flush().await.unwrap();
    });
    block_on(async {
        let (b, r) = dev.read_at(AlignedBuf::zeroed(1 << 20), 9 << 20).await;
        r.unwrap();
        let mut want = vec![0u8; 1 << 20];
        stamp(42, 7, &mut want);
        assert!(b[..] == want[..]);
        // Untouched areas are still zero.
        let (b, r) = dev.read_at(AlignedBuf::zeroed(4096), 12 << 20).await;
        r.unwrap();
        assert!(b.iter().all(|&x| x == 0));
    });
}

#[test]
fn bad_io_is_an_error_not_a_panic() {
    const SIZE: u64 = 1 << 20;
    let f = TmpFile::new("errors", SIZE, |b, blk| stamp(b, 0, blk));
    let dev = UringDev::open(f.path()).unwrap();
    block_on(async {
        let bad: &[(u64, usize, &str)] = &[
            (100, 4096, "misaligned offset"),
            (0, 1000, "misaligned length"),
            (SIZE, 4096, "at end"),
            (SIZE - 4096, 8192, "straddles end"),
            (u64::MAX - 4095, 4096, "offset overflow"),
        ];
        for &(off, len, what) in bad {
            let (b, r) = dev.read_at(AlignedBuf::zeroed(len), off).await;
            let e = r.expect_err(what);
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{what}");
            assert_eq!(b.len(), len, "buffer comes back ({what})");
            let (_, r) = dev.write_at(AlignedBuf::zeroed(len), off).await;
            assert!(r.is_err(), "write {what}");
        }
        // Zero-length I/O is fine and does nothing.
        let (_, r) = dev.read_at(AlignedBuf::zeroed(0), 0).await;
        r.unwrap();
    });

    // The file shrinks under an open device: the read comes back short from
    // the kernel; UringDev must report it, not hand back a partial buffer.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(f.path())
        .unwrap();
    file.set_len(SIZE / 2 + 4096).unwrap();
    block_on(async {
        let (_, r) = dev
            .read_at(AlignedBuf::zeroed(SIZE as usize / 2), SIZE / 2)
            .await;
        let e = r.expect_err("read across the new end of file");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        // Entirely past the new end.
        let (_, r) = dev.read_at(AlignedBuf::zeroed(4096), SIZE - 4096).await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    });

    // Read-only device: writes are refused.
    let ro = UringDev::open_with(
        f.path(),
        UringDevOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    block_on(async {
        let (_, r) = ro.write_at(AlignedBuf::zeroed(4096), 0).await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        let (b, r) = ro.read_at(AlignedBuf::zeroed(4096), 4096).await;
        r.unwrap();
        let mut want = vec![0u8; 4096];
        stamp(1, 0, &mut want);
        assert!(b[..] == want[..]);
    });

    // Off a runtime thread there is no ring: an error, and the buffer back.
    let (b, r) = futures::executor::block_on(dev.read_at(AlignedBuf::zeroed(4096), 0));
    assert!(r.is_err());
    assert_eq!(b.len(), 4096);

    // O_DIRECT on a path that does not exist: a clean error.
    assert!(UringDev::open(Path::new("/var/tmp/sluice-no-such-file")).is_err());
}

/// The owned-buffer rule: start many reads, drop their futures while the
/// kernel is still working on them, then allocate fresh buffers of the same
/// size and fill them with a sentinel. If a dropped future had freed its
/// buffer, the allocator would hand that memory out again and the late DMA
/// would overwrite the sentinel.
#[test]
fn dropped_reads_keep_their_buffers_until_the_cqe() {
    const SIZE: u64 = 64 << 20;
    const BUF: usize = 64 << 10; // below glibc's mmap threshold: reused heap
    const PER_ROUND: usize = 256;
    const ROUNDS: usize = 40;
    let f = TmpFile::new("orphans", SIZE, |b, blk| stamp(b, 1, blk));
    let dev = UringDev::open(f.path()).unwrap();
    block_on(async {
        let mut rng = Rng(0x1234_5678);
        let mut orphaned_total = 0;
        for _ in 0..ROUNDS {
            let mut futs = Vec::with_capacity(PER_ROUND);
            for _ in 0..PER_ROUND {
                let off = rng.next() % (SIZE / BUF as u64) * BUF as u64;
                futs.push(Box::pin(dev.read_at(AlignedBuf::zeroed(BUF), off)));
            }
            for fut in futs.iter_mut() {
                assert!(futures::poll!(fut.as_mut()).is_pending());
            }
            yield_now().await; // one loop turn: the SQEs are submitted
            let before = current_stats().unwrap().orphaned;
            drop(futs);
            orphaned_total += current_stats().unwrap().orphaned - before;
            let sentinels: Vec<AlignedBuf> = (0..PER_ROUND * 2)
                .map(|_| {
                    let mut b = AlignedBuf::zeroed(BUF);
                    b.fill(0xEE);
                    b
                })
                .collect();
            while current_stats().unwrap().inflight > 0 {
                sleep(Duration::from_micros(200)).await.unwrap();
            }
            for s in &sentinels {
                assert!(s.iter().all(|&x| x == 0xEE), "a freed buffer was written");
            }
        }
        // Most ops were really orphaned in flight (not already complete).
        assert!(
            orphaned_total > (ROUNDS * PER_ROUND / 2) as u64,
            "only {orphaned_total} orphaned"
        );
        // The device is still perfectly usable and the data is right.
        let (b, r) = dev.read_at(AlignedBuf::zeroed(4096), 4096 * 33).await;
        r.unwrap();
        let mut want = vec![0u8; 4096];
        stamp(33, 1, &mut want);
        assert!(b[..] == want[..]);
        assert_eq!(current_stats().unwrap().inflight, 0);
    });
}

/// 128 tasks on one ring doing random 4 KiB reads and writes; every read is
/// checked against what that block must contain, then the whole file is
/// checked through FileDev.
#[test]
fn qd128_random_io_verifies() {
    const SIZE: u64 = 32 << 20;
    const BLOCKS: u64 = SIZE / BLOCK_SIZE as u64;
    const TASKS: u64 = 128;
    const OPS: usize = 400;
    let f = TmpFile::new("qd128", SIZE, |b, blk| stamp(b, 0, blk));
    let dev = Rc::new(UringDev::open(f.path()).unwrap());
    // Final version of each block, filled in by the tasks.
    let versions: Vec<u64> = block_on(async {
        let max_inflight = Rc::new(Cell::new(0u64));
        let done = Rc::new(Cell::new(0u64));
        let mon = {
            let (m, d) = (max_inflight.clone(), done.clone());
            spawn_local(async move {
                while d.get() < TASKS {
                    m.set(m.get().max(current_stats().unwrap().inflight));
                    yield_now().await;
                }
            })
        };
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let dev = dev.clone();
            let done = done.clone();
            tasks.push(spawn_local(async move {
                // Task t owns blocks b with b % TASKS == t.
                let owned = BLOCKS / TASKS;
                let mut ver = vec![0u64; owned as usize];
                let mut rng = Rng(0x9E37 + t * 7919);
                let mut buf = AlignedBuf::zeroed(BLOCK_SIZE);
                let mut want = vec![0u8; BLOCK_SIZE];
                for _ in 0..OPS {
                    let k = rng.next() % owned;
                    let b = k * TASKS + t;
                    if rng.next().is_multiple_of(3) {
                        ver[k as usize] += 1;
                        stamp(b, ver[k as usize], &mut buf);
                        let (bb, r) = dev.write_at(buf, b * BLOCK_SIZE as u64).await;
                        r.unwrap();
                        buf = bb;
                    } else {
                        let (bb, r) = dev.read_at(buf, b * BLOCK_SIZE as u64).await;
                        r.unwrap();
                        stamp(b, ver[k as usize], &mut want);
                        assert!(bb[..] == want[..], "block {b} version {}", ver[k as usize]);
                        buf = bb;
                    }
                }
                done.set(done.get() + 1);
                ver
            }));
        }
        let mut versions = vec![0u64; BLOCKS as usize];
        for (t, task) in tasks.into_iter().enumerate() {
            for (k, v) in task.await.into_iter().enumerate() {
                versions[k * TASKS as usize + t] = v;
            }
        }
        mon.await;
        dev.flush().await.unwrap();
        assert!(
            max_inflight.get() >= 64,
            "queue depth never built up: max {}",
            max_inflight.get()
        );
        versions
    });
    let fdev = FileDev::open(f.path(), true).unwrap();
    futures::executor::block_on(async {
        let (img, r) = fdev.read_at(AlignedBuf::zeroed(SIZE as usize), 0).await;
        r.unwrap();
        let mut want = vec![0u8; BLOCK_SIZE];
        for (b, blk) in img.chunks_exact(BLOCK_SIZE).enumerate() {
            stamp(b as u64, versions[b], &mut want);
            assert!(blk == &want[..], "block {b}");
        }
    });
}

#[test]
#[should_panic(expected = "cannot start a runtime")]
fn nested_block_on_panics() {
    block_on(async {
        block_on(async {});
    });
}

/// Storage I/O is counted as device work (the reactor polls rather than
/// sleeps while it is in flight); timers are not, and the count returns to
/// zero at each completion.
#[test]
fn device_inflight_counts_storage_io_only() {
    const SIZE: u64 = 1 << 20;
    let f = TmpFile::new("devinflight", SIZE, |b, blk| stamp(b, 0, blk));
    let dev = Rc::new(UringDev::open(f.path()).unwrap());
    block_on(async {
        let device = || current_stats().unwrap().device_inflight;
        assert_eq!(device(), 0);
        let timer = spawn_local(sleep(Duration::from_millis(50)));
        yield_now().await;
        let s = current_stats().unwrap();
        assert!(s.inflight >= 1, "the timer is in flight: {s:?}");
        assert_eq!(s.device_inflight, 0, "a timer is not device I/O");
        let mut reads: Vec<_> = (0..4u64)
            .map(|i| {
                let dev = dev.clone();
                Box::pin(async move { dev.read_at(AlignedBuf::zeroed(4096), i * 4096).await })
            })
            .collect();
        // Start all four without letting the runtime turn: a turn submits
        // them and may reap a fast one before we look.
        std::future::poll_fn(|cx| {
            for r in reads.iter_mut() {
                assert!(
                    r.as_mut().poll(cx).is_pending(),
                    "a read finished unsubmitted"
                );
            }
            std::task::Poll::Ready(())
        })
        .await;
        assert_eq!(device(), 4, "four reads started");
        for (i, r) in reads.into_iter().enumerate() {
            let (b, r) = r.await;
            r.unwrap();
            let mut want = vec![0u8; 4096];
            stamp(i as u64, 0, &mut want);
            assert!(b[..] == want[..]);
        }
        assert_eq!(device(), 0, "all reads completed");
        dev.flush().await.unwrap();
        assert_eq!(device(), 0);
        timer.await.unwrap();
    });
}
