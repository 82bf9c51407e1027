//! The `sluice` command line: one subcommand per JSON-RPC method, SPDK `rpc.py` style.
//!
//! This module owns the mapping from arguments to a request (method name + params
//! object); [`report`] says what a successful command did, [`output`] turns a result
//! into what a person reads, and [`daemon_exit`] waits for the daemon to be gone
//! after `shutdown`. The binary (`src/bin/sluice.rs`) only glues them to a
//! [`Client`](crate::client::Client), so that they are unit-tested without a daemon.
//!
//! Choices:
//! * subcommands are the method names verbatim (`volume_create`), exactly the methods
//!   the daemon serves (a test compares them with `rpc_get_methods`), so the CLI, the
//!   docs and the daemon use one vocabulary; flags are kebab-case and map to
//!   snake_case params (`--zone-size` → `zone_size`);
//! * help text states the daemon's limits (chunk sizes, volume sizes) and defaults;
//!   the engine still enforces them, the CLI does not duplicate the rules;
//! * sizes are parsed here with [`crate::size`] and sent as integer bytes, so a typo
//!   is caught before anything is sent and the daemon logs exact values;
//! * file paths (`pool_create`, `pool_import`, `save_config --path`,
//!   `nbd_server_start --unix/--tls-x509/--tls-psk`) are made absolute against the CLI's working
//!   directory, because the daemon's working directory is not the user's;
//! * optional flags that are not given are omitted, so the daemon's defaults apply.

pub mod daemon_exit;
pub mod fsmap;
pub mod fsmap_picture;
pub mod output;
pub mod report;

use crate::client::Endpoint;
use crate::size::parse_size;
use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Where the daemon listens when started with no arguments.
pub const DEFAULT_SOCKET: &str = "./sluice-data/rpc.sock";

const SIZE_HELP: &str = "\
Sizes are bytes (4096) or a number with a binary unit: K, M, G, T, P, E, optionally followed \
by iB or B (64K = 64KiB = 65536). Fractions are allowed when the result is whole bytes (1.5G).

Output: a line saying what was done and readable tables; --json prints the daemon's raw \
result instead, for scripts.

Exit status: 0 on success, 1 when the daemon returns an error (or, for shutdown, does not \
exit in time), 2 when it cannot be reached or the command line is wrong.";

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Control a running sluiced over JSON-RPC",
    after_help = SIZE_HELP
)]
pub struct Cli {
    /// Where sluiced serves JSON-RPC: a Unix socket path, or HOST:PORT for TCP
    /// (sluiced --rpc-tcp). A value is TCP when it is HOST:PORT (no '/', a port
    /// number after the last ':') and no file of that name exists; write
    /// ./NAME:PORT for such a socket file. Over TCP, `shutdown` waits until the port
    /// stops answering, not for the process to exit.
    #[arg(
        short = 's',
        long,
        env = "SLUICE_RPC_SOCKET",
        default_value = DEFAULT_SOCKET,
        value_name = "PATH|HOST:PORT",
        global = true
    )]
    pub socket: Endpoint,

    /// Print the result as pretty JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// Seconds to wait for the answer; 0 waits forever.
    #[arg(short = 't', long, default_value = "60", value_parser = parse_timeout, global = true)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The `--timeout` as the client wants it: `None` for "wait forever".
    pub fn call_timeout(&self) -> Option<Duration> {
        (!self.timeout.is_zero()).then_some(self.timeout)
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid timeout"))
}

// One subcommand per method the daemon serves, and no other (`tests/cli_methods.rs`
// compares them with the daemon's `rpc_get_methods`). Plain comments here: clap would
// show a doc comment as the program's description. `rename_all` on the enum names the
// subcommands after the methods, but clap also applies it to the flags inside;
// variants with multi-word flags switch their flags back to kebab-case.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Command {
    /// Create a pool on a file or block device (a file is created if missing).
    #[command(name = "pool_create", rename_all = "kebab-case")]
    PoolCreate {
        /// Name of the new pool.
        name: String,
        /// File or block device to format.
        path: String,
        /// Size of the pool, e.g. 16G (files only, required for a new file; block
        /// devices use their whole size).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Size of one zone, the unit of allocation and of parallelism: a multiple
        /// of 4K (default 256M).
        #[arg(long, value_parser = parse_size)]
        zone_size: Option<u64>,
        /// Format over a device that already holds a pool (destroying it). A
        /// pool open in any daemon is refused even so.
        #[arg(long)]
        force: bool,
    },
    /// Open an existing pool (running recovery if it was not shut down cleanly).
    PoolImport {
        /// File or block device holding the pool.
        path: String,
        /// Name to give the pool in this daemon (default: pool0; a pool does not
        /// store its name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List pools with their space usage.
    PoolGetPools,
    /// Cross-check a pool's metadata and print the problems found. Synchronous:
    /// returns when every zone has been checked.
    PoolScrub {
        /// Pool to check (default: the only pool).
        #[arg(long)]
        pool: Option<String>,
        /// Also read and decompress every chunk (slower; finds damaged data too).
        #[arg(long)]
        deep: bool,
    },
    /// Who owns every block of a pool, in physical order (GETFSMAP): printed like
    /// `xfs_io -c 'fsmap -v'` (ranges in 512-byte units), every page fetched. With
    /// --json the records as the daemon returns them; --picture draws the zones'
    /// occupancy as a PNG; --map prints it as text, one line per zone.
    #[command(name = "pool_get_fsmap", rename_all = "kebab-case")]
    PoolGetFsmap {
        /// Pool to map (default: the only pool).
        #[arg(long)]
        pool: Option<String>,
        /// First byte of the range (rounded down to 4K; default 0).
        #[arg(long, value_parser = parse_size)]
        start: Option<u64>,
        /// End of the range, exclusive (rounded up to 4K; default: the pool's end).
        #[arg(long, value_parser = parse_size)]
        end: Option<u64>,
        /// Records per call (1..10000, default 1000); every page is fetched.
        #[arg(long)]
        count: Option<u64>,
        /// Write a PNG of the occupancy: one band per zone, colours for data,
        /// shared, compressed, metadata and free space, legend at the bottom.
        #[arg(long, value_name = "FILE.png")]
        picture: Option<String>,
        /// Print the occupancy as text instead of the table: a line per zone,
        /// one character per bucket of blocks, with a legend.
        #[arg(long)]
        map: bool,
    },
    /// Close a pool: checkpoint it, stop its zones, release the device.
    PoolExport {
        /// Pool to close.
        name: String,
        /// Remove the exports of its volumes first (disconnecting their clients)
        /// instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Close a pool and erase it: the device no longer holds a pool, a pool file
    /// is removed.
    PoolDelete {
        /// Pool to delete.
        name: String,
        /// Remove the exports of its volumes first (disconnecting their clients)
        /// instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Create a thin-provisioned volume.
    #[command(name = "volume_create", rename_all = "kebab-case")]
    VolumeCreate {
        /// Name of the new volume.
        name: String,
        /// Logical size, e.g. 10G: a multiple of 512 bytes, up to 1P.
        #[arg(value_parser = parse_size)]
        size: u64,
        /// Unit of compression and allocation: a power of two from 4K to 1M
        /// (default 64K).
        #[arg(long, value_parser = parse_size)]
        chunk_size: Option<u64>,
        /// Compression of each chunk (default lz4).
        #[arg(long, value_parser = ["lz4", "none"])]
        compression: Option<String>,
        /// Pool to create it in (default: the only pool).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Delete a volume, freeing its blocks. An exported volume is refused.
    VolumeDelete {
        name: String,
        /// Pool holding the volume (needed when several pools have one of that name).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Change a volume's logical size (a multiple of 512 bytes, up to 1P).
    VolumeResize {
        name: String,
        /// New logical size, e.g. 20G.
        #[arg(value_parser = parse_size)]
        size: u64,
        /// Pool holding the volume (needed when several pools have one of that name).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Snapshot a volume: a new read-only volume holding what VOLUME holds now.
    /// No data is copied: the snapshot shares VOLUME's blocks, and a later write
    /// to either takes new ones. Any of them can be deleted in any order.
    VolumeSnapshot {
        /// The volume to snapshot.
        volume: String,
        /// Name of the snapshot.
        name: String,
        /// Pool holding the volume (needed when several pools have one of that name).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Clone a snapshot (any read-only volume): a new volume sharing its blocks,
    /// writable unless --read-only.
    #[command(name = "volume_clone", rename_all = "kebab-case")]
    VolumeClone {
        /// The read-only volume to clone.
        snapshot: String,
        /// Name of the clone.
        name: String,
        /// Make the clone read-only too.
        #[arg(long)]
        read_only: bool,
        /// Pool holding the snapshot (needed when several pools have one of that name).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Rename a volume; its exports follow the new name.
    VolumeRename {
        name: String,
        new_name: String,
        /// Pool holding the volume (needed when several pools have one of that name).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Make a volume read-only (true) or writable (false); open NBD connections
    /// see the change at their next write.
    VolumeSetReadOnly {
        name: String,
        /// true or false.
        #[arg(action = clap::ArgAction::Set, value_parser = clap::value_parser!(bool))]
        read_only: bool,
        /// Pool holding the volume (needed when several pools have one of that name).
        #[arg(long)]
        pool: Option<String>,
    },
    /// List volumes, with the volume each snapshot or clone was made from
    /// (PARENT; - when none, or when that volume is deleted).
    VolumeGetVolumes {
        /// Only this volume.
        #[arg(long)]
        name: Option<String>,
        /// Only volumes of this pool.
        #[arg(long)]
        pool: Option<String>,
    },
    /// I/O counters and latency per volume.
    VolumeGetIostat {
        /// Only this volume.
        #[arg(long)]
        name: Option<String>,
        /// Only volumes of this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Zero the counters after reading them (the values printed are those
        /// before the reset).
        #[arg(long)]
        reset: bool,
    },
    /// Start the NBD server on a Unix socket and optionally a TCP address.
    #[command(name = "nbd_server_start", rename_all = "kebab-case")]
    NbdServerStart {
        /// Unix socket path for NBD clients (default: `<data-dir>`/nbd.sock).
        #[arg(long)]
        unix: Option<String>,
        /// TCP address, e.g. 127.0.0.1:10809. An address that is not loopback
        /// needs --tls-x509 or --tls-psk, or --insecure.
        #[arg(long)]
        tcp: Option<String>,
        /// Require TLS with X.509 certificates from DIR (server-cert.pem,
        /// server-key.pem, optionally ca-cert.pem to check client certificates).
        #[arg(long, value_name = "DIR", conflicts_with = "tls_psk")]
        tls_x509: Option<String>,
        /// Require TLS with pre-shared keys from FILE (lines of username:hexkey,
        /// as written by psktool).
        #[arg(long, value_name = "FILE")]
        tls_psk: Option<String>,
        /// Allow a TCP address that is not loopback without TLS: anyone who can
        /// reach it reads and writes the exports.
        #[arg(long)]
        insecure: bool,
        /// Budget for the request and reply buffers all NBD connections have in
        /// flight together, e.g. 64M (default 256M, at least 1M). A connection
        /// that finds it spent stops reading its socket until replies go out.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        memory: Option<u64>,
    },
    /// Stop the NBD server (listeners closed, clients disconnected); exports stay
    /// defined and are served again after nbd_server_start.
    NbdServerStop,
    /// Export a volume over NBD.
    #[command(name = "nbd_export_add", rename_all = "kebab-case")]
    NbdExportAdd {
        volume: String,
        /// Export name (default: the volume name).
        #[arg(long)]
        name: Option<String>,
        /// Refuse writes on this export.
        #[arg(long)]
        read_only: bool,
        /// Pool holding the volume (needed when several pools have one of that name).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Stop exporting (existing NBD connections are closed).
    NbdExportRemove { name: String },
    /// List NBD exports.
    NbdGetExports,
    /// List reactors (one per core) and what they own.
    FrameworkGetReactors,
    /// List the methods the daemon serves.
    RpcGetMethods,
    /// Write the current configuration as a file of method calls.
    SaveConfig {
        /// Where to write it (default: the daemon's config file).
        #[arg(long)]
        path: Option<String>,
    },
    /// Stop the daemon cleanly and wait until its process has exited (up to
    /// --timeout).
    Shutdown,
}

/// The subcommand names, which are the method names the CLI can call (for the
/// comparison with the daemon's `rpc_get_methods`).
pub fn method_names() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        // clap's own `help` subcommand is added when the parser is built; not a method.
        .filter(|name| name != "help")
        .collect()
}

impl Command {
    /// The method name and params object (`null` when there are none) to send.
    pub fn request(&self) -> (&'static str, Value) {
        use Command::*;
        let p = Params::default();
        match self.clone() {
            PoolCreate {
                name,
                path,
                size,
                zone_size,
                force,
            } => (
                "pool_create",
                p.set("name", name)
                    .set("path", absolute(&path))
                    .opt("size", size)
                    .opt("zone_size", zone_size)
                    .flag("force", force)
                    .done(),
            ),
            PoolImport { path, name } => (
                "pool_import",
                p.set("path", absolute(&path)).opt("name", name).done(),
            ),
            PoolGetPools => ("pool_get_pools", p.done()),
            PoolScrub { pool, deep } => {
                ("pool_scrub", p.opt("pool", pool).flag("deep", deep).done())
            }
            PoolGetFsmap {
                pool,
                start,
                end,
                count,
                ..
            } => (
                "pool_get_fsmap",
                p.opt("pool", pool)
                    .opt("start", start)
                    .opt("end", end)
                    .opt("count", count)
                    .done(),
            ),
            PoolExport { name, force } => (
                "pool_export",
                p.set("name", name).flag("force", force).done(),
            ),
            PoolDelete { name, force } => (
                "pool_delete",
                p.set("name", name).flag("force", force).done(),
            ),
            VolumeCreate {
                name,
                size,
                chunk_size,
                compression,
                pool,
            } => (
                "volume_create",
                p.set("name", name)
                    .set("size", size)
                    .opt("chunk_size", chunk_size)
                    .opt("compression", compression)
                    .opt("pool", pool)
                    .done(),
            ),
            VolumeDelete { name, pool } => (
                "volume_delete",
                p.set("name", name).opt("pool", pool).done(),
            ),
            VolumeResize { name, size, pool } => (
                "volume_resize",
                p.set("name", name)
                    .set("size", size)
                    .opt("pool", pool)
                    .done(),
            ),
            VolumeSnapshot { volume, name, pool } => (
                "volume_snapshot",
                p.set("volume", volume)
                    .set("name", name)
                    .opt("pool", pool)
                    .done(),
            ),
            VolumeClone {
                snapshot,
                name,
                read_only,
                pool,
            } => (
                "volume_clone",
                p.set("snapshot", snapshot)
                    .set("name", name)
                    .flag("read_only", read_only)
                    .opt("pool", pool)
                    .done(),
            ),
            VolumeRename {
                name,
                new_name,
                pool,
            } => (
                "volume_rename",
                p.set("name", name)
                    .set("new_name", new_name)
                    .opt("pool", pool)
                    .done(),
            ),
            VolumeSetReadOnly {
                name,
                read_only,
                pool,
            } => (
                "volume_set_read_only",
                p.set("name", name)
                    .set("read_only", read_only)
                    .opt("pool", pool)
                    .done(),
            ),
            VolumeGetVolumes { name, pool } => (
                "volume_get_volumes",
                p.opt("name", name).opt("pool", pool).done(),
            ),
            VolumeGetIostat { name, pool, reset } => (
                "volume_get_iostat",
                p.opt("name", name)
                    .opt("pool", pool)
                    .flag("reset", reset)
                    .done(),
            ),
            NbdServerStart {
                unix,
                tcp,
                tls_x509,
                tls_psk,
                insecure,
                memory,
            } => {
                let tls = match (tls_x509, tls_psk) {
                    (Some(dir), _) => Some(json!({"mode": "x509", "dir": absolute(&dir)})),
                    (None, Some(file)) => Some(json!({"mode": "psk", "psk_file": absolute(&file)})),
                    (None, None) => None,
                };
                (
                    "nbd_server_start",
                    p.opt("unix", unix.as_deref().map(absolute))
                        .opt("tcp", tcp)
                        .opt("tls", tls)
                        .flag("insecure", insecure)
                        .opt("memory", memory)
                        .done(),
                )
            }
            NbdServerStop => ("nbd_server_stop", p.done()),
            NbdExportAdd {
                volume,
                name,
                read_only,
                pool,
            } => (
                "nbd_export_add",
                p.set("volume", volume)
                    .opt("name", name)
                    .flag("read_only", read_only)
                    .opt("pool", pool)
                    .done(),
            ),
            NbdExportRemove { name } => ("nbd_export_remove", p.set("name", name).done()),
            NbdGetExports => ("nbd_get_exports", p.done()),
            FrameworkGetReactors => ("framework_get_reactors", p.done()),
            RpcGetMethods => ("rpc_get_methods", p.done()),
            SaveConfig { path } => (
                "save_config",
                p.opt("path", path.as_deref().map(absolute)).done(),
            ),
            Shutdown => ("shutdown", p.done()),
        }
    }
}

/// `path` joined to the current directory, unless that is impossible or not UTF-8,
/// in which case the daemon gets it verbatim.
fn absolute(path: &str) -> String {
    std::path::absolute(path)
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .unwrap_or_else(|| path.to_string())
}

/// A params object under construction.
#[derive(Default)]
struct Params(Map<String, Value>);

impl Params {
    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    fn opt(self, key: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    fn flag(self, key: &str, on: bool) -> Self {
        if on {
            self.set(key, true)
        } else {
            self
        }
    }

    /// `null` (params omitted, as `rpc.py` does) when empty.
    fn done(self) -> Value {
        if self.0.is_empty() {
            Value::Null
        } else {
            Value::Object(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use serde_json::json;
    use std::path::PathBuf;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn request(args: &[&str]) -> (&'static str, Value) {
        parse(args).command.request()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// What the daemon serves once issue 14's control surface is merged; the
    /// daemon-side comparison is `tests/cli_methods.rs`.
    const METHODS: [&str; 25] = [
        "pool_create",
        "pool_import",
        "pool_get_pools",
        "pool_get_fsmap",
        "pool_scrub",
        "pool_export",
        "pool_delete",
        "volume_create",
        "volume_delete",
        "volume_resize",
        "volume_snapshot",
        "volume_clone",
        "volume_rename",
        "volume_set_read_only",
        "volume_get_volumes",
        "volume_get_iostat",
        "nbd_server_start",
        "nbd_server_stop",
        "nbd_export_add",
        "nbd_export_remove",
        "nbd_get_exports",
        "framework_get_reactors",
        "rpc_get_methods",
        "save_config",
        "shutdown",
    ];

    #[test]
    fn subcommands_are_the_served_methods_and_send_their_own_name() {
        let mut names = method_names();
        names.sort();
        let mut expected: Vec<String> = METHODS.iter().map(|m| m.to_string()).collect();
        expected.sort();
        assert_eq!(names, expected);
        for sub in Cli::command().get_subcommands() {
            let mut args = vec![sub.get_name()];
            for arg in sub.get_positionals() {
                args.push(if arg.get_id() == "read_only" {
                    "true"
                } else {
                    "1"
                });
            }
            assert_eq!(request(&args).0, sub.get_name());
        }
    }

    #[test]
    fn params_mirror_the_flags_in_snake_case() {
        assert_eq!(
            request(&[
                "volume_create",
                "v0",
                "10G",
                "--chunk-size",
                "64K",
                "--compression",
                "lz4",
                "--pool",
                "p"
            ]),
            (
                "volume_create",
                json!({"name": "v0", "size": 10u64 << 30, "chunk_size": 65536, "compression": "lz4", "pool": "p"})
            )
        );
        assert_eq!(
            request(&["volume_create", "v0", "4096"]).1,
            json!({"name": "v0", "size": 4096})
        );
        assert_eq!(
            request(&[
                "nbd_export_add",
                "v0",
                "--read-only",
                "--name",
                "e",
                "--pool",
                "p"
            ])
            .1,
            json!({"volume": "v0", "name": "e", "read_only": true, "pool": "p"})
        );
        assert_eq!(
            request(&["nbd_export_add", "v0"]).1,
            json!({"volume": "v0"})
        );
        assert_eq!(
            request(&["nbd_server_start", "--tcp", "127.0.0.1:10809"]).1,
            json!({"tcp": "127.0.0.1:10809"})
        );
        assert_eq!(
            request(&["pool_get_pools"]),
            ("pool_get_pools", Value::Null)
        );
        assert_eq!(request(&["shutdown"]), ("shutdown", Value::Null));
        assert_eq!(
            request(&["nbd_server_stop"]),
            ("nbd_server_stop", Value::Null)
        );
        assert_eq!(
            request(&["pool_scrub", "--pool", "p", "--deep"]).1,
            json!({"pool": "p", "deep": true})
        );
        assert_eq!(request(&["pool_scrub"]).1, Value::Null);
        // The picture and the map are the CLI's own: not sent.
        assert_eq!(
            request(&["pool_get_fsmap", "--start", "4G", "--count", "5", "--map"]),
            ("pool_get_fsmap", json!({"start": 4u64 << 30, "count": 5}))
        );
        assert_eq!(
            request(&[
                "pool_get_fsmap",
                "--pool",
                "p",
                "--end",
                "1M",
                "--picture",
                "x.png"
            ])
            .1,
            json!({"pool": "p", "end": 1 << 20})
        );
    }

    #[test]
    fn new_control_methods_send_the_agreed_params() {
        assert_eq!(
            request(&["pool_export", "p1"]),
            ("pool_export", json!({"name": "p1"}))
        );
        assert_eq!(
            request(&["pool_export", "p1", "--force"]).1,
            json!({"name": "p1", "force": true})
        );
        assert_eq!(
            request(&["pool_delete", "p1", "--force"]),
            ("pool_delete", json!({"name": "p1", "force": true}))
        );
        assert_eq!(
            request(&["volume_rename", "a", "b", "--pool", "p"]),
            (
                "volume_rename",
                json!({"name": "a", "new_name": "b", "pool": "p"})
            )
        );
        assert_eq!(
            request(&["volume_set_read_only", "v", "true"]),
            (
                "volume_set_read_only",
                json!({"name": "v", "read_only": true})
            )
        );
        assert_eq!(
            request(&["volume_set_read_only", "v", "false", "--pool", "p"]).1,
            json!({"name": "v", "read_only": false, "pool": "p"})
        );
        assert_eq!(
            request(&["volume_get_iostat", "--name", "v", "--pool", "p", "--reset"]).1,
            json!({"name": "v", "pool": "p", "reset": true})
        );
        assert_eq!(request(&["volume_get_iostat"]).1, Value::Null);
        for (args, params) in [
            (
                &["volume_delete", "v", "--pool", "p"][..],
                json!({"name": "v", "pool": "p"}),
            ),
            (
                &["volume_resize", "v", "2G", "--pool", "p"],
                json!({"name": "v", "size": 2u64 << 30, "pool": "p"}),
            ),
            (&["volume_get_volumes", "--pool", "p"], json!({"pool": "p"})),
        ] {
            assert_eq!(request(args).1, params, "{args:?}");
        }
    }

    #[test]
    fn snapshot_and_clone_send_their_params() {
        for (args, method, params) in [
            (
                &["volume_snapshot", "v", "s"][..],
                "volume_snapshot",
                json!({"volume": "v", "name": "s"}),
            ),
            (
                &["volume_snapshot", "v", "s", "--pool", "p"],
                "volume_snapshot",
                json!({"volume": "v", "name": "s", "pool": "p"}),
            ),
            (
                &["volume_clone", "s", "c"],
                "volume_clone",
                json!({"snapshot": "s", "name": "c"}),
            ),
            (
                &["volume_clone", "s", "c", "--read-only", "--pool", "p"],
                "volume_clone",
                json!({"snapshot": "s", "name": "c", "read_only": true, "pool": "p"}),
            ),
        ] {
            assert_eq!(request(args), (method, params), "{args:?}");
        }
    }

    #[test]
    fn nbd_tls_flags_become_the_tls_object() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            request(&[
                "nbd_server_start",
                "--tcp",
                "0.0.0.0:10809",
                "--tls-x509",
                "pki"
            ])
            .1,
            json!({"tcp": "0.0.0.0:10809", "tls": {"mode": "x509", "dir": cwd.join("pki").to_str().unwrap()}})
        );
        assert_eq!(
            request(&[
                "nbd_server_start",
                "--tcp",
                "0.0.0.0:10809",
                "--tls-psk",
                "/etc/keys.psk"
            ])
            .1,
            json!({"tcp": "0.0.0.0:10809", "tls": {"mode": "psk", "psk_file": "/etc/keys.psk"}})
        );
        assert_eq!(
            request(&["nbd_server_start", "--tcp", "0.0.0.0:10809", "--insecure"]).1,
            json!({"tcp": "0.0.0.0:10809", "insecure": true})
        );
        assert_eq!(
            request(&["nbd_server_start", "--memory", "64M"]).1,
            json!({"memory": 64u64 << 20})
        );
        let both = Cli::try_parse_from([
            "sluice",
            "nbd_server_start",
            "--tls-x509",
            "d",
            "--tls-psk",
            "f",
        ]);
        assert!(both.is_err(), "one TLS mode at a time");
    }

    #[test]
    fn help_states_the_daemon_limits_and_behaviour() {
        let help = |sub: &str| {
            let mut cmd = Cli::command();
            let sub = cmd
                .find_subcommand_mut(sub)
                .unwrap_or_else(|| panic!("no {sub}"));
            sub.render_long_help().to_string()
        };
        let create = help("volume_create");
        assert!(create.contains("from 4K to 1M"), "{create}");
        assert!(!create.contains("1G"), "{create}");
        assert!(help("pool_scrub").contains("Synchronous"));
        let import = help("pool_import");
        assert!(import.contains("default: pool0"), "{import}");
        assert!(!import.contains("stored in it"), "{import}");
        let top = Cli::command().render_long_help().to_string();
        assert!(top.contains("(64K = 64KiB = 65536)"), "{top}");
    }

    #[test]
    fn every_volume_subcommand_takes_pool() {
        for sub in [
            "volume_create",
            "volume_delete",
            "volume_resize",
            "volume_snapshot",
            "volume_clone",
            "volume_rename",
            "volume_set_read_only",
            "volume_get_volumes",
            "volume_get_iostat",
            "nbd_export_add",
        ] {
            let cmd = Cli::command();
            let sub = cmd.find_subcommand(sub).unwrap();
            assert!(
                sub.get_arguments().any(|a| a.get_long() == Some("pool")),
                "{} has no --pool",
                sub.get_name()
            );
        }
    }

    #[test]
    fn paths_are_made_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let (_, p) = request(&[
            "pool_create",
            "p0",
            "pool.img",
            "--size",
            "1G",
            "--zone-size",
            "256M",
        ]);
        assert_eq!(p["path"], json!(cwd.join("pool.img").to_str().unwrap()));
        assert_eq!(
            (p["size"].as_u64(), p["zone_size"].as_u64()),
            (Some(1 << 30), Some(256 << 20))
        );
        assert_eq!(p.get("force"), None, "force is sent only when asked for");
        let (_, p) = request(&["pool_create", "p0", "/dev/vdb", "--force"]);
        assert_eq!(p["force"], json!(true));
        assert_eq!(
            request(&["pool_import", "/dev/nvme0n1"]).1,
            json!({"path": "/dev/nvme0n1"})
        );
        let (_, p) = request(&["save_config", "--path", "cfg.json"]);
        assert_eq!(p["path"], json!(cwd.join("cfg.json").to_str().unwrap()));
    }

    #[test]
    fn bad_arguments_are_rejected_before_sending() {
        for args in [
            &["volume_create", "v", "10X"][..],
            &["volume_create", "v", "-1"],
            &["volume_create", "v", "1G", "--compression", "zstd"],
            &["volume_resize", "v"],
            &["no_such_method"],
            &["job_get", "1"],
            &["volume_snapshot", "v"],
            &["volume_snapshot", "v", "s", "extra"],
            &["volume_clone", "s"],
            &["volume_clone", "s", "c", "--read-only", "yes"],
            &["volume_set_read_only", "v"],
            &["volume_set_read_only", "v", "yes"],
            &["-t", "soon", "shutdown"],
            &["-t", "-1", "shutdown"],
        ] {
            let r = Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()));
            assert!(r.is_err(), "{args:?} should fail");
        }
        let e = Cli::try_parse_from(["sluice", "volume_create", "v", "10X"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown unit"), "{e}");
    }

    #[test]
    fn global_options_work_after_the_subcommand_too() {
        let cli = parse(&[
            "volume_get_volumes",
            "--json",
            "-s",
            "/tmp/x.sock",
            "-t",
            "0",
        ]);
        assert!(cli.json);
        assert_eq!(cli.socket, Endpoint::Unix(PathBuf::from("/tmp/x.sock")));
        assert_eq!(
            parse(&["-s", "127.0.0.1:5260", "shutdown"]).socket,
            Endpoint::Tcp("127.0.0.1:5260".into())
        );

        assert_eq!(cli.call_timeout(), None);
        let cli = parse(&["-t", "2.5", "shutdown"]);
        assert_eq!(cli.call_timeout(), Some(Duration::from_millis(2500)));
        assert_eq!(
            parse(&["shutdown"]).call_timeout(),
            Some(Duration::from_secs(60))
        );
    }
}
