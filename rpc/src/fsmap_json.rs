//! The wire form of a GETFSMAP record (`pool_get_fsmap`), both ways: the
//! daemon writes records with [`record_json`] and reads a caller's `after`
//! with [`parse_record`]; the CLI reads pages with the same function.
//!
//! `{"physical": bytes, "length": bytes, "owner": {"volume": NAME,
//! "offset": bytes} | {"special": NAME}, "flags": [...]}`.

use serde_json::{json, Value};
use sluice_engine::fsmap::{FsmapOwner, FsmapRecord, Special};

/// A record as JSON.
pub fn record_json(r: &FsmapRecord) -> Value {
    let owner = match &r.owner {
        FsmapOwner::Volume { name, offset } => json!({"volume": name, "offset": offset}),
        FsmapOwner::Special(s) => json!({"special": s.name()}),
    };
    json!({
        "physical": r.physical,
        "length": r.length,
        "owner": owner,
        "flags": r.flags(),
    })
}

/// A record from JSON; the error names the field that is wrong.
pub fn parse_record(v: &Value) -> Result<FsmapRecord, String> {
    let num = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("record: \"{k}\" must be a number of bytes"))
    };
    let o = v
        .get("owner")
        .filter(|o| o.is_object())
        .ok_or("record: \"owner\" must be an object")?;
    let owner = match (o.get("volume"), o.get("special")) {
        (Some(name), None) => FsmapOwner::Volume {
            name: name
                .as_str()
                .ok_or("record: owner \"volume\" must be a name")?
                .to_string(),
            offset: o
                .get("offset")
                .and_then(Value::as_u64)
                .ok_or("record: a volume owner needs an \"offset\" in bytes")?,
        },
        (None, Some(s)) => {
            let s = s.as_str().unwrap_or("");
            FsmapOwner::Special(Special::parse(s).ok_or_else(|| {
                let names: Vec<&str> = Special::ALL.iter().map(|x| x.name()).collect();
                format!("record: special owner {s:?} is not one of {names:?}")
            })?)
        }
        _ => return Err("record: owner needs either \"volume\" or \"special\"".into()),
    };
    let flags: Vec<&str> = match v.get("flags") {
        None => Vec::new(),
        Some(f) => f
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or("record: \"flags\" must be a list of names")?,
    };
    Ok(FsmapRecord {
        physical: num("physical")?,
        length: num("length")?,
        owner,
        shared: flags.contains(&"shared"),
        compressed: flags.contains(&"compressed"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_name_the_field() {
        let recs = [
            FsmapRecord {
                physical: 4096,
                length: 8192,
                owner: FsmapOwner::Volume {
                    name: "v".into(),
                    offset: 65536,
                },
                shared: true,
                compressed: true,
            },
            FsmapRecord {
                physical: 0,
                length: 4096,
                owner: FsmapOwner::Special(Special::PoolHeader),
                shared: false,
                compressed: false,
            },
        ];
        for r in recs {
            assert_eq!(parse_record(&record_json(&r)), Ok(r));
        }
        let e = parse_record(&json!({"physical": 0, "length": 1, "owner": {"special": "x"}}));
        assert!(e.unwrap_err().contains("special owner"));
        let e = parse_record(&json!({"physical": -1, "length": 1, "owner": {"special": "free"}}));
        assert!(e.unwrap_err().contains("physical"));
    }
}
