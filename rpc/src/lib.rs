//! sluice control plane: JSON-RPC 2.0 server and method dispatch.
