//! The server-wide memory budget, measured: 64 NBD clients that send large
//! reads and never read the replies keep the process within the budget
//! plus a fixed per-connection overhead, where without the budget each
//! connection would hold up to its own bound (2 GiB in all here).
//!
//! Alone in its file: it measures the resident set of the test process,
//! which other tests running in parallel would disturb.

mod nbd_common;
mod nbd_server_common;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nbd_common::{random_bytes, request_bytes, RawClient};
use nbd_server_common::*;
use sluice_reactor::nbd::proto::*;
use sluice_reactor::nbd::ServerConfig;

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

#[test]
fn non_reading_clients_stay_within_the_memory_budget() {
    const CLIENTS: usize = 64;
    const READS: u32 = 8;
    const READ_LEN: u32 = 4 << 20;
    const BUDGET: usize = 64 << 20;
    // Per connection, outside the budget: the receive buffer, the writer's
    // batch buffer, task and socket bookkeeping.
    let cfg = ServerConfig {
        memory_budget: BUDGET,
        ..ServerConfig::default()
    };
    let per_conn = cfg.recv_buffer + (64 << 10) + (64 << 10);
    let f = Fixture::start_with(vec![MemStore::new("disk", 32 * MIB, false)], cfg);
    // Real data, so every READ reply is a real, touched buffer.
    f.store("disk").write(0, &random_bytes(1, 32 << 20));
    let base = rss();

    // Every client asks for 8 x 4 MiB and never reads a reply: 2 GiB asked.
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let s = UnixStream::connect(&f.socket).unwrap();
        let mut c = RawClient::connect(s, "disk", false).unwrap();
        let mut burst = Vec::new();
        for k in 0..READS {
            let off = u64::from((i as u32 * 3 + k) % 7) * u64::from(READ_LEN);
            burst.extend(request_bytes(0, CMD_READ, u64::from(k), off, READ_LEN));
        }
        c.send(&burst).unwrap();
        clients.push(c);
    }
    // Steady state: the budget is spent and connections wait their turn.
    let budget = f.server.memory_budget();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(budget.in_use() + READ_LEN as usize > BUDGET && budget.waiting() > 0) {
        assert!(
            Instant::now() < deadline,
            "budget never filled: in use {} of {}, {} waiting",
            budget.in_use(),
            BUDGET,
            budget.waiting()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let grown = rss().saturating_sub(base);
    let bound = BUDGET as u64 + (CLIENTS * per_conn) as u64 + (48 << 20);
    println!(
        "RSS grew {} MiB with {CLIENTS} non-reading clients asking {} MiB; bound {} MiB \
         (budget {} MiB + {CLIENTS} x {} KiB per connection + 48 MiB slack); peak budget use {} MiB",
        grown >> 20,
        (CLIENTS as u64 * u64::from(READS) * u64::from(READ_LEN)) >> 20,
        bound >> 20,
        BUDGET >> 20,
        per_conn >> 10,
        budget.peak() >> 20
    );
    assert!(
        budget.peak() <= BUDGET,
        "budget overdrawn: {}",
        budget.peak()
    );
    assert!(grown <= bound, "RSS grew {grown} bytes, bound {bound}");

    // Clients that read again get every reply, and the budget drains. They
    // read concurrently: a client's later requests wait for budget that
    // the others' unread replies hold.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let mut handles = Vec::new();
                for _ in 0..READS {
                    match c.reply().unwrap() {
                        nbd_common::Reply::Simple { handle, error: 0 } => {
                            handles.push(handle);
                            c.read_data(READ_LEN as usize).unwrap();
                        }
                        other => panic!("{other:?}"),
                    }
                }
                handles.sort_unstable();
                handles
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), (0..u64::from(READS)).collect::<Vec<_>>());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while budget.in_use() > 0 {
        assert!(
            Instant::now() < deadline,
            "budget not returned: {}",
            budget.in_use()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    f.assert_reactors_alive();
}
