//! Native runs: the change events of one plan for one shard, kept as records from decoding to
//! the writer's `COPY` (`operators/native_shard.py` says when they are used), and the
//! last-write-wins decision over a shard's runs. `operators/lww.py` is the reference: a batch
//! of runs decides as `decide_batch` does on the same events
//! (`tests/integration/test_native_shard.py` compares the two).

use std::collections::HashMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::copy_text::write_stage_row;
use crate::FastPlan;

/// One change event, as much of it as the shard step and the writer need, and what its Python
/// objects are made from when an event is needed after all (`Run.events`). Its bytes are one
/// allocation: a backlog makes millions of records.
#[derive(Clone)]
pub(crate) struct Record {
    /// Its place in the decode step's batch (orders it among that batch's other items).
    pub position: u32,
    pub partition: i32,
    pub offset: i64,
    pub deleted: bool,
    has_image: bool,
    /// The version, state key, stage fields, key members and image, one after the other.
    data: Box<[u8]>,
    /// Where the first four end in `data`.
    ends: [usize; 4],
}

impl Record {
    /// `fields`: stage `COPY` text, every column of an upsert or the key columns of a delete;
    /// `key_members` and `image`: the key document's members and the row image, as JSON.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        position: u32,
        partition: i32,
        offset: i64,
        deleted: bool,
        version: &[u8],
        state_key: &str,
        fields: &str,
        key_members: &str,
        image: Option<&str>,
    ) -> Self {
        let parts: [&[u8]; 5] = [
            version,
            state_key.as_bytes(),
            fields.as_bytes(),
            key_members.as_bytes(),
            image.unwrap_or_default().as_bytes(),
        ];
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0; 4];
        for (i, part) in parts.iter().enumerate() {
            data.extend_from_slice(part);
            if i < 4 {
                ends[i] = data.len();
            }
        }
        Record {
            position,
            partition,
            offset,
            deleted,
            has_image: image.is_some(),
            data: data.into_boxed_slice(),
            ends,
        }
    }

    fn part(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        let end = self.ends.get(index).copied().unwrap_or(self.data.len());
        &self.data[start..end]
    }

    fn text(&self, index: usize) -> &str {
        // SAFETY: parts 1-4 were copied from `&str`s whole, so each is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(self.part(index)) }
    }

    pub(crate) fn version(&self) -> &[u8] {
        self.part(0)
    }

    pub(crate) fn state_key(&self) -> &[u8] {
        self.part(1)
    }

    pub(crate) fn fields(&self) -> &str {
        self.text(2)
    }

    pub(crate) fn key_members(&self) -> &str {
        self.text(3)
    }

    pub(crate) fn image(&self) -> Option<&str> {
        self.has_image.then(|| self.text(4))
    }
}

/// Frees records on a thread of its own: a run is dropped with the interpreter lock held, and
/// a backlog's runs hold millions of allocations.
fn free_later(records: Vec<Record>) {
    static FREEING: OnceLock<Option<Sender<Vec<Record>>>> = OnceLock::new();
    let sender = FREEING.get_or_init(|| {
        let (sender, receiver) = channel::<Vec<Record>>();
        std::thread::Builder::new()
            .name("cdc-free".into())
            .spawn(move || receiver.into_iter().for_each(drop))
            .ok()
            .map(|_| sender)
    });
    if let Some(sender) = sender {
        // a send fails only if the thread is gone: the records are then freed here
        let _ = sender.send(records);
    }
}

/// (run, record) within a batch.
type At = (usize, usize);
/// `(position, partition, offset, parts)` of one record's event.
type EventParts<'py> = (u32, i32, i64, Bound<'py, PyTuple>);

#[pyclass(frozen, module = "cdc_native")]
pub(crate) struct Run {
    plan: Py<FastPlan>,
    topic: Py<PyString>,
    records: Vec<Record>,
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.records.len() >= FREE_LATER_MIN {
            free_later(std::mem::take(&mut self.records));
        }
    }
}

/// Runs with fewer records are freed at once.
const FREE_LATER_MIN: usize = 32;

impl Run {
    pub(crate) fn new(plan: Py<FastPlan>, topic: Py<PyString>, records: Vec<Record>) -> Self {
        Run {
            plan,
            topic,
            records,
        }
    }

    fn key_json<'r>(&self, record: &'r Record) -> &'r str {
        let prefix = self.plan.get().state_prefix_len();
        std::str::from_utf8(&record.state_key()[prefix..]).unwrap_or_default()
    }
}

#[pymethods]
impl Run {
    fn __len__(&self) -> usize {
        self.records.len()
    }

    #[getter]
    fn topic(&self, py: Python<'_>) -> Py<PyString> {
        self.topic.clone_ref(py)
    }

    /// The `TableSchema` of the plan that read the run.
    #[getter]
    fn schema(&self, py: Python<'_>) -> PyObject {
        self.plan.get().schema(py)
    }

    /// `{(topic, partition): last offset + 1}` over the records.
    fn next_offsets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let positions = self.records.iter().map(|r| (r.partition, r.offset));
        next_offsets(self.topic.bind(py), positions)
    }

    /// The records at or past `committed[(topic, partition)]` (0 when absent): this run when
    /// that is all of them, None when none.
    fn since(
        slf: &Bound<'_, Self>,
        committed: &Bound<'_, PyDict>,
    ) -> PyResult<Option<Py<Run>>> {
        let py = slf.py();
        let run = slf.get();
        let positions = run.records.iter().map(|r| (r.partition, r.offset));
        let kept = kept_since(run.topic.bind(py), positions, committed)?;
        if kept.iter().all(|k| *k) {
            return Ok(Some(slf.clone().unbind()));
        }
        let kept: Vec<Record> = run
            .records
            .iter()
            .zip(&kept)
            .filter(|(_, k)| **k)
            .map(|(r, _)| r.clone())
            .collect();
        if kept.is_empty() {
            return Ok(None);
        }
        let kept = Run::new(run.plan.clone_ref(py), run.topic.clone_ref(py), kept);
        Ok(Some(Py::new(py, kept)?))
    }

    /// `(position, partition, offset, parts)` per record, `parts` as `FastPlan.decode` gives
    /// them: what the Python change event is made from.
    fn events<'py>(&self, py: Python<'py>) -> PyResult<Vec<EventParts<'py>>> {
        let plan = self.plan.get();
        self.records
            .iter()
            .map(|r| Ok((r.position, r.partition, r.offset, plan.reread(py, r)?)))
            .collect()
    }
}

/// `{(topic, partition): last offset + 1}` of `positions` (partition, offset).
pub(crate) fn next_offsets<'py>(
    topic: &Bound<'py, PyString>,
    positions: impl Iterator<Item = (i32, i64)>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut next: Vec<(i32, i64)> = Vec::new(); // a run has a few partitions
    for (partition, offset) in positions {
        match next.iter_mut().find(|(p, _)| *p == partition) {
            Some(entry) => entry.1 = entry.1.max(offset + 1),
            None => next.push((partition, offset + 1)),
        }
    }
    let dict = PyDict::new(topic.py());
    for (partition, offset) in next {
        dict.set_item((topic, partition), offset)?;
    }
    Ok(dict)
}

/// Per position (partition, offset): whether it is at or past `committed[(topic, partition)]`
/// (0 when absent), looked up once per partition, not per record.
pub(crate) fn kept_since(
    topic: &Bound<'_, PyString>,
    positions: impl Iterator<Item = (i32, i64)> + Clone,
    committed: &Bound<'_, PyDict>,
) -> PyResult<Vec<bool>> {
    let mut floors: Vec<(i32, i64)> = Vec::new();
    for (partition, _) in positions.clone() {
        if !floors.iter().any(|(p, _)| *p == partition) {
            let floor = match committed.get_item((topic, partition))? {
                Some(offset) => offset.extract::<i64>()?,
                None => 0,
            };
            floors.push((partition, floor));
        }
    }
    Ok(positions
        .map(|(partition, offset)| floors.iter().all(|&(p, f)| p != partition || offset >= f))
        .collect())
}

/// The distinct keys of runs' records in first-seen order, as Python bytes (made once), and
/// per run, per record, its key's index among them.
pub(crate) fn first_seen_keys<'a>(
    py: Python<'_>,
    runs: impl Iterator<Item = impl Iterator<Item = &'a [u8]>>,
) -> (Vec<Py<PyBytes>>, Vec<Vec<usize>>) {
    let mut slot_of: FxHashMap<&[u8], usize> = FxHashMap::default();
    let mut keys = Vec::new();
    let slots = runs
        .map(|records| {
            records
                .map(|key| {
                    *slot_of.entry(key).or_insert_with(|| {
                        keys.push(PyBytes::new(py, key).unbind());
                        keys.len() - 1
                    })
                })
                .collect()
        })
        .collect();
    (keys, slots)
}

/// Why an event is stale: the codes `operators/native_shard.py` maps to `operators/lww.py`'s
/// reasons.
const STALE_OLDER: u8 = 0;
const STALE_DELETED: u8 = 1;
const STALE_TRUNCATED: u8 = 2;

/// How a decided row is staged: the codes of `operators.pg_writer.StagedKind`.
const UPSERT: u8 = 0;
const DELETE: u8 = 1;
const DELETE_WITH_IMAGE: u8 = 2;

/// A shard's runs of one commit, in arrival order; `keys()` are the state keys to read, in
/// first-seen order, and `decide` takes their stored states in the same order.
#[pyclass(frozen, module = "cdc_native")]
pub(crate) struct NativeBatch {
    runs: Vec<Py<Run>>,
    /// The batch's state keys in first-seen order, as Python bytes (made once: the caller reads
    /// the states with them, `decide` returns them with the new states).
    keys: Vec<Py<PyBytes>>,
    /// Per run, per record: its key's index in `keys`.
    slots: Vec<Vec<usize>>,
}


/// One key's write: its last applied record, and the upsert whose image a soft delete keeps.
struct Write {
    last: At,
    image: Option<At>,
}

#[pymethods]
impl NativeBatch {
    #[new]
    fn new(py: Python<'_>, runs: Vec<Py<Run>>) -> Self {
        let (keys, slots) = first_seen_keys(
            py,
            runs.iter()
                .map(|run| run.get().records.iter().map(Record::state_key)),
        );
        NativeBatch { runs, keys, slots }
    }

    fn keys(&self, py: Python<'_>) -> Vec<Py<PyBytes>> {
        self.keys.iter().map(|key| key.clone_ref(py)).collect()
    }

    /// The batch's last-write-wins outcome, as `operators.lww.decide_batch` decides it, or None
    /// when a key has applied records of two plans (their images would have to be merged: the
    /// caller decides that batch in Python). `states` holds each key's stored state as
    /// `operators.state_store` encodes it (None: unknown key), `floors` each run's table
    /// truncate floor. With `soft` deletes, a delete keeps the batch's earlier image of its row.
    ///
    /// Returns `(applied, duplicates, new states, undo, staged, stale)`: new states and undo as
    /// `(key, encoded state)` pairs (undo: the state before, None for a new key); staged rows as
    /// `(run index, staged kind, COPY rows)`, one per plan and kind; stale events as
    /// `(run index, partition, offset, state key, version, applied version, reason code)`.
    fn decide<'py>(
        &self,
        py: Python<'py>,
        states: Vec<Option<Bound<'py, PyBytes>>>,
        floors: Vec<Option<Vec<u8>>>,
        soft: bool,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if states.len() != self.keys.len() || floors.len() != self.runs.len() {
            return Err(PyValueError::new_err("decide: states or floors do not match the batch"));
        }
        let runs: Vec<&Run> = self.runs.iter().map(|r| r.get()).collect();
        // (version, deleted) per key: stored, then as the batch moves it
        let mut current: Vec<Option<(&[u8], bool)>> = states
            .iter()
            .map(|state| {
                state.as_ref().map(|raw| {
                    let raw = raw.as_bytes();
                    (raw.get(1..).unwrap_or_default(), raw.first() == Some(&b'D'))
                })
            })
            .collect();
        let mut writes: Vec<Option<Write>> = (0..self.keys.len()).map(|_| None).collect();
        let (mut applied, mut duplicates) = (0usize, 0usize);
        let mut stale = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let floor = floors[i].as_deref();
            for (j, record) in run.records.iter().enumerate() {
                let slot = self.slots[i][j];
                let state = current[slot];
                let version = record.version();
                match judge(state, floor, version) {
                    Judged::Duplicate => duplicates += 1,
                    Judged::Stale(reason) => {
                        let above_floor = state.is_some_and(|(v, _)| v > floor.unwrap_or(b""));
                        let applied_version = match (above_floor, state) {
                            (true, Some((v, _))) => v,
                            _ => floor.unwrap_or(b""),
                        };
                        stale.push((
                            i,
                            record.partition,
                            record.offset,
                            self.keys[slot].clone_ref(py),
                            PyBytes::new(py, version),
                            PyBytes::new(py, applied_version),
                            reason,
                        ));
                    }
                    Judged::Applied => {
                        applied += 1;
                        current[slot] = Some((version, record.deleted));
                        let image = match &writes[slot] {
                            Some(previous) => {
                                let earlier = runs[previous.last.0];
                                if !earlier.plan.is(&run.plan) {
                                    return Ok(None);
                                }
                                previous.image
                            }
                            None => None,
                        };
                        let image = if record.deleted { image } else { Some((i, j)) };
                        writes[slot] = Some(Write {
                            last: (i, j),
                            image,
                        });
                    }
                }
            }
        }
        let mut new_states = Vec::new();
        let mut undo = Vec::new();
        let mut staged: Vec<(usize, u8, String)> = Vec::new();
        let mut group_of: HashMap<(usize, u8), usize> = HashMap::new();
        for (slot, write) in writes.iter().enumerate() {
            let Some(write) = write else { continue };
            let record = self.record(write.last);
            let key = self.keys[slot].bind(py);
            let mut encoded = Vec::with_capacity(record.version().len() + 1);
            encoded.push(if record.deleted { b'D' } else { b'L' });
            encoded.extend_from_slice(record.version());
            new_states.push((key.clone(), PyBytes::new(py, &encoded)));
            undo.push((key, states[slot].clone()));
            let run = runs[write.last.0];
            let (kind, fields) = match (record.deleted, write.image) {
                (false, _) => (UPSERT, record.fields()),
                (true, Some(image)) if soft => (DELETE_WITH_IMAGE, self.record(image).fields()),
                (true, _) => (DELETE, record.fields()),
            };
            let plan = run.plan.as_ptr() as usize;
            let group = *group_of.entry((plan, kind)).or_insert_with(|| {
                staged.push((write.last.0, kind, String::new()));
                staged.len() - 1
            });
            write_stage_row(&mut staged[group].2, fields, run.key_json(record), record.version());
        }
        let staged: Vec<_> = staged
            .into_iter()
            .map(|(run, kind, rows)| (run, kind, PyBytes::new(py, rows.as_bytes())))
            .collect();
        Ok(Some(PyTuple::new(
            py,
            [
                applied.into_pyobject(py)?.into_any(),
                duplicates.into_pyobject(py)?.into_any(),
                new_states.into_pyobject(py)?.into_any(),
                undo.into_pyobject(py)?.into_any(),
                staged.into_pyobject(py)?.into_any(),
                stale.into_pyobject(py)?.into_any(),
            ],
        )?))
    }
}

impl NativeBatch {
    fn record(&self, (run, record): At) -> &Record {
        &self.runs[run].get().records[record]
    }
}

enum Judged {
    Applied,
    Duplicate,
    Stale(u8),
}

/// `operators.lww.judge`.
fn judge(state: Option<(&[u8], bool)>, floor: Option<&[u8]>, version: &[u8]) -> Judged {
    if let Some(floor) = floor {
        if version <= floor && state.is_none_or(|(v, _)| v <= floor) {
            return Judged::Stale(STALE_TRUNCATED);
        }
    }
    match state {
        None => Judged::Applied,
        Some((v, _)) if version > v => Judged::Applied,
        Some((v, _)) if version == v => Judged::Duplicate,
        Some((_, deleted)) => Judged::Stale(if deleted { STALE_DELETED } else { STALE_OLDER }),
    }
}
