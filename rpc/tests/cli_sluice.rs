//! The `sluice` binary against an in-process JSON-RPC server: what people see on
//! stdout and stderr, what is sent, and the exit status. (Every subcommand against
//! the real daemon: `cli_daemon.rs`.)

use serde_json::{json, Value};
use sluice_rpc::jsonrpc::{serve_unix, MethodTable, RpcError, ServerHandle, Shutdown};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// A stand-in daemon that records every call it receives.
struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    calls: Arc<Mutex<Vec<(String, Value)>>>,
    _server: ServerHandle,
}

fn volumes() -> Value {
    json!([
        {"name": "vol0", "size": 10737418240u64, "used_bytes": 1572864, "compression": "lz4", "read_only": false},
        {"name": "snap-of-vol0", "size": 1024, "used_bytes": 0, "compression": "none", "read_only": true},
    ])
}

fn daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("rpc.sock");
    let calls: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let mut r = MethodTable::new();
    let record = |name: &'static str, reply: fn(Value) -> Result<Value, RpcError>| {
        let calls = calls.clone();
        move |params: Value| {
            calls
                .lock()
                .unwrap()
                .push((name.to_string(), params.clone()));
            reply(params)
        }
    };
    r.register(
        "volume_get_volumes",
        record("volume_get_volumes", |_| Ok(volumes())),
    );
    r.register("volume_create", record("volume_create", Ok));
    r.register(
        "pool_get_pools",
        record("pool_get_pools", |_| Ok(json!([]))),
    );
    r.register(
        "volume_delete",
        record("volume_delete", |p| {
            Err(RpcError::not_found(format!(
                "volume {} not found",
                p["name"]
            )))
        }),
    );
    r.register(
        "volume_resize",
        record("volume_resize", |p| {
            Ok(json!({"name": p["name"], "size": p["size"], "chunk_size": 65536}))
        }),
    );
    r.register(
        "nbd_export_remove",
        record("nbd_export_remove", |_| Ok(json!(true))),
    );
    r.register("shutdown", record("shutdown", |_| Ok(json!(true))));
    let server = serve_unix(&socket, Arc::new(r), Shutdown::new()).unwrap();
    Daemon {
        dir,
        socket,
        calls,
        _server: server,
    }
}

fn sluice(args: &[&str], socket: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("-s")
        .arg(socket)
        .args(args)
        .env_remove("SLUICE_RPC_SOCKET")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn array_results_print_as_tables() {
    let d = daemon();
    let o = sluice(&["volume_get_volumes"], &d.socket);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "\
NAME              SIZE     USED  COMPRESSION  READ_ONLY
vol0          10.0 GiB  1.5 MiB  lz4          false
snap-of-vol0   1.0 KiB      0 B  none         true
"
    );
    assert_eq!(
        d.calls.lock().unwrap().as_slice(),
        &[("volume_get_volumes".to_string(), json!({}))]
    );
}

#[test]
fn json_flag_prints_the_raw_result() {
    let d = daemon();
    let o = sluice(&["volume_get_volumes", "--json"], &d.socket);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(printed, volumes());
    assert!(stdout(&o).contains("\n  "), "pretty-printed");
}

#[test]
fn objects_print_as_key_value_lines_under_what_was_done() {
    let d = daemon();
    let o = sluice(&["volume_resize", "v9", "2K"], &d.socket);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "volume v9 resized to 2.0 KiB\nname:       v9\nsize:       2.0 KiB\nchunk_size: 64.0 KiB\n"
    );
    assert_eq!(
        d.calls.lock().unwrap()[0].1,
        json!({"name": "v9", "size": 2048})
    );

    let o = sluice(&["nbd_export_remove", "e1"], &d.socket);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "export e1 removed\n");

    let o = sluice(&["pool_get_pools"], &d.socket);
    assert_eq!(stdout(&o), "(none)\n");
}

/// The stand-in daemon lives in this test process, which does not exit: `shutdown`
/// must give up at the deadline with a clear error instead of returning early.
#[test]
fn shutdown_waits_for_the_process_and_fails_clearly_at_the_deadline() {
    let d = daemon();
    let o = sluice(&["-t", "0.5", "shutdown"], &d.socket);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "(pid {}) accepted shutdown but is still running",
            std::process::id()
        )),
        "{err}"
    );
    assert_eq!(stdout(&o), "", "nothing claims the daemon stopped");
    assert_eq!(d.calls.lock().unwrap()[0].0, "shutdown");
}

#[test]
fn sizes_are_sent_as_bytes_with_snake_case_params() {
    let d = daemon();
    let o = sluice(
        &[
            "volume_create",
            "v1",
            "1.5G",
            "--chunk-size",
            "64K",
            "--compression",
            "none",
            "--json",
        ],
        &d.socket,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let sent =
        json!({"name": "v1", "size": 1610612736u64, "chunk_size": 65536, "compression": "none"});
    assert_eq!(serde_json::from_str::<Value>(&stdout(&o)).unwrap(), sent);
    assert_eq!(
        d.calls.lock().unwrap()[0],
        ("volume_create".to_string(), sent)
    );
}

#[test]
fn server_error_prints_message_and_code_and_exits_1() {
    let d = daemon();
    let o = sluice(&["volume_delete", "nope"], &d.socket);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: volume \"nope\" not found (code -32001)\n"
    );
    assert_eq!(stdout(&o), "");
}

#[test]
fn unknown_method_on_an_older_daemon_exits_1() {
    let d = daemon();
    let o = sluice(&["nbd_get_exports"], &d.socket);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: Method not found: nbd_get_exports (code -32601)\n"
    );
}

#[test]
fn missing_socket_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-home.sock");
    let o = sluice(&["volume_get_volumes"], &socket);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.starts_with("error: cannot connect to "), "{err}");
    assert!(err.contains(socket.to_str().unwrap()), "{err}");
    assert!(err.contains("SLUICE_RPC_SOCKET"), "{err}");
}

#[test]
fn socket_from_environment() {
    let d = daemon();
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["volume_get_volumes", "--json"])
        .env("SLUICE_RPC_SOCKET", &d.socket)
        .current_dir(d.dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o)).unwrap(),
        volumes()
    );
}

#[test]
fn bad_size_is_rejected_without_calling_the_daemon() {
    let d = daemon();
    let o = sluice(&["volume_create", "v1", "10X"], &d.socket);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown unit \"X\""), "{}", stderr(&o));
    assert!(d.calls.lock().unwrap().is_empty());
}
