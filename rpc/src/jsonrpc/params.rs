//! Turning a request's `params` object into a typed struct, with errors that name the
//! offending field.
//!
//! `serde_json::from_value` reports `invalid type: string "x", expected u64` without
//! saying *which* member was wrong, which is useless to someone who typed five flags.
//! [`parse_params`] deserializes through a thin wrapper that remembers the top-level
//! key being read when an error happens, so the answer is
//! `Invalid params: size: invalid size "4X": unknown unit "X" ...` with
//! `data: {"field": "size"}`. Only top-level keys are tracked: params are flat
//! objects in this API.

use super::error::quote_prefix;
use super::RpcError;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};
use std::cell::RefCell;

/// Deserializes `params` into `T`, mapping failures to -32602 Invalid params.
///
/// Absent params reach handlers as `{}`, so a struct whose fields are all optional
/// (or `#[serde(default)]`) accepts a call without params.
pub fn parse_params<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    if params.is_array() {
        // serde would happily fill a struct from an array by position.
        return Err(RpcError::invalid_params(
            "params must be an object of named parameters, not an array",
        ));
    }
    let field = RefCell::new(None);
    T::deserialize(Tracked {
        value: params,
        field: &field,
    })
    .map_err(|e| {
        let message = e.to_string();
        let field = field.take().or_else(|| missing_field_name(&message));
        // A key is peer input too: `data` quotes a prefix of it, as the message does
        // (shortened by `RpcError::new`).
        match field {
            Some(f) if !message.contains(&format!("`{f}`")) => {
                let f = quote_prefix(&f);
                RpcError::invalid_params(format!("{f}: {message}")).with_data(json!({ "field": f }))
            }
            Some(f) => {
                RpcError::invalid_params(message).with_data(json!({ "field": quote_prefix(&f) }))
            }
            None => RpcError::invalid_params(message),
        }
    })
}

/// Params type for methods that take none: rejects any member, so a typo such as
/// `{"nmae": "x"}` sent to the wrong method is reported rather than ignored.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// serde's own message for a missing member is "missing field `name`".
fn missing_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// A `Value` deserializer that records the current top-level key in `field`.
struct Tracked<'a> {
    value: Value,
    field: &'a RefCell<Option<String>>,
}

impl Tracked<'_> {
    fn visit_object<'de, V: Visitor<'de>>(
        map: Map<String, Value>,
        field: &RefCell<Option<String>>,
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        visitor.visit_map(TrackedMap {
            iter: map.into_iter(),
            value: None,
            field,
        })
    }
}

macro_rules! delegate_to_value {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.value.$method(visitor)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Tracked<'_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Object(map) => Self::visit_object(map, self.field, visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Object(map) => Self::visit_object(map, self.field, visitor),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Object(map) => Self::visit_object(map, self.field, visitor),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value.deserialize_enum(name, variants, visitor)
    }

    delegate_to_value!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_identifier,
        deserialize_ignored_any,
    );
}

struct TrackedMap<'a> {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
    field: &'a RefCell<Option<String>>,
}

impl<'de> MapAccess<'de> for TrackedMap<'_> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((key, value)) => {
                // Set before the key is read: `deny_unknown_fields` fails right here.
                *self.field.borrow_mut() = Some(key.clone());
                self.value = Some(value);
                seed.deserialize(Value::String(key)).map(Some)
            }
            None => {
                // What fails after the last key (a missing field) is not about it.
                *self.field.borrow_mut() = None;
                Ok(None)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value requested before its key"))?;
        let out = seed.deserialize(value)?;
        *self.field.borrow_mut() = None;
        Ok(out)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::codes;
    use crate::size::ByteSize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct VolumeCreate {
        name: String,
        size: ByteSize,
        chunk_size: Option<ByteSize>,
        #[serde(default)]
        read_only: bool,
    }

    #[test]
    fn good_params() {
        let p: VolumeCreate =
            parse_params(json!({"name": "v", "size": "1G", "chunk_size": 4096})).unwrap();
        assert_eq!(
            p,
            VolumeCreate {
                name: "v".into(),
                size: ByteSize(1 << 30),
                chunk_size: Some(ByteSize(4096)),
                read_only: false
            }
        );
        let m: BTreeMap<String, u32> = parse_params(json!({"a": 1})).unwrap();
        assert_eq!(m["a"], 1);
        let _: NoParams = parse_params(json!({})).unwrap();
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse_params::<VolumeCreate>(json!({"name": "v", "size": "4X"})).unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        assert!(
            e.message
                .starts_with("Invalid params: size: invalid size \"4X\""),
            "{}",
            e.message
        );
        assert_eq!(e.data, Some(json!({"field": "size"})));

        let e = parse_params::<VolumeCreate>(json!({"name": 5, "size": 1})).unwrap_err();
        assert!(
            e.message.contains("name: invalid type: integer `5`"),
            "{}",
            e.message
        );

        let e = parse_params::<VolumeCreate>(json!({"name": "v", "size": 1, "read_only": "yes"}))
            .unwrap_err();
        assert_eq!(e.data, Some(json!({"field": "read_only"})));
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let e = parse_params::<VolumeCreate>(json!({"size": 1, "read_only": true})).unwrap_err();
        assert_eq!(e.message, "Invalid params: missing field `name`");
        assert_eq!(e.data, Some(json!({"field": "name"})));

        let e = parse_params::<VolumeCreate>(json!({"name": "v", "size": 1, "colour": "red"}))
            .unwrap_err();
        assert!(
            e.message
                .starts_with("Invalid params: unknown field `colour`"),
            "{}",
            e.message
        );
        assert_eq!(e.data, Some(json!({"field": "colour"})));

        let e = parse_params::<NoParams>(json!({"x": 1})).unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        assert!(e.message.contains("unknown field `x`"), "{}", e.message);
    }

    #[test]
    fn non_object_params_are_invalid_params() {
        let e = parse_params::<VolumeCreate>(json!(["v", 1, null, false])).unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        assert!(e.message.contains("not an array"), "{}", e.message);
        let e = parse_params::<VolumeCreate>(json!("v")).unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        assert_eq!(e.data, None);
    }
}
