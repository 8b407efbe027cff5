//! Native fast path of `operators.decode.Decoder` for Debezium JSON change events with schemas.
//!
//! Python stays the reference: it decodes a topic's first message, derives the shape (columns,
//! Postgres types, converters) and hands this module a `FastPlan` for the topic. The plan decodes
//! the topic's next messages that look exactly like that one (same schema bytes, same key
//! columns, an insert/update/snapshot/delete with a Postgres or SQL Server version) and gives
//! back the same values the Python decoder would. Anything else — another schema, a truncate, a
//! value that does not convert, malformed JSON — is *declined* (`None`): the Python decoder then
//! handles that message, with its DLQ records and error messages. Declining is always safe;
//! accepting must give exactly what Python gives (`tests/unit/test_native_decode.py` compares
//! the two).

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use pyo3::exceptions::{PyArithmeticError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDate, PyDateTime, PyDict, PyString, PyTime, PyTuple};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a message was not decoded here: hand it to Python (`Decline`), or a real error.
enum Fail {
    Decline,
    Py(PyErr),
}

impl From<std::convert::Infallible> for Fail {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl From<PyErr> for Fail {
    fn from(err: PyErr) -> Self {
        Fail::Py(err)
    }
}

type Outcome<T> = Result<T, Fail>;

fn declined<E>(_: E) -> Fail {
    Fail::Decline
}

const PG_INFINITY: i64 = 9_223_372_036_825_200_000;
const PG_NEG_INFINITY: i64 = -9_223_372_036_832_400_000;
const DAY_US: i128 = 86_400_000_000;
const INT64_BIAS: i128 = 1 << 63;

/// How one column's JSON value becomes the Python value (the native twin of a converter in
/// `schemas/debezium_types.py`; `Python` calls that converter itself).
enum Kind {
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
    fn from_spec(spec: &Bound<'_, PyAny>) -> PyResult<Kind> {
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
}

struct Column {
    name: String,
    kind: Kind,
    /// Debezium's placeholder for an unchanged TOASTed value: as text for string and bytes
    /// columns, else as the Python object it decodes to (compared with `==`).
    toast_text: Option<String>,
    toast_object: Option<PyObject>,
}

/// What a plan needs from Python itself, looked up once.
struct PyHelpers {
    datetime_max: PyObject,
    datetime_min: PyObject,
    decimal: PyObject,
    json_loads: PyObject,
}

#[pyclass(frozen, module = "cdc_native")]
struct FastPlan {
    value_prefix: Vec<u8>,
    key_prefix: Vec<u8>,
    key_names: Vec<String>,
    key_kinds: Vec<Kind>,
    columns: Vec<Column>,
    helpers: PyHelpers,
}

#[pymethods]
impl FastPlan {
    /// `key` and `columns` hold `(name, kind)` and `(name, kind, toast placeholder or None)`;
    /// a kind is `(native kind name, parameter)` or a Python converter.
    #[new]
    fn new(
        py: Python<'_>,
        value_prefix: Vec<u8>,
        key_prefix: Vec<u8>,
        key: Vec<(String, Bound<'_, PyAny>)>,
        columns: Vec<(String, Bound<'_, PyAny>, Bound<'_, PyAny>)>,
    ) -> PyResult<Self> {
        let datetime = py.import("datetime")?.getattr("datetime")?;
        let helpers = PyHelpers {
            datetime_max: datetime.getattr("max")?.unbind(),
            datetime_min: datetime.getattr("min")?.unbind(),
            decimal: py.import("decimal")?.getattr("Decimal")?.unbind(),
            json_loads: py.import("orjson")?.getattr("loads")?.unbind(),
        };
        let mut key_names = Vec::with_capacity(key.len());
        let mut key_kinds = Vec::with_capacity(key.len());
        for (name, spec) in key {
            key_names.push(name);
            key_kinds.push(Kind::from_spec(&spec)?);
        }
        let columns = columns
            .into_iter()
            .map(|(name, spec, toast)| {
                let kind = Kind::from_spec(&spec)?;
                let (toast_text, toast_object) = if toast.is_none() {
                    (None, None)
                } else if let Ok(text) = toast.extract::<String>() {
                    (Some(text), None)
                } else if matches!(kind, Kind::Python(_)) {
                    (None, Some(toast.unbind()))
                } else {
                    return Err(PyValueError::new_err(format!(
                        "column {name:?}: a non-text TOAST placeholder needs a Python converter"
                    )));
                };
                Ok(Column {
                    name,
                    kind,
                    toast_text,
                    toast_object,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(FastPlan {
            value_prefix,
            key_prefix,
            key_names,
            key_kinds,
            columns,
            helpers,
        })
    }

    /// `(is_delete, version, key tuple, values dict or None)`, or None: let Python decode it.
    fn decode<'py>(
        &self,
        py: Python<'py>,
        value: &[u8],
        key: &[u8],
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match self.decode_message(py, value, key) {
            Ok(parts) => Ok(Some(parts)),
            Err(Fail::Decline) => Ok(None),
            Err(Fail::Py(err)) => Err(err),
        }
    }
}

/// The envelope's payload, read in one pass (row images as unparsed members).
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    before: Option<Members<'a>>,
    #[serde(borrow, default)]
    after: Option<Members<'a>>,
    #[serde(borrow, default)]
    source: Option<Source<'a>>,
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    ddl: bool,
    #[serde(default, rename = "tableChanges", deserialize_with = "present")]
    table_changes: bool,
}

#[derive(Deserialize)]
struct Source<'a> {
    #[serde(borrow, default)]
    connector: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    lsn: Option<&'a RawValue>,
    #[serde(borrow, default)]
    commit_lsn: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    change_lsn: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event_serial_no: Option<&'a RawValue>,
}

/// A field that is there, whatever its value (even null): Python tests `"ddl" in payload`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer)?;
    Ok(true)
}

/// A JSON object's members in document order, values unparsed. A repeated name keeps every
/// occurrence; `get` takes the last, as Python's `dict` does.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    fn get(&self, name: &str) -> Option<&'a RawValue> {
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
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
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
fn payload_after<'a>(raw: &'a [u8], prefix: &[u8]) -> Outcome<&'a str> {
    if raw.len() <= prefix.len() || !raw.starts_with(prefix) || !raw.ends_with(b"}") {
        return Err(Fail::Decline);
    }
    std::str::from_utf8(&raw[prefix.len()..raw.len() - 1]).map_err(declined)
}

impl FastPlan {
    fn decode_message<'py>(
        &self,
        py: Python<'py>,
        value: &[u8],
        key: &[u8],
    ) -> Outcome<Bound<'py, PyTuple>> {
        let payload: Payload =
            serde_json::from_str(payload_after(value, &self.value_prefix)?).map_err(declined)?;
        if payload.ddl || payload.table_changes {
            return Err(Fail::Decline);
        }
        let is_delete = match payload.op.as_deref() {
            Some("c" | "u" | "r") => false,
            Some("d") => true,
            _ => return Err(Fail::Decline),
        };
        let version = version_of(payload.source.as_ref().ok_or(Fail::Decline)?)?;
        let image = if is_delete {
            payload.before
        } else {
            payload.after
        };
        if image.is_none() && !is_delete {
            return Err(Fail::Decline); // an insert or update without its row image
        }
        let key_doc: Members =
            serde_json::from_str(payload_after(key, &self.key_prefix)?).map_err(declined)?;
        let key_tuple = self.key_values(py, &key_doc)?;
        let values = match (is_delete, image) {
            (false, Some(row)) => self.row_values(py, &row)?.into_any(),
            _ => py.None().into_bound(py),
        };
        let parts: [Bound<'py, PyAny>; 4] = [
            PyBool::new(py, is_delete).to_owned().into_any(),
            PyBytes::new(py, &version).into_any(),
            key_tuple.into_any(),
            values,
        ];
        Ok(PyTuple::new(py, parts)?)
    }

    fn key_values<'py>(&self, py: Python<'py>, doc: &Members) -> Outcome<Bound<'py, PyTuple>> {
        if doc.0.len() != self.key_names.len() {
            return Err(Fail::Decline);
        }
        let mut key = Vec::with_capacity(self.key_names.len());
        for ((name, raw), (wanted, kind)) in
            doc.0.iter().zip(self.key_names.iter().zip(&self.key_kinds))
        {
            if name != wanted || raw.get() == "null" {
                return Err(Fail::Decline); // other key columns, or a null key: Python decides
            }
            key.push(self.convert(py, kind, raw)?);
        }
        Ok(PyTuple::new(py, key)?)
    }

    fn row_values<'py>(&self, py: Python<'py>, row: &Members) -> Outcome<Bound<'py, PyDict>> {
        let values = PyDict::new(py);
        for column in &self.columns {
            let Some(raw) = row.get(&column.name) else {
                continue;
            };
            if raw.get() == "null" {
                values.set_item(&column.name, py.None())?;
                continue;
            }
            if let Some(toast) = &column.toast_text {
                if raw.get().starts_with('"') && json_str(raw)? == toast.as_str() {
                    continue; // unchanged TOAST value: the column keeps what it has
                }
            }
            let value = match (&column.toast_object, &column.kind) {
                (Some(toast), Kind::Python(convert)) => {
                    let loaded = self.helpers.json_loads.bind(py).call1((raw.get(),))?;
                    if loaded.eq(toast.bind(py))? {
                        continue;
                    }
                    call_converter(py, convert, loaded)?
                }
                _ => self.convert(py, &column.kind, raw)?,
            };
            values.set_item(&column.name, value)?;
        }
        Ok(values)
    }

    /// One non-null JSON value → its Python value, as the column's converter would give it.
    fn convert<'py>(
        &self,
        py: Python<'py>,
        kind: &Kind,
        raw: &RawValue,
    ) -> Outcome<Bound<'py, PyAny>> {
        let text = raw.get();
        Ok(match kind {
            Kind::Int { bits } => {
                let v = json_int(text)?;
                let half = 1i128 << (bits - 1);
                if !(-half..half).contains(&v) {
                    return Err(Fail::Decline);
                }
                (v as i64).into_pyobject(py)?.into_any()
            }
            Kind::Bool => match text {
                "true" => PyBool::new(py, true).to_owned().into_any(),
                "false" => PyBool::new(py, false).to_owned().into_any(),
                _ => return Err(Fail::Decline),
            },
            Kind::Float => {
                if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                    return Err(Fail::Decline);
                }
                let v: f64 = text.parse().map_err(declined)?;
                if !v.is_finite() {
                    return Err(Fail::Decline);
                }
                v.into_pyobject(py)?.into_any()
            }
            Kind::Str => PyString::new(py, &json_str(raw)?).into_any(),
            Kind::Bytes => PyBytes::new(py, &base64_of(raw)?).into_any(),
            Kind::Date => {
                let (y, m, d) = civil_from_days(json_int(text)?)?;
                PyDate::new(py, y, m, d).map_err(declined)?.into_any()
            }
            Kind::Timestamp { multiply, divide } => {
                let v = json_int(text)?;
                if v == PG_INFINITY as i128 {
                    return Ok(self.helpers.datetime_max.bind(py).clone());
                }
                if v == PG_NEG_INFINITY as i128 {
                    return Ok(self.helpers.datetime_min.bind(py).clone());
                }
                let micros = (v * multiply).div_euclid(*divide);
                let days = micros.div_euclid(DAY_US);
                let (y, m, d) = civil_from_days(days)?;
                let (h, mi, s, us) = clock(micros - days * DAY_US);
                PyDateTime::new(py, y, m, d, h, mi, s, us, None)
                    .map_err(declined)?
                    .into_any()
            }
            Kind::Time { multiply, divide } => {
                let micros = (json_int(text)? * multiply).div_euclid(*divide);
                if !(0..DAY_US).contains(&micros) {
                    return Err(Fail::Decline);
                }
                let (h, mi, s, us) = clock(micros);
                PyTime::new(py, h, mi, s, us, None)
                    .map_err(declined)?
                    .into_any()
            }
            Kind::Decimal { scale } => {
                let bytes = base64_of(raw)?;
                if bytes.len() > 16 {
                    return Err(Fail::Decline);
                }
                let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut wide = [fill; 16];
                wide[16 - bytes.len()..].copy_from_slice(&bytes);
                let unscaled = i128::from_be_bytes(wide);
                let text = format!("{unscaled}E{}", -scale);
                self.helpers.decimal.bind(py).call1((text,))?
            }
            Kind::Python(convert) => {
                let loaded = self.helpers.json_loads.bind(py).call1((text,))?;
                call_converter(py, convert, loaded)?
            }
        })
    }
}

/// A Python converter's result; the conversion errors it may raise mean "let Python decide".
fn call_converter<'py>(
    py: Python<'py>,
    convert: &PyObject,
    value: Bound<'py, PyAny>,
) -> Outcome<Bound<'py, PyAny>> {
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

/// A JSON integer (no fraction, no exponent) that fits 64 bits, signed or unsigned.
fn json_int(text: &str) -> Outcome<i128> {
    if text.contains(['.', 'e', 'E']) {
        return Err(Fail::Decline);
    }
    if let Ok(v) = text.parse::<i64>() {
        return Ok(v as i128);
    }
    text.parse::<u64>().map(|v| v as i128).map_err(declined)
}

fn json_str<'a>(raw: &'a RawValue) -> Outcome<Cow<'a, str>> {
    serde_json::from_str(raw.get()).map_err(declined)
}

fn base64_of(raw: &RawValue) -> Outcome<Vec<u8>> {
    BASE64.decode(json_str(raw)?.as_bytes()).map_err(declined)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar, within
/// Python's `date` range (years 1-9999).
fn civil_from_days(days: i128) -> Outcome<(i32, u8, u8)> {
    if !(-719_162..=2_932_896).contains(&days) {
        return Err(Fail::Decline); // before 0001-01-01 or after 9999-12-31
    }
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Ok((year as i32, month, day))
}

/// µs within a day → (hour, minute, second, µs).
fn clock(micros: i128) -> (u8, u8, u8, u32) {
    let seconds = micros / 1_000_000;
    (
        (seconds / 3600) as u8,
        (seconds / 60 % 60) as u8,
        (seconds % 60) as u8,
        (micros % 1_000_000) as u32,
    )
}

/// The version bytes of `operators/versions.py` for a Postgres or SQL Server source block.
fn version_of(source: &Source) -> Outcome<Vec<u8>> {
    match source.connector.as_deref() {
        Some("postgresql") => {
            let lsn: u64 = source
                .lsn
                .ok_or(Fail::Decline)?
                .get()
                .parse()
                .map_err(declined)?;
            let mut version = vec![0x01];
            version.extend_from_slice(&lsn.to_be_bytes());
            Ok(version)
        }
        Some("sqlserver") => {
            let mut version = vec![0x02];
            for lsn in [&source.commit_lsn, &source.change_lsn] {
                match lsn {
                    None => version.push(0x00),
                    Some(text) => {
                        version.push(0x01);
                        version.extend_from_slice(&sqlserver_lsn(text)?);
                    }
                }
            }
            match source.event_serial_no {
                None => version.push(0x00),
                Some(raw) if raw.get() == "null" => version.push(0x00),
                Some(raw) => {
                    let serial = json_int(raw.get())?;
                    if serial >= INT64_BIAS {
                        return Err(Fail::Decline);
                    }
                    version.push(0x01);
                    version.extend_from_slice(&((serial + INT64_BIAS) as u64).to_be_bytes());
                }
            }
            Ok(version)
        }
        _ => Err(Fail::Decline),
    }
}

/// `00000027:00000758:0005` → its 10 bytes.
fn sqlserver_lsn(text: &str) -> Outcome<Vec<u8>> {
    let parts: Vec<&str> = text.split(':').collect();
    let widths_ok = parts.len() == 3 && parts.iter().zip([8, 8, 4]).all(|(p, w)| p.len() == w);
    if !widths_ok
        || !parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Fail::Decline);
    }
    let digits: String = parts.concat();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(declined))
        .collect()
}

#[pymodule]
fn cdc_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<FastPlan>()?;
    Ok(())
}
