//! Test credentials for NBD over TLS, made with the `openssl` command:
//! an X.509 directory in the layout qemu, nbdkit and libnbd share (a CA,
//! a server certificate for 127.0.0.1/localhost, a client certificate),
//! and PSK files of `username:hexkey` lines. Shared by the reactor's
//! `nbd_server_tls` and the daemon's `daemon_tls` tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `openssl` binary; fails the test with an install hint if missing.
fn openssl() -> Command {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "openssl is not installed: run scripts/setup (Debian package openssl)"
    );
    Command::new("openssl")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sign a new key's certificate with the CA in `dir`.
fn signed_cert(dir: &Path, name: &str, cn: &str, ext: &str) {
    let key = dir.join(format!("{name}-key.pem"));
    let csr = dir.join(format!("{name}.csr"));
    let extfile = dir.join(format!("{name}.ext"));
    std::fs::write(&extfile, ext).expect("write extension file");
    run(openssl()
        .args(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args(["-subj", &format!("/CN={cn}")]));
    run(openssl()
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(dir.join("ca-cert.pem"))
        .arg("-CAkey")
        .arg(dir.join("ca-key.pem"))
        .arg("-CAcreateserial")
        .arg("-out")
        .arg(dir.join(format!("{name}-cert.pem")))
        .arg("-extfile")
        .arg(&extfile));
}

/// Make `dir/x509` with `ca-cert.pem`, `server-cert.pem`,
/// `server-key.pem`, `client-cert.pem`, `client-key.pem` (one directory
/// serves the server and both client kinds). Returns it.
pub fn make_x509_dir(dir: &Path) -> PathBuf {
    let d = dir.join("x509");
    std::fs::create_dir_all(&d).expect("create x509 dir");
    run(openssl()
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(d.join("ca-key.pem"))
        .arg("-out")
        .arg(d.join("ca-cert.pem"))
        .args(["-subj", "/CN=sluice test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
    signed_cert(
        &d,
        "server",
        "localhost",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    signed_cert(
        &d,
        "client",
        "sluice-test-client",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    );
    d
}

/// A copy of the X.509 directory with only the CA certificate: a client
/// that trusts the server but has no certificate of its own.
pub fn ca_only_dir(x509: &Path, dir: &Path) -> PathBuf {
    let d = dir.join("ca-only");
    std::fs::create_dir_all(&d).expect("create ca-only dir");
    std::fs::copy(x509.join("ca-cert.pem"), d.join("ca-cert.pem")).expect("copy CA");
    d
}

/// Write `dir/<sub>/keys.psk` (the name qemu's `tls-creds-psk` reads)
/// holding `user:key`. Returns the file.
pub fn make_psk(dir: &Path, sub: &str, user: &str, key_hex: &str) -> PathBuf {
    let d = dir.join(sub);
    std::fs::create_dir_all(&d).expect("create psk dir");
    let f = d.join("keys.psk");
    std::fs::write(&f, format!("{user}:{key_hex}\n")).expect("write psk file");
    f
}

/// A 32-byte key in hex, different for each `seed`.
pub fn psk_key(seed: u8) -> String {
    (0..32u8)
        .map(|i| format!("{:02x}", i.wrapping_mul(7).wrapping_add(seed)))
        .collect()
}
