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

use serde_json::value::RawValue;

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
        Ok(self.decode_all(py, &[(value, key)])?.pop().flatten())
    }

    /// `decode` of each (value, key), read in parallel with the GIL released.
    fn decode_many<'py>(
        &self,
        py: Python<'py>,
        values: Vec<Bound<'py, PyBytes>>,
        keys: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<Vec<Option<Bound<'py, PyTuple>>>> {
        if values.len() != keys.len() {
            return Err(PyValueError::new_err("values and keys differ in length"));
        }
        let messages: Vec<(&[u8], &[u8])> = values
            .iter()
            .zip(&keys)
            .map(|(v, k)| (v.as_bytes(), k.as_bytes()))
            .collect();
        self.decode_all(py, &messages)
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

/// A message read without the interpreter: everything it decodes to.
struct Parsed<'a> {
    is_delete: bool,
    version: Vec<u8>,
    key: Vec<Val<'a>>,
    /// An upsert's values per column: None where the image leaves the column as it is (absent,
    /// or Debezium's TOAST placeholder).
    row: Option<Vec<Option<Val<'a>>>>,
    state_key: Option<String>,
    copy_row: Option<Vec<u8>>,
}

/// Batches smaller than this are read by the calling thread alone.
const PARALLEL_MIN: usize = 256;
const MAX_READERS: usize = 4;

impl FastPlan {
    /// Reads messages with the GIL released, on up to `MAX_READERS` threads; then makes their
    /// Python objects. None per message this plan declines.
    fn decode_all<'py>(
        &self,
        py: Python<'py>,
        messages: &[(&[u8], &[u8])],
    ) -> PyResult<Vec<Option<Bound<'py, PyTuple>>>> {
        let parsed = py.allow_threads(|| self.parse_all(messages));
        parsed
            .into_iter()
            .map(|parsed| match parsed.map(|p| self.build(py, p)) {
                None | Some(Err(Fail::Decline)) => Ok(None),
                Some(Ok(parts)) => Ok(Some(parts)),
                Some(Err(Fail::Py(err))) => Err(err),
            })
            .collect()
    }

    fn parse_all<'a>(&self, messages: &[(&'a [u8], &'a [u8])]) -> Vec<Option<Parsed<'a>>> {
        let readers = if messages.len() < PARALLEL_MIN {
            1
        } else {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_READERS)
        };
        let parse_part = |part: &[(&'a [u8], &'a [u8])]| {
            part.iter()
                .map(|(value, key)| self.parse(value, key))
                .collect::<Vec<_>>()
        };
        if readers <= 1 {
            return parse_part(messages);
        }
        let mut parts = messages.chunks(messages.len().div_ceil(readers));
        let first = parts.next().unwrap_or_default();
        std::thread::scope(|scope| {
            let others: Vec<_> = parts
                .map(|part| scope.spawn(move || parse_part(part)))
                .collect();
            let mut all = parse_part(first);
            for other in others {
                all.extend(other.join().expect("a reader thread panicked"));
            }
            all
        })
    }

    /// Phase one, without Python: None when the plan declines the message.
    fn parse<'a>(&self, value: &'a [u8], key: &'a [u8]) -> Option<Parsed<'a>> {
        let payload: Payload =
            serde_json::from_str(payload_after(value, &self.value_prefix)?).ok()?;
        if payload.ddl || payload.table_changes {
            return None;
        }
        let is_delete = match payload.op.as_deref()? {
            "c" | "u" | "r" => false,
            "d" => true,
            _ => return None,
        };
        let version = payload.source.as_ref()?.version()?;
        let key_doc: Members = serde_json::from_str(payload_after(key, &self.key_prefix)?).ok()?;
        if key_doc.0.len() != self.key_names.len() {
            return None;
        }
        let key = key_doc
            .0
            .iter()
            .zip(self.key_names.iter().zip(&self.key_kinds))
            .map(|((name, raw), (wanted, kind))| {
                // other key columns, or a null key: Python decides
                if name != wanted || raw.get() == "null" {
                    None
                } else {
                    kind.read(raw)
                }
            })
            .collect::<Option<Vec<Val>>>()?;
        let key_json = key_json(&key);
        let state_key = key_json
            .as_ref()
            .map(|json| format!("{}{json}", self.state_prefix));
        let row = match (is_delete, &payload.after) {
            (true, _) => None,
            (false, None) => return None, // an insert or update without its row image
            (false, Some(image)) => Some(self.row(image)?),
        };
        let copy_row = match (&row, &key_json) {
            (Some(row), Some(json)) => self.copy_row(row, json, &version),
            _ => None,
        };
        Some(Parsed {
            is_delete,
            version,
            key,
            row,
            state_key,
            copy_row,
        })
    }

    fn row<'a>(&self, image: &Members<'a>) -> Option<Vec<Option<Val<'a>>>> {
        // Debezium writes an image's members in schema order: then the i-th member is the i-th
        // column (and no name repeats), without a search per column.
        let aligned = image.0.len() == self.columns.len()
            && image
                .0
                .iter()
                .zip(&self.columns)
                .all(|((name, _), column)| name == &column.name);
        self.columns
            .iter()
            .enumerate()
            .map(|(index, column)| {
                let raw = if aligned {
                    Some(image.0[index].1)
                } else {
                    image.get(&column.name)
                };
                match raw {
                    None => Some(None), // absent: the column keeps what it has
                    Some(raw) if raw.get() == "null" => Some(Some(Val::Null)),
                    Some(raw) => {
                        if let Some(toast) = &column.toast_text {
                            if raw.get().starts_with('"') && json_str(raw)? == toast.as_str() {
                                return Some(None); // unchanged TOAST value
                            }
                        }
                        column.kind.read(raw).map(Some)
                    }
                }
            })
            .collect()
    }

    /// The stage row: columns in copy order, the key's JSON, the version; None unless every
    /// column has a value with a native text form.
    fn copy_row(&self, row: &[Option<Val>], key_json: &str, version: &[u8]) -> Option<Vec<u8>> {
        let order = self.copy_order.as_ref()?;
        let mut out = String::with_capacity(256);
        for &index in order {
            if !write_field(&mut out, row[index].as_ref()?) {
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

    /// Phase two, with the GIL: the Python objects (and the values for Python converters).
    fn build<'py>(&self, py: Python<'py>, parsed: Parsed) -> Result<Bound<'py, PyTuple>, Fail> {
        let decimal = self.decimal.bind(py);
        let key = parsed
            .key
            .iter()
            .zip(&self.key_kinds)
            .map(|(value, kind)| match (value, kind) {
                (Val::Deferred(raw), Kind::Python(convert)) => {
                    self.convert_deferred(py, convert, raw)
                }
                _ => value.to_py(py, decimal),
            })
            .collect::<Result<Vec<_>, Fail>>()?;
        let values = match &parsed.row {
            None => py.None().into_bound(py),
            Some(row) => {
                let dict = PyDict::new(py);
                for (column, value) in self.columns.iter().zip(row) {
                    let converted = match (value, &column.kind) {
                        (None, _) => continue,
                        (Some(Val::Deferred(raw)), Kind::Python(convert)) => {
                            if let Some(toast) = &column.toast_object {
                                let loaded = self.json_loads.bind(py).call1((raw.get(),))?;
                                if loaded.eq(toast.bind(py))? {
                                    continue; // unchanged TOAST value
                                }
                                call_converter(py, convert, loaded)?
                            } else {
                                self.convert_deferred(py, convert, raw)?
                            }
                        }
                        (Some(value), _) => value.to_py(py, decimal)?,
                    };
                    dict.set_item(&column.name, converted)?;
                }
                dict.into_any()
            }
        };
        let parts: [Bound<'py, PyAny>; 6] = [
            PyBool::new(py, parsed.is_delete).to_owned().into_any(),
            PyBytes::new(py, &parsed.version).into_any(),
            PyTuple::new(py, key)?.into_any(),
            values,
            optional_bytes(py, parsed.state_key.as_deref().map(str::as_bytes)),
            optional_bytes(py, parsed.copy_row.as_deref()),
        ];
        Ok(PyTuple::new(py, parts)?)
    }

    fn convert_deferred<'py>(
        &self,
        py: Python<'py>,
        convert: &PyObject,
        raw: &RawValue,
    ) -> Result<Bound<'py, PyAny>, Fail> {
        let loaded = self.json_loads.bind(py).call1((raw.get(),))?;
        call_converter(py, convert, loaded)
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
