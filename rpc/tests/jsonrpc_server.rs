//! The JSON-RPC server over real sockets: framing as clients actually send bytes,
//! error responses, connection handling, socket file hygiene, stopping, and the
//! blocking `Client`.

use serde_json::{json, Value};
use sluice_rpc::client::{Client, ClientError};
use sluice_rpc::jsonrpc::{
    codes, serve_tcp, serve_unix, ListenAddr, MethodTable, RpcError, ServerError, ServerHandle,
    Shutdown,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A registry with one method per behaviour the transport must cope with.
fn test_registry(shutdown: &Shutdown) -> MethodTable {
    let mut r = MethodTable::new();
    r.register("echo", Ok);
    r.register("fail_not_found", |_| {
        Err(RpcError::not_found("volume \"nope\" not found"))
    });
    r.register("sleep", |p| {
        let ms = p["ms"].as_u64().unwrap_or(0);
        thread::sleep(Duration::from_millis(ms));
        Ok(json!(ms))
    });
    r.register("panic", |_| panic!("deliberate test panic"));
    let s = shutdown.clone();
    r.register("shutdown", move |_| {
        s.trigger();
        Ok(json!(true))
    });
    r
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    server: ServerHandle,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rpc.sock");
    let shutdown = Shutdown::new();
    let server = serve_unix(&path, Arc::new(test_registry(&shutdown)), shutdown).unwrap();
    Fixture {
        _dir: dir,
        path,
        server,
    }
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until `n` values have arrived.
fn read_values(stream: &mut impl Read, n: usize) -> Vec<Value> {
    let mut framer = sluice_rpc::jsonrpc::Framer::new();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < n {
        while let Some(v) = framer.next_value().unwrap() {
            out.push(v);
        }
        if out.len() >= n {
            break;
        }
        let k = stream.read(&mut buf).expect("response before timeout");
        assert!(k > 0, "EOF after {} of {n} values: {out:?}", out.len());
        framer.feed(&buf[..k]);
    }
    out
}

/// Reads everything until the server closes the connection. A server that
/// closes while our unread request bytes sit in its queue makes the kernel
/// end our read with ECONNRESET (after the data it did send): that is a
/// close too.
fn read_all(stream: &mut impl Read) -> Vec<Value> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => bytes.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("server closes before timeout: {e}"),
        }
    }
    serde_json::Deserializer::from_slice(&bytes)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn req(method: &str, id: u64) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": {"id": id}, "id": id}).to_string()
}

#[test]
fn socket_is_owner_only() {
    let f = start();
    let meta = std::fs::metadata(&f.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(f.server.local_addr(), &ListenAddr::Unix(f.path.clone()));
}

#[test]
fn stale_socket_is_replaced_but_live_socket_and_regular_file_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rpc.sock");
    drop(UnixListener::bind(&path).unwrap()); // leaves a dead socket file behind
    let shutdown = Shutdown::new();
    let reg = Arc::new(test_registry(&shutdown));
    let server = serve_unix(&path, reg.clone(), shutdown.clone()).unwrap();

    match serve_unix(&path, reg.clone(), Shutdown::new()) {
        Err(ServerError::InUse { .. }) => {}
        other => panic!("second server on a live socket: {other:?}"),
    }
    let mut client = Client::connect(&path).unwrap();
    assert_eq!(
        client.call("echo", json!({"a": 1})).unwrap(),
        json!({"a": 1})
    );

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"precious").unwrap();
    match serve_unix(&file, reg, Shutdown::new()) {
        Err(e @ ServerError::NotASocket { .. }) => assert!(e.to_string().contains("not a socket")),
        other => panic!("regular file: {other:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    server.stop();
    server.join();
}

#[test]
fn request_without_trailing_newline_is_answered() {
    // SPDK rpc.py style: one object, no delimiter, then wait.
    let f = start();
    let mut s = connect(&f.path);
    s.write_all(br#"{"jsonrpc":"2.0","method":"echo","params":{"x":1},"id":1}"#)
        .unwrap();
    assert_eq!(
        read_values(&mut s, 1),
        vec![json!({"jsonrpc": "2.0", "result": {"x": 1}, "id": 1})]
    );
}

#[test]
fn byte_at_a_time() {
    let f = start();
    let mut s = connect(&f.path);
    for b in req("echo", 7).as_bytes() {
        s.write_all(std::slice::from_ref(b)).unwrap();
        s.flush().unwrap();
    }
    let got = read_values(&mut s, 1);
    assert_eq!(got[0]["result"], json!({"id": 7}));
    assert_eq!(got[0]["id"], json!(7));
}

#[test]
fn several_requests_in_one_write_are_answered_in_order_notifications_silently() {
    let f = start();
    let mut s = connect(&f.path);
    let notification = r#"{"jsonrpc":"2.0","method":"fail_not_found"}"#;
    let batch = r#"[{"jsonrpc":"2.0","method":"echo","id":"b1"},{"jsonrpc":"2.0","method":"echo"},{"x":1}]"#;
    let all = format!(
        "{}{}\n{}  {}{}",
        req("echo", 1),
        notification,
        req("fail_not_found", 2),
        batch,
        req("echo", 3)
    );
    s.write_all(all.as_bytes()).unwrap();
    let got = read_values(&mut s, 4);
    assert_eq!(got[0]["id"], json!(1));
    assert_eq!(
        (got[1]["id"].clone(), got[1]["error"]["code"].clone()),
        (json!(2), json!(codes::NOT_FOUND))
    );
    let batch_resp = got[2].as_array().expect("batch response is an array");
    assert_eq!(batch_resp.len(), 2);
    assert_eq!(batch_resp[0]["id"], json!("b1"));
    assert_eq!(
        batch_resp[1]["error"]["code"],
        json!(codes::INVALID_REQUEST)
    );
    assert_eq!(got[3]["id"], json!(3));

    // Nothing else is pending: the next answer is for the next request.
    s.write_all(br#"[{"jsonrpc":"2.0","method":"echo"}]"#)
        .unwrap();
    s.write_all(req("echo", 4).as_bytes()).unwrap();
    assert_eq!(read_values(&mut s, 1)[0]["id"], json!(4));
}

#[test]
fn responses_are_one_per_line() {
    let f = start();
    let mut s = connect(&f.path);
    s.write_all(format!("{}{}", req("echo", 1), req("echo", 2)).as_bytes())
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert!(text.ends_with('\n'));
}

fn assert_error_then_close(got: &[Value], code: i64) {
    let last = got.last().expect("an error response");
    assert_eq!(last["error"]["code"], json!(code), "{got:?}");
    assert_eq!(last["id"], Value::Null);
    assert_eq!(last["jsonrpc"], json!("2.0"));
}

#[test]
fn invalid_utf8_is_a_parse_error_and_closes_the_connection() {
    let f = start();
    let mut s = connect(&f.path);
    s.write_all(
        b"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":{\"s\":\"\xff\xfe\"},\"id\":1}",
    )
    .unwrap();
    let got = read_all(&mut s); // returns only because the server closed
    assert_eq!(got.len(), 1);
    assert_error_then_close(&got, codes::PARSE_ERROR);
}

#[test]
fn valid_request_before_garbage_is_answered_then_parse_error() {
    let f = start();
    let mut s = connect(&f.path);
    s.write_all(format!("{} }} not json", req("echo", 1)).as_bytes())
        .unwrap();
    let got = read_all(&mut s);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["id"], json!(1));
    assert_error_then_close(&got, codes::PARSE_ERROR);
    assert!(got[1]["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Parse error"));
}

#[test]
fn truncated_request_at_eof_is_a_parse_error() {
    let f = start();
    let mut s = connect(&f.path);
    s.write_all(br#"{"jsonrpc":"2.0","method":"ec"#).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_error_then_close(&read_all(&mut s), codes::PARSE_ERROR);
}

/// Writes `bytes` from another thread (the server stops reading midway) and
/// returns what the server sent back before closing.
fn send_huge(path: &Path, bytes: Vec<u8>) -> (Vec<Value>, Duration) {
    let mut s = connect(path);
    let mut w = s.try_clone().unwrap();
    let t = Instant::now();
    let writer = thread::spawn(move || {
        // Fails with EPIPE/ECONNRESET once the server gives up: expected.
        let _ = w.write_all(&bytes);
    });
    let got = read_all(&mut s);
    let elapsed = t.elapsed();
    drop(s);
    writer.join().unwrap();
    (got, elapsed)
}

#[test]
fn huge_garbage_is_rejected_early() {
    let f = start();
    let (got, elapsed) = send_huge(&f.path, vec![b'x'; 20 << 20]);
    assert_error_then_close(&got, codes::PARSE_ERROR);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn oversize_value_is_rejected_at_the_cap() {
    let f = start();
    // Valid JSON so far, never finished: only the size cap can stop it.
    let mut bytes = br#"{"jsonrpc":"2.0","method":"echo","params":{"s":""#.to_vec();
    bytes.resize(17 << 20, b'a');
    let (got, _) = send_huge(&f.path, bytes);
    assert_error_then_close(&got, codes::INVALID_REQUEST);
    assert!(
        got[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{got:?}"
    );

    // The server is still fine for everyone else.
    let mut c = Client::connect(&f.path).unwrap();
    assert_eq!(
        c.call("echo", json!({"ok": true})).unwrap(),
        json!({"ok": true})
    );
}

#[test]
fn handler_panic_is_internal_error_and_connection_survives() {
    let f = start();
    let mut s = connect(&f.path);
    s.write_all(req("panic", 1).as_bytes()).unwrap();
    let got = read_values(&mut s, 1);
    assert_eq!(got[0]["error"]["code"], json!(codes::INTERNAL_ERROR));
    assert!(got[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("deliberate test panic"));
    s.write_all(req("echo", 2).as_bytes()).unwrap();
    assert_eq!(read_values(&mut s, 1)[0]["id"], json!(2));
}

#[test]
fn slow_handler_does_not_block_other_connections() {
    let f = start();
    let path = f.path.clone();
    let slow = thread::spawn(move || {
        Client::connect(&path)
            .unwrap()
            .call("sleep", json!({"ms": 1500}))
    });
    thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let mut c = Client::connect(&f.path).unwrap();
    assert_eq!(c.call("echo", json!(null)).unwrap(), json!({}));
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(slow.join().unwrap().unwrap(), json!(1500));
}

#[test]
fn client_results_and_typed_errors() {
    let f = start();
    let mut c = Client::connect(&f.path).unwrap();
    assert_eq!(
        c.call("echo", json!({"n": [1, 2]})).unwrap(),
        json!({"n": [1, 2]})
    );
    match c.call("fail_not_found", Value::Null) {
        Err(ClientError::Rpc(e)) => {
            assert_eq!(e.code, codes::NOT_FOUND);
            assert_eq!(e.message, "volume \"nope\" not found");
        }
        other => panic!("{other:?}"),
    }
    let e = c.call("no_such_method", Value::Null).unwrap_err();
    assert_eq!(e.rpc().map(|e| e.code), Some(codes::METHOD_NOT_FOUND));
    let e = c.call("echo", json!([1])).unwrap_err();
    assert_eq!(e.rpc().map(|e| e.code), Some(codes::INVALID_PARAMS));
    c.notify("fail_not_found", Value::Null).unwrap();
    assert_eq!(
        c.call("echo", json!({"after": "notify"})).unwrap(),
        json!({"after": "notify"})
    );
    assert_eq!(
        c.call("rpc_get_methods", Value::Null).unwrap(),
        json!([
            "echo",
            "fail_not_found",
            "panic",
            "rpc_get_methods",
            "shutdown",
            "sleep"
        ])
    );
}

#[test]
fn client_timeout_and_late_answer_is_skipped() {
    let f = start();
    let mut c = Client::connect(&f.path).unwrap();
    c.set_timeout(Some(Duration::from_millis(200)));
    let t = Instant::now();
    match c.call("sleep", json!({"ms": 600})) {
        Err(e @ ClientError::Timeout { .. }) => assert!(e.to_string().contains("no response")),
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );
    // The late result of `sleep` arrives first on this connection; the client must
    // not mistake it for the answer to the next call.
    c.set_timeout(Some(Duration::from_secs(5)));
    assert_eq!(
        c.call("echo", json!({"next": 1})).unwrap(),
        json!({"next": 1})
    );
}

#[test]
fn client_connect_failure_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.sock");
    match Client::connect(&path) {
        Err(e @ ClientError::Connect { .. }) => {
            assert!(e.to_string().contains("missing.sock"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn shutdown_method_answers_then_stops_the_server_and_removes_the_socket() {
    let f = start();
    let mut idle = connect(&f.path); // an idle connection must not keep the server up
    let mut c = Client::connect(&f.path).unwrap();
    assert_eq!(c.call("shutdown", Value::Null).unwrap(), json!(true));
    let t = Instant::now();
    f.server.join();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!f.path.exists(), "socket file removed");
    assert!(UnixStream::connect(&f.path).is_err());
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).unwrap(),
        0,
        "idle connection sees EOF"
    );
}

#[test]
fn in_flight_request_is_answered_during_stop() {
    let f = start();
    let mut s = connect(&f.path);
    s.write_all(
        json!({"jsonrpc": "2.0", "method": "sleep", "params": {"ms": 300}, "id": 1})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    thread::sleep(Duration::from_millis(100));
    f.server.stop();
    let got = read_all(&mut s);
    assert_eq!(got, vec![json!({"jsonrpc": "2.0", "result": 300, "id": 1})]);
    f.server.join();
}

#[test]
fn one_shutdown_signal_stops_unix_and_tcp_servers() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let reg = Arc::new(test_registry(&shutdown));
    let unix = serve_unix(dir.path().join("rpc.sock"), reg.clone(), shutdown.clone()).unwrap();
    let tcp = serve_tcp("127.0.0.1:0", reg, shutdown.clone()).unwrap();
    let ListenAddr::Tcp(addr) = *tcp.local_addr() else {
        panic!("tcp address")
    };

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req("echo", 5).as_bytes()).unwrap();
    assert_eq!(read_values(&mut s, 1)[0]["result"], json!({"id": 5}));

    let waiter = {
        let shutdown = shutdown.clone();
        thread::spawn(move || shutdown.wait())
    };
    shutdown.trigger();
    unix.join();
    tcp.join();
    waiter.join().unwrap();
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn tcp_refuses_non_loopback_addresses() {
    let shutdown = Shutdown::new();
    match serve_tcp("0.0.0.0:0", Arc::new(MethodTable::new()), shutdown) {
        Err(e @ ServerError::NotLoopback { .. }) => assert!(e.to_string().contains("loopback")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dropping_the_handle_stops_the_server() {
    let f = start();
    let path = f.path.clone();
    drop(f.server);
    assert!(!path.exists());
}
