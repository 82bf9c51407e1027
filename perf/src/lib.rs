//! sluice benchmarks: the pieces the benchmark binaries share.
//!
//! The binaries live in `src/bin/`:
//! - `sluice-perf`: a bdevperf-style load generator: the engine on its
//!   reactors, in-process, against a pool file or device (IOPS, latency
//!   percentiles, CPU per I/O, data written per byte written, `verify`);
//! - `engine-open`: opening a pool is cheap and its memory is bounded (open
//!   time and resident memory for a pool holding many GiB, after a clean
//!   close and after a crash);
//! - `engine-compress`: compressing writes and decompressing reads through
//!   the engine on one core, next to `lz4 -b1` on the same bytes.
//!
//! What this library owns:
//! - [`units`]: parsing sizes like `64K`/`10G`, printing sizes and rates;
//! - [`procstat`]: this process's resident memory, from `/proc/self/status`;
//! - [`meter`]: a [`sluice_engine::dev::BlockDev`] wrapper that counts the
//!   I/O an engine operation causes (so "open reads only metadata" is a number,
//!   not a claim);
//! - [`datagen`]: reproducible data of chosen LZ4 compressibility, a pure
//!   function of (seed, generation, offset), so any read can be verified;
//! - [`table`]: plain-text tables for the reports.

pub mod datagen;
pub mod meter;
pub mod procstat;
pub mod table;
pub mod units;
