//! Reading Debezium JSON envelopes: the payload in one pass, row images and keys as members with
//! unparsed values, and the scalar forms the converters accept.

use std::borrow::Cow;

use serde::de::{Deserializer, Error, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::version::Source;

/// The envelope's payload, read in one pass (row images as unparsed members).
#[derive(Deserialize)]
pub struct Payload<'a> {
    /// Never used, but read: a delete's image must be an object or null, as Python requires.
    #[allow(dead_code)]
    #[serde(borrow, default)]
    pub before: Option<Members<'a>>,
    /// Kept as JSON: a record of a run keeps it to make its values later.
    #[serde(borrow, default)]
    pub after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub source: Option<Source<'a>>,
    #[serde(borrow, default)]
    pub op: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    pub ddl: bool,
    #[serde(default, rename = "tableChanges", deserialize_with = "present")]
    pub table_changes: bool,
}

/// A field that is there, whatever its value (even null): Python tests `"ddl" in payload`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer)?;
    Ok(true)
}

/// A JSON object's members in document order, values unparsed. A repeated name keeps every
/// occurrence; `get` takes the last, as Python's `dict` does.
pub struct Members<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for MembersVisitor<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members<'a>, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Text(name)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor(std::marker::PhantomData))
    }
}

/// The JSON between a known envelope prefix and the envelope's closing brace.
pub fn payload_after<'a>(raw: &'a [u8], prefix: &[u8]) -> Option<&'a str> {
    if raw.len() <= prefix.len() || !raw.starts_with(prefix) || !raw.ends_with(b"}") {
        return None;
    }
    std::str::from_utf8(&raw[prefix.len()..raw.len() - 1]).ok()
}

/// A JSON integer (no fraction, no exponent) that fits 64 bits, signed or unsigned.
pub fn json_int(text: &str) -> Option<i128> {
    if text.contains(['.', 'e', 'E']) {
        return None;
    }
    if let Ok(v) = text.parse::<i64>() {
        return Some(v as i128);
    }
    text.parse::<u64>().ok().map(|v| v as i128)
}

/// A JSON number as Python's `float()` of what orjson reads (finite only).
pub fn json_float(text: &str) -> Option<f64> {
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

pub fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Text>(raw.get()).ok().map(|text| text.0)
}

/// A JSON string, borrowed from the document unless it has escapes (serde's `Cow<str>` always
/// copies it).
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON string")
            }
            fn visit_borrowed_str<E: Error>(self, text: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: Error>(self, text: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}
