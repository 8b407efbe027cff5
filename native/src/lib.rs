//! Native fast path of `operators.decode.Decoder` for Debezium JSON change events with schemas.
//!
//! Python stays the reference: it decodes a topic's first message, derives the shape (columns,
//! Postgres types, converters) and hands this module a `FastPlan` for the topic. The plan decodes
//! the topic's next messages that look exactly like that one (same schema bytes, same key
//! columns, an insert/update/snapshot/delete with a Postgres or SQL Server version) and gives
//! back the same values the Python decoder would, plus the row's state key and, for a complete
//! row image, its `COPY` text row. Anything else — another schema, a truncate, a value that does
//! not convert, malformed JSON — is *declined* (`None`): the Python decoder then handles that
//! message, with its DLQ records and error messages. Declining is always safe; accepting must
//! give exactly what Python gives (`tests/unit/test_native_decode.py` compares the two).

mod calendar;
mod copy_text;
mod json;
mod values;
mod version;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyTuple};

use crate::copy_text::{escape_copy, key_json, write_bytea, write_field};
use crate::json::{json_str, payload_after, Members, Payload};
use crate::values::{call_converter, Kind, Val};

/// Why a message was not decoded here: hand it to Python (`Decline`), or a real error.
pub(crate) enum Fail {
    Decline,
    Py(PyErr),
}

impl From<PyErr> for Fail {
    fn from(err: PyErr) -> Self {
        Fail::Py(err)
    }
}

impl From<std::convert::Infallible> for Fail {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

struct Column {
    name: String,
    kind: Kind,
    /// Debezium's placeholder for an unchanged TOASTed value: as text when it is a string,
    /// else as the Python object it decodes to (compared with `==`).
    toast_text: Option<String>,
    toast_object: Option<PyObject>,
}

#[pyclass(frozen, module = "cdc_native")]
struct FastPlan {
    value_prefix: Vec<u8>,
    key_prefix: Vec<u8>,
    state_prefix: String,
    key_names: Vec<String>,
    key_kinds: Vec<Kind>,
    columns: Vec<Column>,
    /// Column indexes in the writer's stage order; None when a column has no native text.
    copy_order: Option<Vec<usize>>,
    decimal: PyObject,
    json_loads: PyObject,
}

#[pymethods]
impl FastPlan {
    /// `key` and `columns` hold `(name, kind)` and `(name, kind, toast placeholder or None)`;
    /// a kind is `(native kind name, parameter)` or a Python converter. `state_prefix` starts
    /// every state key of the table; `copy_order` names the columns in the order of the
    /// writer's stage for a complete row.
    #[new]
    fn new(
        py: Python<'_>,
        value_prefix: Vec<u8>,
        key_prefix: Vec<u8>,
        state_prefix: String,
        key: Vec<(String, Bound<'_, PyAny>)>,
        columns: Vec<(String, Bound<'_, PyAny>, Bound<'_, PyAny>)>,
        copy_order: Vec<String>,
    ) -> PyResult<Self> {
        let mut key_names = Vec::with_capacity(key.len());
        let mut key_kinds = Vec::with_capacity(key.len());
        for (name, spec) in key {
            key_names.push(name);
            key_kinds.push(Kind::from_spec(&spec)?);
        }
        let columns = columns
            .into_iter()
            .map(|(name, spec, toast)| column(name, &spec, toast))
            .collect::<PyResult<Vec<_>>>()?;
        let copy_order = copy_order
            .iter()
            .map(|name| {
                columns
                    .iter()
                    .position(|c| &c.name == name && !matches!(c.kind, Kind::Python(_)))
            })
            .collect::<Option<Vec<usize>>>()
            .filter(|order| order.len() == columns.len());
        Ok(FastPlan {
            value_prefix,
            key_prefix,
            state_prefix,
            key_names,
            key_kinds,
            columns,
            copy_order,
            decimal: py.import("decimal")?.getattr("Decimal")?.unbind(),
            json_loads: py.import("orjson")?.getattr("loads")?.unbind(),
        })
    }

    /// `(is_delete, version, key tuple, values dict or None, state key or None, COPY row or
    /// None)`, or None: let Python decode it. The state key is None for keys other than
    /// integers and strings; the COPY row is there for an upsert whose image has every column.
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

fn column(name: String, spec: &Bound<'_, PyAny>, toast: Bound<'_, PyAny>) -> PyResult<Column> {
    let kind = Kind::from_spec(spec)?;
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
}

impl FastPlan {
    fn decode_message<'py>(
        &self,
        py: Python<'py>,
        value: &[u8],
        key: &[u8],
    ) -> Result<Bound<'py, PyTuple>, Fail> {
        let payload_text = payload_after(value, &self.value_prefix).ok_or(Fail::Decline)?;
        let payload: Payload = serde_json::from_str(payload_text).map_err(|_| Fail::Decline)?;
        if payload.ddl || payload.table_changes {
            return Err(Fail::Decline);
        }
        let is_delete = match payload.op.as_deref() {
            Some("c" | "u" | "r") => false,
            Some("d") => true,
            _ => return Err(Fail::Decline),
        };
        let version = payload
            .source
            .as_ref()
            .and_then(|s| s.version())
            .ok_or(Fail::Decline)?;
        if !is_delete && payload.after.is_none() {
            return Err(Fail::Decline); // an insert or update without its row image
        }
        let key_text = payload_after(key, &self.key_prefix).ok_or(Fail::Decline)?;
        let key_doc: Members = serde_json::from_str(key_text).map_err(|_| Fail::Decline)?;
        let key_values = self.key_values(py, &key_doc)?;
        let json_loads = self.json_loads.bind(py);
        let decimal = self.decimal.bind(py);
        let key_tuple = PyTuple::new(
            py,
            key_values
                .iter()
                .map(|v| v.to_py(py, decimal))
                .collect::<Result<Vec<_>, Fail>>()?,
        )?;
        let key_json = key_json(&key_values);
        let state_key = key_json
            .as_ref()
            .map(|json| format!("{}{json}", self.state_prefix));
        let (values, copy_row) = match (&payload.after, is_delete) {
            (Some(row), false) => {
                let (dict, row_values) = self.row_values(py, row, json_loads, decimal)?;
                let copy_row = match (&key_json, row_values) {
                    (Some(json), Some(row_values)) => self.copy_row(&row_values, json, &version),
                    _ => None,
                };
                (dict.into_any(), copy_row)
            }
            _ => (py.None().into_bound(py), None),
        };
        let parts: [Bound<'py, PyAny>; 6] = [
            PyBool::new(py, is_delete).to_owned().into_any(),
            PyBytes::new(py, &version).into_any(),
            key_tuple.into_any(),
            values,
            optional_bytes(py, state_key.as_deref().map(str::as_bytes)),
            optional_bytes(py, copy_row.as_deref()),
        ];
        Ok(PyTuple::new(py, parts)?)
    }

    fn key_values<'a, 'py>(
        &self,
        py: Python<'py>,
        doc: &Members<'a>,
    ) -> Result<Vec<Val<'a, 'py>>, Fail> {
        if doc.0.len() != self.key_names.len() {
            return Err(Fail::Decline);
        }
        let json_loads = self.json_loads.bind(py);
        doc.0
            .iter()
            .zip(self.key_names.iter().zip(&self.key_kinds))
            .map(|((name, raw), (wanted, kind))| {
                if name != wanted || raw.get() == "null" {
                    return Err(Fail::Decline); // other key columns, or a null key: Python decides
                }
                kind.read(py, raw, json_loads)
            })
            .collect()
    }

    /// The values dict, and every column's value when the image has them all (else None).
    #[allow(clippy::type_complexity)]
    fn row_values<'a, 'py>(
        &self,
        py: Python<'py>,
        row: &Members<'a>,
        json_loads: &Bound<'py, PyAny>,
        decimal: &Bound<'py, PyAny>,
    ) -> Result<(Bound<'py, PyDict>, Option<Vec<Val<'a, 'py>>>), Fail> {
        let dict = PyDict::new(py);
        let mut all: Option<Vec<Val>> = Some(Vec::with_capacity(self.columns.len()));
        for column in &self.columns {
            let value = match row.get(&column.name) {
                None => None, // absent: the column keeps what it has
                Some(raw) if raw.get() == "null" => Some(Val::Null),
                Some(raw) => {
                    let toasted = match (&column.toast_text, &column.toast_object) {
                        (Some(toast), _) => {
                            raw.get().starts_with('"')
                                && json_str(raw).ok_or(Fail::Decline)? == toast.as_str()
                        }
                        (None, Some(toast)) => json_loads.call1((raw.get(),))?.eq(toast.bind(py))?,
                        (None, None) => false,
                    };
                    if toasted {
                        None
                    } else if let (Some(_), Kind::Python(convert)) =
                        (&column.toast_object, &column.kind)
                    {
                        let loaded = json_loads.call1((raw.get(),))?;
                        Some(Val::Python(call_converter(py, convert, loaded)?))
                    } else {
                        Some(column.kind.read(py, raw, json_loads)?)
                    }
                }
            };
            match value {
                Some(value) => {
                    dict.set_item(&column.name, value.to_py(py, decimal)?)?;
                    if let Some(all) = all.as_mut() {
                        all.push(value);
                    }
                }
                None => all = None,
            }
        }
        Ok((dict, all))
    }

    /// The stage row: columns in copy order, the key's JSON, the version.
    fn copy_row(&self, values: &[Val], key_json: &str, version: &[u8]) -> Option<Vec<u8>> {
        let order = self.copy_order.as_ref()?;
        let mut out = String::with_capacity(256);
        for &index in order {
            if !write_field(&mut out, &values[index]) {
                return None;
            }
            out.push('\t');
        }
        escape_copy(&mut out, key_json);
        out.push('\t');
        write_bytea(&mut out, version);
        out.push('\n');
        Some(out.into_bytes())
    }
}

fn optional_bytes<'py>(py: Python<'py>, bytes: Option<&[u8]>) -> Bound<'py, PyAny> {
    match bytes {
        Some(bytes) => PyBytes::new(py, bytes).into_any(),
        None => py.None().into_bound(py),
    }
}

#[pymodule]
fn cdc_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<FastPlan>()?;
    Ok(())
}
