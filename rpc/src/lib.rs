//! sluice control plane: JSON-RPC 2.0 server and method dispatch.

pub mod cli;
pub mod client;
pub mod daemon;
pub mod fsmap_json;
pub mod jsonrpc;
pub mod size;
