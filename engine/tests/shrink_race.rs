//! A shrink racing writes that were checked against the old size: the
//! device holds their data writes while the shrink runs, so they commit
//! after the shrink's unmap scan has passed their chunk. Nothing past the
//! new end may survive: after growing back, it reads as zeros, and scrub is
//! clean (the refused writes gave their blocks back).

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use sluice_engine::dev::{SimConfig, SimDev};
use sluice_engine::{Compression, Error, Pool, PoolOptions, ZoneConfig};
use std::cell::RefCell;
use std::rc::Rc;

const CS: u64 = 65536;

#[test]
fn writes_in_flight_past_a_shrink_never_come_back() {
    let dev = Rc::new(SimDev::new(24 << 20, SimConfig::default()));
    let mut exec = LocalPool::new();
    let opts = PoolOptions {
        zone_size: 4 << 20,
        zone: ZoneConfig::default(),
    };
    let pool = Rc::new(exec.run_until(Pool::format(dev.clone(), &opts)).unwrap());
    let old = exec
        .run_until(pool.create_volume("v", 4 << 20, CS, Compression::Lz4))
        .unwrap();
    // Chunk 40 is mapped before the shrink (the scan must unmap it).
    exec.run_until(pool.write(&old, 40 * CS, &[0x11; CS as usize]))
        .unwrap();
    exec.run_until(pool.flush()).unwrap();

    // The new end cuts chunk 16 after 1.5 KiB.
    let new_size = 16 * CS + 1536;
    dev.hold_writes();
    let results = Rc::new(RefCell::new(Vec::new()));
    let sp = exec.spawner();
    // A whole fresh chunk past the end, a partial write into the cut tail
    // of chunk 16, and a write below the end that must stay.
    let writes = [
        ("fresh chunk", 48 * CS, CS as usize, 0x22),
        ("tail", 16 * CS + 4096, 4096, 0x33),
        ("kept", 15 * CS, CS as usize, 0x44),
    ];
    for (what, at, len, byte) in writes {
        let (pool, results) = (pool.clone(), results.clone());
        sp.spawn_local(async move {
            let r = pool.write(&old, at, &vec![byte; len]).await;
            results.borrow_mut().push((what, r));
        })
        .unwrap();
    }
    exec.run_until_stalled();
    assert!(results.borrow().is_empty(), "writes must be held");
    let shrunk = Rc::new(RefCell::new(None));
    {
        let (pool, shrunk) = (pool.clone(), shrunk.clone());
        sp.spawn_local(async move {
            *shrunk.borrow_mut() = Some(pool.resize_volume("v", new_size).await);
        })
        .unwrap();
    }
    exec.run_until_stalled();
    dev.release_writes();
    exec.run();

    let info = shrunk.borrow_mut().take().unwrap().unwrap();
    assert_eq!(info.size, new_size);
    let res = results.borrow();
    let outcome = |w: &str| &res.iter().find(|(what, _)| *what == w).unwrap().1;
    assert!(
        matches!(outcome("fresh chunk"), Err(Error::OutOfRange(_))),
        "a write past the new end that commits after the shrink's scan is refused: {:?}",
        outcome("fresh chunk")
    );
    assert!(outcome("kept").is_ok(), "{:?}", outcome("kept"));

    // Old-size I/O is refused at once, reads and block status too.
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        exec.run_until(pool.write(&old, 20 * CS, &buf)),
        Err(Error::OutOfRange(_))
    ));
    assert!(matches!(
        exec.run_until(pool.read(&old, 16 * CS + 2048, &mut buf)),
        Err(Error::OutOfRange(_))
    ));
    assert!(matches!(
        exec.run_until(pool.block_status(&old, 40 * CS, CS)),
        Err(Error::OutOfRange(_))
    ));

    // Grow back: everything past the shrink reads as zeros.
    let grown = exec.run_until(pool.resize_volume("v", 4 << 20)).unwrap();
    let mut all = vec![0u8; grown.size as usize];
    exec.run_until(pool.read(&grown, 0, &mut all)).unwrap();
    let kept = &all[(15 * CS) as usize..(16 * CS) as usize];
    assert!(
        kept.iter().all(|&b| b == 0x44),
        "the write below the end stays"
    );
    if let Some(i) = all[new_size as usize..].iter().position(|&b| b != 0) {
        panic!(
            "byte {} past the shrink came back after a grow",
            new_size as usize + i
        );
    }
    let problems = exec.run_until(pool.check(true)).unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    // Refused writes gave their blocks back: once the log is durable (no
    // busy blocks), a zone uses its fixed regions plus its mapped data.
    exec.run_until(pool.flush()).unwrap();
    let data_start = pool.geometry().data_start;
    for z in pool.zones() {
        let want = data_start as u64 + z.counters().data_blocks;
        assert_eq!(
            z.used_blocks() as u64,
            want,
            "zone {} leaks blocks",
            z.index()
        );
    }
    // After a grow the old size is in range again.
    exec.run_until(pool.write(&old, 48 * CS, &[0x55; CS as usize]))
        .unwrap();
}
