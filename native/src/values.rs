//! Column kinds — the native twins of the converters in `schemas/debezium_types.py` — and the
//! values they read from JSON, which become Python objects and `COPY` text. Reading needs no
//! interpreter (it runs with the GIL released); only making Python objects does.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use pyo3::exceptions::{PyArithmeticError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDate, PyDateTime, PyString, PyTime};
use serde_json::value::RawValue;

use crate::calendar::{clock, date_from_days, datetime_from_micros, Clock, Date, DAY_US};
use crate::json::{json_float, json_int, json_str};
use crate::Fail;

const PG_INFINITY: i128 = 9_223_372_036_825_200_000;
const PG_NEG_INFINITY: i128 = -9_223_372_036_832_400_000;
const DATETIME_MAX: (Date, Clock) = (
    Date {
        year: 9999,
        month: 12,
        day: 31,
    },
    Clock {
        hour: 23,
        minute: 59,
        second: 59,
        micro: 999_999,
    },
);
const DATETIME_MIN: (Date, Clock) = (
    Date {
        year: 1,
        month: 1,
        day: 1,
    },
    Clock {
        hour: 0,
        minute: 0,
        second: 0,
        micro: 0,
    },
);

/// How one column's JSON value becomes its Python value; `Python` calls the converter itself.
pub enum Kind {
    Int { bits: u32 },
    Bool,
    Float,
    Str,
    Bytes,
    Date,
    Timestamp { multiply: i128, divide: i128 },
    Time { multiply: i128, divide: i128 },
    Decimal { scale: i64 },
    Python(PyObject),
}

impl Kind {
    /// `(name, parameter)` as in `FieldType.native`, or a Python converter.
    pub fn from_spec(spec: &Bound<'_, PyAny>) -> PyResult<Kind> {
        if spec.is_callable() {
            return Ok(Kind::Python(spec.clone().unbind()));
        }
        let (name, param): (String, i64) = spec.extract()?;
        let units = |param: i64| match param {
            1000 => Ok((1000, 1)),  // milliseconds
            1 => Ok((1, 1)),        // microseconds
            -1000 => Ok((1, 1000)), // nanoseconds
            _ => Err(PyValueError::new_err(format!("unknown time unit {param}"))),
        };
        Ok(match name.as_str() {
            "int" if (8..=64).contains(&param) => Kind::Int { bits: param as u32 },
            "bool" => Kind::Bool,
            "float" => Kind::Float,
            "str" => Kind::Str,
            "bytes" => Kind::Bytes,
            "date" => Kind::Date,
            "timestamp" => {
                let (multiply, divide) = units(param)?;
                Kind::Timestamp { multiply, divide }
            }
            "time" => {
                let (multiply, divide) = units(param)?;
                Kind::Time { multiply, divide }
            }
            "decimal" => Kind::Decimal { scale: param },
            _ => {
                return Err(PyValueError::new_err(format!(
                    "unknown native kind {name:?}"
                )))
            }
        })
    }

    /// The value of one non-null JSON value; None where the converter would raise. A kind with
    /// a Python converter defers the value to it (`Val::Deferred`).
    pub fn read<'a>(&self, raw: &'a RawValue) -> Option<Val<'a>> {
        let text = raw.get();
        let value = match self {
            Kind::Int { bits } => {
                let v = json_int(text)?;
                let half = 1i128 << (bits - 1);
                if !(-half..half).contains(&v) {
                    return None;
                }
                Val::Int(v as i64)
            }
            Kind::Bool => match text {
                "true" => Val::Bool(true),
                "false" => Val::Bool(false),
                _ => return None,
            },
            Kind::Float => Val::Float(json_float(text)?),
            Kind::Str => Val::Str(json_str(raw)?),
            Kind::Bytes => Val::Bytes(base64_of(raw)?),
            Kind::Date => Val::Date(date_from_days(json_int(text)?)?),
            Kind::Timestamp { multiply, divide } => {
                let (date, time) = match json_int(text)? {
                    PG_INFINITY => DATETIME_MAX,
                    PG_NEG_INFINITY => DATETIME_MIN,
                    v => datetime_from_micros((v * multiply).div_euclid(*divide))?,
                };
                Val::DateTime(date, time)
            }
            Kind::Time { multiply, divide } => {
                let micros = (json_int(text)? * multiply).div_euclid(*divide);
                if !(0..DAY_US).contains(&micros) {
                    return None;
                }
                Val::Time(clock(micros))
            }
            Kind::Decimal { scale } => {
                let bytes = base64_of(raw)?;
                if bytes.len() > 16 {
                    return None; // wider than 128 bits: Python's Decimal does it
                }
                let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut wide = [fill; 16];
                wide[16 - bytes.len()..].copy_from_slice(&bytes);
                Val::Decimal {
                    unscaled: i128::from_be_bytes(wide),
                    scale: *scale,
                }
            }
            Kind::Python(_) => Val::Deferred(raw),
        };
        Some(value)
    }
}

/// A column value as read.
pub enum Val<'a> {
    Null,
    Int(i64),
    Bool(bool),
    Float(f64),
    Str(Cow<'a, str>),
    Bytes(Vec<u8>),
    Date(Date),
    DateTime(Date, Clock),
    Time(Clock),
    Decimal {
        unscaled: i128,
        scale: i64,
    },
    /// For the column's Python converter, which needs the interpreter.
    Deferred(&'a RawValue),
}

impl Val<'_> {
    /// The Python object the column's converter returns for this value; a deferred value is
    /// converted by `Column::convert_deferred` instead.
    pub fn to_py<'py>(
        &self,
        py: Python<'py>,
        decimal: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyAny>, Fail> {
        Ok(match self {
            Val::Null => py.None().into_bound(py),
            Val::Int(v) => v.into_pyobject(py)?.into_any(),
            Val::Bool(v) => PyBool::new(py, *v).to_owned().into_any(),
            Val::Float(v) => v.into_pyobject(py)?.into_any(),
            Val::Str(v) => PyString::new(py, v).into_any(),
            Val::Bytes(v) => PyBytes::new(py, v).into_any(),
            Val::Date(d) => PyDate::new(py, d.year, d.month, d.day)
                .map_err(declined)?
                .into_any(),
            Val::DateTime(d, t) => PyDateTime::new(
                py, d.year, d.month, d.day, t.hour, t.minute, t.second, t.micro, None,
            )
            .map_err(declined)?
            .into_any(),
            Val::Time(t) => PyTime::new(py, t.hour, t.minute, t.second, t.micro, None)
                .map_err(declined)?
                .into_any(),
            Val::Decimal { unscaled, scale } => {
                decimal.call1((format!("{unscaled}E{}", -scale),))?
            }
            Val::Deferred(_) => return Err(Fail::Decline),
        })
    }
}

fn declined<E>(_: E) -> Fail {
    Fail::Decline
}

fn base64_of(raw: &RawValue) -> Option<Vec<u8>> {
    BASE64.decode(json_str(raw)?.as_bytes()).ok()
}

/// A Python converter's result; the conversion errors it may raise mean "let Python decide".
pub fn call_converter<'py>(
    py: Python<'py>,
    convert: &PyObject,
    value: Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>, Fail> {
    convert.bind(py).call1((value,)).map_err(|err| {
        let conversion = err.is_instance_of::<PyValueError>(py)
            || err.is_instance_of::<PyTypeError>(py)
            || err.is_instance_of::<PyOverflowError>(py)
            || err.is_instance_of::<PyArithmeticError>(py);
        if conversion {
            Fail::Decline
        } else {
            Fail::Py(err)
        }
    })
}
