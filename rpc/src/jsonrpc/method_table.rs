//! The method table and JSON-RPC 2.0 dispatch: from one parsed JSON value (a request,
//! a notification or a batch) to the response value, if any.
//!
//! This file owns every rule of the specification that does not involve bytes:
//! request validation (-32600), unknown methods (-32601), the params shape (-32602),
//! handler panics (-32603), notifications (never answered, even on error) and batches.
//! It is transport-free so that the rules are tested without sockets and so that the
//! daemon can replay a config file of method calls through [`MethodTable::call`].

use super::params::parse_params;
use super::RpcError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A method implementation. Synchronous on purpose: the control plane runs methods on
/// a small fixed pool of worker threads and they may block on the reactors; an async signature
/// would buy nothing at this request rate. Handlers reach the daemon's state through
/// what their closure captures.
pub type Handler = Box<dyn Fn(Value) -> Result<Value, RpcError> + Send + Sync>;

/// The built-in method listing all methods (SPDK name).
pub const RPC_GET_METHODS: &str = "rpc_get_methods";

/// Methods by name. Built once at start-up, then shared read-only (`Arc<MethodTable>`)
/// by all connections, so dispatch takes no lock.
pub struct MethodTable {
    methods: BTreeMap<String, Handler>,
}

impl Default for MethodTable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MethodTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodTable")
            .field("methods", &self.methods())
            .finish()
    }
}

impl MethodTable {
    /// An empty table; `rpc_get_methods` is always available.
    pub fn new() -> Self {
        MethodTable {
            methods: BTreeMap::new(),
        }
    }

    /// Adds a method taking raw params (always an object; `{}` when the request had none).
    ///
    /// # Panics
    /// If `name` is already registered (or is `rpc_get_methods`): two handlers for one
    /// name is a bug in the daemon's start-up code, not a runtime condition.
    pub fn register<F>(&mut self, name: impl Into<String>, handler: F)
    where
        F: Fn(Value) -> Result<Value, RpcError> + Send + Sync + 'static,
    {
        let name = name.into();
        assert!(
            name != RPC_GET_METHODS && !self.methods.contains_key(&name),
            "JSON-RPC method {name:?} registered twice"
        );
        self.methods.insert(name, Box::new(handler));
    }

    /// Adds a method with typed params and result: params are parsed with
    /// [`parse_params`] (errors become -32602 naming the field), the result is
    /// serialized with serde.
    ///
    /// # Panics
    /// As [`MethodTable::register`].
    pub fn register_typed<P, R, F>(&mut self, name: impl Into<String>, handler: F)
    where
        P: DeserializeOwned,
        R: Serialize,
        F: Fn(P) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        self.register(name, move |params| {
            let result = handler(parse_params(params)?)?;
            serde_json::to_value(result)
                .map_err(|e| RpcError::internal(format!("cannot serialize the result: {e}")))
        });
    }

    /// All method names, sorted, including `rpc_get_methods`.
    pub fn methods(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.methods.keys().map(String::as_str).collect();
        names.push(RPC_GET_METHODS);
        names.sort_unstable();
        names
    }

    pub fn contains(&self, method: &str) -> bool {
        method == RPC_GET_METHODS || self.methods.contains_key(method)
    }

    /// Calls `method` directly, as if it came over the wire: `null` params become `{}`,
    /// array params are -32602, a panic is -32603. Used by dispatch and by config replay.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let params = match params {
            Value::Null => Value::Object(Map::new()),
            Value::Object(_) => params,
            Value::Array(_) => {
                return Err(RpcError::invalid_params(
                    "params must be an object of named parameters, not an array",
                ))
            }
            other => {
                return Err(RpcError::invalid_params(format!(
                    "params must be an object, got {other}"
                )))
            }
        };
        if method == RPC_GET_METHODS {
            // Params (SPDK's `current`, `include_aliases`) are accepted and ignored:
            // every method is available in every state.
            return Ok(json!(self.methods()));
        }
        let handler = self
            .methods
            .get(method)
            .ok_or_else(|| RpcError::method_not_found(method))?;
        // The handler and its captured state are only shared immutably or behind the
        // daemon's own locks; a panic leaves nothing here half-updated.
        catch_unwind(AssertUnwindSafe(|| handler(params))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_string());
            Err(RpcError::internal(format!(
                "method {method} panicked: {what}"
            )))
        })
    }

    /// Handles one JSON value from the stream: a request, a notification or a batch.
    /// Returns the response to send, or `None` when nothing must be sent (a
    /// notification, or a batch of only notifications).
    pub fn handle(&self, message: Value) -> Option<Value> {
        match message {
            Value::Array(batch) if batch.is_empty() => Some(error_response(
                Value::Null,
                RpcError::invalid_request("empty batch"),
            )),
            Value::Array(batch) => {
                // Members run in order; the spec allows any order, in order is easier
                // to reason about for `volume_create` followed by `nbd_export_add`.
                let responses: Vec<Value> = batch
                    .into_iter()
                    .filter_map(|m| self.handle_one(m, true))
                    .collect();
                (!responses.is_empty()).then_some(Value::Array(responses))
            }
            single => self.handle_one(single, false),
        }
    }

    fn handle_one(&self, message: Value, in_batch: bool) -> Option<Value> {
        let Value::Object(mut request) = message else {
            let what = if in_batch { "batch member" } else { "request" };
            return Some(error_response(
                Value::Null,
                RpcError::invalid_request(format!(
                    "{what} must be an object, got {}",
                    kind(&message)
                )),
            ));
        };
        // A request we cannot validate is answered even without an id: only a
        // well-formed notification is silent (JSON-RPC 2.0 section 5).
        let id = match request.remove("id") {
            None => None,
            Some(id @ (Value::Null | Value::String(_) | Value::Number(_))) => Some(id),
            Some(other) => {
                return Some(error_response(
                    Value::Null,
                    RpcError::invalid_request(format!(
                        "\"id\" must be a string, a number or null, got {}",
                        kind(&other)
                    )),
                ))
            }
        };
        let reply_id = id.clone().unwrap_or(Value::Null);
        let invalid = |detail: String| {
            Some(error_response(
                reply_id.clone(),
                RpcError::invalid_request(detail),
            ))
        };

        match request.get("jsonrpc") {
            Some(Value::String(v)) if v == "2.0" => {}
            Some(other) => return invalid(format!("\"jsonrpc\" must be \"2.0\", got {other}")),
            None => return invalid("missing \"jsonrpc\": \"2.0\"".to_string()),
        }
        let method = match request.remove("method") {
            Some(Value::String(m)) => m,
            Some(other) => {
                return invalid(format!("\"method\" must be a string, got {}", kind(&other)))
            }
            None => return invalid("missing \"method\"".to_string()),
        };
        let params = request.remove("params").unwrap_or(Value::Null);
        if !matches!(params, Value::Null | Value::Object(_) | Value::Array(_)) {
            return invalid(format!(
                "\"params\" must be an object, got {}",
                kind(&params)
            ));
        }

        let outcome = self.call(&method, params);
        let id = id?;
        Some(match outcome {
            Ok(result) => json!({"jsonrpc": "2.0", "result": result, "id": id}),
            Err(error) => error_response(id, error),
        })
    }
}

/// A response object carrying `error`.
pub fn error_response(id: Value, error: RpcError) -> Value {
    // Also catches errors built as struct literals, which skipped `RpcError::new`.
    json!({"jsonrpc": "2.0", "error": error.shortened(), "id": id})
}

/// JSON type names for error messages; the value itself may be huge.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::codes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn table(calls: Arc<AtomicUsize>) -> MethodTable {
        let mut r = MethodTable::new();
        let c = calls.clone();
        r.register("echo", move |p| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(p)
        });
        let c = calls.clone();
        r.register("fail_not_found", move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Err(RpcError::not_found("volume \"v\" not found"))
        });
        r.register("panic", |_| panic!("handler bug"));
        #[derive(serde::Deserialize)]
        struct Add {
            a: u64,
            b: u64,
        }
        r.register_typed("add", |p: Add| Ok(p.a + p.b));
        r
    }

    fn handle(req: Value) -> Option<Value> {
        table(Arc::default()).handle(req)
    }

    fn code_of(resp: &Value) -> i64 {
        resp["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no error code in {resp}"))
    }

    #[test]
    fn request_gets_result_with_same_id() {
        for id in [json!(1), json!("abc"), json!(null), json!(2.5)] {
            let resp =
                handle(json!({"jsonrpc": "2.0", "method": "echo", "params": {"x": 1}, "id": id}));
            assert_eq!(
                resp,
                Some(json!({"jsonrpc": "2.0", "result": {"x": 1}, "id": id}))
            );
        }
        // Absent and null params both reach the handler as {}.
        let resp = handle(json!({"jsonrpc": "2.0", "method": "echo", "id": 1})).unwrap();
        assert_eq!(resp["result"], json!({}));
        let resp =
            handle(json!({"jsonrpc": "2.0", "method": "echo", "params": null, "id": 1})).unwrap();
        assert_eq!(resp["result"], json!({}));
        let resp =
            handle(json!({"jsonrpc": "2.0", "method": "add", "params": {"a": 2, "b": 3}, "id": 1}));
        assert_eq!(resp.unwrap()["result"], json!(5));
    }

    #[test]
    fn standard_error_codes() {
        let cases = [
            (
                json!({"jsonrpc": "2.0", "method": "nope", "id": 1}),
                codes::METHOD_NOT_FOUND,
                json!(1),
            ),
            (
                json!({"jsonrpc": "2.0", "method": "echo", "params": [1], "id": 2}),
                codes::INVALID_PARAMS,
                json!(2),
            ),
            (
                json!({"jsonrpc": "2.0", "method": "add", "params": {"a": 1}, "id": 3}),
                codes::INVALID_PARAMS,
                json!(3),
            ),
            (
                json!({"jsonrpc": "2.0", "method": "panic", "id": 4}),
                codes::INTERNAL_ERROR,
                json!(4),
            ),
            (
                json!({"jsonrpc": "1.0", "method": "echo", "id": 5}),
                codes::INVALID_REQUEST,
                json!(5),
            ),
            (
                json!({"method": "echo", "id": 6}),
                codes::INVALID_REQUEST,
                json!(6),
            ),
            (
                json!({"jsonrpc": "2.0", "method": 1, "id": 7}),
                codes::INVALID_REQUEST,
                json!(7),
            ),
            (
                json!({"jsonrpc": "2.0", "id": 8}),
                codes::INVALID_REQUEST,
                json!(8),
            ),
            (
                json!({"jsonrpc": "2.0", "method": "echo", "params": "x", "id": 9}),
                codes::INVALID_REQUEST,
                json!(9),
            ),
            (
                json!({"jsonrpc": "2.0", "method": "echo", "id": [1]}),
                codes::INVALID_REQUEST,
                json!(null),
            ),
            (
                json!({"jsonrpc": "2.0", "method": "echo", "id": {}}),
                codes::INVALID_REQUEST,
                json!(null),
            ),
            (json!(42), codes::INVALID_REQUEST, json!(null)),
            (json!("echo"), codes::INVALID_REQUEST, json!(null)),
            (
                json!({"jsonrpc": "2.0", "method": "fail_not_found", "id": 10}),
                codes::NOT_FOUND,
                json!(10),
            ),
        ];
        for (req, code, id) in cases {
            let resp = handle(req.clone()).unwrap_or_else(|| panic!("no response to {req}"));
            assert_eq!(code_of(&resp), code, "{req} -> {resp}");
            assert_eq!(resp["id"], id, "{req} -> {resp}");
            assert_eq!(resp["jsonrpc"], "2.0");
            assert!(resp.get("result").is_none());
            assert!(resp["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn invalid_requests_without_id_are_still_answered() {
        let resp = handle(json!({"jsonrpc": "2.0", "method": 1, "params": "bar"})).unwrap();
        assert_eq!(code_of(&resp), codes::INVALID_REQUEST);
        assert_eq!(resp["id"], Value::Null);
        assert_eq!(
            code_of(&handle(json!({"method": "echo"})).unwrap()),
            codes::INVALID_REQUEST
        );
    }

    #[test]
    fn notifications_are_never_answered_even_on_error() {
        let calls = Arc::new(AtomicUsize::new(0));
        let r = table(calls.clone());
        for req in [
            json!({"jsonrpc": "2.0", "method": "echo", "params": {"x": 1}}),
            json!({"jsonrpc": "2.0", "method": "fail_not_found"}),
            json!({"jsonrpc": "2.0", "method": "nope"}),
            json!({"jsonrpc": "2.0", "method": "echo", "params": [1]}),
            json!({"jsonrpc": "2.0", "method": "panic"}),
        ] {
            assert_eq!(r.handle(req.clone()), None, "{req}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "notifications still run");
    }

    #[test]
    fn batches() {
        assert_eq!(code_of(&handle(json!([])).unwrap()), codes::INVALID_REQUEST);

        let resp = handle(json!([1, 2])).unwrap();
        let arr = resp.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert!(arr
            .iter()
            .all(|r| code_of(r) == codes::INVALID_REQUEST && r["id"].is_null()));

        let resp = handle(json!([
            {"jsonrpc": "2.0", "method": "echo", "params": {"n": 1}, "id": "a"},
            {"jsonrpc": "2.0", "method": "echo", "params": {"n": 2}},
            {"foo": "boo"},
            {"jsonrpc": "2.0", "method": "nope", "id": "c"},
            {"jsonrpc": "2.0", "method": "fail_not_found"},
            {"jsonrpc": "2.0", "method": "panic", "id": "d"},
            [],
        ]))
        .unwrap();
        let arr = resp.as_array().unwrap();
        assert_eq!(arr.len(), 5, "{resp}");
        assert_eq!(
            arr[0],
            json!({"jsonrpc": "2.0", "result": {"n": 1}, "id": "a"})
        );
        assert_eq!(code_of(&arr[1]), codes::INVALID_REQUEST);
        assert_eq!(
            (code_of(&arr[2]), &arr[2]["id"]),
            (codes::METHOD_NOT_FOUND, &json!("c"))
        );
        assert_eq!(
            (code_of(&arr[3]), &arr[3]["id"]),
            (codes::INTERNAL_ERROR, &json!("d"))
        );
        // A nested array is not a request; it is not a nested batch either.
        assert_eq!(code_of(&arr[4]), codes::INVALID_REQUEST);

        let all_notifications = json!([
            {"jsonrpc": "2.0", "method": "echo"},
            {"jsonrpc": "2.0", "method": "nope"},
        ]);
        assert_eq!(handle(all_notifications), None);
    }

    #[test]
    fn panic_is_internal_error_and_table_survives() {
        let r = table(Arc::default());
        let e = r.call("panic", json!({})).unwrap_err();
        assert_eq!(e.code, codes::INTERNAL_ERROR);
        assert!(e.message.contains("handler bug"), "{}", e.message);
        assert_eq!(
            r.call("echo", json!({"still": "alive"})).unwrap(),
            json!({"still": "alive"})
        );
    }

    #[test]
    fn rpc_get_methods_lists_everything_sorted() {
        let r = table(Arc::default());
        assert_eq!(
            r.call(RPC_GET_METHODS, Value::Null).unwrap(),
            json!(["add", "echo", "fail_not_found", "panic", "rpc_get_methods"])
        );
        assert!(r.contains("echo") && r.contains(RPC_GET_METHODS) && !r.contains("nope"));
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn duplicate_registration_panics() {
        let mut r = MethodTable::new();
        r.register("a", |_| Ok(Value::Null));
        r.register("a", |_| Ok(Value::Null));
    }
}
