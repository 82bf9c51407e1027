//! sluiced — the sluice daemon.
//!
//! With no arguments it starts on an embedded default: `./sluice-data`
//! (created), a sparse 16 GiB pool file there (created on first start), one
//! volume `vol0` (lz4, 64 KiB chunks) exported over NBD on
//! `./sluice-data/nbd.sock` and `127.0.0.1:10809`, JSON-RPC on
//! `./sluice-data/rpc.sock` (mode 0600). A restart replays
//! `./sluice-data/config.json`, which the daemon keeps current.

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use serde_json::json;
use sluice_engine::ZoneConfig;
use sluice_reactor::{Reactors, RingConfig};
use sluice_rpc::daemon::{config, methods, Daemon, DaemonOptions};
use sluice_rpc::jsonrpc::{serve_unix, MethodTable, Shutdown};
use sluice_rpc::size::parse_size;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(name = "sluiced", version, about = "sluice block storage daemon")]
struct Args {
    /// Data directory: default pool file, sockets, saved config.
    #[arg(long, default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// JSON-RPC socket (default <data-dir>/rpc.sock).
    #[arg(long)]
    rpc_socket: Option<PathBuf>,
    /// Cores to run reactors on, e.g. "0,1" (default: every allowed core but
    /// one, at least one: the spare core serves clients and the kernel).
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// JSON list of method calls to replay at start (instead of the saved config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Do not create or export the default volume on first start.
    #[arg(long)]
    no_default_volume: bool,
    /// Size of the default pool file when it is created.
    #[arg(long, default_value = "16G")]
    pool_size: String,
    /// Zone size for a newly created default pool.
    #[arg(long, default_value = "256M")]
    zone_size: String,
    /// Default NBD TCP listen address ("none" to disable).
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd_tcp: String,
    /// Metadata cache per zone, in 4 KiB nodes.
    #[arg(long, default_value_t = 1024)]
    cache_nodes: usize,
}

/// Counts heap allocations per reactor (`framework_get_reactors`' `heap_allocs`).
#[global_allocator]
static ALLOC: sluice_reactor::alloc_count::CountingAlloc =
    sluice_reactor::alloc_count::CountingAlloc;

fn main() -> Result<()> {
    let args = Args::parse();
    // Block the stop signals in every thread; one thread waits for them.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.thread_block().context("block signals")?;

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let rpc_path = args
        .rpc_socket
        .clone()
        .unwrap_or_else(|| data_dir.join("rpc.sock"));
    let cores = args
        .cores
        .clone()
        .unwrap_or_else(sluice_reactor::default_cores);
    let reactors = Reactors::start(&cores, RingConfig::default()).context("start reactors")?;
    let opts = DaemonOptions {
        data_dir: data_dir.clone(),
        zone: ZoneConfig {
            cache_nodes: args.cache_nodes,
            ..ZoneConfig::default()
        },
        config_path: data_dir.join("config.json"),
    };
    let daemon = Daemon::new(opts, reactors);
    let stop = Shutdown::new();
    let mut reg = MethodTable::new();
    methods::register(&mut reg, &daemon, stop.clone());
    let reg = Arc::new(reg);

    // State: an explicit config, else the saved one, else the embedded default.
    let saved = data_dir.join("config.json");
    let calls = if let Some(c) = &args.config {
        config::read_calls(c).map_err(anyhow::Error::msg)?
    } else if saved.exists() {
        config::read_calls(&saved).map_err(anyhow::Error::msg)?
    } else {
        default_calls(&args, &data_dir)?
    };
    for (method, params) in calls {
        if let Err(e) = reg.call(&method, params.clone()) {
            daemon.shutdown();
            bail!("start-up call {method} {params} failed: {e}");
        }
    }

    let server = serve_unix(&rpc_path, reg.clone(), stop.clone())
        .with_context(|| format!("listen on {}", rpc_path.display()))?;
    eprintln!(
        "sluiced: ready — JSON-RPC on {}, {} reactor(s) on cores {:?}",
        rpc_path.display(),
        cores.len(),
        cores
    );
    for e in daemon
        .exports
        .read()
        .map(|e| e.values().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        eprintln!(
            "sluiced: export '{}' (volume {} of pool {})",
            e.name, e.volume, e.pool
        );
    }

    // Wait for a signal or the shutdown method.
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if let Ok(sig) = sigs.wait() {
                eprintln!("sluiced: {sig:?}, stopping");
            }
            stop.trigger();
        });
    }
    stop.wait();
    server.stop();
    let errors = daemon.shutdown();
    for e in &errors {
        eprintln!("sluiced: shutdown: {e}");
    }
    eprintln!("sluiced: stopped");
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{} error(s) during shutdown", errors.len())
    }
}

/// First start: the default pool, volume and exports.
fn default_calls(
    args: &Args,
    data_dir: &std::path::Path,
) -> Result<Vec<(String, serde_json::Value)>> {
    let pool_path = data_dir.join("pool0.img");
    let size = parse_size(&args.pool_size).map_err(|e| anyhow::anyhow!("--pool-size: {e}"))?;
    let zone = parse_size(&args.zone_size).map_err(|e| anyhow::anyhow!("--zone-size: {e}"))?;
    let mut calls = vec![if pool_path.exists() {
        (
            "pool_import".to_string(),
            json!({"name": "pool0", "path": pool_path}),
        )
    } else {
        (
            "pool_create".to_string(),
            json!({"name": "pool0", "path": pool_path, "size": size, "zone_size": zone}),
        )
    }];
    let tcp = (args.nbd_tcp != "none").then(|| args.nbd_tcp.clone());
    calls.push((
        "nbd_server_start".into(),
        json!({"unix": data_dir.join("nbd.sock"), "tcp": tcp}),
    ));
    if !args.no_default_volume {
        if !pool_path.exists() {
            calls.push((
                "volume_create".into(),
                json!({"name": "vol0", "size": size, "chunk_size": 65536, "compression": "lz4"}),
            ));
        }
        calls.push(("nbd_export_add".into(), json!({"volume": "vol0"})));
    }
    Ok(calls)
}
