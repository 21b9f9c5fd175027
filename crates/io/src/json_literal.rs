//! JSON values as they are written. serde_json turns an integer beyond the 64-bit range into a
//! rounded f64 without a word; reading each value's own text instead keeps every integer an
//! integer, so inference and row checks can tell `18446744073709551617` from `1.8e19`.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// One JSON value, classified from its literal; containers are split one level.
pub(crate) enum Json<'a> {
    Null,
    Bool,
    /// An integer literal (no fraction, no exponent) that fits i128.
    Int(i128),
    /// An integer literal beyond i128.
    HugeInt,
    /// A literal with a fraction or exponent.
    Float,
    Str(&'a RawValue),
    List(Vec<&'a RawValue>),
    /// Members in file order; a repeated key keeps its last value, as serde_json does.
    Object(Vec<(String, &'a RawValue)>),
}

impl<'a> Json<'a> {
    /// Classifies `raw`; `None` only for text that is not JSON (a `RawValue` always is).
    pub(crate) fn of(raw: &'a RawValue) -> Option<Self> {
        let text = raw.get().trim();
        Some(match text.as_bytes().first()? {
            b'n' => Json::Null,
            b't' | b'f' => Json::Bool,
            b'"' => Json::Str(raw),
            b'[' => Json::List(serde_json::from_str(text).ok()?),
            b'{' => Json::Object(object(text).ok()?),
            _ if text.contains(['.', 'e', 'E']) => Json::Float,
            _ => text.parse().map_or(Json::HugeInt, Json::Int),
        })
    }

    /// What kind of value it is, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Int(_) | Json::HugeInt | Json::Float => "a number",
            Json::Str(_) => "a string",
            Json::List(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// Parses one JSON object, members in file order.
pub(crate) fn object(text: &str) -> Result<Vec<(String, &RawValue)>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let members = de.deserialize_map(Members)?;
    de.end()?;
    Ok(members)
}

struct Members;

impl<'de> Visitor<'de> for Members {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Self::Value = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: &RawValue = map.next_value()?;
            match members.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => members.push((key, value)),
            }
        }
        Ok(members)
    }
}

/// Whether Float64 holds the number written as `literal` exactly: an integer literal must come
/// back digit for digit; a literal with a fraction or exponent must be finite (its nearest
/// double is what JSON readers agree a decimal fraction means).
pub(crate) fn fits_f64(literal: &str, integer: bool) -> bool {
    // Every integer up to 2^53 is a double: no formatting for the common case (this runs per
    // value of a Float64 column).
    if integer
        && literal
            .parse::<i64>()
            .is_ok_and(|i| i.unsigned_abs() <= 1 << 53)
    {
        return true;
    }
    let Ok(v) = literal.parse::<f64>() else {
        return false;
    };
    // `{:.0}` prints a double's exact integer value, every digit.
    v.is_finite() && (!integer || format!("{v:.0}") == literal)
}

/// 10^p: integers below it in magnitude fit a Decimal128 of precision `p` and scale 0.
pub(crate) fn decimal_limit(precision: u8) -> i128 {
    10i128.pow(u32::from(precision.min(38)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> String {
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        match Json::of(raw).unwrap() {
            Json::Int(i) => format!("int {i}"),
            other => {
                other.kind().to_string()
                    + if matches!(other, Json::HugeInt) {
                        " (huge)"
                    } else {
                        ""
                    }
            }
        }
    }

    #[test]
    fn integers_of_any_size_stay_integers() {
        assert_eq!(class("18446744073709551617"), "int 18446744073709551617");
        assert_eq!(
            class("-170141183460469231731687303715884105728"),
            format!("int {}", i128::MIN)
        );
        assert_eq!(
            class("1701411834604692317316873037158841057280"),
            "a number (huge)"
        );
        assert_eq!(class("1.5"), "a number");
        assert_eq!(class("1e3"), "a number");
        assert_eq!(class(" \"x\""), "a string");
    }

    #[test]
    fn objects_keep_file_order_and_the_last_repeated_key() {
        let members = object(r#"{"b":1,"a":[1,2],"b":"x"}"#).unwrap();
        let keys: Vec<_> = members.iter().map(|(k, v)| (k.as_str(), v.get())).collect();
        assert_eq!(keys, [("b", "\"x\""), ("a", "[1,2]")]);
        assert!(object("[1]").is_err());
        assert!(object("{\"a\":1} x").is_err());
    }

    #[test]
    fn float64_exactness_is_judged_on_the_literal() {
        assert!(fits_f64("9007199254740992", true));
        assert!(!fits_f64("9007199254740993", true));
        assert!(fits_f64(
            "1393796574908163946345982392040522594123776",
            true
        )); // 2^140
        assert!(!fits_f64("18446744073709551617", true));
        assert!(fits_f64("0.1", false));
        assert!(!fits_f64("1e400", false));
        assert!(fits_f64("-0", true));
    }
}
