//! `sluice-perf -w verify` as a hammer: random writes and reads through the
//! reactors and the engine, every read compared with what was written, then
//! everything read back; and the JSON report other scripts rely on.

use std::process::Command;

fn run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-perf"))
        .args(args)
        .output()
        .expect("run sluice-perf");
    assert!(
        out.status.success(),
        "sluice-perf {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
}

/// A fresh directory on a filesystem with O_DIRECT (not tmpfs).
fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir =
        std::path::Path::new("/var/tmp").join(format!("sluice-perf-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn verify_workload_reads_back_what_it_wrote() {
    let dir = scratch_dir("test");
    let pool = dir.join("p.img");
    let pool = pool.to_str().unwrap();
    for (chunk, comp) in [("4K", "none"), ("64K", "lz4")] {
        let v = run(&[
            "--pool",
            pool,
            "--pool-size",
            "1G",
            "--zone-size",
            "64M",
            "--volume-size",
            "128M",
            "--chunk-size",
            chunk,
            "--compression",
            comp,
            "-w",
            "verify",
            "-t",
            "2",
            "--ramp",
            "0",
            "-q",
            "8",
            "--json",
        ]);
        let ver = &v["verify"];
        assert!(
            ver["reads_verified_during_run"].as_u64().unwrap() > 0,
            "{v}"
        );
        let written = ver["offsets_written"].as_u64().unwrap();
        assert!(written > 0, "{v}");
        assert_eq!(ver["reads_verified_at_end"].as_u64(), Some(written), "{v}");
    }
    // Reopen the last pool and measure reads on it: the report's shape.
    let r = run(&[
        "--pool",
        pool,
        "--reuse",
        "-w",
        "randread",
        "-t",
        "1",
        "--ramp",
        "0",
        "-q",
        "4",
        "--no-prefill",
        "--json",
    ]);
    assert!(r["read"]["ios"].as_u64().unwrap() > 0, "{r}");
    assert!(r["read"]["lat_us"]["p99"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["cpu_s_per_million_ios"].as_f64().unwrap() > 0.0, "{r}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The hot path allocates nothing per I/O: 4 KiB random reads and writes on
/// an uncompressed 4 KiB-chunk volume, one reactor (no forwarding). Writes
/// may allocate now and then (the intent log growing, a B+tree split, a
/// checkpoint), so they get a small allowance; reads get none.
#[test]
fn four_kib_io_does_not_allocate() {
    let dir = scratch_dir("alloc");
    let pool = dir.join("p.img");
    let pool = pool.to_str().unwrap();
    let common = [
        "--pool", pool, "--cores", "0", "-o", "4K", "-q", "16", "-t", "2", "--ramp", "1", "--json",
    ];
    let w = run(&[
        &common[..],
        &[
            "--pool-size",
            "512M",
            "--zone-size",
            "64M",
            "--volume-size",
            "64M",
            "--chunk-size",
            "4K",
            "--compression",
            "none",
            "-w",
            "randwrite",
        ],
    ]
    .concat());
    let r = run(&[&common[..], &["--reuse", "--prefill", "-w", "randread"]].concat());
    // Two reactors: reads of zones the other reactor owns are forwarded, and
    // their buffers are allocated on one thread and freed on the other.
    let mut two = common.to_vec();
    two[3] = "0,1";
    let r2 = run(&[&two[..], &["--reuse", "--no-prefill", "-w", "randread"]].concat());
    for (v, max) in [(&w, 0.05), (&r, 0.001), (&r2, 0.005)] {
        let ios = v["total"]["ios"].as_u64().unwrap() as f64;
        assert!(ios > 5000.0, "{v}");
        let a = v["allocs_per_io"].as_f64().unwrap();
        // A fixed allowance for the odd checkpoint inside the window.
        assert!(
            a * ios <= 200.0 + max * ios,
            "{a} allocations per I/O (at most 200 + {max} per I/O): {v}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
