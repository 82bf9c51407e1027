//! `sluice`: the command-line client of sluiced (SPDK `rpc.py` style).
//!
//! Parses arguments ([`sluice_rpc::cli`]), sends one request with
//! [`sluice_rpc::client::Client`], prints what was done ([`report`]) or, with
//! `--json`, the raw result. `shutdown` returns only once the daemon process has
//! exited ([`daemon_exit`]). Exit status: 0 success, 1 the daemon answered with an
//! error (or did not exit after `shutdown` in time), 2 the daemon could not be
//! reached (or bad usage, which clap reports with 2 as well).

use anyhow::Context;
use clap::Parser;
use serde_json::Value;
use sluice_rpc::cli::daemon_exit::{self, DaemonProcess};
use sluice_rpc::cli::{fsmap, fsmap_picture, report, Cli, Command};
use sluice_rpc::client::{Client, ClientError};
use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (method, params) = cli.command.request();
    // Identified before the call: afterwards the daemon may already be gone.
    // Over TCP the process is not known; `wait_gone` then waits for the port.
    let daemon = matches!(cli.command, Command::Shutdown)
        .then(|| {
            cli.socket
                .unix_path()
                .and_then(DaemonProcess::behind_socket)
        })
        .flatten();
    let result = Client::connect_to(&cli.socket, cli.call_timeout()).and_then(|mut client| {
        client.set_timeout(cli.call_timeout());
        if matches!(cli.command, Command::PoolGetFsmap { .. }) {
            // Every page, each after the last record of the one before.
            return fsmap::fetch_all(&params, |p| client.call(method, p));
        }
        client.call(method, params)
    });
    match result {
        Ok(result) => {
            if matches!(cli.command, Command::Shutdown) {
                if let Err(e) = wait_gone(&cli, daemon.as_ref()) {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            }
            match print(&cli, &result) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Err(ClientError::Rpc(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(e @ ClientError::Connect { .. }) => {
            eprintln!("error: {e}");
            eprintln!(
                "hint: is sluiced running? Point -s/--socket or SLUICE_RPC_SOCKET at its JSON-RPC socket \
                 (a path, or HOST:PORT for sluiced --rpc-tcp)."
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// After `shutdown` was accepted: wait until the daemon process has exited (or, if
/// it could not be identified, until its socket stops answering), up to `--timeout`.
fn wait_gone(cli: &Cli, daemon: Option<&DaemonProcess>) -> Result<(), daemon_exit::ExitWaitError> {
    match daemon {
        Some(process) => process.wait_exit(cli.call_timeout()),
        None => daemon_exit::wait_unreachable(
            || Client::connect_to(&cli.socket, cli.call_timeout()).is_ok(),
            cli.call_timeout(),
        ),
    }
}

fn print(cli: &Cli, result: &Value) -> anyhow::Result<()> {
    let text = if let Command::PoolGetFsmap { picture, map, .. } = &cli.command {
        fsmap_text(cli.json, picture.as_deref(), *map, result)?
    } else if cli.json {
        let mut s = serde_json::to_string_pretty(result).context("cannot format the result")?;
        s.push('\n');
        s
    } else {
        report::report(&cli.command, result)
    };
    match io::stdout().lock().write_all(text.as_bytes()) {
        // `sluice ... | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

/// What `pool_get_fsmap` prints: the raw records (`--json`), the PNG's
/// summary line (`--picture`), the text map (`--map`), or else the table.
fn fsmap_text(
    json: bool,
    picture: Option<&str>,
    map: bool,
    result: &Value,
) -> anyhow::Result<String> {
    let all = result
        .get("records")
        .and_then(Value::as_array)
        .with_context(|| format!("the daemon answered {result} without \"records\""))?;
    let mut text = String::new();
    if json {
        text = serde_json::to_string_pretty(result).context("cannot format the result")? + "\n";
    }
    let recs = fsmap::decode(all).map_err(anyhow::Error::msg)?;
    if let Some(path) = picture {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {path}"))?;
        let mut out = io::BufWriter::new(file);
        let (w, h) = fsmap_picture::write_png(&recs, &mut out)
            .with_context(|| format!("cannot write the picture to {path}"))?;
        out.flush()
            .with_context(|| format!("cannot write {path}"))?;
        if !json {
            text += &format!(
                "picture of {} records written to {path}: {w}x{h} pixels\n",
                recs.len()
            );
        }
    }
    if map && !json {
        text += &fsmap_picture::text_map(&recs);
    }
    if !json && !map && picture.is_none() {
        text += &fsmap::table(&recs);
    }
    Ok(text)
}
