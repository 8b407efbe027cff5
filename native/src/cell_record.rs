//! One change of a Cassandra-model row (`formats/cells.py`'s `CellChange`) as the native cell
//! step keeps it: what the decision needs (write time, marker, the written cells' tie-break keys)
//! and what the writer needs (the key's and the cells' `COPY` text), made once when the change is
//! read. `operators/cell_meta.py` is the reference for the tie-break keys (`tie_break`).

use std::borrow::Cow;

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyDate, PyDateAccess, PyDateTime, PyDict, PyFloat, PyInt, PyString, PyTime,
    PyTimeAccess, PyTzInfoAccess,
};

use crate::calendar::{Clock, Date};
use crate::cell_decode::{CellPlan, Kept};
use crate::copy_text::write_field;
use crate::run::{kept_since, next_offsets};
use crate::values::Val;

/// Ties of longer serializations keep this many bytes and a digest of all of them
/// (`cell_meta.MAX_TIE_BYTES`).
const MAX_TIE_BYTES: usize = 32;
const DIGEST_BYTES: usize = 8;

/// A change's kind: cells (and, for an INSERT, the row marker) written, or the row deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Write,
    RowDelete,
}

/// One cell a change writes.
#[derive(Clone, Debug)]
pub(crate) struct WrittenCell {
    /// Index into its run's column names.
    pub column: u16,
    /// None: the cell is set to null (a cell tombstone).
    pub value: Option<CellText>,
    /// When the cell expires (µs since the epoch), 0 for no TTL.
    pub expires_us: i64,
}

/// A written value as the decision and the writer use it.
#[derive(Clone, Debug)]
pub(crate) struct CellText {
    /// `cell_meta.tie_break` of the value: the hex of its Cassandra serialization.
    pub tie: Box<str>,
    /// The value's `COPY` text field (escaped), as psycopg writes the Python value.
    pub copy: Box<str>,
}

/// One change of one row (a write or a row delete; partition and range deletes are not
/// records: they cover many rows).
#[derive(Clone, Debug)]
pub(crate) struct CellRecord {
    /// Its place in the decode step's batch (orders it among that batch's other items).
    pub position: u32,
    pub partition: i32,
    pub offset: i64,
    pub kind: ChangeKind,
    /// The write time (`source.ts_us`) of every cell, of the marker, of the tombstone.
    pub ts_us: i64,
    /// An INSERT: the change writes the row marker.
    pub marker: bool,
    /// When an INSERT's marker expires (µs), 0 for no TTL.
    pub marker_expires_us: i64,
    /// `operators.keys.state_key(table, key)`.
    pub row_id: Box<[u8]>,
    /// `operators.keys.key_json(key)` as text (`cdc.cell_tombstones.key`).
    pub key_json: Box<str>,
    /// The key values' `COPY` text fields, in the run's key column order.
    pub key_copy: Box<[Box<str>]>,
    pub cells: Vec<WrittenCell>,
}

impl CellText {
    /// The text of `value` for a column whose Postgres type is `timestamptz` when `zoned` (a
    /// `DateTime` is then UTC); None where the value has no native text (Python handles it).
    pub(crate) fn of(value: &Val, zoned: bool) -> Option<CellText> {
        let mut copy = String::new();
        if !write_field(&mut copy, value) || matches!(value, Val::Null) {
            return None;
        }
        if zoned && matches!(value, Val::DateTime(..)) {
            copy.push_str("+00:00");
        }
        Some(CellText {
            tie: tie_break(value)?.into_boxed_str(),
            copy: copy.into_boxed_str(),
        })
    }
}

/// `cell_meta.tie_break`: the hex of `serialized(value)`, or of its first `MAX_TIE_BYTES` bytes
/// followed by a blake2b digest (8 bytes) of all of it.
pub(crate) fn tie_break(value: &Val) -> Option<String> {
    let raw = serialized(value)?;
    if raw.len() <= MAX_TIE_BYTES {
        let mut out = String::with_capacity(2 * raw.len()); // exact: boxed without a copy
        hex(&mut out, &raw);
        return Some(out);
    }
    let mut out = String::with_capacity(2 * (MAX_TIE_BYTES + DIGEST_BYTES));
    hex(&mut out, &raw[..MAX_TIE_BYTES]);
    hex(&mut out, &digest(&raw));
    Some(out)
}

fn digest(raw: &[u8]) -> [u8; DIGEST_BYTES] {
    use blake2::digest::{Update, VariableOutput};
    let mut hasher = blake2::Blake2bVar::new(DIGEST_BYTES).expect("8 is a valid blake2b size");
    hasher.update(raw);
    let mut out = [0u8; DIGEST_BYTES];
    hasher
        .finalize_variable(&mut out)
        .expect("the buffer has the digest's size");
    out
}

fn hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// `cell_meta.serialized`: the bytes Cassandra compares when two values of a cell tie on write
/// time. None for a value without a native form.
pub(crate) fn serialized(value: &Val) -> Option<Vec<u8>> {
    Some(match value {
        Val::Null | Val::Deferred(_) => return None,
        Val::Bool(v) => vec![u8::from(*v)],
        Val::Int(v) => v.to_be_bytes().to_vec(),
        Val::Float(v) => v.to_be_bytes().to_vec(),
        Val::Str(v) => v.as_bytes().to_vec(),
        Val::Bytes(v) => v.clone(),
        Val::Decimal { unscaled, scale } => decimal_bytes(*unscaled, *scale)?,
        Val::DateTime(date, clock) => {
            let micros = days_of(*date) * 86_400_000_000 + micros_of(*clock);
            i64::try_from(micros.div_euclid(1000)).ok()?.to_be_bytes().to_vec()
        }
        Val::Date(date) => u32::try_from(days_of(*date) + (1 << 31))
            .ok()?
            .to_be_bytes()
            .to_vec(),
        Val::Time(clock) => (micros_of(*clock) as i64 * 1000).to_be_bytes().to_vec(),
    })
}

/// DecimalType: the scale (4 bytes) then the unscaled value in its shortest two's complement.
fn decimal_bytes(unscaled: i128, scale: i64) -> Option<Vec<u8>> {
    let mut out = i32::try_from(scale).ok()?.to_be_bytes().to_vec();
    let magnitude = if unscaled < 0 { !unscaled } else { unscaled };
    let bits = 128 - magnitude.leading_zeros() as usize;
    let size = bits / 8 + 1;
    out.extend_from_slice(&unscaled.to_be_bytes()[16 - size..]);
    Some(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_of(date: Date) -> i128 {
    let year = i128::from(date.year) - i128::from(date.month <= 2);
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i128::from(date.month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5
        + i128::from(date.day)
        - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn micros_of(clock: Clock) -> i128 {
    ((i128::from(clock.hour) * 60 + i128::from(clock.minute)) * 60 + i128::from(clock.second))
        * 1_000_000
        + i128::from(clock.micro)
}

/// How Python gets a run's `CellChange`s back (`CellRun.changes`), for its reference path.
pub(crate) enum Origin {
    /// The Python changes the run was made of, one per record.
    Changes(Vec<PyObject>),
    /// What a `CellPlan` kept of each record's message, which Python decodes again.
    Read {
        plan: Py<CellPlan>,
        messages: Vec<Kept>,
    },
}

/// A run of cell records: changes of one table, of one schema, for one shard, in arrival order.
#[pyclass(frozen, module = "cdc_native")]
pub(crate) struct CellRun {
    pub topic: Py<PyString>,
    /// The changes' Python `TableSchema` (their target table is found by it).
    pub schema: PyObject,
    /// `CellChange.key_columns`: the order of `CellRecord.key_copy`.
    pub key_columns: Box<[Box<str>]>,
    /// The table's regular columns, `WrittenCell.column`'s indexes.
    pub columns: Box<[Box<str>]>,
    pub records: Vec<CellRecord>,
    pub origin: Origin,
}

/// One record as `CellRun.records` shows it: (position, partition, offset, row delete?,
/// ts_us, marker?, marker_expires_us, row_id, key_json, key_copy, cells), each cell
/// (column, tie or None, COPY text or None, expires_us).
type RecordView<'py> = (
    u32,
    i32,
    i64,
    bool,
    i64,
    bool,
    i64,
    Bound<'py, PyBytes>,
    &'py str,
    Vec<&'py str>,
    Vec<(&'py str, Option<&'py str>, Option<&'py str>, i64)>,
);

#[pymethods]
impl CellRun {
    /// The run of `changes`: writes and row deletes of one table, of one `schema`, in arrival
    /// order (each change's `row_id` and `schema` set). None when a change has a value without
    /// a native form (Python decides those).
    #[staticmethod]
    fn from_changes(py: Python<'_>, changes: Vec<Bound<'_, PyAny>>) -> PyResult<Option<CellRun>> {
        let Some(first) = changes.first() else {
            return Err(PyValueError::new_err("a run needs at least one change"));
        };
        let schema = first.getattr(intern!(py, "schema"))?;
        let key_columns: Vec<String> = first.getattr(intern!(py, "key_columns"))?.extract()?;
        let mut columns: Vec<Box<str>> = Vec::new();
        let mut zoned: Vec<bool> = Vec::new();
        for column in schema.getattr(intern!(py, "columns"))?.try_iter()? {
            let column = column?;
            let name: String = column.getattr(intern!(py, "name"))?.extract()?;
            if key_columns.contains(&name) {
                continue;
            }
            let pg_type: String = column.getattr(intern!(py, "pg_type"))?.extract()?;
            zoned.push(pg_type == "timestamptz");
            columns.push(name.into_boxed_str());
        }
        let key_zoned: Vec<bool> = key_columns
            .iter()
            .map(|k| column_is_zoned(&schema, k))
            .collect::<PyResult<_>>()?;
        let topic: Bound<'_, PyString> = first.getattr(intern!(py, "topic"))?.downcast_into()?;
        let mut records = Vec::with_capacity(changes.len());
        for (position, change) in changes.iter().enumerate() {
            if !change.getattr(intern!(py, "schema"))?.is(&schema) {
                return Err(PyValueError::new_err("a run's changes share one schema"));
            }
            match record_of(py, change, position as u32, &columns, &zoned, &key_zoned)? {
                Some(record) => records.push(record),
                None => return Ok(None),
            }
        }
        Ok(Some(CellRun {
            topic: topic.unbind(),
            schema: schema.unbind(),
            key_columns: key_columns.into_iter().map(String::into_boxed_str).collect(),
            columns: columns.into_boxed_slice(),
            records,
            origin: Origin::Changes(changes.into_iter().map(Bound::unbind).collect()),
        }))
    }

    fn __len__(&self) -> usize {
        self.records.len()
    }

    #[getter]
    fn topic(&self, py: Python<'_>) -> Py<PyString> {
        self.topic.clone_ref(py)
    }

    #[getter]
    fn schema(&self, py: Python<'_>) -> PyObject {
        self.schema.clone_ref(py)
    }

    /// `{(topic, partition): last offset + 1}` over the records.
    fn next_offsets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        next_offsets(self.topic.bind(py), self.records.iter().map(|r| (r.partition, r.offset)))
    }

    /// The records at or past `committed[(topic, partition)]` (0 when absent): this run when
    /// that is all of them, None when none.
    fn since(
        slf: &Bound<'_, Self>,
        committed: &Bound<'_, PyDict>,
    ) -> PyResult<Option<Py<CellRun>>> {
        let py = slf.py();
        let run = slf.get();
        let positions = run.records.iter().map(|r| (r.partition, r.offset));
        let kept = kept_since(run.topic.bind(py), positions, committed)?;
        if kept.iter().all(|k| *k) {
            return Ok(Some(slf.clone().unbind()));
        }
        if !kept.iter().any(|k| *k) {
            return Ok(None);
        }
        let records = run
            .records
            .iter()
            .zip(&kept)
            .filter(|(_, k)| **k)
            .map(|(r, _)| r.clone())
            .collect();
        let origin = match &run.origin {
            Origin::Changes(changes) => Origin::Changes(
                changes
                    .iter()
                    .zip(&kept)
                    .filter(|(_, k)| **k)
                    .map(|(c, _)| c.clone_ref(py))
                    .collect(),
            ),
            Origin::Read { plan, messages } => Origin::Read {
                plan: plan.clone_ref(py),
                messages: messages
                    .iter()
                    .zip(&kept)
                    .filter(|(_, k)| **k)
                    .map(|(m, _)| m.clone())
                    .collect(),
            },
        };
        let kept = CellRun {
            topic: run.topic.clone_ref(py),
            schema: run.schema.clone_ref(py),
            key_columns: run.key_columns.clone(),
            columns: run.columns.clone(),
            records,
            origin,
        };
        Ok(Some(Py::new(py, kept)?))
    }

    /// `(position, change)` of each record, in order: the `CellChange`s the Python path
    /// decides.
    fn changes(&self, py: Python<'_>) -> PyResult<Vec<(u32, PyObject)>> {
        match &self.origin {
            Origin::Changes(changes) => Ok(self
                .records
                .iter()
                .zip(changes)
                .map(|(r, c)| (r.position, c.clone_ref(py)))
                .collect()),
            Origin::Read { plan, messages } => self
                .records
                .iter()
                .zip(messages)
                .map(|(r, m)| Ok((r.position, plan.get().change(py, &self.topic, r, m)?)))
                .collect(),
        }
    }

    /// The records as tuples (`RecordView`), for tests.
    fn records<'py>(&'py self, py: Python<'py>) -> Vec<RecordView<'py>> {
        self.records
            .iter()
            .map(|r| {
                (
                    r.position,
                    r.partition,
                    r.offset,
                    r.kind == ChangeKind::RowDelete,
                    r.ts_us,
                    r.marker,
                    r.marker_expires_us,
                    PyBytes::new(py, &r.row_id),
                    &*r.key_json,
                    r.key_copy.iter().map(|k| &**k).collect(),
                    r.cells
                        .iter()
                        .map(|c| {
                            (
                                &*self.columns[usize::from(c.column)],
                                c.value.as_ref().map(|v| &*v.tie),
                                c.value.as_ref().map(|v| &*v.copy),
                                c.expires_us,
                            )
                        })
                        .collect(),
                )
            })
            .collect()
    }
}

fn column_is_zoned(schema: &Bound<'_, PyAny>, name: &str) -> PyResult<bool> {
    let py = schema.py();
    for column in schema.getattr(intern!(py, "columns"))?.try_iter()? {
        let column = column?;
        if column.getattr(intern!(py, "name"))?.extract::<&str>()? == name {
            return Ok(column.getattr(intern!(py, "pg_type"))?.extract::<&str>()? == "timestamptz");
        }
    }
    Ok(false)
}

/// The record of one Python `CellChange`; None when a value has no native form or the change
/// is not a write or a row delete.
fn record_of(
    py: Python<'_>,
    change: &Bound<'_, PyAny>,
    position: u32,
    columns: &[Box<str>],
    zoned: &[bool],
    key_zoned: &[bool],
) -> PyResult<Option<CellRecord>> {
    let kind = match change
        .getattr(intern!(py, "kind"))?
        .getattr(intern!(py, "value"))?
        .extract::<&str>()?
    {
        "write" => ChangeKind::Write,
        "row_delete" => ChangeKind::RowDelete,
        _ => return Ok(None),
    };
    let row_id: Vec<u8> = change.getattr(intern!(py, "row_id"))?.extract()?;
    let Some(split) = row_id.iter().position(|b| *b == 0) else {
        return Ok(None);
    };
    let Ok(key_json) = std::str::from_utf8(&row_id[split + 1..]) else {
        return Ok(None);
    };
    let key_json: Box<str> = key_json.into();
    let mut key_copy = Vec::new();
    for (value, zoned) in change.getattr(intern!(py, "key"))?.try_iter()?.zip(key_zoned) {
        match py_text(&value?, *zoned)? {
            Some(text) => key_copy.push(text.copy),
            None => return Ok(None),
        }
    }
    let expires: Bound<'_, PyDict> = change.getattr(intern!(py, "expires_us"))?.downcast_into()?;
    let mut cells = Vec::new();
    let written: Bound<'_, PyDict> = change.getattr(intern!(py, "cells"))?.downcast_into()?;
    for (name, value) in written.iter() {
        let name: &str = name.extract()?;
        let Some(column) = columns.iter().position(|c| &**c == name) else {
            return Ok(None);
        };
        let value = if value.is_none() {
            None
        } else {
            match py_text(&value, zoned[column])? {
                Some(text) => Some(text),
                None => return Ok(None),
            }
        };
        let expires_us = match expires.get_item(name)? {
            Some(e) => e.extract::<i64>()?,
            None => 0,
        };
        cells.push(WrittenCell {
            column: column as u16,
            value,
            expires_us,
        });
    }
    let marker_expires_us = change
        .getattr(intern!(py, "marker_expires_us"))?
        .extract::<Option<i64>>()?
        .unwrap_or(0);
    Ok(Some(CellRecord {
        position,
        partition: change.getattr(intern!(py, "partition"))?.extract()?,
        offset: change.getattr(intern!(py, "offset"))?.extract()?,
        kind,
        ts_us: change.getattr(intern!(py, "ts_us"))?.extract()?,
        marker: change.getattr(intern!(py, "row_marker"))?.extract()?,
        marker_expires_us,
        row_id: row_id.into_boxed_slice(),
        key_json,
        key_copy: key_copy.into_boxed_slice(),
        cells,
    }))
}

/// A Python value's `CellText` (`zoned`: its column is `timestamptz`); None for a type without
/// a native form here: collections, UUIDs, addresses, durations, a zone other than UTC.
fn py_text(value: &Bound<'_, PyAny>, zoned: bool) -> PyResult<Option<CellText>> {
    let Some(val) = py_val(value)? else {
        return Ok(None);
    };
    Ok(CellText::of(&val, zoned))
}

fn py_val<'py>(value: &Bound<'py, PyAny>) -> PyResult<Option<Val<'py>>> {
    let py = value.py();
    Ok(Some(if let Ok(v) = value.downcast_exact::<PyBool>() {
        Val::Bool(v.is_true())
    } else if value.is_exact_instance_of::<PyInt>() {
        match value.extract::<i64>() {
            Ok(v) => Val::Int(v),
            Err(_) => return Ok(None),
        }
    } else if let Ok(v) = value.downcast_exact::<PyFloat>() {
        Val::Float(v.value())
    } else if let Ok(v) = value.downcast_exact::<PyString>() {
        Val::Str(Cow::Owned(v.to_str()?.to_owned()))
    } else if let Ok(v) = value.downcast_exact::<PyBytes>() {
        Val::Bytes(v.as_bytes().to_vec())
    } else if let Ok(v) = value.downcast_exact::<PyDateTime>() {
        if let Some(zone) = v.get_tzinfo() {
            let offset = zone.call_method1(intern!(py, "utcoffset"), (v,))?;
            if !offset.call_method0(intern!(py, "total_seconds"))?.extract::<f64>()?.eq(&0.0) {
                return Ok(None);
            }
        }
        Val::DateTime(
            Date {
                year: v.get_year(),
                month: v.get_month(),
                day: v.get_day(),
            },
            Clock {
                hour: v.get_hour(),
                minute: v.get_minute(),
                second: v.get_second(),
                micro: v.get_microsecond(),
            },
        )
    } else if let Ok(v) = value.downcast_exact::<PyDate>() {
        Val::Date(Date {
            year: v.get_year(),
            month: v.get_month(),
            day: v.get_day(),
        })
    } else if let Ok(v) = value.downcast_exact::<PyTime>() {
        if v.get_tzinfo().is_some() {
            return Ok(None);
        }
        Val::Time(Clock {
            hour: v.get_hour(),
            minute: v.get_minute(),
            second: v.get_second(),
            micro: v.get_microsecond(),
        })
    } else if value.get_type().name()? == "Decimal" {
        return decimal_val(value);
    } else {
        return Ok(None);
    }))
}

/// A `decimal.Decimal` as unscaled value and scale; None for NaN, infinity or > 38 digits.
fn decimal_val<'py>(value: &Bound<'py, PyAny>) -> PyResult<Option<Val<'py>>> {
    let (sign, digits, exponent): (u8, Vec<u8>, Bound<'_, PyAny>) =
        value.call_method0(intern!(value.py(), "as_tuple"))?.extract()?;
    let Ok(exponent) = exponent.extract::<i64>() else {
        return Ok(None);
    };
    if digits.len() > 38 {
        return Ok(None);
    }
    let mut unscaled: i128 = 0;
    for digit in digits {
        unscaled = unscaled * 10 + i128::from(digit);
    }
    if sign == 1 {
        unscaled = -unscaled;
    }
    Ok(Some(Val::Decimal {
        unscaled,
        scale: -exponent,
    }))
}
