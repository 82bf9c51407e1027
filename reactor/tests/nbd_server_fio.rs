//! fio's nbd engine (libnbd) against the io_uring NBD server on two
//! reactors with the in-memory backend: verified random writes over two
//! connections, a separate verify-only pass (and proof that it catches
//! corruption), and 4 KiB random read / write IOPS at queue depth 32 — a
//! figure for the NBD path alone, printed for the record.
//!
//! fio must be installed (`apt-get install -y fio`); a missing fio fails.

mod nbd_common;
mod nbd_server_common;

use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nbd_common::{random_bytes, require_tool, stdout};
use nbd_server_common::*;

/// The tests in this file measure or load the machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn fio() -> Command {
    Command::new(require_tool("fio", "fio"))
}

fn fio_job(uri: &str, args: &[&str]) -> Command {
    let mut c = fio();
    c.arg("--name=nbd")
        .arg("--ioengine=nbd")
        .arg(format!("--uri={uri}"))
        .args(["--bs=4k", "--iodepth=32", "--group_reporting"])
        .args(args);
    c
}

fn report(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `"iops" : N` of the `read` or `write` section of fio's JSON output.
fn json_iops(json: &str, dir: &str) -> f64 {
    let sec = json
        .find(&format!("\"{dir}\" : {{"))
        .unwrap_or_else(|| panic!("no {dir} section in fio output:\n{json}"));
    let rest = &json[sec..];
    let at = rest.find("\"iops\" : ").expect("iops field") + "\"iops\" : ".len();
    let num: String = rest[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().expect("iops number")
}

const SIZE: u64 = 64 * MIB;

/// Two jobs (two NBD connections), each randomly writing its own 32 MiB
/// with crc32c verify headers at iodepth 32 and verifying after writing;
/// then a separate verify-only run; then one flipped byte on the server
/// must make verification fail.
#[test]
fn nbd_server_fio_randwrite_verify_two_connections() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let f = Fixture::start(vec![MemStore::new("disk", SIZE, false)]);
    // Jitter so completions really overtake each other during the write.
    f.provider.set_delay(Some(Arc::new(|_, offset, _| {
        Some(Duration::from_micros((offset / 4096 % 5) * 40))
    })));
    let uri = f.unix_uri("disk");
    let job = [
        "--rw=randwrite",
        "--numjobs=2",
        "--size=32M",
        "--offset_increment=32M",
        "--verify=crc32c",
        "--verify_state_save=0",
        "--verify_fatal=1",
    ];
    let out = run_any(&mut fio_job(&uri, &job));
    assert!(
        out.status.success(),
        "fio write+verify failed\n{}",
        report(&out)
    );
    assert!(
        !stdout(&out).contains("verify:") || stdout(&out).contains("err= 0"),
        "{}",
        report(&out)
    );
    assert!(
        f.server.total_connections() >= 2,
        "{} connections",
        f.server.total_connections()
    );
    let s = f.store("disk");
    assert_eq!(
        s.allocated_blocks() as u64,
        SIZE / BLOCK,
        "every block of both regions was written"
    );
    assert!(s.counters.writes.load(Ordering::Relaxed) >= SIZE / BLOCK);

    // Verify-only pass, new connections, no delay.
    f.provider.set_delay(None);
    let mut vjob = job.to_vec();
    vjob.push("--verify_only");
    let out = run_any(&mut fio_job(&uri, &vjob));
    assert!(
        out.status.success(),
        "fio verify_only failed\n{}",
        report(&out)
    );

    // The verification is real: corrupt one byte of a block's data.
    let at = 12345 * 4096 + 2000;
    let b = s.read(at, 1)[0];
    s.write(at, &[b ^ 0x5a]);
    let out = run_any(&mut fio_job(&uri, &vjob));
    assert!(
        !out.status.success(),
        "fio verify_only missed a corrupted block\n{}",
        report(&out)
    );
    f.wait_connections_at_most(0);
    f.assert_reactors_alive();
}

/// 4 KiB random read and random write at iodepth 32 against the in-memory
/// backend, one connection and two. Prints the IOPS; fails only if the
/// server is pathologically slow.
#[test]
fn nbd_server_fio_4k_random_iops_qd32() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let f = Fixture::start(vec![MemStore::new("disk", SIZE, false)]);
    // Real data everywhere, so reads return data (holes would cost nothing).
    let s = f.store("disk");
    for i in 0..SIZE / MIB {
        s.write(i * MIB, &random_bytes(i + 1, MIB as usize));
    }
    let uri = f.unix_uri("disk");
    let mut lines = Vec::new();
    for (rw, jobs) in [
        ("randread", "1"),
        ("randwrite", "1"),
        ("randread", "2"),
        ("randwrite", "2"),
    ] {
        let args = [
            format!("--rw={rw}"),
            format!("--numjobs={jobs}"),
            "--time_based".into(),
            "--runtime=3".into(),
            "--ramp_time=1".into(),
            "--norandommap".into(),
            "--randrepeat=0".into(),
            "--output-format=json".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_ok(&mut fio_job(&uri, &args));
        let dir = if rw == "randread" { "read" } else { "write" };
        let iops = json_iops(&stdout(&out), dir);
        let line = format!(
            "fio --ioengine=nbd --uri={uri} --rw={rw} --bs=4k --iodepth=32 --numjobs={jobs} \
             --time_based --runtime=3: {iops:.0} IOPS"
        );
        println!("{line}");
        assert!(iops > 2000.0, "only {iops:.0} IOPS: {line}");
        lines.push(line);
    }
    eprintln!("NBD path, in-memory backend:\n{}", lines.join("\n"));
    f.assert_reactors_alive();
}
