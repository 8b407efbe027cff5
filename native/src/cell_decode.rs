//! Native twin of `formats/scylla.py` for ScyllaDB's legacy output format (Connect JSON with
//! schemas): a `CellPlan` reads a topic's messages that start with the schema bytes of one the
//! Python decoder decoded, and makes of each the `CellRecord` that `CellRun.from_changes` makes
//! of the Python `CellChange` (`cell_record.rs`), with the interpreter lock released.
//!
//! Python stays the reference. A message is *declined* (left to the Python decoder, with its
//! DLQ records) unless it is exactly understood: another schema, a null key or value, an op
//! other than `c`/`u`/`d`, a snapshot, JSON that orjson would refuse or read otherwise (repeated
//! names, numbers out of range, lone surrogates), a value that does not convert exactly as
//! `schemas/cql_types.py` converts it, or one without a native text (`CellText::of`).
//! `tests/unit/test_native_cell_decode.py` compares the two.

use std::borrow::Cow;
use std::fmt;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use serde::de::{Deserialize, DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::calendar::datetime_from_micros;
use crate::cell_record::{CellRecord, CellRun, CellText, ChangeKind, Origin, WrittenCell};
use crate::copy_text::{key_json, write_field};
use crate::fetch::{Fetched, Readable};
use crate::json::{json_float, json_int, json_str, payload_after, Members, Text};
use crate::FastPlan;
use crate::values::{Kind, Val};

/// Decimals of this many digits or more have no native form (`cell_record.rs` `decimal_val`).
const DECIMAL_LIMIT: i128 = 10i128.pow(38);
/// `Decimal.quantize` refuses a coefficient of more digits than the context's precision (28).
const QUANTIZE_LIMIT: i128 = 10i128.pow(28);

/// How one column's JSON value converts: the converter of `schemas/cql_types.py` it mirrors.
enum CellType {
    /// `int_range`, `to_bool`, `to_str`, `decode_base64`, `days_to_date`: as `values::Kind`.
    Plain(Kind),
    /// `to_float`: a JSON float, or a JSON integer made a float.
    Float,
    /// `_decimal_text`: `pg_numeric(Decimal(text))`.
    Decimal,
    /// `_millis_to_timestamptz`: ms since the epoch → UTC.
    Timestamp,
}

impl CellType {
    /// `(name, parameter)`: `values::Kind`'s names, and `float`, `decimal_text`, `timestamp_ms`.
    fn from_spec(spec: &Bound<'_, PyAny>) -> PyResult<CellType> {
        let (name, param): (String, i64) = spec.extract()?;
        Ok(match name.as_str() {
            "float" => CellType::Float,
            "decimal_text" => CellType::Decimal,
            "timestamp_ms" => CellType::Timestamp,
            "int" | "bool" | "str" | "bytes" | "date" => CellType::Plain(Kind::from_spec(spec)?),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "no native cell type {name:?} ({param})"
                )))
            }
        })
    }

    /// The value of a non-null JSON value; None where the converter raises or may differ.
    fn read<'a>(&self, raw: &'a RawValue) -> Option<Val<'a>> {
        let text = raw.get();
        match self {
            CellType::Plain(kind) => kind.read(raw),
            CellType::Float if text.contains(['.', 'e', 'E']) => json_float(text).map(Val::Float),
            // orjson reads an integer as an int, which `float()` rounds (to even), as `as` does
            CellType::Float => Some(Val::Float(json_int(text)? as f64)),
            CellType::Decimal => decimal_of(&json_str(raw)?),
            CellType::Timestamp => {
                let ms = i64::try_from(json_int(text)?).ok()?;
                let (date, clock) = datetime_from_micros(i128::from(ms) * 1000)?;
                Some(Val::DateTime(date, clock))
            }
        }
    }
}

/// `pg_numeric(Decimal(text))` for the plain spellings (`[+-]digits[.digits][e[+-]digits]`,
/// ASCII); None for any other (whitespace, underscores, NaN, ...), and where Python refuses it
/// or `cell_record.rs` has no native form (38 digits or more).
fn decimal_of(text: &str) -> Option<Val<'static>> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], exponent_of(&rest[at + 1..])?),
        None => (rest, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = || whole.bytes().chain(fraction.bytes());
    if mantissa.is_empty() || mantissa == "." || !digits().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut unscaled: i128 = 0;
    for digit in digits() {
        unscaled = unscaled.checked_mul(10)?.checked_add(i128::from(digit - b'0'))?;
    }
    if unscaled >= DECIMAL_LIMIT {
        return None;
    }
    let mut exponent = exponent - fraction.len() as i64;
    if exponent > 0 {
        // Postgres keeps no negative scale: `pg_numeric` quantizes to a whole number
        if unscaled != 0 {
            for _ in 0..exponent {
                unscaled *= 10;
                if unscaled >= QUANTIZE_LIMIT {
                    return None;
                }
            }
        }
        exponent = 0;
    }
    Some(Val::Decimal {
        unscaled: if negative { -unscaled } else { unscaled },
        scale: -exponent,
    })
}

/// A decimal's exponent: an optional sign and up to 9 digits.
fn exponent_of(text: &str) -> Option<i64> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i64 = digits.parse().ok()?;
    Some(if text.starts_with('-') { -value } else { value })
}

/// A JSON value orjson reads too: numbers within a double's range, strings without lone
/// surrogates (serde_json's checks, with `float_roundtrip`, are orjson's).
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: Error>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E: Error>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E: Error>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E: Error>(self, v: f64) -> Result<Strict, E> {
        if v.is_finite() {
            Ok(Strict)
        } else {
            Err(E::custom("infinite"))
        }
    }
    fn visit_str<E: Error>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E: Error>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Strict, M::Error> {
        while map.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

/// A `Strict` object, or null: a row image the change does not use (`_image`).
struct UnusedImage;

impl<'de> Deserialize<'de> for UnusedImage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Option::<StrictObject>::deserialize(deserializer).map(|_| UnusedImage)
    }
}

struct StrictObject;

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(StrictVisitor)
            .map(|_| StrictObject)
    }
}

/// The error that declines a message (its text is never read).
fn declined<E: Error>() -> E {
    E::custom("declined")
}

/// The member names of one object read so far: orjson keeps the last of a repeated name, which
/// is declined. The first names borrowed from the message need no allocation.
struct Names<'a> {
    borrowed: [&'a str; 16],
    count: usize,
    others: Vec<Cow<'a, str>>,
}

impl<'a> Names<'a> {
    fn new() -> Self {
        Names {
            borrowed: [""; 16],
            count: 0,
            others: Vec::new(),
        }
    }

    /// `name` was not seen before in its object (and now is).
    fn first(&mut self, name: &Cow<'a, str>) -> bool {
        if self.borrowed[..self.count].contains(&&**name) || self.others.contains(name) {
            return false;
        }
        match name {
            Cow::Borrowed(text) if self.count < self.borrowed.len() => {
                self.borrowed[self.count] = text;
                self.count += 1;
            }
            _ => self.others.push(name.clone()),
        }
        true
    }
}

/// What a change uses of its payload, read in one pass: `source` and `before` are checked
/// as they are read, every other member is `Strict`; `after` is kept unparsed until `op` (which
/// follows it) says how to read it.
struct Payload<'a> {
    op: Option<Cow<'a, str>>,
    /// `source.ts_us` of a ScyllaDB `source` block that is not a snapshot's.
    ts_us: Option<i64>,
    after: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Payload<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PayloadVisitor(std::marker::PhantomData))
    }
}

struct PayloadVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for PayloadVisitor<'a> {
    type Value = Payload<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a payload")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Payload<'a>, M::Error> {
        let mut names = Names::new();
        let mut payload = Payload {
            op: None,
            ts_us: None,
            after: None,
        };
        while let Some(Text(name)) = map.next_key()? {
            if !names.first(&name) {
                return Err(declined());
            }
            match &*name {
                "op" => payload.op = Some(map.next_value::<Text>()?.0),
                "source" => payload.ts_us = Some(map.next_value::<WriteTime>()?.0),
                "before" => drop(map.next_value::<UnusedImage>()?),
                "after" => payload.after = Some(map.next_value()?),
                "ddl" | "tableChanges" => return Err(declined()), // Python skips those
                _ => drop(map.next_value::<Strict>()?),
            }
        }
        Ok(payload)
    }
}

/// `source.ts_us` of a ScyllaDB `source` block that is not a snapshot's.
struct WriteTime(i64);

impl<'de> Deserialize<'de> for WriteTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(WriteTimeVisitor)
    }
}

struct WriteTimeVisitor;

impl<'de> Visitor<'de> for WriteTimeVisitor {
    type Value = WriteTime;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a source block")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<WriteTime, M::Error> {
        let mut names = Names::new();
        let (mut scylla, mut ts_us) = (false, None);
        while let Some(Text(name)) = map.next_key()? {
            if !names.first(&name) {
                return Err(declined());
            }
            match &*name {
                "connector" => scylla = map.next_value::<Text>()?.0 == "scylla",
                "ts_us" => ts_us = Some(map.next_value::<&RawValue>()?),
                // `is_snapshot`: anything else makes a snapshot change, which Python decodes
                "snapshot" => {
                    let raw: &RawValue = map.next_value()?;
                    if !matches!(raw.get(), "null" | "false" | "\"false\"") {
                        return Err(declined());
                    }
                }
                _ => drop(map.next_value::<Strict>()?),
            }
        }
        let ts_us = ts_us.and_then(|raw| i64::try_from(json_int(raw.get())?).ok());
        match ts_us {
            Some(ts_us) if scylla => Ok(WriteTime(ts_us)),
            _ => Err(declined()),
        }
    }
}

/// A write's `after` image (`_legacy_cells`): the value of each regular column's cell, read in
/// one pass (a cell is `{"value": ...}`, or null when untouched; every other member `Strict`).
struct AfterSeed<'p>(&'p [Regular]);

/// A regular column's cell in an `after` image: None: no cell, Some(None): null (untouched),
/// Some(Some(value)): the cell's value, unparsed.
type Slot<'a> = Option<Option<&'a RawValue>>;

impl<'de, 'p> DeserializeSeed<'de> for AfterSeed<'p> {
    type Value = Vec<Slot<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, 'p> Visitor<'de> for AfterSeed<'p> {
    type Value = Vec<Slot<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row image")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut slots: Vec<Slot<'de>> = vec![None; self.0.len()];
        let mut others = Names::new();
        while let Some(Text(name)) = map.next_key()? {
            match self.0.iter().position(|c| c.name == name) {
                Some(column) if slots[column].is_none() => {
                    slots[column] = Some(map.next_value::<Option<Cell>>()?.map(|cell| cell.0));
                }
                Some(_) => return Err(declined()),
                // a key column, or a column of no schema: unused
                None if others.first(&name) => drop(map.next_value::<Strict>()?),
                None => return Err(declined()),
            }
        }
        Ok(slots)
    }
}

/// A cell's value: the `value` member of an object whose other members are `Strict`.
struct Cell<'a>(&'a RawValue);

impl<'de: 'a, 'a> Deserialize<'de> for Cell<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(CellVisitor(std::marker::PhantomData))
    }
}

struct CellVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for CellVisitor<'a> {
    type Value = Cell<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a cell")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Cell<'a>, M::Error> {
        let mut value = None;
        let mut others = Names::new();
        while let Some(Text(name)) = map.next_key()? {
            if name == "value" && value.is_none() {
                value = Some(map.next_value()?);
            } else if name != "value" && others.first(&name) {
                map.next_value::<Strict>()?;
            } else {
                return Err(declined());
            }
        }
        value.map(Cell).ok_or_else(declined)
    }
}

/// An object's members, each name once (orjson keeps the last of a repeated name: declined).
fn members(raw: &str) -> Option<Members<'_>> {
    let members: Members = serde_json::from_str(raw).ok()?;
    let names = &members.0;
    let distinct = names
        .iter()
        .enumerate()
        .all(|(i, (name, _))| names[..i].iter().all(|(other, _)| other != name));
    distinct.then_some(members)
}

/// A row image the change does not use, if any, is null or a `Strict` object (`_image`).
fn unused_image(raw: Option<&RawValue>) -> Option<()> {
    match raw {
        None => Some(()),
        Some(raw) => serde_json::from_str::<UnusedImage>(raw.get())
            .ok()
            .map(|_| ()),
    }
}

struct Regular {
    name: String,
    kind: CellType,
    /// Its Postgres type is `timestamptz`.
    zoned: bool,
}

/// What a record keeps of its message to decode it again in Python (`CellRun.changes`): the
/// key's and the value's payloads, without the plan's schema bytes.
#[derive(Clone)]
pub(crate) struct Kept {
    /// The key's payload, then the value's.
    payloads: Box<[u8]>,
    key_len: usize,
}

impl Kept {
    fn of(key: &str, value: &str) -> Kept {
        let mut payloads = Vec::with_capacity(key.len() + value.len());
        payloads.extend_from_slice(key.as_bytes());
        payloads.extend_from_slice(value.as_bytes());
        Kept {
            payloads: payloads.into_boxed_slice(),
            key_len: key.len(),
        }
    }
}

/// The plan of one topic's legacy messages of one value and key schema.
#[pyclass(frozen, module = "cdc_native")]
pub(crate) struct CellPlan {
    value_prefix: Vec<u8>,
    key_prefix: Vec<u8>,
    state_prefix: String,
    key_kinds: Vec<Kind>,
    columns: Vec<Regular>,
    key_columns: Box<[Box<str>]>,
    column_names: Box<[Box<str>]>,
    /// The Python `TableSchema` of the changes (`CellRun.schema`).
    schema: PyObject,
    /// `decode(topic, partition, offset, key, value)` → the Python decoder's `CellChange`.
    decode: PyObject,
}

#[pymethods]
impl CellPlan {
    /// `key`: `(name, kind)` of the key columns in the key's order (integers and text only);
    /// `columns`: `(name, kind, zoned)` of the regular columns in the schema's order. A kind
    /// is `(name, parameter)`: `int` (bits), `bool`, `str`, `bytes`, `date`, `float`,
    /// `decimal_text`, `timestamp_ms`. `state_prefix` starts every state key of the table.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        value_prefix: Vec<u8>,
        key_prefix: Vec<u8>,
        state_prefix: String,
        key: Vec<(String, Bound<'_, PyAny>)>,
        columns: Vec<(String, Bound<'_, PyAny>, bool)>,
        schema: PyObject,
        decode: PyObject,
    ) -> PyResult<Self> {
        let mut key_columns = Vec::with_capacity(key.len());
        let mut key_kinds = Vec::with_capacity(key.len());
        for (name, spec) in key {
            let kind = Kind::from_spec(&spec)?;
            if !matches!(kind, Kind::Int { .. } | Kind::Str) {
                return Err(PyValueError::new_err(format!(
                    "key column {name:?}: only integer and text keys are native"
                )));
            }
            key_columns.push(name.into_boxed_str());
            key_kinds.push(kind);
        }
        let columns = columns
            .into_iter()
            .map(|(name, spec, zoned)| {
                Ok(Regular {
                    kind: CellType::from_spec(&spec)?,
                    name,
                    zoned,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        if columns.len() > usize::from(u16::MAX) {
            return Err(PyValueError::new_err("too many columns"));
        }
        Ok(CellPlan {
            value_prefix,
            key_prefix,
            state_prefix,
            key_kinds,
            column_names: columns.iter().map(|c| c.name.clone().into()).collect(),
            columns,
            key_columns: key_columns.into_boxed_slice(),
            schema,
            decode,
        })
    }

    /// The records of the messages this plan reads, as one `CellRun` per shard (`crc32` of the
    /// state key), None for a shard without any; and `(position, None)` of every message it
    /// declines, in order. `fetched`, `base`, `shards` and `indexes` as `FastPlan.decode_runs`.
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (fetched, base, shards, indexes=None))]
    fn decode_runs(
        slf: &Bound<'_, Self>,
        fetched: &Bound<'_, Fetched>,
        base: u32,
        shards: u32,
        indexes: Option<Vec<u32>>,
    ) -> PyResult<(Vec<Option<CellRun>>, Vec<(u32, Option<PyObject>)>)> {
        let py = slf.py();
        let plan = slf.get();
        let batch = fetched.get();
        let indexes = indexes.unwrap_or_else(|| (0..batch.count() as u32).collect());
        if shards == 0 || indexes.iter().any(|&i| i as usize >= batch.count()) {
            return Err(PyValueError::new_err("decode_runs: inconsistent arguments"));
        }
        let Readable {
            indexes: readable,
            messages,
            others,
        } = batch.readable(indexes, base);
        let mut declined: Vec<_> = others.into_iter().map(|position| (position, None)).collect();
        let messages: Vec<(&[u8], &[u8])> = messages.iter().map(|(v, k)| (&**v, *k)).collect();
        let partition = batch.partition();
        let read = py.allow_threads(|| {
            FastPlan::read_all(&messages, |i, value, key| {
                let index = readable[i];
                let offset = batch.offset_of(index as usize);
                plan.record(value, key, base + index, partition, offset)
            })
        });
        let mut shard_records: Vec<Vec<(CellRecord, Kept)>> =
            (0..shards).map(|_| Vec::new()).collect();
        for (i, read) in read.into_iter().enumerate() {
            match read {
                Some((record, kept)) => {
                    let shard = crc32fast::hash(&record.row_id) % shards;
                    shard_records[shard as usize].push((record, kept));
                }
                None => declined.push((base + readable[i], None)),
            }
        }
        declined.sort_unstable_by_key(|(position, _)| *position);
        let runs = shard_records
            .into_iter()
            .map(|read| (!read.is_empty()).then(|| plan.run(slf, batch, read)))
            .collect();
        Ok((runs, declined))
    }
}

impl CellPlan {
    /// The record of one message and what it keeps of it; None: declined.
    fn record(
        &self,
        value: &[u8],
        key: &[u8],
        position: u32,
        partition: i32,
        offset: i64,
    ) -> Option<(CellRecord, Kept)> {
        let payload_text = payload_after(value, &self.value_prefix)?;
        let key_text = payload_after(key, &self.key_prefix)?;
        let payload: Payload = serde_json::from_str(payload_text).ok()?;
        let (kind, marker) = match &*payload.op? {
            "c" => (ChangeKind::Write, true),
            "u" => (ChangeKind::Write, false),
            "d" => (ChangeKind::RowDelete, false),
            _ => return None,
        };
        let ts_us = payload.ts_us?;
        let key = self.key(key_text)?;
        let cells = match kind {
            ChangeKind::RowDelete => {
                unused_image(payload.after)?;
                Vec::new()
            }
            ChangeKind::Write => self.cells(payload.after?)?,
        };
        let key_json = key_json(&key)?;
        let key_copy = key
            .iter()
            .map(|v| {
                // `CellText::of(v, false).copy`: a key value (integer or text) always has a tie
                let mut copy = String::new();
                write_field(&mut copy, v).then(|| copy.into_boxed_str())
            })
            .collect::<Option<Box<[Box<str>]>>>()?;
        let mut row_id = Vec::with_capacity(self.state_prefix.len() + key_json.len());
        row_id.extend_from_slice(self.state_prefix.as_bytes());
        row_id.extend_from_slice(key_json.as_bytes());
        let record = CellRecord {
            position,
            partition,
            offset,
            kind,
            ts_us,
            marker,
            marker_expires_us: 0,
            row_id: row_id.into_boxed_slice(),
            key_json: key_json.into_boxed_str(),
            key_copy,
            cells,
        };
        Some((record, Kept::of(key_text, payload_text)))
    }

    /// The key's values: its members are the plan's key columns, in order, none null.
    fn key<'a>(&self, text: &'a str) -> Option<Vec<Val<'a>>> {
        let key = members(text)?;
        if key.0.len() != self.key_columns.len() {
            return None;
        }
        key.0
            .iter()
            .zip(self.key_columns.iter().zip(&self.key_kinds))
            .map(|((name, raw), (wanted, kind))| {
                if name != &**wanted || raw.get() == "null" {
                    None
                } else {
                    kind.read(raw)
                }
            })
            .collect()
    }

    /// The cells a write's `after` image shows (`_legacy_cells`), in the columns' order.
    fn cells(&self, after: &RawValue) -> Option<Vec<WrittenCell>> {
        if after.get() == "null" {
            return None; // missing_after
        }
        let slots = AfterSeed(&self.columns)
            .deserialize(&mut serde_json::Deserializer::from_str(after.get()))
            .ok()?;
        let mut cells =
            Vec::with_capacity(slots.iter().filter(|s| matches!(s, Some(Some(_)))).count());
        for (column, (regular, slot)) in self.columns.iter().zip(slots).enumerate() {
            let Some(Some(value)) = slot else { continue }; // no cell, or untouched
            let value = match value.get() {
                "null" => None,
                _ => Some(CellText::of(&regular.kind.read(value)?, regular.zoned)?),
            };
            cells.push(WrittenCell {
                column: column as u16,
                value,
                expires_us: 0,
            });
        }
        Some(cells)
    }

    fn run(&self, slf: &Bound<'_, Self>, batch: &Fetched, read: Vec<(CellRecord, Kept)>) -> CellRun {
        let py = slf.py();
        let (records, messages) = read.into_iter().unzip();
        CellRun {
            topic: batch.topic().clone_ref(py),
            schema: self.schema.clone_ref(py),
            key_columns: self.key_columns.clone(),
            columns: self.column_names.clone(),
            records,
            origin: Origin::Read {
                plan: slf.clone().unbind(),
                messages,
            },
        }
    }

    /// The Python decoder's change of a record's message (`CellRun.changes`).
    pub(crate) fn change(
        &self,
        py: Python<'_>,
        topic: &Py<PyString>,
        record: &CellRecord,
        kept: &Kept,
    ) -> PyResult<PyObject> {
        let (key, value) = kept.payloads.split_at(kept.key_len);
        let key = [&self.key_prefix[..], key, b"}"].concat();
        let value = [&self.value_prefix[..], value, b"}"].concat();
        let args = (
            topic.clone_ref(py),
            record.partition,
            record.offset,
            PyBytes::new(py, &key),
            PyBytes::new(py, &value),
        );
        self.decode.call1(py, args)
    }
}
