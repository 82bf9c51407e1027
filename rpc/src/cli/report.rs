//! What a successful command prints: one line saying what it did ("volume vol1
//! deleted"), then the result in readable form ([`output::render`]) when it carries
//! more than the line says. Queries (`*_get_*`, `rpc_get_methods`) print only their
//! result. `--json` bypasses this module.
//!
//! The line is built from the command's own arguments where the daemon answers only
//! `true`, and from the result where the daemon decided something (the name an
//! imported pool got, where the config was written, what `pool_delete` removed).

use super::{output, Command};
use crate::size::format_size;
use serde_json::Value;

/// The text to print for the successful `command` that returned `result`.
pub fn report(command: &Command, result: &Value) -> String {
    use Command::*;
    let field = |key: &str| result.get(key).and_then(Value::as_str);
    let said = |line: String| line + "\n";
    let said_and_shown = |line: String| line + "\n" + &output::render(result);
    match command {
        PoolCreate { name, .. } => said_and_shown(format!("pool {name} created")),
        PoolImport { path, .. } => {
            let name = field("name").unwrap_or("?");
            said_and_shown(format!("pool {name} imported from {path}"))
        }
        PoolExport { name, .. } => said(format!("pool {name} closed")),
        PoolDelete { name, .. } => said(pool_deleted(name, result)),
        PoolScrub { .. } => scrub(result),
        VolumeCreate { name, .. } => said_and_shown(format!("volume {name} created")),
        VolumeDelete { name, .. } => said(format!("volume {name} deleted")),
        VolumeResize { name, size, .. } => {
            said_and_shown(format!("volume {name} resized to {}", format_size(*size)))
        }
        VolumeSnapshot { volume, name, .. } => {
            said_and_shown(format!("volume {volume} snapshotted as {name}"))
        }
        VolumeClone { snapshot, name, .. } => {
            said_and_shown(format!("volume {snapshot} cloned as {name}"))
        }
        VolumeRename { name, new_name, .. } => {
            said_and_shown(format!("volume {name} renamed to {new_name}"))
        }
        VolumeSetReadOnly {
            name, read_only, ..
        } => {
            let now = if *read_only { "read-only" } else { "writable" };
            said_and_shown(format!("volume {name} is now {now}"))
        }
        VolumeGetIostat { reset: true, .. } => {
            output::render(result) + "counters reset (the values above are from before)\n"
        }
        NbdServerStart { .. } => said_and_shown("NBD server started".to_string()),
        NbdServerStop => said("NBD server stopped".to_string()),
        NbdExportAdd { .. } => {
            let name = field("name").unwrap_or("?");
            said_and_shown(format!("export {name} added"))
        }
        NbdExportRemove { name } => said(format!("export {name} removed")),
        SaveConfig { .. } => {
            let path = field("path").unwrap_or("the daemon's config file");
            said(format!("configuration saved to {path}"))
        }
        Shutdown => said("daemon stopped".to_string()),
        PoolGetPools
        | PoolGetFsmap { .. }
        | VolumeGetVolumes { .. }
        | VolumeGetIostat { .. }
        | NbdGetExports
        | FrameworkGetReactors
        | RpcGetMethods => output::render(result),
    }
}

/// `pool_delete` returns `{name, path, file_removed}`: a pool file is removed, a block
/// device is only erased.
fn pool_deleted(name: &str, result: &Value) -> String {
    let path = result.get("path").and_then(Value::as_str);
    match (path, result.get("file_removed").and_then(Value::as_bool)) {
        (Some(path), Some(true)) => format!("pool {name} deleted, {path} removed"),
        (Some(path), _) => format!("pool {name} deleted, {path} erased (not removed)"),
        (None, _) => format!("pool {name} deleted"),
    }
}

/// `pool_scrub` returns `{pool, clean, problems: [text]}`.
fn scrub(result: &Value) -> String {
    let pool = result.get("pool").and_then(Value::as_str).unwrap_or("?");
    let problems: Vec<String> = result
        .get("problems")
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let clean = result.get("clean").and_then(Value::as_bool);
    if problems.is_empty() && clean != Some(false) {
        return format!("pool {pool} scrubbed: clean\n");
    }
    let mut out = format!(
        "pool {pool} scrubbed: {} problem{} found\n",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str(&format!("  {p}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use serde_json::json;

    fn report_of(args: &[&str], result: Value) -> String {
        let cli = Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        report(&cli.command, &result)
    }

    #[test]
    fn commands_answered_true_say_what_they_did() {
        for (args, line) in [
            (&["volume_delete", "vol1"][..], "volume vol1 deleted\n"),
            (&["nbd_export_remove", "e1"], "export e1 removed\n"),
            (&["shutdown"], "daemon stopped\n"),
            (&["nbd_server_stop"], "NBD server stopped\n"),
            (&["pool_export", "p1", "--force"], "pool p1 closed\n"),
        ] {
            assert_eq!(report_of(args, json!(true)), line, "{args:?}");
        }
        // Whatever the daemon answers ({} or {"name"}), the line is the same.
        assert_eq!(
            report_of(&["nbd_server_stop"], json!({})),
            "NBD server stopped\n"
        );
        assert_eq!(
            report_of(&["pool_export", "p1"], json!({"name": "p1"})),
            "pool p1 closed\n"
        );
    }

    #[test]
    fn results_are_shown_under_the_line() {
        let vol = json!({"name": "v2", "pool": "p0", "size": 2147483648u64, "read_only": true});
        assert_eq!(
            report_of(&["volume_rename", "v1", "v2"], vol.clone()),
            "volume v1 renamed to v2\nname:      v2\npool:      p0\nsize:      2.0 GiB\nread_only: true\n"
        );
        assert!(
            report_of(&["volume_set_read_only", "v2", "true"], vol.clone())
                .starts_with("volume v2 is now read-only\nname:")
        );
        assert!(
            report_of(&["volume_set_read_only", "v2", "false"], vol.clone())
                .starts_with("volume v2 is now writable\n")
        );
        assert!(report_of(&["volume_resize", "v2", "2G"], vol)
            .starts_with("volume v2 resized to 2.0 GiB\n"));
        let snap = json!({"name": "s1", "pool": "p0", "read_only": true});
        assert_eq!(
            report_of(&["volume_snapshot", "v2", "s1"], snap.clone()),
            "volume v2 snapshotted as s1\nname:      s1\npool:      p0\nread_only: true\n"
        );
        let clone = json!({"name": "c1", "pool": "p0", "read_only": false});
        assert_eq!(
            report_of(&["volume_clone", "s1", "c1", "--pool", "p0"], clone),
            "volume s1 cloned as c1\nname:      c1\npool:      p0\nread_only: false\n"
        );
        assert_eq!(
            report_of(&["pool_import", "/x/p.img"], json!({"name": "pool0"})),
            "pool pool0 imported from /x/p.img\nname: pool0\n"
        );
        assert_eq!(
            report_of(&["save_config"], json!({"path": "/d/config.json"})),
            "configuration saved to /d/config.json\n"
        );
        assert_eq!(
            report_of(
                &["nbd_export_add", "v1", "--name", "e"],
                json!({"name": "e", "volume": "v1"})
            ),
            "export e added\nname:   e\nvolume: v1\n"
        );
    }

    #[test]
    fn pool_delete_says_whether_the_file_went() {
        assert_eq!(
            report_of(
                &["pool_delete", "p1"],
                json!({"name": "p1", "path": "/d/p1.img", "file_removed": true})
            ),
            "pool p1 deleted, /d/p1.img removed\n"
        );
        assert_eq!(
            report_of(
                &["pool_delete", "p1"],
                json!({"name": "p1", "path": "/dev/vdb", "file_removed": false})
            ),
            "pool p1 deleted, /dev/vdb erased (not removed)\n"
        );
    }

    #[test]
    fn scrub_lists_problems() {
        assert_eq!(
            report_of(
                &["pool_scrub"],
                json!({"pool": "p0", "clean": true, "problems": []})
            ),
            "pool p0 scrubbed: clean\n"
        );
        assert_eq!(
            report_of(
                &["pool_scrub", "--deep"],
                json!({"pool": "p0", "clean": false, "problems": ["zone 3: rmap entry 7 has no lmap entry", "zone 4: bad crc"]})
            ),
            "pool p0 scrubbed: 2 problems found\n  zone 3: rmap entry 7 has no lmap entry\n  zone 4: bad crc\n"
        );
    }

    #[test]
    fn queries_print_only_their_result() {
        assert_eq!(report_of(&["rpc_get_methods"], json!(["a", "b"])), "a\nb\n");
        assert_eq!(report_of(&["nbd_get_exports"], json!([])), "(none)\n");
        let iostat = json!([{"name": "v", "read_ops": 1}]);
        assert_eq!(
            report_of(&["volume_get_iostat"], iostat.clone()),
            "NAME  READ_OPS\nv            1\n"
        );
        assert_eq!(
            report_of(&["volume_get_iostat", "--reset"], iostat),
            "NAME  READ_OPS\nv            1\ncounters reset (the values above are from before)\n"
        );
    }
}
