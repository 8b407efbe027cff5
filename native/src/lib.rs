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
mod cell_decide;
mod cell_decode;
mod cell_record;
mod copy_text;
mod fetch;
mod json;
mod run;
mod values;
mod version;

/// Records and fetched batches are made on the reading thread and freed on the worker's: mimalloc
/// frees across threads without contending for glibc's arena locks, and reuses freed pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyTuple};

use serde_json::value::RawValue;

use crate::copy_text::{key_json, write_field, write_stage_row};
use crate::fetch::{Fetched, Fetcher, Readable};
use crate::json::{json_str, payload_after, Members, Payload};
use crate::run::{NativeBatch, Record, Run};
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
    /// The forms of Debezium's placeholder for an unchanged TOASTed value in this column: as
    /// text where a form is a string, else as the Python object it decodes to (compared with
    /// `==`). A Json string column has two text forms (json/jsonb, and hstore in json mode).
    toast_texts: Vec<String>,
    toast_objects: Vec<PyObject>,
}

#[pyclass(frozen, module = "cdc_native")]
pub(crate) struct FastPlan {
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
    /// The Python decoder's `TableSchema` this plan was learned from (opaque here).
    schema: PyObject,
}

#[pymethods]
impl FastPlan {
    /// `key` and `columns` hold `(name, kind)` and `(name, kind, toast placeholder forms)`;
    /// a kind is `(native kind name, parameter)` or a Python converter. `state_prefix` starts
    /// every state key of the table; `copy_order` names the columns in the order of the
    /// writer's stage for a complete row. `schema` is kept for the events of its runs.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        value_prefix: Vec<u8>,
        key_prefix: Vec<u8>,
        state_prefix: String,
        key: Vec<(String, Bound<'_, PyAny>)>,
        columns: Vec<(String, Bound<'_, PyAny>, Vec<Bound<'_, PyAny>>)>,
        copy_order: Vec<String>,
        schema: PyObject,
    ) -> PyResult<Self> {
        let mut key_names = Vec::with_capacity(key.len());
        let mut key_kinds = Vec::with_capacity(key.len());
        for (name, spec) in key {
            key_names.push(name);
            key_kinds.push(Kind::from_spec(&spec)?);
        }
        let columns = columns
            .into_iter()
            .map(|(name, spec, toasts)| column(name, &spec, toasts))
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
            schema,
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
        self.parts(py, self.parse(value, key))
    }

    /// `decode` of each (value, key), read in parallel with the GIL released; but the messages
    /// that make plain records — a state key, and a delete or an upsert with every column's
    /// `COPY` text — stay native: they come back as one `Run` per shard (`shard_of` of the
    /// state key), None for a shard without any. Every other message comes back as
    /// `(position, decode's answer)`, in order.
    /// `fetched` holds the messages (of the plan's topic); `indexes` says which of them to read
    /// (all when None); a message's place in the caller's batch, which records keep and the
    /// answers carry, is `base` plus its index. A message without a key or a value is declined.
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (fetched, base, shards, indexes=None))]
    fn decode_runs<'py>(
        slf: &Bound<'py, Self>,
        fetched: &Bound<'py, Fetched>,
        base: u32,
        shards: u32,
        indexes: Option<Vec<u32>>,
    ) -> PyResult<(Vec<Option<Run>>, Vec<(u32, Option<Bound<'py, PyTuple>>)>)> {
        let py = slf.py();
        let plan = slf.get();
        let batch = fetched.get();
        let beyond = |indexes: &Vec<u32>| indexes.iter().any(|&i| i as usize >= batch.count());
        if shards == 0 || indexes.as_ref().is_some_and(beyond) {
            return Err(PyValueError::new_err("decode_runs: inconsistent arguments"));
        }
        // what the reading thread already made of the batch with this plan, if anything
        let prepared = match indexes {
            None => batch.take_prepared(slf.as_unbound(), shards),
            Some(_) => None,
        };
        let (mut records, indexes) = match prepared {
            Some(prepared) => {
                let mut records = prepared.records;
                for record in records.iter_mut().flatten() {
                    record.position += base;
                }
                (records, prepared.unread)
            }
            None => (
                (0..shards).map(|_| Vec::new()).collect(),
                indexes.unwrap_or_else(|| (0..batch.count() as u32).collect()),
            ),
        };
        let merge = records.iter().any(|r| !r.is_empty());
        let Readable {
            indexes: readable,
            messages,
            others,
        } = batch.readable(indexes, base);
        let mut others: Vec<_> = others.into_iter().map(|position| (position, None)).collect();
        let messages: Vec<(&[u8], &[u8])> = messages.iter().map(|(v, k)| (&**v, *k)).collect();
        let partition = batch.partition();
        // a plain message becomes its record on the reader threads too
        let read = py.allow_threads(|| {
            FastPlan::read_all(&messages, |i, value, key| match plan.parse(value, key) {
                Some(p) if p.is_plain() => {
                    let index = readable[i];
                    let offset = batch.offset_of(index as usize);
                    let record = p.record(base + index, partition, offset);
                    Read::Plain(shard_of(&record, shards), record)
                }
                other => Read::Other(other),
            })
        });
        for (i, read) in read.into_iter().enumerate() {
            match read {
                Read::Plain(shard, record) => records[shard as usize].push(record),
                Read::Other(parsed) => others.push((base + readable[i], plan.parts(py, parsed)?)),
            }
        }
        if merge {
            // the prepared records and those read here, in the batch's order
            for shard in &mut records {
                shard.sort_unstable_by_key(|r| r.position);
            }
        }
        let runs = records
            .into_iter()
            .map(|records| {
                (!records.is_empty())
                    .then(|| Run::new(slf.clone().unbind(), batch.topic().clone_ref(py), records))
            })
            .collect();
        others.sort_unstable_by_key(|(position, _)| *position);
        Ok((runs, others))
    }
}

fn column(
    name: String,
    spec: &Bound<'_, PyAny>,
    toasts: Vec<Bound<'_, PyAny>>,
) -> PyResult<Column> {
    let kind = Kind::from_spec(spec)?;
    let mut toast_texts = Vec::new();
    let mut toast_objects = Vec::new();
    for toast in toasts {
        if let Ok(text) = toast.extract::<String>() {
            toast_texts.push(text);
        } else if matches!(kind, Kind::Python(_)) {
            toast_objects.push(toast.unbind());
        } else {
            return Err(PyValueError::new_err(format!(
                "column {name:?}: a non-text TOAST placeholder needs a Python converter"
            )));
        }
    }
    Ok(Column {
        name,
        kind,
        toast_texts,
        toast_objects,
    })
}

/// A message read without the interpreter: everything it decodes to.
struct Parsed<'a> {
    is_delete: bool,
    version: Vec<u8>,
    key: Vec<Val<'a>>,
    /// The key document's members and the row image, as JSON: what a record keeps to make its
    /// Python objects later (`FastPlan::reread`).
    key_members: &'a str,
    image: Option<&'a str>,
    /// An upsert's values per column: None where the image leaves the column as it is (absent,
    /// or Debezium's TOAST placeholder).
    row: Option<Vec<Option<Val<'a>>>>,
    /// The key's JSON (integer and string keys only) and the state key it makes.
    key_json: Option<String>,
    state_key: Option<String>,
    /// `COPY` text of the stage's columns, each followed by a tab: every column of an upsert
    /// (when each has a native text form), the key columns of a delete.
    fields: Option<String>,
}

impl Parsed<'_> {
    /// A record can stand for the message from decoding to the stage: no Python value needed.
    fn is_plain(&self) -> bool {
        self.state_key.is_some() && self.fields.is_some()
    }

    fn record(&self, position: u32, partition: i32, offset: i64) -> Record {
        Record::new(
            position,
            partition,
            offset,
            self.is_delete,
            &self.version,
            self.state_key.as_deref().unwrap_or_default(),
            self.fields.as_deref().unwrap_or_default(),
            self.key_members,
            self.image,
        )
    }
}

/// What `decode_runs` reads a message as.
enum Read<'a> {
    Plain(u32, Record),
    Other(Option<Parsed<'a>>),
}

/// Batches smaller than this are read by the calling thread alone.
const PARALLEL_MIN: usize = 256;
const MAX_READERS: usize = 4;

/// The shard of a record's state key.
fn shard_of(record: &Record, shards: u32) -> u32 {
    crc32fast::hash(record.state_key()) % shards
}

impl FastPlan {
    /// A plain message's shard and record, or None (declined, or not plain).
    pub(crate) fn plain_record(
        &self,
        value: &[u8],
        key: &[u8],
        position: u32,
        partition: i32,
        offset: i64,
        shards: u32,
    ) -> Option<(u32, Record)> {
        let parsed = self.parse(value, key).filter(Parsed::is_plain)?;
        let record = parsed.record(position, partition, offset);
        Some((shard_of(&record, shards), record))
    }

    /// What every value this plan reads starts with (the envelope up to its payload).
    pub(crate) fn value_prefix(&self) -> &[u8] {
        &self.value_prefix
    }

    /// The length of every state key's table prefix.
    pub(crate) fn state_prefix_len(&self) -> usize {
        self.state_prefix.len()
    }

    pub(crate) fn schema(&self, py: Python<'_>) -> PyObject {
        self.schema.clone_ref(py)
    }

    /// `decode`'s answer for a parsed message (None when declined).
    fn parts<'py>(
        &self,
        py: Python<'py>,
        parsed: Option<Parsed>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match parsed.map(|p| self.build(py, p)) {
            None | Some(Err(Fail::Decline)) => Ok(None),
            Some(Ok(parts)) => Ok(Some(parts)),
            Some(Err(Fail::Py(err))) => Err(err),
        }
    }

    /// `decode`'s answer for a record of this plan, from what it kept.
    pub(crate) fn reread<'py>(
        &self,
        py: Python<'py>,
        record: &Record,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let parsed = self
            .read_key(record.key_members())
            .and_then(|(key, key_json)| {
                let row = match record.image() {
                    None => None,
                    Some(image) => Some(self.row(&serde_json::from_str(image).ok()?)?),
                };
                Some(Parsed {
                    is_delete: record.deleted,
                    version: record.version().to_vec(),
                    key,
                    key_members: record.key_members(),
                    image: record.image(),
                    row,
                    state_key: key_json
                        .as_ref()
                        .map(|j| format!("{}{j}", self.state_prefix)),
                    key_json,
                    fields: Some(record.fields().to_owned()),
                })
            });
        self.parts(py, parsed)?
            .ok_or_else(|| PyValueError::new_err("a record its own plan no longer reads"))
    }

    /// `read` of each message (with its index), on up to `MAX_READERS` threads for a large
    /// batch; the results keep the messages' order.
    pub(crate) fn read_all<'a, T: Send>(
        messages: &[(&'a [u8], &'a [u8])],
        read: impl Fn(usize, &'a [u8], &'a [u8]) -> T + Sync,
    ) -> Vec<T> {
        let readers = if messages.len() < PARALLEL_MIN {
            1
        } else {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_READERS)
        };
        let chunk = messages.len().div_ceil(readers).max(1);
        let read_part = |start: usize, part: &[(&'a [u8], &'a [u8])]| {
            part.iter()
                .enumerate()
                .map(|(i, (value, key))| read(start + i, value, key))
                .collect::<Vec<_>>()
        };
        if readers <= 1 {
            return read_part(0, messages);
        }
        let mut parts = messages.chunks(chunk).enumerate();
        let (_, first) = parts.next().unwrap_or_default();
        std::thread::scope(|scope| {
            let others: Vec<_> = parts
                .map(|(n, part)| {
                    let read_part = &read_part;
                    scope.spawn(move || read_part(n * chunk, part))
                })
                .collect();
            let mut all = read_part(0, first);
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
        let key_members = payload_after(key, &self.key_prefix)?;
        let (key, key_json) = self.read_key(key_members)?;
        // an image must be an object (or null) even for a delete, as Python requires
        let image = payload.after.map(RawValue::get);
        let members: Option<Members> = match image {
            None => None,
            Some(image) => Some(serde_json::from_str(image).ok()?),
        };
        let row = match (is_delete, &members) {
            (true, _) => None,
            (false, None) => return None, // an insert or update without its row image
            (false, Some(members)) => Some(self.row(members)?),
        };
        let image = if is_delete { None } else { image };
        let fields = match &row {
            Some(row) => self.copy_fields(row),
            None => key_fields(&key),
        };
        Some(Parsed {
            is_delete,
            version,
            key,
            key_members,
            image,
            row,
            state_key: key_json
                .as_ref()
                .map(|json| format!("{}{json}", self.state_prefix)),
            key_json,
            fields,
        })
    }

    /// The key's values, and its JSON when it has one; None when the plan declines the key.
    fn read_key<'a>(&self, members: &'a str) -> Option<(Vec<Val<'a>>, Option<String>)> {
        let key_doc: Members = serde_json::from_str(members).ok()?;
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
        let json = key_json(&key);
        Some((key, json))
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
                        if !column.toast_texts.is_empty() && raw.get().starts_with('"') {
                            let text = json_str(raw)?;
                            if column
                                .toast_texts
                                .iter()
                                .any(|toast| toast.as_str() == text)
                            {
                                return Some(None); // unchanged TOAST value
                            }
                        }
                        column.kind.read(raw).map(Some)
                    }
                }
            })
            .collect()
    }

    /// Every column's `COPY` text in stage order, each followed by a tab; None unless every
    /// column has a value with a native text form.
    fn copy_fields(&self, row: &[Option<Val>]) -> Option<String> {
        let order = self.copy_order.as_ref()?;
        let mut out = String::with_capacity(192);
        for &index in order {
            if !write_field(&mut out, row[index].as_ref()?) {
                return None;
            }
            out.push('\t');
        }
        Some(out)
    }

    /// Phase two, with the GIL: the Python objects (and the values for Python converters).
    fn build<'py>(&self, py: Python<'py>, parsed: Parsed) -> Result<Bound<'py, PyTuple>, Fail> {
        let copy_row = match (&parsed.row, &parsed.fields, &parsed.key_json) {
            (Some(_), Some(fields), Some(json)) => {
                let mut row = String::with_capacity(fields.len() + 64);
                write_stage_row(&mut row, fields, json, &parsed.version);
                Some(row)
            }
            _ => None,
        };
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
                            if !column.toast_objects.is_empty() {
                                let loaded = self.json_loads.bind(py).call1((raw.get(),))?;
                                if is_toast_object(py, &column.toast_objects, &loaded)? {
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
            optional_bytes(py, copy_row.as_ref().map(String::as_bytes)),
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

/// `loaded` (a column's value as Python) equals one of the column's TOAST placeholder forms.
fn is_toast_object(
    py: Python<'_>,
    toasts: &[PyObject],
    loaded: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    for toast in toasts {
        if loaded.eq(toast.bind(py))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The key columns' `COPY` text, each followed by a tab (a delete's stage row starts so).
fn key_fields(key: &[Val]) -> Option<String> {
    let mut out = String::with_capacity(32);
    for value in key {
        if !write_field(&mut out, value) {
            return None;
        }
        out.push('\t');
    }
    Some(out)
}

pub(crate) fn optional_bytes<'py>(py: Python<'py>, bytes: Option<&[u8]>) -> Bound<'py, PyAny> {
    match bytes {
        Some(bytes) => PyBytes::new(py, bytes).into_any(),
        None => py.None().into_bound(py),
    }
}

#[pymodule]
fn cdc_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<FastPlan>()?;
    module.add_class::<Run>()?;
    module.add_class::<NativeBatch>()?;
    module.add_class::<Fetched>()?;
    module.add_class::<Fetcher>()?;
    module.add_class::<cell_record::CellRun>()?;
    module.add_class::<cell_decode::CellPlan>()?;
    module.add_class::<cell_decide::CellBatch>()?;
    Ok(())
}
