//! The bitcoind profile's method classes: what a call costs, judged from its method and parameters.

use serde_json::value::RawValue;
use std::collections::HashMap;

/// Default costs of the method classes, in `[cost]` units (per-method overrides live in the front's
/// settings).
pub const DEFAULT_CHEAP_COST: f64 = 1.0;
pub const DEFAULT_MEDIUM_COST: f64 = 20.0;
pub const DEFAULT_HEAVY_COST: f64 = 500.0;

/// Calls that walk the whole UTXO set or every transaction of a block.
const HEAVY: &[&str] = &[
    "scantxoutset",
    "gettxoutsetinfo",
    "getblockstats",
    "verifychain",
    "rescanblockchain",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Cheap,
    Medium,
    Heavy,
}

impl Class {
    /// Its position in `telemetry::metrics::API_CLASSES`.
    pub fn index(self) -> usize {
        match self {
            Class::Cheap => 0,
            Class::Medium => 1,
            Class::Heavy => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Cheap => "cheap",
            Class::Medium => "medium",
            Class::Heavy => "heavy",
        }
    }

    pub fn cost(self) -> f64 {
        match self {
            Class::Cheap => DEFAULT_CHEAP_COST,
            Class::Medium => DEFAULT_MEDIUM_COST,
            Class::Heavy => DEFAULT_HEAVY_COST,
        }
    }
}

/// The `n`th positional parameter, or the named one, when `params` holds it.
fn param(params: Option<&RawValue>, n: usize, name: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(params?.get()).ok()?;
    match v {
        serde_json::Value::Array(mut a) if n < a.len() => Some(a.swap_remove(n)),
        serde_json::Value::Object(mut o) => o.remove(name),
        _ => None,
    }
}

/// Verbose forms decode every transaction in a block (or look one up in full), tens of times the work
/// of the hex form.
pub fn class(method: &str, params: Option<&RawValue>) -> Class {
    if HEAVY.contains(&method) {
        return Class::Heavy;
    }
    let truthy = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::Bool(b)) => b,
        Some(serde_json::Value::Number(n)) => n.as_u64().is_some_and(|n| n >= 1),
        _ => false,
    };
    match method {
        "getblock" => match param(params, 1, "verbosity") {
            Some(serde_json::Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 2) => Class::Medium,
            _ => Class::Cheap,
        },
        "getrawtransaction" if truthy(param(params, 1, "verbose")) => Class::Medium,
        _ => Class::Cheap,
    }
}

/// What one call costs: its override, else its class's cost.
pub fn cost(method: &str, params: Option<&RawValue>, overrides: &HashMap<String, f64>) -> (Class, f64) {
    let c = class(method, params);
    (c, overrides.get(method).copied().unwrap_or_else(|| c.cost()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).expect("valid JSON")
    }

    #[test]
    fn classes_follow_method_and_verbosity() {
        assert_eq!(class("getblockcount", None), Class::Cheap);
        assert_eq!(class("gettxoutsetinfo", None), Class::Heavy);
        assert_eq!(class("getblock", Some(&raw(r#"["00",2]"#))), Class::Medium);
        assert_eq!(class("getblock", Some(&raw(r#"["00",1]"#))), Class::Cheap);
        assert_eq!(
            class("getblock", Some(&raw(r#"{"blockhash":"00","verbosity":2}"#))),
            Class::Medium
        );
        assert_eq!(class("getrawtransaction", Some(&raw(r#"["00",true]"#))), Class::Medium);
        assert_eq!(class("getrawtransaction", Some(&raw(r#"["00",0]"#))), Class::Cheap);
        let mut o = HashMap::new();
        o.insert("getblockcount".to_string(), 7.0);
        assert_eq!(cost("getblockcount", None, &o), (Class::Cheap, 7.0));
    }
}
