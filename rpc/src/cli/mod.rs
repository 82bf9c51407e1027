//! The `sluice` command line: one subcommand per JSON-RPC method, SPDK `rpc.py` style.
//!
//! This module owns the mapping from arguments to a request (method name + params
//! object) and, in [`output`], from a result to what a person reads. The binary
//! (`src/bin/sluice.rs`) only glues them to a [`Client`](crate::client::Client), so
//! that both halves are unit-tested without a daemon.
//!
//! Choices:
//! * subcommands are the method names verbatim (`volume_create`), so the CLI, the
//!   docs and `rpc_get_methods` use one vocabulary; flags are kebab-case and map to
//!   snake_case params (`--zone-size` → `zone_size`);
//! * sizes are parsed here with [`crate::size`] and sent as integer bytes, so a typo
//!   is caught before anything is sent and the daemon logs exact values;
//! * file paths (`pool_create`, `pool_import`, `save_config --path`,
//!   `nbd_server_start --unix`) are made absolute against the CLI's working
//!   directory, because the daemon's working directory is not the user's;
//! * optional flags that are not given are omitted, so the daemon's defaults apply.

pub mod output;

use crate::size::parse_size;
use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Where the daemon listens when started with no arguments.
pub const DEFAULT_SOCKET: &str = "./sluice-data/rpc.sock";

const SIZE_HELP: &str = "\
Sizes are bytes (4096) or a number with a binary unit: K, M, G, T, P, E, optionally followed \
by iB or B (64K = 64KiB = 65536). Fractions are allowed when the result is whole bytes (1.5G).

Exit status: 0 on success, 1 when the daemon returns an error, 2 when it cannot be reached \
or the command line is wrong.";

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Control a running sluiced over JSON-RPC",
    after_help = SIZE_HELP
)]
pub struct Cli {
    /// JSON-RPC socket of the sluiced daemon.
    #[arg(
        short = 's',
        long,
        env = "SLUICE_RPC_SOCKET",
        default_value = DEFAULT_SOCKET,
        global = true
    )]
    pub socket: PathBuf,

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

// One subcommand per method. (Plain comments here: clap would show a doc comment as
// the program's description.) `rename_all` on the enum names the subcommands after the
// methods, but clap also applies it to the flags inside; variants with multi-word
// flags switch their flags back to kebab-case.
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
        /// Size of the pool (files only; block devices use their whole size).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Size of one zone, the unit of allocation and of parallelism.
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
        /// Name to give the pool (default: the name stored in it).
        #[arg(long)]
        name: Option<String>,
    },
    /// List pools with their space usage.
    PoolGetPools,
    /// Report who owns each physical range of a pool (like GETFSMAP).
    PoolGetFsmap {
        #[arg(long)]
        pool: Option<String>,
        /// First physical byte to report; pass the end of the last record to page.
        #[arg(long, value_parser = parse_size)]
        start: Option<u64>,
        /// Maximum number of records.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Cross-check a pool's metadata; returns a job.
    PoolScrub {
        #[arg(long)]
        pool: Option<String>,
    },
    /// Rebuild damaged metadata while I/O continues; returns a job.
    PoolRepair {
        #[arg(long)]
        pool: Option<String>,
        /// Which tree to rebuild (default: whatever scrub found damaged).
        #[arg(long)]
        tree: Option<String>,
    },
    /// Create a thin-provisioned volume.
    #[command(name = "volume_create", rename_all = "kebab-case")]
    VolumeCreate {
        /// Name of the new volume.
        name: String,
        /// Logical size, e.g. 10G.
        #[arg(value_parser = parse_size)]
        size: u64,
        /// Unit of compression and allocation (4K..1G, power of two).
        #[arg(long, value_parser = parse_size)]
        chunk_size: Option<u64>,
        #[arg(long, value_parser = ["lz4", "none"])]
        compression: Option<String>,
        /// Pool to create it in (default: the only pool).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Delete a volume, snapshot or clone, freeing blocks nobody else shares.
    VolumeDelete { name: String },
    /// Change a volume's logical size.
    VolumeResize {
        name: String,
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Create a read-only snapshot sharing all of a volume's blocks.
    VolumeSnapshot { volume: String, snapshot: String },
    /// Create a writable clone of a snapshot.
    VolumeClone { snapshot: String, clone: String },
    /// List volumes, snapshots and clones.
    VolumeGetVolumes {
        #[arg(long)]
        name: Option<String>,
    },
    /// I/O counters per volume.
    VolumeGetIostat {
        #[arg(long)]
        name: Option<String>,
    },
    /// Start the NBD server on a Unix socket and/or loopback TCP address.
    NbdServerStart {
        /// Unix socket path for NBD clients.
        #[arg(long)]
        unix: Option<String>,
        /// TCP address, e.g. 127.0.0.1:10809.
        #[arg(long)]
        tcp: Option<String>,
    },
    /// Export a volume over NBD.
    #[command(name = "nbd_export_add", rename_all = "kebab-case")]
    NbdExportAdd {
        volume: String,
        /// Export name (default: the volume name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        read_only: bool,
    },
    /// Stop exporting (existing NBD connections are closed).
    NbdExportRemove { name: String },
    /// List NBD exports.
    NbdGetExports,
    /// List reactors (one per core) and what they own.
    FrameworkGetReactors,
    /// Progress and result of a background job (scrub, repair).
    JobGet {
        /// Job id as returned by pool_scrub / pool_repair.
        id: String,
    },
    /// List the methods the daemon serves.
    RpcGetMethods,
    /// Write the current configuration as a file of method calls.
    SaveConfig {
        /// Where to write it (default: the daemon's config file).
        #[arg(long)]
        path: Option<String>,
    },
    /// Stop the daemon cleanly.
    Shutdown,
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
            PoolGetFsmap { pool, start, count } => (
                "pool_get_fsmap",
                p.opt("pool", pool)
                    .opt("start", start)
                    .opt("count", count)
                    .done(),
            ),
            PoolScrub { pool } => ("pool_scrub", p.opt("pool", pool).done()),
            PoolRepair { pool, tree } => {
                ("pool_repair", p.opt("pool", pool).opt("tree", tree).done())
            }
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
            VolumeDelete { name } => ("volume_delete", p.set("name", name).done()),
            VolumeResize { name, size } => (
                "volume_resize",
                p.set("name", name).set("size", size).done(),
            ),
            VolumeSnapshot { volume, snapshot } => (
                "volume_snapshot",
                p.set("volume", volume).set("snapshot", snapshot).done(),
            ),
            VolumeClone { snapshot, clone } => (
                "volume_clone",
                p.set("snapshot", snapshot).set("clone", clone).done(),
            ),
            VolumeGetVolumes { name } => ("volume_get_volumes", p.opt("name", name).done()),
            VolumeGetIostat { name } => ("volume_get_iostat", p.opt("name", name).done()),
            NbdServerStart { unix, tcp } => (
                "nbd_server_start",
                p.opt("unix", unix.as_deref().map(absolute))
                    .opt("tcp", tcp)
                    .done(),
            ),
            NbdExportAdd {
                volume,
                name,
                read_only,
            } => (
                "nbd_export_add",
                p.set("volume", volume)
                    .opt("name", name)
                    .flag("read_only", read_only)
                    .done(),
            ),
            NbdExportRemove { name } => ("nbd_export_remove", p.set("name", name).done()),
            NbdGetExports => ("nbd_get_exports", p.done()),
            FrameworkGetReactors => ("framework_get_reactors", p.done()),
            JobGet { id } => {
                // Ids are numbers on the wire; a non-numeric id is passed through so
                // the daemon, not the CLI, decides what ids look like.
                let id = id
                    .parse::<u64>()
                    .map_or_else(|_| Value::from(id), Value::from);
                ("job_get", p.set("id", id).done())
            }
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

    #[test]
    fn every_design_method_has_a_subcommand_of_the_same_name() {
        let methods = [
            "pool_create",
            "pool_import",
            "pool_get_pools",
            "pool_get_fsmap",
            "pool_scrub",
            "pool_repair",
            "volume_create",
            "volume_delete",
            "volume_resize",
            "volume_snapshot",
            "volume_clone",
            "volume_get_volumes",
            "volume_get_iostat",
            "nbd_server_start",
            "nbd_export_add",
            "nbd_export_remove",
            "nbd_get_exports",
            "framework_get_reactors",
            "job_get",
            "rpc_get_methods",
            "save_config",
            "shutdown",
        ];
        let cmd = Cli::command();
        let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        for m in methods {
            assert!(names.contains(&m), "no subcommand {m}; have {names:?}");
        }
        // And each subcommand sends the method it is named after.
        for sub in cmd.get_subcommands() {
            let mut args = vec![sub.get_name()];
            let positional = sub.get_positionals().count();
            args.extend(std::iter::repeat_n("1", positional));
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
            request(&["nbd_export_add", "v0", "--read-only", "--name", "e"]).1,
            json!({"volume": "v0", "name": "e", "read_only": true})
        );
        assert_eq!(
            request(&["nbd_export_add", "v0"]).1,
            json!({"volume": "v0"})
        );
        assert_eq!(
            request(&[
                "pool_get_fsmap",
                "--pool",
                "p",
                "--start",
                "1M",
                "--count",
                "10"
            ])
            .1,
            json!({"pool": "p", "start": 1048576, "count": 10})
        );
        assert_eq!(
            request(&["volume_clone", "s", "c"]).1,
            json!({"snapshot": "s", "clone": "c"})
        );
        assert_eq!(
            request(&["volume_snapshot", "v", "s"]).1,
            json!({"volume": "v", "snapshot": "s"})
        );
        assert_eq!(
            request(&["nbd_server_start", "--tcp", "127.0.0.1:10809"]).1,
            json!({"tcp": "127.0.0.1:10809"})
        );
        assert_eq!(
            request(&["pool_repair", "--tree", "rmap"]).1,
            json!({"tree": "rmap"})
        );
        assert_eq!(request(&["job_get", "7"]).1, json!({"id": 7}));
        assert_eq!(request(&["job_get", "scrub-1"]).1, json!({"id": "scrub-1"}));
        assert_eq!(
            request(&["pool_get_pools"]),
            ("pool_get_pools", Value::Null)
        );
        assert_eq!(request(&["shutdown"]), ("shutdown", Value::Null));
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
            &["job_get"],
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
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(cli.call_timeout(), None);
        let cli = parse(&["-t", "2.5", "shutdown"]);
        assert_eq!(cli.call_timeout(), Some(Duration::from_millis(2500)));
        assert_eq!(
            parse(&["shutdown"]).call_timeout(),
            Some(Duration::from_secs(60))
        );
    }
}
