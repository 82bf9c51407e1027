//! The CLI offers exactly what the daemon serves: the real daemon's
//! `rpc_get_methods` against the `sluice` subcommands, both through the library
//! (clap's parser) and through the binary (`sluice rpc_get_methods`).

mod common;

use common::Sluiced;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;

fn served(d: &Sluiced) -> BTreeSet<String> {
    let methods = d.ok("rpc_get_methods", json!({}));
    methods
        .as_array()
        .unwrap_or_else(|| panic!("rpc_get_methods returned {methods}"))
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            other => panic!("method name {other} is not a string"),
        })
        .collect()
}

#[test]
fn cli_subcommands_are_exactly_the_served_methods() {
    let d = Sluiced::start("cli-methods", &["--no-default-volume"]);
    let served = served(&d);
    let offered: BTreeSet<String> = sluice_rpc::cli::method_names().into_iter().collect();
    let missing: Vec<&String> = served.difference(&offered).collect();
    let extra: Vec<&String> = offered.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "served but not in the CLI: {missing:?}; in the CLI but not served: {extra:?}"
    );

    // The binary lists what the daemon says, one per line.
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("-s")
        .arg(d.rpc_sock())
        .arg("rpc_get_methods")
        .env_remove("SLUICE_RPC_SOCKET")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: BTreeSet<String> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(printed, served);
}
