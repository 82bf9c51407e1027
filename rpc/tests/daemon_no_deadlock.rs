//! The control plane never blocks the data path: with ONE reactor, NBD
//! clients connecting in a loop and I/O running, pool and volume changes
//! all answer within a deadline (issue 14, point 1). Before the fix,
//! `pool_create` held the pool table's write lock while the reactor
//! formatted the pool, and the reactor, serving a handshake, waited for the
//! read lock of the same table: both hung.

mod common;
use common::*;
use serde_json::{json, Value};
use sluice_rpc::client::Client;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every RPC must answer within this (a hang fails the test, it does not
/// hang it). Generous for a debug build on a shared 2-core machine.
const DEADLINE: Duration = Duration::from_secs(45);

fn call(d: &Sluiced, method: &str, params: Value) -> Value {
    let mut c = Client::connect(d.rpc_sock()).expect("connect rpc");
    c.set_timeout(Some(DEADLINE));
    c.call(method, params.clone())
        .unwrap_or_else(|e| panic!("{method} {params}: {e}"))
}

/// Run `cmd` over and over until `stop`; count successful runs.
fn loop_tool(
    stop: Arc<AtomicBool>,
    runs: Arc<AtomicU64>,
    cmd: &'static str,
    args: Vec<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let out = Command::new(cmd)
                .args(&args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {cmd} ({e}); run scripts/setup"));
            if out.status.success() {
                runs.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[test]
fn pool_and_volume_changes_answer_while_clients_connect() {
    let d = Sluiced::start("nodeadlock", &["--cores", "0"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (infos, ios) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let info = loop_tool(
        stop.clone(),
        infos.clone(),
        "nbdinfo",
        vec!["--size".into(), d.uri("vol0")],
    );
    let io = loop_tool(
        stop.clone(),
        ios.clone(),
        "qemu-io",
        vec![
            "-f".into(),
            "raw".into(),
            "-c".into(),
            "write -P 0x5a 0 1M".into(),
            "-c".into(),
            "read -P 0x5a 0 1M".into(),
            d.uri("vol0"),
        ],
    );
    // Clients are running before the first change.
    wait_for(|| infos.load(Ordering::Relaxed) > 0 && ios.load(Ordering::Relaxed) > 0);

    for round in 0..3 {
        let name = format!("p{round}");
        let path = d.dir.join(format!("{name}.img"));
        let p = call(
            &d,
            "pool_create",
            json!({"name": name, "path": path, "size": "4G", "zone_size": "128M"}),
        );
        assert_eq!(p["name"], name.as_str());
        for i in 0..3 {
            let v = format!("v{round}-{i}");
            call(
                &d,
                "volume_create",
                json!({"name": v, "size": "1G", "pool": name}),
            );
            call(&d, "volume_delete", json!({"name": v, "pool": name}));
        }
        call(
            &d,
            "volume_create",
            json!({"name": "keep", "size": "64M", "pool": name}),
        );
        call(&d, "pool_export", json!({"name": name}));
        let p = call(&d, "pool_import", json!({"name": name, "path": path}));
        assert_eq!(p["volumes"], 1, "{p}");
        call(&d, "pool_get_pools", json!({}));
    }

    // The clients kept working through all of it.
    let (i0, q0) = (infos.load(Ordering::Relaxed), ios.load(Ordering::Relaxed));
    wait_for(|| infos.load(Ordering::Relaxed) > i0 && ios.load(Ordering::Relaxed) > q0);
    stop.store(true, Ordering::Relaxed);
    info.join().expect("nbdinfo loop");
    io.join().expect("qemu-io loop");
}

/// Poll `f` until true; fail after the deadline.
fn wait_for(f: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < DEADLINE, "clients made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}
