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

use std::fmt;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::calendar::datetime_from_micros;
use crate::cell_record::{CellRecord, CellRun, CellText, ChangeKind, Origin, WrittenCell};
use crate::copy_text::key_json;
use crate::fetch::Fetched;
use crate::json::{json_float, json_int, json_str, payload_after, Members};
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
        while map.next_entry::<std::borrow::Cow<'de, str>, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

/// `raw` is JSON orjson reads (`Strict`).
fn strict(raw: &RawValue) -> Option<()> {
    serde_json::from_str::<Strict>(raw.get()).ok().map(|_| ())
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

/// A row image the change does not use: it must be null or an object (`_image`).
fn unused_image(raw: Option<&RawValue>) -> Option<()> {
    match raw {
        None => Some(()),
        Some(raw) if raw.get() == "null" => Some(()),
        Some(raw) if raw.get().starts_with('{') => strict(raw),
        Some(_) => None,
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
    key: Box<[u8]>,
    value: Box<[u8]>,
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
        let mut declined = Vec::new();
        let mut readable = Vec::with_capacity(indexes.len());
        let mut messages = Vec::with_capacity(indexes.len());
        for index in indexes {
            match batch.key_value(index as usize) {
                Some((key, value)) => {
                    readable.push(index);
                    messages.push((value, key));
                }
                None => declined.push((base + index, None)),
            }
        }
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
        let (mut op, mut source, mut before, mut after) = (None, None, None, None);
        for (name, raw) in members(payload_text)?.0 {
            match &*name {
                "op" => op = Some(raw),
                "source" => source = Some(raw),
                "before" => before = Some(raw),
                "after" => after = Some(raw),
                "ddl" | "tableChanges" => return None, // Python skips those
                _ => strict(raw)?,
            }
        }
        let (kind, marker) = match &*json_str(op?)? {
            "c" => (ChangeKind::Write, true),
            "u" => (ChangeKind::Write, false),
            "d" => (ChangeKind::RowDelete, false),
            _ => return None,
        };
        let ts_us = self.write_time(source?)?;
        let key = self.key(key_text)?;
        unused_image(before)?;
        let cells = match kind {
            ChangeKind::RowDelete => {
                unused_image(after)?;
                Vec::new()
            }
            ChangeKind::Write => self.cells(after?)?,
        };
        let key_json = key_json(&key)?;
        let key_copy = key
            .iter()
            .map(|v| CellText::of(v, false).map(|text| text.copy))
            .collect::<Option<Box<[Box<str>]>>>()?;
        let row_id = format!("{}{key_json}", self.state_prefix);
        let record = CellRecord {
            position,
            partition,
            offset,
            kind,
            ts_us,
            marker,
            marker_expires_us: 0,
            row_id: row_id.into_bytes().into_boxed_slice(),
            key_json: key_json.into_boxed_str(),
            key_copy,
            cells,
        };
        let kept = Kept {
            key: key_text.as_bytes().into(),
            value: payload_text.as_bytes().into(),
        };
        Some((record, kept))
    }

    /// `source.ts_us` of a ScyllaDB `source` block that is not a snapshot's.
    fn write_time(&self, source: &RawValue) -> Option<i64> {
        let (mut connector, mut ts_us) = (None, None);
        for (name, raw) in members(source.get())?.0 {
            match &*name {
                "connector" => connector = Some(raw),
                "ts_us" => ts_us = Some(raw),
                // `is_snapshot`: anything else makes a snapshot change, which Python decodes
                "snapshot" if !matches!(raw.get(), "null" | "false" | "\"false\"") => return None,
                _ => strict(raw)?,
            }
        }
        if json_str(connector?)? != "scylla" {
            return None;
        }
        i64::try_from(json_int(ts_us?.get())?).ok()
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
        let mut found: Vec<Option<&RawValue>> = vec![None; self.columns.len()];
        for (name, raw) in members(after.get())?.0 {
            match self.columns.iter().position(|c| c.name == name) {
                Some(column) => found[column] = Some(raw),
                None => strict(raw)?, // a key column, or a column of no schema: unused
            }
        }
        let mut cells = Vec::new();
        for (column, raw) in self.columns.iter().zip(&found).enumerate() {
            let (regular, Some(raw)) = raw else { continue };
            if raw.get() == "null" {
                continue; // untouched
            }
            let mut value = None;
            for (name, member) in members(raw.get())?.0 {
                if name == "value" {
                    value = Some(member);
                } else {
                    strict(member)?;
                }
            }
            let value = value?;
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
        let key = [&self.key_prefix[..], &kept.key, b"}"].concat();
        let value = [&self.value_prefix[..], &kept.value, b"}"].concat();
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
