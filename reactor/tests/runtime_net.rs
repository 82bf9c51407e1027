//! Sockets through the ring: echo over Unix and TCP, vectored sends, EOF,
//! cancellation of a dropped recv.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use sluice_engine::AlignedBuf;
use sluice_reactor::net::ListenAddr;
use sluice_reactor::ring::current_stats;
use sluice_reactor::{
    block_on, sleep, spawn_local, yield_now, Reactors, RingConfig, UringListener, UringStream,
};

fn reactors() -> Reactors {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = if n >= 2 { vec![0, 1] } else { vec![0, 0] };
    Reactors::start(&cores, RingConfig::default()).unwrap()
}

fn sock_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sluice-rt-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Echo every byte back until EOF; returns the byte count.
async fn echo(s: UringStream) -> usize {
    let mut buf = AlignedBuf::zeroed(64 << 10);
    let mut total = 0;
    loop {
        buf.set_len(64 << 10);
        let (mut b, r) = s.recv(buf).await;
        let n = r.unwrap();
        if n == 0 {
            s.close().await.unwrap();
            return total;
        }
        total += n;
        b.set_len(n);
        let (b, r) = s.send_all(b).await;
        r.unwrap();
        buf = b;
    }
}

/// Blocking client: write `data` in odd-sized pieces from one thread while
/// reading the echo on another; returns what came back.
fn blocking_echo_client<S: Read + Write + Send + 'static>(
    mut w: S,
    mut r: S,
    data: Vec<u8>,
    shutdown: impl FnOnce(&S) + Send + 'static,
) -> Vec<u8> {
    let len = data.len();
    let writer = std::thread::spawn(move || {
        for piece in data.chunks(12_345) {
            w.write_all(piece).unwrap();
        }
        shutdown(&w);
    });
    let mut back = vec![0u8; len];
    r.read_exact(&mut back).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "extra bytes after the echo");
    writer.join().unwrap();
    back
}

#[test]
fn echo_over_unix_socket() {
    let r = reactors();
    let path = sock_path("echo");
    let p2 = path.clone();
    // Server on reactor 0: accept two connections, echo each in a task.
    let (tx, rx) = std::sync::mpsc::channel();
    r.send(0, move || {
        let l = UringListener::bind_unix(&p2).unwrap();
        assert_eq!(l.local_addr(), &ListenAddr::Unix(p2.clone()));
        tx.send(()).unwrap();
        spawn_local(async move {
            let mut served = Vec::new();
            for _ in 0..2 {
                let s = l.accept().await.unwrap();
                served.push(spawn_local(echo(s)));
            }
            for s in served {
                s.await;
            }
        })
        .detach();
    })
    .unwrap();
    rx.recv().unwrap();

    // Client 1: a plain blocking socket on this thread.
    let data = pattern(3 << 20, 1);
    let s = UnixStream::connect(&path).unwrap();
    let back = blocking_echo_client(s.try_clone().unwrap(), s, data.clone(), |s| {
        s.shutdown(std::net::Shutdown::Write).unwrap()
    });
    assert!(back == data);

    // Client 2: an io_uring client on reactor 1.
    let p3 = path.clone();
    let ok = r
        .call(1, move || async move {
            let s = UringStream::connect_unix(&p3).unwrap();
            let data = pattern(1 << 20, 2);
            let mut back = Vec::new();
            for piece in data.chunks(100_000) {
                let (_, r) = s.send_all(AlignedBuf::from_slice(piece)).await;
                r.unwrap();
                let (b, r) = s.recv_exact(AlignedBuf::zeroed(piece.len())).await;
                r.unwrap();
                back.extend_from_slice(&b);
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let (_, r) = s.recv(AlignedBuf::zeroed(4096)).await;
            assert_eq!(r.unwrap(), 0, "EOF after the server closed");
            back == data
        })
        .unwrap();
    assert!(ok);
    r.stop().unwrap();
    assert!(!path.exists(), "listener removes its socket file");
}

#[test]
fn echo_over_tcp_loopback() {
    let r = reactors();
    let addr = r
        .call(0, || async {
            let l = UringListener::bind_tcp("127.0.0.1:0").unwrap();
            let ListenAddr::Tcp(a) = l.local_addr().clone() else {
                panic!("tcp")
            };
            spawn_local(async move {
                let s = l.accept().await.unwrap();
                echo(s).await
            })
            .detach();
            a
        })
        .unwrap();
    let data = pattern(4 << 20, 3);
    let s = TcpStream::connect(addr).unwrap();
    let back = blocking_echo_client(s.try_clone().unwrap(), s, data.clone(), |s| {
        s.shutdown(std::net::Shutdown::Write).unwrap()
    });
    assert!(back == data);
    r.stop().unwrap();
}

/// A header plus a large data buffer through one sendmsg; the reader is
/// slow, so sends come back short and resume inside both iovecs.
#[test]
fn send_with_header_survives_short_sends() {
    block_on(async {
        let l = UringListener::bind_tcp("127.0.0.1:0").unwrap();
        let ListenAddr::Tcp(addr) = l.local_addr().clone() else {
            panic!()
        };
        let header: Vec<u8> = (0..100u8).collect();
        let data = pattern(8 << 20, 4);
        let (h2, d2) = (header.clone(), data.clone());
        let reader = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 7777];
            std::thread::sleep(Duration::from_millis(50)); // let the socket fill
            loop {
                let n = c.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        let s = l.accept().await.unwrap();
        let ops0 = current_stats().unwrap().ops_started;
        let (b, r) = s.send_with_header(&h2, AlignedBuf::from_slice(&d2)).await;
        r.unwrap();
        let sendmsgs = current_stats().unwrap().ops_started - ops0;
        assert!(
            sendmsgs > 1,
            "no short send happened; the resume path is untested"
        );
        assert_eq!(b.len(), d2.len(), "data buffer comes back");
        // A second message: header only (empty data).
        let (_, r) = s.send_with_header(b"tail", AlignedBuf::zeroed(0)).await;
        r.unwrap();
        // Too large a header is refused.
        let (_, r) = s.send_with_header(&[0u8; 129], AlignedBuf::zeroed(0)).await;
        assert!(r.is_err());
        s.close().await.unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), header.len() + data.len() + 4);
        assert!(got[..100] == header[..]);
        assert!(got[100..100 + data.len()] == data[..]);
        assert!(&got[100 + data.len()..] == b"tail");
    });
}

#[test]
fn eof_and_errors() {
    block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        let s = UringStream::from_fd(a.into());
        let mut b = b;
        b.write_all(b"hello").unwrap();
        drop(b);
        // recv_exact wants more than will ever come.
        let (buf, r) = s.recv_exact(AlignedBuf::zeroed(10)).await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(&buf[..5], b"hello");
        let (_, r) = s.recv(AlignedBuf::zeroed(10)).await;
        assert_eq!(r.unwrap(), 0);
        // Sending to a closed peer: EPIPE, not SIGPIPE.
        let (_, r) = s.send_all(AlignedBuf::zeroed(4096)).await;
        assert!(r.is_err());
    });
}

/// A dropped recv future is cancelled in the kernel (it would otherwise
/// wait forever), and does not eat data meant for the next recv.
#[test]
fn dropped_recv_is_cancelled() {
    block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        let s = UringStream::from_fd(a.into());
        {
            let mut f = Box::pin(s.recv(AlignedBuf::zeroed(4096)));
            assert!(futures::poll!(f.as_mut()).is_pending());
            yield_now().await;
            assert_eq!(current_stats().unwrap().inflight, 1);
        }
        for _ in 0..1000 {
            if current_stats().unwrap().inflight == 0 {
                break;
            }
            sleep(Duration::from_millis(1)).await.unwrap();
        }
        assert_eq!(current_stats().unwrap().inflight, 0, "recv not cancelled");
        let mut b = b;
        b.write_all(b"after").unwrap();
        let (buf, r) = s.recv(AlignedBuf::zeroed(4096)).await;
        let n = r.unwrap();
        assert_eq!(&buf[..n], b"after");
    });
}

/// An accept whose future is dropped must not leak the connection it may
/// still accept: the client must see its connection end.
#[test]
fn dropped_accept_leaks_no_socket() {
    for collect_first in [true, false] {
        block_on(async {
            let path = sock_path(&format!("accept-drop-{collect_first}"));
            let l = UringListener::bind_unix(&path).unwrap();
            let mut f = Box::pin(l.accept());
            assert!(futures::poll!(f.as_mut()).is_pending());
            yield_now().await; // submitted
            let mut c = UnixStream::connect(&path).unwrap();
            if collect_first {
                // Let the accept complete and be reaped before the drop.
                for _ in 0..100 {
                    sleep(Duration::from_millis(1)).await.unwrap();
                    if current_stats().unwrap().inflight == 0 {
                        break;
                    }
                }
                assert_eq!(
                    current_stats().unwrap().inflight,
                    0,
                    "accept did not complete"
                );
            }
            drop(f);
            drop(l);
            for _ in 0..100 {
                sleep(Duration::from_millis(1)).await.unwrap();
                if current_stats().unwrap().inflight == 0 {
                    break;
                }
            }
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut b = [0u8; 1];
            match c.read(&mut b) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("connection still open after the accept was dropped: {other:?}"),
            }
        });
    }
}
