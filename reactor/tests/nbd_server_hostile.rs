//! Hostile and malformed input, abrupt disconnects, back-pressure, start
//! errors and `stop()` against the io_uring NBD server on two reactors.
//!
//! Each case must end in the right error reply or a closed connection —
//! never a panic (both reactor threads must still answer afterwards) — and
//! a well-behaved client connected over TCP the whole time must keep
//! working.

mod nbd_common;
mod nbd_server_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nbd_common::{random_bytes, request_bytes, RawClient, Reply};
use nbd_server_common::*;
use sluice_reactor::nbd::proto::*;
use sluice_reactor::nbd::{
    ConnEnd, ListenSpec, NbdServer, NbdServerError, ProtocolError, ServerConfig,
};

const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EPERM: u32 = 1;
const EOVERFLOW: u32 = 75;

fn fixture() -> Fixture {
    fixture_with(ServerConfig::default())
}

fn fixture_with(cfg: ServerConfig) -> Fixture {
    let snap = MemStore::new("snap", 64 << 10, true);
    snap.write(0, &vec![0x5a; 64 << 10]);
    Fixture::start_with(vec![MemStore::new("disk", MIB, false), snap], cfg)
}

fn unix(f: &Fixture) -> UnixStream {
    let s = UnixStream::connect(&f.socket).expect("connect unix");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s
}

fn tcp(f: &Fixture) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", f.port)).expect("connect tcp");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.set_nodelay(true).ok();
    s
}

/// A well-behaved client in transmission phase, over TCP.
fn bystander(f: &Fixture) -> RawClient<TcpStream> {
    RawClient::connect(tcp(f), "disk", true).expect("bystander connects")
}

/// The bystander still writes and reads correctly.
fn check_bystander(c: &mut RawClient<TcpStream>, tag: u8) {
    let data = vec![tag; 4096];
    let at = 64 * 4096 + 4096 * u64::from(tag);
    assert_eq!(c.write_at(1000 + u64::from(tag), at, &data).unwrap(), 0);
    assert_eq!(c.read_at(2000 + u64::from(tag), at, 4096).unwrap(), data);
}

fn raw(s: UnixStream) -> RawClient<UnixStream> {
    RawClient {
        s,
        structured: false,
        size: 0,
        flags: 0,
    }
}

fn wait_for_end(f: &Fixture, pred: impl Fn(&ConnEnd) -> bool, what: &str) {
    for _ in 0..500 {
        if f.server.ended().iter().any(&pred) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no connection ended with {what}: {:?}", f.server.ended());
}

#[test]
fn nbd_server_garbage_handshake_closes_only_that_connection() {
    let f = fixture();
    let mut ok = bystander(&f);

    // Valid flags, then garbage instead of an option.
    let mut s = RawClient::greet(unix(&f)).unwrap();
    s.write_all(&random_bytes(7, 64)).unwrap();
    assert!(raw(s).is_closed_by_server());
    check_bystander(&mut ok, 1);

    // Garbage as the client flags.
    let mut s = unix(&f);
    let mut g = [0u8; GREETING_LEN];
    s.read_exact(&mut g).unwrap();
    s.write_all(&[0xff; 32]).unwrap();
    assert!(raw(s).is_closed_by_server());
    check_bystander(&mut ok, 2);

    // An option longer than we accept.
    let mut s = RawClient::greet(unix(&f)).unwrap();
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&OPT_GO.to_be_bytes());
    opt.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.write_all(&opt).unwrap();
    assert!(raw(s).is_closed_by_server());
    check_bystander(&mut ok, 3);

    wait_for_end(
        &f,
        |e| matches!(e, ConnEnd::Protocol(ProtocolError::BadOptionMagic(_))),
        "BadOptionMagic",
    );
    wait_for_end(
        &f,
        |e| matches!(e, ConnEnd::Protocol(ProtocolError::BadClientFlags(_))),
        "BadClientFlags",
    );
    wait_for_end(
        &f,
        |e| matches!(e, ConnEnd::Protocol(ProtocolError::OptionTooLarge { .. })),
        "OptionTooLarge",
    );
    f.wait_connections_at_most(1);
    f.assert_reactors_alive();
}

#[test]
fn nbd_server_truncated_messages_end_cleanly() {
    let f = fixture();
    let mut ok = bystander(&f);

    // Close at once (the greeting may hit a closed socket), after reading
    // the greeting, and in the middle of an option.
    drop(unix(&f));
    let mut s = unix(&f);
    s.read_exact(&mut [0u8; GREETING_LEN]).unwrap();
    drop(s);
    let mut s = RawClient::greet(unix(&f)).unwrap();
    s.write_all(&IHAVEOPT.to_be_bytes()[..5]).unwrap();
    drop(s);
    check_bystander(&mut ok, 1);

    // Half a request header, then close.
    let mut c = RawClient::connect(unix(&f), "disk", false).unwrap();
    c.send(&request_bytes(0, CMD_READ, 1, 0, 4096)[..13])
        .unwrap();
    drop(c);
    // A write header and half its payload, then close.
    let mut c = RawClient::connect(unix(&f), "disk", true).unwrap();
    let mut m = request_bytes(0, CMD_WRITE, 2, 0, 256 << 10);
    m.extend_from_slice(&[0xee; 100 << 10]);
    c.send(&m).unwrap();
    drop(c);
    check_bystander(&mut ok, 2);

    f.wait_connections_at_most(1);
    let ends = f.server.ended();
    assert!(ends.contains(&ConnEnd::Eof), "{ends:?}");
    assert!(
        ends.iter().filter(|e| **e == ConnEnd::Truncated).count() >= 3,
        "{ends:?}"
    );
    // The torn write never reached the backend.
    assert!(!f.store("disk").is_allocated(0));
    f.assert_reactors_alive();
}

#[test]
fn nbd_server_disconnect_with_requests_in_flight() {
    let f = fixture();
    let mut ok = bystander(&f);
    // Connections opened from now on answer slowly.
    f.provider
        .set_delay(Some(Arc::new(|_, _, _| Some(Duration::from_millis(150)))));
    for structured in [false, true] {
        let mut c = RawClient::connect(unix(&f), "disk", structured).unwrap();
        let mut burst = Vec::new();
        for i in 0..32u64 {
            burst.extend(request_bytes(0, CMD_READ, i, i * 4096, 4096));
            burst.extend(request_bytes(
                0,
                CMD_WRITE,
                100 + i,
                512 * 1024 + i * 4096,
                4096,
            ));
            burst.extend(vec![i as u8; 4096]);
        }
        burst.extend(request_bytes(0, CMD_FLUSH, 999, 0, 0));
        c.send(&burst).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(c); // gone, with ~65 requests in flight
        check_bystander(&mut ok, 1 + structured as u8);
    }
    f.wait_connections_at_most(1);
    let s = f.store("disk");
    assert_eq!(s.counters.active.load(Ordering::SeqCst), 0);
    assert!(
        s.counters.max_active.load(Ordering::SeqCst) > 8,
        "requests really were concurrent in the backend"
    );
    // Requests already received were carried out, not abandoned.
    assert_eq!(s.read(512 * 1024 + 31 * 4096, 4096), vec![31u8; 4096]);
    check_bystander(&mut ok, 3);
    f.assert_reactors_alive();
}

#[test]
fn nbd_server_protocol_violations_close_the_connection() {
    let f = fixture();
    let mut ok = bystander(&f);

    // Garbage where a request header should be.
    let mut c = RawClient::connect(unix(&f), "disk", false).unwrap();
    c.send(&random_bytes(3, 100)).unwrap();
    assert!(raw(c.s).is_closed_by_server());
    check_bystander(&mut ok, 1);

    wait_for_end(
        &f,
        |e| matches!(e, ConnEnd::Protocol(ProtocolError::BadRequestMagic(_))),
        "BadRequestMagic",
    );
    f.assert_reactors_alive();
}

#[test]
fn nbd_server_invalid_requests_get_errors_and_connection_continues() {
    let f = fixture();
    let mut ok = bystander(&f);
    for structured in [false, true] {
        let mut c = RawClient::connect(unix(&f), "disk", structured).unwrap();
        // Unknown command.
        c.send(&request_bytes(0, 77, 1, 0, 4096)).unwrap();
        assert_eq!(c.expect_error(1).unwrap(), EINVAL);
        // Out-of-range and oversized reads (over the 64 MiB maximum:
        // EOVERFLOW, whatever the export size).
        c.send(&request_bytes(0, CMD_READ, 2, MIB - 1, 2)).unwrap();
        assert_eq!(c.expect_error(2).unwrap(), EINVAL);
        c.send(&request_bytes(0, CMD_READ, 3, MIB, 4096)).unwrap();
        assert_eq!(c.expect_error(3).unwrap(), EINVAL);
        c.send(&request_bytes(0, CMD_READ, 4, 0, (64 << 20) + 1))
            .unwrap();
        assert_eq!(c.expect_error(4).unwrap(), EOVERFLOW);
        // A write past the end: ENOSPC, and its payload is skipped.
        let mut m = request_bytes(0, CMD_WRITE, 5, MIB - 4096, 8192);
        m.extend_from_slice(&[0x77; 8192]);
        c.send(&m).unwrap();
        assert_eq!(c.expect_error(5).unwrap(), ENOSPC);
        // A rejected large write (past the end) whose payload spans
        // receives.
        let mut m = request_bytes(0, CMD_WRITE, 6, 100, 1 << 20);
        m.extend_from_slice(&vec![0x66; 1 << 20]);
        c.send(&m).unwrap();
        assert_eq!(c.expect_error(6).unwrap(), ENOSPC);
        // Unknown flag.
        c.send(&request_bytes(1 << 9, CMD_READ, 7, 0, 4096))
            .unwrap();
        assert_eq!(c.expect_error(7).unwrap(), EINVAL);
        // BLOCK_STATUS without structured replies / base:allocation.
        if !structured {
            c.send(&request_bytes(0, CMD_BLOCK_STATUS, 8, 0, 4096))
                .unwrap();
            assert_eq!(c.expect_error(8).unwrap(), EINVAL);
        }
        // ... and the connection still works, stream in sync.
        let data = random_bytes(9, 8192);
        assert_eq!(c.write_at(9, 8192, &data).unwrap(), 0);
        assert_eq!(c.read_at(10, 8192, 8192).unwrap(), data);
        check_bystander(&mut ok, 1 + structured as u8);
    }
    assert!(
        !f.store("disk").is_allocated(MIB - 4096),
        "rejected write landed"
    );

    // Writes to a read-only export: EPERM, payload skipped, reads fine.
    let mut c = RawClient::connect(unix(&f), "snap", true).unwrap();
    assert_eq!(c.write_at(1, 0, &[1u8; 4096]).unwrap(), EPERM);
    c.send(&request_bytes(0, CMD_TRIM, 2, 0, 4096)).unwrap();
    assert_eq!(c.expect_error(2).unwrap(), EPERM);
    assert_eq!(c.read_at(3, 0, 4096).unwrap(), vec![0x5a; 4096]);
    f.assert_reactors_alive();
}

/// The largest request (32 MiB) in both directions, through the direct
/// receive path, and a read of the same size.
#[test]
fn nbd_server_max_size_write_and_read() {
    let f = Fixture::start(vec![MemStore::new("big", 64 * MIB, false)]);
    let data = random_bytes(42, 32 << 20);
    for structured in [false, true] {
        let mut c = RawClient::connect(unix_path(&f), "big", structured).unwrap();
        assert_eq!(c.write_at(1, 16 * MIB, &data).unwrap(), 0);
        assert!(c.read_at(2, 16 * MIB, 32 << 20).unwrap() == data);
    }
    assert!(f.store("big").read(16 * MIB, 32 << 20) == data);
}

fn unix_path(f: &Fixture) -> UnixStream {
    unix(f)
}

/// With `max_requests = 4`, a client pipelining 64 slow reads never has
/// more than 4 in the backend at once, and all of them are answered.
#[test]
fn nbd_server_bounds_requests_in_flight() {
    let f = fixture_with(ServerConfig {
        max_requests: 4,
        ..ServerConfig::default()
    });
    f.provider
        .set_delay(Some(Arc::new(|_, _, _| Some(Duration::from_millis(5)))));
    let mut c = RawClient::connect(unix(&f), "disk", false).unwrap();
    let mut burst = Vec::new();
    for i in 0..64u64 {
        burst.extend(request_bytes(0, CMD_READ, i, (i % 16) * 4096, 4096));
    }
    c.send(&burst).unwrap();
    let mut seen = [false; 64];
    for _ in 0..64 {
        match c.reply().unwrap() {
            Reply::Simple { handle, error: 0 } => {
                c.read_data(4096).unwrap();
                seen[handle as usize] = true;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(seen.iter().all(|&s| s));
    let max = f.store("disk").counters.max_active.load(Ordering::SeqCst);
    assert!((2..=4).contains(&max), "max in flight {max}");
}

/// A client that floods requests and never reads a reply: the server stops
/// reading once its bound of unsent replies is reached (it does not queue
/// without end), and drops the connection cleanly when the client goes.
#[test]
fn nbd_server_client_that_never_reads_replies_is_bounded() {
    let f = fixture();
    // Data, not holes: a hole reply is 32 bytes, a data reply 64 KiB.
    f.store("disk").write(0, &random_bytes(5, MIB as usize));
    let mut ok = bystander(&f);
    let c = RawClient::connect(unix(&f), "disk", true).unwrap();
    let mut w = c.s.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let mut sent = 0u64;
        for i in 0..20_000u64 {
            let r = request_bytes(0, CMD_READ, i, (i % 16) * 65536, 65536);
            if w.write_all(&r).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let reads = f.store("disk").counters.reads.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    let reads2 = f.store("disk").counters.reads.load(Ordering::SeqCst);
    assert_eq!(reads, reads2, "server kept reading requests");
    eprintln!("reads executed for a client that reads nothing: {reads}");
    // Default bound: 128 unsent replies (8 MiB here) plus what the socket
    // buffers hold.
    assert!(
        reads < 400,
        "{reads} reads executed for a client that reads nothing"
    );
    check_bystander(&mut ok, 1);
    c.s.shutdown(std::net::Shutdown::Both).unwrap();
    let sent = flood.join().unwrap();
    assert!(sent < 20_000, "the flood was never held back");
    drop(c);
    f.wait_connections_at_most(1);
    check_bystander(&mut ok, 2);
    f.assert_reactors_alive();
}

#[test]
fn nbd_server_handshake_timeout() {
    let f = fixture_with(ServerConfig {
        handshake_timeout: Some(Duration::from_millis(300)),
        ..ServerConfig::default()
    });
    let t = Instant::now();
    let s = unix(&f); // never says anything
    assert!(raw(s).is_closed_by_server());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    wait_for_end(&f, |e| *e == ConnEnd::HandshakeTimeout, "HandshakeTimeout");
    // A connection that finished its handshake is not affected.
    let mut c = RawClient::connect(unix(&f), "disk", true).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.write_at(1, 0, &[3u8; 512]).unwrap(), 0);
}

#[test]
fn nbd_server_stop_with_connections_open_is_prompt() {
    let f = fixture();
    let mut idle = bystander(&f);
    check_bystander(&mut idle, 1);
    let negotiating = RawClient::greet(unix(&f)).unwrap();
    f.provider
        .set_delay(Some(Arc::new(|_, _, _| Some(Duration::from_millis(300)))));
    let mut busy = RawClient::connect(unix(&f), "disk", true).unwrap();
    let mut burst = Vec::new();
    for i in 0..16u64 {
        burst.extend(request_bytes(0, CMD_READ, i, i * 4096, 4096));
    }
    busy.send(&burst).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(f.server.connections(), 3);

    let t = Instant::now();
    f.server.stop();
    let took = t.elapsed();
    eprintln!("stop() with 3 connections (16 reads of 300 ms in flight) took {took:?}");
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    assert_eq!(f.server.connections(), 0);
    assert_eq!(f.store("disk").counters.active.load(Ordering::SeqCst), 0);
    assert!(!f.socket.exists(), "socket file removed");
    assert!(UnixStream::connect(&f.socket).is_err());
    assert!(TcpStream::connect(("127.0.0.1", f.port)).is_err());
    assert!(raw(negotiating).is_closed_by_server());
    assert!(idle.is_closed_by_server());
    f.server.stop(); // idempotent
    f.assert_reactors_alive();
}

#[test]
fn nbd_server_start_errors_and_stale_socket() {
    let r = reactors();
    let dir = nbd_common::scratch_dir("srv2-start");
    let provider = Arc::new(MemProvider::new(vec![MemStore::new("d", MIB, false)]));
    // A stale socket file (listener gone, file left behind) is replaced.
    let path = dir.join("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let s = NbdServer::start(&r, vec![ListenSpec::Unix(path.clone())], provider.clone())
        .expect("stale socket is replaced");
    assert!(RawClient::connect(UnixStream::connect(&path).unwrap(), "d", true).is_ok());
    // A live one is not.
    match NbdServer::start(&r, vec![ListenSpec::Unix(path.clone())], provider.clone()) {
        Err(NbdServerError::SocketInUse(p)) => assert_eq!(p, path),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("second server on a live socket"),
    }
    s.stop();
    // Not a socket: refused, file untouched.
    let file = dir.join("file");
    std::fs::write(&file, b"keep").unwrap();
    assert!(matches!(
        NbdServer::start(&r, vec![ListenSpec::Unix(file.clone())], provider.clone()),
        Err(NbdServerError::NotASocket(_))
    ));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    assert!(matches!(
        NbdServer::start(&r, vec![], provider.clone()),
        Err(NbdServerError::NoListeners)
    ));
    assert!(matches!(
        NbdServer::start(
            &r,
            vec![ListenSpec::Tcp("256.1.1.1:0".into())],
            provider.clone()
        ),
        Err(NbdServerError::Bind { .. })
    ));
    // After the reactors stop, stopping a server returns at once.
    let s = NbdServer::start(&r, vec![ListenSpec::Tcp("127.0.0.1:0".into())], provider).unwrap();
    r.stop().unwrap();
    let t = Instant::now();
    drop(s);
    assert!(t.elapsed() < Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}
