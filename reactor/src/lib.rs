//! sluice runtime: reactors, io_uring block devices, and the NBD export server.
