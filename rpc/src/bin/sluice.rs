//! `sluice`: the command-line client of sluiced (SPDK `rpc.py` style).
//!
//! Parses arguments ([`sluice_rpc::cli`]), sends one request with
//! [`sluice_rpc::client::Client`], prints the result. Exit status: 0 success, 1 the
//! daemon answered with an error, 2 the daemon could not be reached (or bad usage,
//! which clap reports with 2 as well).

use anyhow::Context;
use clap::Parser;
use serde_json::Value;
use sluice_rpc::cli::{output, Cli};
use sluice_rpc::client::{Client, ClientError};
use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (method, params) = cli.command.request();
    let result = Client::connect(&cli.socket).and_then(|mut client| {
        client.set_timeout(cli.call_timeout());
        client.call(method, params)
    });
    match result {
        Ok(result) => match print(&result, cli.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Err(ClientError::Rpc(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(e @ ClientError::Connect { .. }) => {
            eprintln!("error: {e}");
            eprintln!(
                "hint: is sluiced running? Point -s/--socket or SLUICE_RPC_SOCKET at its JSON-RPC socket."
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn print(result: &Value, json: bool) -> anyhow::Result<()> {
    let text = if json {
        let mut s = serde_json::to_string_pretty(result).context("cannot format the result")?;
        s.push('\n');
        s
    } else {
        output::render(result)
    };
    match io::stdout().lock().write_all(text.as_bytes()) {
        // `sluice ... | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}
