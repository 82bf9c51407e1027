//! NBD over TLS on the io_uring server: real clients (nbdinfo, qemu-io,
//! qemu-img) with X.509 certificates and PSK, against the in-memory
//! backend of `nbd_server_common`, plus the refusals: plaintext clients of
//! a TLS-required server, wrong keys, missing client certificates, and
//! non-loopback listeners without TLS.
//!
//! Credentials are made per test with `openssl` (`nbd_tls_common`). A
//! missing tool fails the test with an install hint; nothing is skipped.

mod nbd_common;
mod nbd_server_common;
mod nbd_tls_common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use nbd_common::{random_bytes, require_tool, stdout};
use nbd_server_common::*;
use nbd_tls_common::*;
use sluice_reactor::nbd::{
    ConnEnd, ListenSpec, NbdServer, NbdServerError, ServerConfig, TlsConfig, TlsCredentials,
    TlsServer,
};

const SIZE: u64 = 64 * MIB;

fn nbdinfo() -> Command {
    Command::new(require_tool("nbdinfo", "libnbd-bin"))
}

fn qemu_io() -> Command {
    Command::new(require_tool("qemu-io", "qemu-utils"))
}

fn qemu_img() -> Command {
    Command::new(require_tool("qemu-img", "qemu-utils"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tls_config(credentials: TlsCredentials, required: bool) -> ServerConfig {
    let tls = TlsServer::load(&TlsConfig {
        credentials,
        required,
    })
    .expect("load TLS credentials");
    ServerConfig {
        tls: Some(tls),
        ..ServerConfig::default()
    }
}

/// A server whose TCP listener requires TLS with the X.509 credentials in
/// a fresh directory (which also holds the client's certificate).
fn x509_fixture(tag: &str) -> (Fixture, std::path::PathBuf) {
    let creds = nbd_common::scratch_dir(tag);
    let x509 = make_x509_dir(&creds);
    let cfg = tls_config(TlsCredentials::X509 { dir: x509.clone() }, true);
    let fx = Fixture::start_with(vec![MemStore::new("disk", SIZE, false)], cfg);
    (fx, x509)
}

fn x509_uri(fx: &Fixture, dir: &Path) -> String {
    format!(
        "nbds://127.0.0.1:{}/disk?tls-certificates={}",
        fx.port,
        dir.display()
    )
}

/// qemu's block options for the fixture's TCP export over `tls0`.
fn qemu_opts(fx: &Fixture) -> String {
    format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=disk,tls-creds=tls0",
        fx.port
    )
}

#[test]
fn x509_nbdinfo_sees_the_export_and_qemu_io_round_trips_data() {
    let (fx, x509) = x509_fixture("tls-x509");
    let out = run_ok(nbdinfo().arg("--json").arg(x509_uri(&fx, &x509)));
    let info = stdout(&out);
    assert!(
        info.contains(&format!("\"export-size\": {SIZE}")),
        "nbdinfo over TLS did not report the size:\n{info}"
    );

    // qemu-io with tls-creds-x509: write 4 MiB (bigger than one TLS send
    // piece) and read it back over TLS; the backend must hold the bytes.
    let creds = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        x509.display()
    );
    run_ok(
        qemu_io()
            .arg("--object")
            .arg(&creds)
            .arg("--image-opts")
            .arg(qemu_opts(&fx))
            .args(["-c", "write -P 0xa7 1M 4M", "-c", "read -P 0xa7 1M 4M"]),
    );
    let back = fx.store("disk").read(MIB, 4 * MIB);
    assert!(back.iter().all(|&b| b == 0xa7), "backend lacks the write");

    // Random data written by the backend comes back intact through TLS.
    let data = random_bytes(11, (3 * MIB) as usize);
    fx.store("disk").write(8 * MIB, &data);
    let img = fx.dir().join("copy.raw");
    run_ok(
        qemu_img()
            .arg("convert")
            .arg("--object")
            .arg(&creds)
            .arg("--image-opts")
            .arg(qemu_opts(&fx))
            .args(["-O", "raw"])
            .arg(&img),
    );
    let copy = std::fs::read(&img).expect("read converted image");
    assert_eq!(copy.len() as u64, SIZE);
    assert!(
        copy[(8 * MIB) as usize..(11 * MIB) as usize] == data[..],
        "data read over TLS differs"
    );
    fx.assert_reactors_alive();
}

#[test]
fn plaintext_client_of_a_tls_required_server_is_told_tls_is_required() {
    let (fx, _x509) = x509_fixture("tls-plain");
    // libnbd reports the refusal as ENOTSUP; its debug log shows which
    // reply the server sent (NBD_REP_ERR_TLS_REQD with our message).
    let out = run_any(nbdinfo().env("LIBNBD_DEBUG", "1").arg(fx.tcp_uri("disk")));
    assert!(!out.status.success(), "plain nbdinfo succeeded");
    let err = stderr(&out);
    assert!(
        err.contains("server error message: this server requires TLS"),
        "the refusal is not TLS-required:\n{err}"
    );
    // The list of exports is not revealed before TLS either.
    let out = run_any(nbdinfo().arg("--list").arg(fx.tcp_uri("")));
    assert!(!out.status.success(), "plain nbdinfo --list succeeded");
    assert!(
        !stdout(&out).contains("disk"),
        "export names leaked before TLS: {}",
        stdout(&out)
    );
    // The Unix socket stays plain.
    let out = run_ok(nbdinfo().arg("--size").arg(fx.unix_uri("disk")));
    assert_eq!(stdout(&out).trim(), SIZE.to_string());
    fx.assert_reactors_alive();
}

#[test]
fn x509_client_without_a_certificate_is_refused() {
    let (fx, x509) = x509_fixture("tls-nocert");
    let ca_only = ca_only_dir(&x509, fx.dir());
    let out = run_any(nbdinfo().arg(x509_uri(&fx, &ca_only)));
    assert!(
        !out.status.success(),
        "a client without a certificate got in:\n{}",
        stdout(&out)
    );
    // The server saw a failed TLS handshake, not a crash.
    fx.wait_connections_at_most(0);
    assert!(
        fx.server
            .ended()
            .iter()
            .any(|e| matches!(e, ConnEnd::Tls(_))),
        "no TLS failure recorded: {:?}",
        fx.server.ended()
    );
    fx.assert_reactors_alive();
}

fn psk_fixture(tag: &str, required: bool) -> (Fixture, std::path::PathBuf) {
    let creds = nbd_common::scratch_dir(tag);
    let file = make_psk(&creds, "server-psk", "alice", &psk_key(1));
    let cfg = tls_config(TlsCredentials::Psk { file }, required);
    let fx = Fixture::start_with(vec![MemStore::new("disk", SIZE, false)], cfg);
    (fx, creds)
}

fn psk_uri(fx: &Fixture, user: &str, file: &Path) -> String {
    format!(
        "nbds://{user}@127.0.0.1:{}/disk?tls-psk-file={}",
        fx.port,
        file.display()
    )
}

#[test]
fn psk_clients_round_trip_and_wrong_keys_fail() {
    let (fx, creds) = psk_fixture("tls-psk", true);
    let good = make_psk(&creds, "client-good", "alice", &psk_key(1));
    let out = run_ok(nbdinfo().arg("--size").arg(psk_uri(&fx, "alice", &good)));
    assert_eq!(stdout(&out).trim(), SIZE.to_string());

    // qemu with tls-creds-psk (reads dir/keys.psk).
    let dir = good.parent().expect("psk dir");
    let creds_obj = format!(
        "tls-creds-psk,id=tls0,dir={},endpoint=client,username=alice",
        dir.display()
    );
    run_ok(
        qemu_io()
            .arg("--object")
            .arg(&creds_obj)
            .arg("--image-opts")
            .arg(qemu_opts(&fx))
            .args(["-c", "write -P 0x5c 0 2M", "-c", "read -P 0x5c 0 2M"]),
    );
    assert!(fx.store("disk").read(0, 2 * MIB).iter().all(|&b| b == 0x5c));
    let out = run_ok(
        qemu_img()
            .arg("info")
            .arg("--object")
            .arg(&creds_obj)
            .arg("--image-opts")
            .arg(qemu_opts(&fx)),
    );
    assert!(
        stdout(&out).contains(&SIZE.to_string()),
        "qemu-img info over PSK: {}",
        stdout(&out)
    );

    // Same user, wrong key: refused.
    let wrong = make_psk(&creds, "client-wrong", "alice", &psk_key(2));
    let out = run_any(nbdinfo().arg("--size").arg(psk_uri(&fx, "alice", &wrong)));
    assert!(!out.status.success(), "a wrong PSK key got in");
    // Unknown user: refused.
    let stranger = make_psk(&creds, "client-stranger", "mallory", &psk_key(1));
    let out = run_any(
        nbdinfo()
            .arg("--size")
            .arg(psk_uri(&fx, "mallory", &stranger)),
    );
    assert!(!out.status.success(), "an unknown PSK user got in");
    fx.wait_connections_at_most(0);
    let tls_failures = fx
        .server
        .ended()
        .iter()
        .filter(|e| matches!(e, ConnEnd::Tls(_)))
        .count();
    assert!(tls_failures >= 2, "ends: {:?}", fx.server.ended());
    fx.assert_reactors_alive();
}

#[test]
fn optional_tls_serves_plain_and_tls_clients() {
    let (fx, creds) = psk_fixture("tls-optional", false);
    let good = make_psk(&creds, "client", "alice", &psk_key(1));
    let out = run_ok(nbdinfo().arg("--size").arg(psk_uri(&fx, "alice", &good)));
    assert_eq!(stdout(&out).trim(), SIZE.to_string());
    let out = run_ok(nbdinfo().arg("--size").arg(fx.tcp_uri("disk")));
    assert_eq!(stdout(&out).trim(), SIZE.to_string());
}

#[test]
fn non_loopback_listeners_need_required_tls_or_insecure() {
    let reactors = reactors();
    let provider = Arc::new(MemProvider::new(vec![MemStore::new("disk", SIZE, false)]));
    let any = || vec![ListenSpec::Tcp("0.0.0.0:0".into())];
    match NbdServer::start_with(&reactors, any(), provider.clone(), ServerConfig::default()) {
        Err(NbdServerError::Insecure(a)) => assert!(a.ip().is_unspecified()),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("0.0.0.0 without TLS was accepted"),
    }
    // Optional TLS still lets plaintext in: refused too.
    let creds = nbd_common::scratch_dir("tls-any");
    let file = make_psk(&creds, "psk", "alice", &psk_key(1));
    let optional = tls_config(TlsCredentials::Psk { file: file.clone() }, false);
    assert!(matches!(
        NbdServer::start_with(&reactors, any(), provider.clone(), optional),
        Err(NbdServerError::Insecure(_))
    ));
    // Required TLS, or an explicit insecure, is accepted.
    let required = tls_config(TlsCredentials::Psk { file }, true);
    let s = NbdServer::start_with(&reactors, any(), provider.clone(), required)
        .expect("0.0.0.0 with required TLS");
    s.stop();
    let insecure = ServerConfig {
        insecure: true,
        ..ServerConfig::default()
    };
    let s =
        NbdServer::start_with(&reactors, any(), provider, insecure).expect("0.0.0.0 with insecure");
    s.stop();
    let _ = std::fs::remove_dir_all(creds);
}
