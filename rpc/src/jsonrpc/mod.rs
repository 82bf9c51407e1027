//! JSON-RPC 2.0 server core, independent of what the methods do.
//!
//! | file | owns |
//! |---|---|
//! | [`error`] | [`RpcError`] and the numeric [`codes`] |
//! | [`framer`] | cutting a byte stream into JSON values ([`Framer`]) |
//! | [`params`] | typed params with errors naming the field ([`parse_params`]) |
//! | [`method_table`] | the method table and the dispatch rules ([`MethodTable`]) |
//! | [`server`] | listening and starting a server ([`Server`], [`serve_unix`], [`serve_tcp`]) |
//! | [`limits`] | what one server lets peers hold ([`ServerLimits`]) |
//! | `event_loop` | the one thread polling a listener and its connections; limits policy |
//! | `workers` | the fixed pool of threads running method calls |
//! | [`shutdown`] | the stop signal ([`Shutdown`]) |
//!
//! Wire format: the socket carries a stream of JSON values, not necessarily separated
//! by anything (SPDK `rpc.py` style). Each value is a request object, a notification
//! (no `id`: never answered, even on error) or a batch (array). `params` is an object
//! of named parameters or absent (`null` is treated as absent); positional (array)
//! params are rejected with -32602 because every sluice method takes named params.
//! Responses are written one per line. Input that is not JSON gets a -32700 response
//! with `id: null` and the connection is closed: without delimiters, the stream cannot
//! be resynchronised. Error messages quote at most a short prefix of any input
//! ([`error::shorten`]).
//!
//! Error codes:
//!
//! | code | constructor | meaning |
//! |---|---|---|
//! | -32700 | [`RpcError::parse_error`] | not JSON (connection closed afterwards) |
//! | -32600 | [`RpcError::invalid_request`] | not a request object; empty batch; value over the size cap (1 MiB); batch over 1024; request not whole in time |
//! | -32601 | [`RpcError::method_not_found`] | no such method |
//! | -32602 | [`RpcError::invalid_params`] | params missing, mistyped or out of range |
//! | -32603 | [`RpcError::internal`] | server bug, including a panicking handler |
//! | -32001 | [`RpcError::not_found`] | no such pool / volume / snapshot / export / job |
//! | -32002 | [`RpcError::exists`] | an object of that name already exists |
//! | -32003 | [`RpcError::no_space`] | not enough free space |
//! | -32004 | [`RpcError::busy`] | in use (exported, has clones, job running), or too many connections; retry later |
//! | -32005 | [`RpcError::invalid_state`] | not allowed in the object's current state |
//! | -32006 | [`RpcError::io`] | the storage below failed (I/O error, bad checksum) |

pub mod error;
mod event_loop;
pub mod framer;
pub mod limits;
pub mod method_table;
pub mod params;
pub mod server;
pub mod shutdown;
mod workers;

pub use error::{codes, RpcError};
pub use framer::{FrameError, Framer, DEFAULT_MAX_LEN};
pub use limits::ServerLimits;
pub use method_table::{error_response, Handler, MethodTable, RPC_GET_METHODS};
pub use params::{parse_params, NoParams};
pub use server::{serve_tcp, serve_unix, ListenAddr, Server, ServerError, ServerHandle};
pub use shutdown::Shutdown;
