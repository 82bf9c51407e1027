//! The NBD memory budget in the real daemon: sluiced started with
//! `--nbd-memory 64M`, 64 TCP clients that finish the handshake, ask for
//! 8 x 4 MiB reads each (2 GiB in all) and never read a reply. The daemon's
//! resident set may grow by the budget plus the per-connection cost the
//! README states (receive buffer and send batch, 384 KiB) and some slack,
//! not by what the clients asked. Once they close, a normal client is
//! served.
//!
//! Alone in its file: it measures the daemon's resident set, which other
//! daemons' tests running at the same time do not disturb, but their load
//! would slow it.

mod common;
#[path = "../../reactor/tests/nbd_common/mod.rs"]
mod nbd_common;

use common::Sluiced;
use nbd_common::{random_bytes, request_bytes, RawClient};
use sluice_reactor::nbd::proto::CMD_READ;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CLIENTS: usize = 64;
const READS: u32 = 8;
const READ_LEN: u32 = 4 << 20;
const BUDGET: u64 = 64 << 20;
/// Outside the budget, per connection: the receive buffer (256 KiB), the
/// writer's batch (64 KiB) and bookkeeping (64 KiB); README, "NBD request
/// sizes, extended headers and the memory budget".
const PER_CONN: u64 = 384 << 10;
/// Recycled I/O buffers (per class: 2 MiB per reactor, 8 MiB shared), the
/// allocator's own slack, thread stacks touched under load.
const SLACK: u64 = 48 << 20;
/// Data the clients read: real, written blocks (a hole would need no buffer).
const DATA: u64 = 32 << 20;

/// A field of /proc/PID/status, in bytes.
fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        * 1024
}

fn connect(d: &Sluiced) -> RawClient<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", d.tcp_port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    RawClient::connect(s, "vol0", false).expect("handshake")
}

#[test]
fn non_reading_clients_stay_within_the_daemon_memory_budget() {
    let mut d = Sluiced::start("nbd-mem", &["--nbd-memory", "64M"]);
    let pid = d.child.as_ref().expect("running").id();
    let data = random_bytes(7, DATA as usize);
    {
        // Write the data and read it all back once: caches and buffer
        // pools are warm before the baseline is taken.
        let mut c = connect(&d);
        for (i, piece) in data.chunks(READ_LEN as usize).enumerate() {
            let off = i as u64 * u64::from(READ_LEN);
            assert_eq!(c.write_at(i as u64, off, piece).expect("write"), 0);
            assert_eq!(
                c.read_at(1000 + i as u64, off, READ_LEN).expect("read"),
                piece
            );
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let base = status_kb(pid, "VmRSS:");
    // Reset the peak (VmHWM) to the current resident set.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");

    // 64 clients, each 8 x 4 MiB asked and never a reply read: 2 GiB.
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = connect(&d);
        let mut burst = Vec::new();
        for k in 0..READS {
            let off = u64::from((i as u32 * 3 + k) % 8) * u64::from(READ_LEN);
            burst.extend(request_bytes(0, CMD_READ, u64::from(k), off, READ_LEN));
        }
        c.send(&burst).expect("send reads");
        clients.push(c);
    }
    // Wait until the resident set holds still (the budget is spent and the
    // connections wait), at least 2 s, at most 30 s.
    let t = Instant::now();
    let mut last = (status_kb(pid, "VmRSS:"), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = status_kb(pid, "VmRSS:");
        if now.abs_diff(last.0) > (1 << 20) {
            last = (now, Instant::now());
        }
        if t.elapsed() > Duration::from_secs(2) && last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "RSS never settled");
    }
    let peak = status_kb(pid, "VmHWM:");
    let grown = peak.saturating_sub(base);
    let bound = BUDGET + CLIENTS as u64 * PER_CONN + SLACK;
    println!(
        "sluiced RSS {} MiB before, peak {} MiB with {CLIENTS} non-reading clients asking {} MiB: \
         grew {} MiB, bound {} MiB (budget {} MiB + {CLIENTS} x {} KiB + {} MiB slack)",
        base >> 20,
        peak >> 20,
        (CLIENTS as u64 * u64::from(READS) * u64::from(READ_LEN)) >> 20,
        grown >> 20,
        bound >> 20,
        BUDGET >> 20,
        PER_CONN >> 10,
        SLACK >> 20
    );
    assert!(
        grown <= bound,
        "RSS grew {} MiB, bound {} MiB",
        grown >> 20,
        bound >> 20
    );
    assert!(d.alive(), "sluiced died under the load");

    // The clients go away without reading; the budget they held comes back
    // and a normal client reads (twice the budget, so it must come back).
    drop(clients);
    let t = Instant::now();
    let mut c = connect(&d);
    for round in 0..2u64 {
        for (i, piece) in data.chunks(READ_LEN as usize).enumerate() {
            let off = i as u64 * u64::from(READ_LEN);
            let got = c
                .read_at(round * 100 + i as u64, off, READ_LEN)
                .expect("read after the clients closed");
            assert!(got == piece, "data at {off} differs");
        }
    }
    println!(
        "a new client read {} MiB in {:?} after the others closed; RSS now {} MiB",
        (2 * DATA) >> 20,
        t.elapsed(),
        status_kb(pid, "VmRSS:") >> 20
    );
    drop(c);
    common::run("nbdinfo", &["--size", &d.tcp_uri("vol0")]);
    d.stop();
}
