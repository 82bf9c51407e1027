//! The saved configuration: a JSON list of `{method, params}` calls that
//! rebuild the daemon's state (SPDK style). The daemon keeps it current and
//! writes it to `<data-dir>/config.json` after every change, so a restart
//! reopens the same pools and re-creates the same exports. Volumes need no
//! entries: they live in their pool's catalog.

use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// pool name -> path
    pub pools: Vec<(String, String)>,
    pub nbd_server: Option<Value>,
    /// export name -> params
    pub exports: Vec<(String, Value)>,
}

impl Journal {
    pub fn to_calls(&self) -> Value {
        let mut calls = Vec::new();
        for (name, path) in &self.pools {
            calls.push(json!({"method": "pool_import", "params": {"name": name, "path": path}}));
        }
        if let Some(p) = &self.nbd_server {
            calls.push(json!({"method": "nbd_server_start", "params": p}));
        }
        for (_, p) in &self.exports {
            calls.push(json!({"method": "nbd_export_add", "params": p}));
        }
        Value::Array(calls)
    }
}

/// Write `value` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, value: &Value) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Read a config file: a list of `{method, params}` objects.
pub fn read_calls(path: &Path) -> Result<Vec<(String, Value)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let arr = match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("calls") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(format!(
                    "{}: expected a JSON list of method calls",
                    path.display()
                ))
            }
        },
        _ => {
            return Err(format!(
                "{}: expected a JSON list of method calls",
                path.display()
            ))
        }
    };
    arr.into_iter()
        .enumerate()
        .map(|(i, c)| {
            let method = c
                .get("method")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{}: call {i} has no \"method\"", path.display()))?
                .to_string();
            let params = c.get("params").cloned().unwrap_or(json!({}));
            Ok((method, params))
        })
        .collect()
}
