//! sluiced — the sluice daemon.
//!
//! With no arguments it starts on an embedded default: `./sluice-data`
//! (created), a sparse 16 GiB pool file there (created on first start), one
//! volume `vol0` (lz4, 64 KiB chunks) exported over NBD on
//! `./sluice-data/nbd.sock` and `127.0.0.1:10809`, JSON-RPC on
//! `./sluice-data/rpc.sock` (mode 0600). A restart replays
//! `./sluice-data/config.json`, which the daemon keeps current.
//!
//! `--rpc-tcp ADDR` serves JSON-RPC over TCP as well (off by default). JSON-RPC has
//! no authentication, so ADDR must be a loopback address unless
//! `--rpc-tcp-insecure` is given (docs/decisions.md).
//!
//! The `--nbd-*` flags shape the default NBD server, which a first start
//! creates with `nbd_server_start` (the same checks as the RPC: a TCP
//! address that is not loopback needs `--nbd-tls-x509`, `--nbd-tls-psk` or
//! `--nbd-insecure`). The saved config records them; a start that replays
//! a config says so when such flags are given, and does not use them.

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use nix::sys::signal::{SigSet, Signal};
use serde_json::json;
use sluice_engine::ZoneConfig;
use sluice_reactor::{Reactors, RingConfig};
use sluice_rpc::daemon::{config, logger, methods, Daemon, DaemonOptions};
use sluice_rpc::jsonrpc::{serve_unix, ListenAddr, MethodTable, Server, ServerHandle, Shutdown};
use sluice_rpc::size::{format_size, parse_size};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(name = "sluiced", version, about = "sluice block storage daemon")]
struct Args {
    /// Data directory: default pool file, sockets, saved config.
    #[arg(long, default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// JSON-RPC socket (default `<data-dir>`/rpc.sock).
    #[arg(long)]
    rpc_socket: Option<PathBuf>,
    /// Also serve JSON-RPC over TCP on ADDR, e.g. 127.0.0.1:5260 (off by default;
    /// `sluice -s 127.0.0.1:5260` talks to it). JSON-RPC has no authentication, so
    /// ADDR must be a loopback address unless --rpc-tcp-insecure is given.
    #[arg(long, value_name = "ADDR")]
    rpc_tcp: Option<String>,
    /// Let --rpc-tcp listen on a non-loopback address. Whoever reaches the port can
    /// delete every volume: use it only behind a firewall or an authenticating proxy.
    #[arg(long, requires = "rpc_tcp")]
    rpc_tcp_insecure: bool,
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
    /// Default NBD TCP listen address ("none" to disable). An address that
    /// is not loopback (e.g. 0.0.0.0:10809) needs --nbd-tls-x509,
    /// --nbd-tls-psk or --nbd-insecure.
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd_tcp: String,
    /// Budget for the request and reply buffers all NBD connections have in
    /// flight together (default 256M, at least 1M): a connection that finds
    /// it spent stops reading its socket until replies go out.
    #[arg(long, value_name = "SIZE")]
    nbd_memory: Option<String>,
    /// Require TLS on the NBD TCP listener, with X.509 certificates from DIR
    /// (server-cert.pem, server-key.pem; with ca-cert.pem, client
    /// certificates are required and checked).
    #[arg(long, value_name = "DIR", conflicts_with = "nbd_tls_psk")]
    nbd_tls_x509: Option<PathBuf>,
    /// Require TLS on the NBD TCP listener, with pre-shared keys from FILE
    /// (lines of username:hexkey, as psktool writes them).
    #[arg(long, value_name = "FILE")]
    nbd_tls_psk: Option<PathBuf>,
    /// Allow plaintext NBD on a TCP address that is not loopback: anyone who
    /// can reach it reads and writes the exports.
    #[arg(long)]
    nbd_insecure: bool,
    /// Metadata cache per zone, in 4 KiB nodes.
    #[arg(long, default_value_t = 1024)]
    cache_nodes: usize,
    /// Event log level on stderr: error, warn, info, debug, trace, off
    /// (default: $SLUICE_LOG, else info).
    #[arg(long)]
    log_level: Option<String>,
}

/// Counts heap allocations per reactor (`framework_get_reactors`' `heap_allocs`).
#[global_allocator]
static ALLOC: sluice_reactor::alloc_count::CountingAlloc =
    sluice_reactor::alloc_count::CountingAlloc;

fn main() -> Result<()> {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let nbd_flags = nbd_flags_given(&matches, &args);
    // Checked on every start, used on the first.
    let nbd_memory = args
        .nbd_memory
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--nbd-memory: {e}"))?;
    // Event log: one line per event on stderr, from here on.
    let level = args
        .log_level
        .clone()
        .or_else(|| std::env::var("SLUICE_LOG").ok())
        .unwrap_or_else(|| "info".into());
    logger::init(logger::parse_level(&level).map_err(anyhow::Error::msg)?);
    // Block the stop signals in every thread; one thread waits for them.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.thread_block().context("block signals")?;
    // Checked before any pool is opened: a refused address costs nothing.
    let rpc_tcp = rpc_tcp_addrs(&args)?;

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
    // A failing call of the saved config is logged and skipped (the state
    // it names may be gone: a deleted pool file, a removed volume); one of
    // an explicit --config stops the start (see docs/decisions.md).
    let saved = data_dir.join("config.json");
    let replayed = args.config.as_ref().or(saved.exists().then_some(&saved));
    if let (Some(c), false) = (replayed, nbd_flags.is_empty()) {
        log::warn!(
            "{} shape the default NBD server of a first start; this start replays {} \
             and does not use them (change a running server with nbd_server_stop and \
             nbd_server_start, which the saved config then keeps)",
            nbd_flags.join(", "),
            c.display()
        );
    }
    let (calls, strict) = if let Some(c) = &args.config {
        (config::read_calls(c).map_err(anyhow::Error::msg)?, true)
    } else if saved.exists() {
        (
            config::read_calls(&saved).map_err(anyhow::Error::msg)?,
            false,
        )
    } else {
        (default_calls(&args, &data_dir, nbd_memory)?, true)
    };
    let mut skipped = 0;
    for (method, params) in calls {
        if let Err(e) = reg.call(&method, params.clone()) {
            let shown = logger::short_json(&params);
            if strict {
                daemon.shutdown();
                if replayed.is_none() {
                    // A first start that failed half way: what it saved
                    // would make the next start a replay without the rest
                    // (e.g. no NBD server); without it, the next start is
                    // a first start again and imports the pool it made.
                    let _ = std::fs::remove_file(&saved);
                }
                let hint = if method == "nbd_server_start" && replayed.is_none() {
                    " (the default NBD server: see --nbd-tcp, --nbd-tls-x509, --nbd-tls-psk, \
                     --nbd-insecure and --nbd-memory)"
                } else {
                    ""
                };
                bail!("start-up call {method} {shown} failed: {e}{hint}");
            }
            log::error!("saved config: {method} {shown} failed, skipped: {e}");
            skipped += 1;
        }
    }
    if skipped > 0 {
        // The saved config now says what really runs.
        if let Err(e) = daemon.save_config_to(&saved) {
            log::error!("cannot rewrite {}: {}", saved.display(), e.message);
        }
    }

    let servers = match start_rpc(&rpc_path, rpc_tcp.as_deref(), &args, &reg, &stop) {
        Ok(servers) => servers,
        Err(e) => {
            // Close the pools cleanly (checkpoint) rather than leave them to replay.
            for shutdown_error in daemon.shutdown() {
                log::error!("shutdown: {shutdown_error}");
            }
            return Err(e);
        }
    };
    banner(&daemon, &servers, &cores);

    // Wait for a signal or the shutdown method.
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if let Ok(sig) = sigs.wait() {
                log::info!("{sig:?}, stopping");
            }
            stop.trigger();
        });
    }
    stop.wait();
    // No new calls, and the calls in flight answered, before the pools close.
    for server in servers {
        server.join();
    }
    let errors = daemon.shutdown();
    for e in &errors {
        log::error!("shutdown: {e}");
    }
    // Gone means gone: a client finding no socket knows the daemon exited.
    match std::fs::remove_file(&rpc_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove {}: {e}", rpc_path.display()),
    }
    log::info!("stopped");
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{} error(s) during shutdown", errors.len())
    }
}

/// `--rpc-tcp` resolved and checked, before anything is opened: JSON-RPC has no
/// authentication, so every address must be loopback unless --rpc-tcp-insecure.
/// (`Server::serve_tcp` refuses too; this says which flag to use, and says it early.)
fn rpc_tcp_addrs(args: &Args) -> Result<Option<Vec<SocketAddr>>> {
    let Some(addr) = &args.rpc_tcp else {
        return Ok(None);
    };
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("--rpc-tcp {addr}: not an address (HOST:PORT)"))?
        .collect();
    if addrs.is_empty() {
        bail!("--rpc-tcp {addr}: the name resolves to no address");
    }
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        Some(bad) if !args.rpc_tcp_insecure => bail!(
            "--rpc-tcp {addr}: refusing to serve JSON-RPC on {bad}, which is not a loopback \
             address. JSON-RPC has no authentication: whoever reaches the port can delete \
             every volume. Use 127.0.0.1 or [::1] (and an SSH tunnel or proxy for remote \
             access), or pass --rpc-tcp-insecure to allow it."
        ),
        Some(bad) => log::warn!(
            "--rpc-tcp-insecure: JSON-RPC on {bad} has no authentication; \
             whoever reaches it controls this daemon"
        ),
        None => {}
    }
    Ok(Some(addrs))
}

/// The JSON-RPC servers: the Unix socket, then TCP if asked. They share `stop`, so
/// one trigger stops both. On error, every server already started is stopped.
fn start_rpc(
    rpc_path: &std::path::Path,
    tcp: Option<&[SocketAddr]>,
    args: &Args,
    reg: &Arc<MethodTable>,
    stop: &Shutdown,
) -> Result<Vec<ServerHandle>> {
    let unix = serve_unix(rpc_path, reg.clone(), stop.clone())
        .with_context(|| format!("listen on {}", rpc_path.display()))?;
    let Some(tcp) = tcp else {
        return Ok(vec![unix]);
    };
    let tcp = Server::new(reg.clone(), stop.clone())
        .allow_non_loopback(args.rpc_tcp_insecure)
        .serve_tcp(tcp)
        .with_context(|| format!("--rpc-tcp {}", args.rpc_tcp.as_deref().unwrap_or("")));
    match tcp {
        Ok(tcp) => Ok(vec![unix, tcp]),
        Err(e) => {
            // Stopped and joined here, before the caller closes the pools.
            unix.stop();
            unix.join();
            Err(e)
        }
    }
}

/// The start-up banner: every listening address, each pool and volume.
fn banner(daemon: &Daemon, servers: &[ServerHandle], cores: &[usize]) {
    let listening: Vec<String> = servers
        .iter()
        .map(|s| match s.local_addr() {
            ListenAddr::Unix(p) => format!("unix:{}", p.display()),
            ListenAddr::Tcp(a) => format!("tcp:{a}"),
        })
        .collect();
    log::info!(
        "ready: JSON-RPC on {}, {} reactor(s) on cores {:?}",
        listening.join(" and "),
        cores.len(),
        cores
    );
    match daemon.nbd_addresses() {
        Some(a) => log::info!("NBD listening on {a}"),
        None => log::info!("NBD server not running"),
    }
    for p in daemon.pool_list().unwrap_or_default() {
        let vols: Vec<_> = p
            .catalog()
            .volumes
            .into_iter()
            .filter(|v| v.live())
            .collect();
        log::info!(
            "pool '{}': {}, {} zones, {} volume(s), {}",
            p.name,
            format_size(p.geometry().size_bytes()),
            p.geometry().nzones,
            vols.len(),
            p.path.display()
        );
        for v in vols {
            log::info!(
                "  volume '{}' of pool '{}': {}, chunk {}, {}{}",
                v.name,
                p.name,
                format_size(v.size),
                format_size(v.chunk_size() as u64),
                v.compression.name(),
                if v.read_only() { ", read-only" } else { "" }
            );
        }
    }
    for e in daemon.export_list().unwrap_or_default() {
        log::info!(
            "export '{}': volume '{}' of pool '{}'",
            e.name,
            e.volume,
            e.pool
        );
    }
}

/// The `--nbd-*` flags given on the command line (not defaulted).
fn nbd_flags_given(m: &clap::ArgMatches, args: &Args) -> Vec<&'static str> {
    let mut given = Vec::new();
    if m.value_source("nbd_tcp") == Some(clap::parser::ValueSource::CommandLine) {
        given.push("--nbd-tcp");
    }
    for (on, flag) in [
        (args.nbd_memory.is_some(), "--nbd-memory"),
        (args.nbd_tls_x509.is_some(), "--nbd-tls-x509"),
        (args.nbd_tls_psk.is_some(), "--nbd-tls-psk"),
        (args.nbd_insecure, "--nbd-insecure"),
    ] {
        if on {
            given.push(flag);
        }
    }
    given
}

/// The first start's `nbd_server_start` params from the `--nbd-*` flags.
/// TLS paths are resolved (made absolute) by the method itself, against
/// this process's working directory: the user's.
fn default_nbd_params(
    args: &Args,
    data_dir: &std::path::Path,
    memory: Option<u64>,
) -> serde_json::Value {
    let tcp = (args.nbd_tcp != "none").then(|| args.nbd_tcp.clone());
    let mut p = json!({"unix": data_dir.join("nbd.sock"), "tcp": tcp});
    match (&args.nbd_tls_x509, &args.nbd_tls_psk) {
        (Some(dir), _) => p["tls"] = json!({"mode": "x509", "dir": dir}),
        (None, Some(file)) => p["tls"] = json!({"mode": "psk", "psk_file": file}),
        (None, None) => {}
    }
    if args.nbd_insecure {
        p["insecure"] = json!(true);
    }
    if let Some(m) = memory {
        p["memory"] = json!(m);
    }
    p
}

/// First start: the default pool, volume and exports.
fn default_calls(
    args: &Args,
    data_dir: &std::path::Path,
    nbd_memory: Option<u64>,
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
    if !args.no_default_volume {
        if !pool_path.exists() {
            calls.push((
                "volume_create".into(),
                json!({"name": "vol0", "size": size, "chunk_size": 65536, "compression": "lz4"}),
            ));
        }
        calls.push(("nbd_export_add".into(), json!({"volume": "vol0"})));
    }
    // Last: should the NBD flags be refused, the pool and its volume exist
    // and a retry with other flags imports them (its saved config is removed).
    calls.push((
        "nbd_server_start".into(),
        default_nbd_params(args, data_dir, nbd_memory),
    ));
    Ok(calls)
}
