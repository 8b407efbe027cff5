//! The native cell step: a shard's cell runs of one commit decided as
//! `operators/cell_rows.decide_cells` decides their changes (with no partition or range deletion
//! and no row to revisit), and the stage rows `operators/cell_writer.CellWriter._copy` writes
//! for the decided rows, as `COPY` text. `operators/cell_meta.py` is the reference for the
//! versions (merge, contains, row_alive, cell_live, next_expiry, newest_write);
//! `tests/unit/test_native_cells.py` compares the two. Anything this module does not take is
//! *declined*: `decide` returns None and Python decides the whole batch. That is a stored state
//! that is not a cell state read here (another first byte or place, a meta with other members,
//! non-integers, a repeated column, a column name or tie with JSON escapes), a written column
//! the target's stage has not, a row whose runs have different targets, a negative write time
//! (Python's merge fails on one) and an expiry past Python's `datetime` range.

use std::fmt::Write;
use std::marker::PhantomData;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use rustc_hash::FxHashMap;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::calendar::datetime_from_micros;
use crate::cell_record::{CellRun, CellText, ChangeKind};
use crate::copy_text::{escape_copy, json_string, write_bytea, write_field};
use crate::run::first_seen_keys;
use crate::values::Val;

/// A cell's kinds (`cell_meta.VALUE`, `EXPIRING`, `NULL`).
const VALUE: i64 = 0;
const EXPIRING: i64 = 1;
const NULL: i64 = 2;
/// A cell state's first byte (`cell_rows._STATE`) and places (`cell_rows.Place`).
const STATE: u8 = b'C';
const PLACES: [u8; 3] = [b'N', b'L', b'T'];
const INT64_BIAS: i128 = 1 << 63;

/// A cell's rank `[ts, kind, expiry, tie]`: fields compare in this order, as Python lists do
/// (the tie's UTF-8 bytes order as its code points).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank<'a> {
    ts: i64,
    kind: i64,
    expires: i64,
    tie: &'a str,
}

/// A row's meta (`cell_meta.Meta`), its cells by column id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Meta<'a> {
    /// `m`: `[ts, expiry]`.
    marker: Option<(i64, i64)>,
    /// `d`.
    deleted: Option<i64>,
    /// `c`, sorted by column id (ids are one per name: equal metas have equal vectors).
    cells: Vec<(u32, Rank<'a>)>,
}

impl<'a> Meta<'a> {
    fn cell(&self, column: u32) -> Option<&Rank<'a>> {
        self.cells
            .binary_search_by_key(&column, |(c, _)| *c)
            .ok()
            .map(|i| &self.cells[i].1)
    }

    /// `cell_meta.merge(self, other)`. A side without an item stands for Python's `[-1]`: the
    /// other side's item is kept only when it is newer than the deletion, as there.
    fn merge(&self, other: &Meta<'a>) -> Meta<'a> {
        let deleted = self.deleted.unwrap_or(-1).max(other.deleted.unwrap_or(-1));
        let marker = match (self.marker, other.marker) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let (a, b) = (&self.cells, &other.cells);
        let mut cells = Vec::with_capacity(a.len().max(b.len()));
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let (column, rank) = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    i += 1;
                    j += 1;
                    (x.0, x.1.max(y.1))
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    i += 1;
                    *x
                }
                (Some(x), None) => {
                    i += 1;
                    *x
                }
                (_, Some(y)) => {
                    j += 1;
                    *y
                }
                (None, None) => unreachable!("the loop runs while a side has cells"),
            };
            if rank.ts > deleted {
                cells.push((column, rank));
            }
        }
        Meta {
            marker: marker.filter(|m| m.0 > deleted),
            deleted: (deleted >= 0).then_some(deleted),
            cells,
        }
    }

    /// `cell_meta._shadowed`: `merge(None, self)`.
    fn shadowed(&self) -> Meta<'a> {
        let deleted = self.deleted.unwrap_or(-1);
        Meta {
            marker: self.marker.filter(|m| m.0 > deleted),
            deleted: self.deleted.filter(|d| *d >= 0),
            cells: self
                .cells
                .iter()
                .copied()
                .filter(|(_, r)| r.ts > deleted)
                .collect(),
        }
    }

    /// `cell_meta.contains(self, delta)`.
    fn contains(&self, delta: &Meta<'a>) -> bool {
        (delta.deleted.is_none() || self.deleted == delta.deleted)
            && (delta.marker.is_none() || self.marker == delta.marker)
            && delta.cells.iter().all(|(c, r)| self.cell(*c) == Some(r))
    }

    /// `cell_meta.cell_live`.
    fn cell_live(&self, column: u32, now_us: i64) -> bool {
        self.cell(column).is_some_and(|r| live(r, now_us))
    }

    /// `cell_meta.row_alive`.
    fn row_alive(&self, now_us: i64) -> bool {
        self.marker
            .is_some_and(|(_, expires)| expires == 0 || now_us < expires)
            || self.cells.iter().any(|(_, r)| live(r, now_us))
    }

    /// `cell_meta.next_expiry`.
    fn next_expiry(&self, now_us: i64) -> Option<i64> {
        self.cells
            .iter()
            .filter(|(_, r)| r.kind == EXPIRING && r.expires > now_us)
            .map(|(_, r)| r.expires)
            .chain(self.marker.map(|m| m.1).filter(|e| *e > now_us))
            .min()
    }

    /// `cell_meta.newest_write`.
    fn newest_write(&self) -> i64 {
        let head = self
            .deleted
            .unwrap_or(0)
            .max(self.marker.map_or(0, |m| m.0));
        self.cells.iter().map(|(_, r)| r.ts).fold(head, i64::max)
    }

    /// The meta as JSON (orjson's compact form; key order aside, Python reads the same value).
    fn write_json(&self, out: &mut String, names: &[&str]) {
        out.push_str("{\"c\":{");
        for (i, (column, rank)) in self.cells.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(out, names[*column as usize]);
            write!(out, ":[{},{},{},", rank.ts, rank.kind, rank.expires).unwrap();
            json_string(out, rank.tie);
            out.push(']');
        }
        out.push('}');
        if let Some(deleted) = self.deleted {
            write!(out, ",\"d\":{deleted}").unwrap();
        }
        if let Some((ts, expires)) = self.marker {
            write!(out, ",\"m\":[{ts},{expires}]").unwrap();
        }
        out.push('}');
    }
}

fn live(rank: &Rank<'_>, now_us: i64) -> bool {
    rank.kind != NULL && (rank.expires == 0 || now_us < rank.expires)
}

/// A stored meta as JSON: exactly the keys `m`, `d` (optional) and `c`, integers that fit 64
/// bits, names and ties without escapes. Anything else fails to read (the batch is declined).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredMeta<'a> {
    #[serde(default, deserialize_with = "present")]
    m: Option<(i64, i64)>,
    #[serde(default, deserialize_with = "present")]
    d: Option<i64>,
    #[serde(borrow)]
    c: StoredCells<'a>,
}

/// A member that is there must have a value (Python fails on `"m": null`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

type StoredRank<'a> = (i64, i64, i64, &'a str);

struct StoredCells<'a>(Vec<(&'a str, StoredRank<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for StoredCells<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CellsVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for CellsVisitor<'a> {
            type Value = StoredCells<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of cell ranks")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut cells = Vec::new();
                while let Some(entry) = map.next_entry::<&'a str, StoredRank<'a>>()? {
                    cells.push(entry);
                }
                Ok(StoredCells(cells))
            }
        }
        deserializer.deserialize_map(CellsVisitor(PhantomData))
    }
}

/// Column names, one id each: the runs' columns and those of the stored metas.
#[derive(Default)]
struct Columns<'a> {
    names: Vec<&'a str>,
    ids: FxHashMap<&'a str, u32>,
}

impl<'a> Columns<'a> {
    fn id(&mut self, name: &'a str) -> u32 {
        *self.ids.entry(name).or_insert_with(|| {
            self.names.push(name);
            (self.names.len() - 1) as u32
        })
    }
}

/// `cell_rows.decode_cell_state`: (place letter, meta); None when it is not a cell state this
/// module reads (Python then decides: it raises, or takes a form read here as not a meta).
fn parse_state<'a>(
    raw: Option<&'a [u8]>,
    columns: &mut Columns<'a>,
) -> Option<(u8, Option<Meta<'a>>)> {
    let Some(raw) = raw else {
        return Some((b'N', None));
    };
    if raw.len() < 2 || raw[0] != STATE || !PLACES.contains(&raw[1]) {
        return None;
    }
    let stored: StoredMeta<'a> = serde_json::from_slice(&raw[2..]).ok()?;
    let mut cells: Vec<(u32, Rank<'a>)> = stored
        .c
        .0
        .into_iter()
        .map(|(name, (ts, kind, expires, tie))| {
            (
                columns.id(name),
                Rank {
                    ts,
                    kind,
                    expires,
                    tie,
                },
            )
        })
        .collect();
    cells.sort_unstable_by_key(|(c, _)| *c);
    if cells.windows(2).any(|w| w[0].0 == w[1].0) {
        return None; // a repeated column: Python keeps the last, not worth following
    }
    Some((
        raw[1],
        Some(Meta {
            marker: stored.m,
            deleted: stored.d,
            cells,
        }),
    ))
}

/// One run's target: its index, its key columns' order, its stage's data columns.
type Target = (usize, Vec<usize>, Vec<String>);

/// One row the batch touches (`cell_rows._Row`).
struct Row<'a> {
    /// (run, record) of its first change: its key and its target.
    first: (usize, usize),
    /// Its stored place's letter.
    place: u8,
    stored: Option<Meta<'a>>,
    meta: Option<Meta<'a>>,
    /// Per column, the winning cell a change of the batch wrote: rank and value.
    won: Vec<(u32, Rank<'a>, Option<&'a CellText>)>,
}

/// A stale change: (run, partition, offset, key slot, ts_us, newest write before).
type Stale = (usize, i32, i64, usize, i64, i64);
/// One target's stage: (target index, COPY text, rows per (stored place, alive)).
type Stage = (usize, String, Vec<((u8, bool), usize)>);

/// What `decide` finds, before it becomes Python objects.
#[derive(Default)]
struct Decided {
    applied: usize,
    duplicates: usize,
    counts: Vec<(usize, &'static str, &'static str, usize)>,
    /// (key slot, new state).
    states: Vec<(usize, Vec<u8>)>,
    staged: Vec<Stage>,
    stale: Vec<Stale>,
}

impl Decided {
    fn count(&mut self, run: usize, op: &'static str, outcome: &'static str) {
        match self
            .counts
            .iter_mut()
            .find(|c| c.0 == run && c.1 == op && c.2 == outcome)
        {
            Some(c) => c.3 += 1,
            None => self.counts.push((run, op, outcome, 1)),
        }
    }
}

/// A shard's cell runs of one commit, in arrival order; `keys()` are the row ids to read, in
/// first-seen order, and `decide` takes their stored states in the same order.
#[pyclass(frozen, module = "cdc_native")]
pub(crate) struct CellBatch {
    runs: Vec<Py<CellRun>>,
    keys: Vec<Py<PyBytes>>,
    /// Per run, per record: its row's index in `keys`.
    slots: Vec<Vec<usize>>,
}

#[pymethods]
impl CellBatch {
    #[new]
    fn new(py: Python<'_>, runs: Vec<Py<CellRun>>) -> Self {
        let (keys, slots) = first_seen_keys(
            py,
            runs.iter()
                .map(|run| run.get().records.iter().map(|record| &*record.row_id)),
        );
        CellBatch { runs, keys, slots }
    }

    fn keys(&self, py: Python<'_>) -> Vec<Py<PyBytes>> {
        self.keys.iter().map(|key| key.clone_ref(py)).collect()
    }

    /// The batch's decision as `cell_rows.decide_cells` makes it, with its stage rows, or None
    /// (decline: Python decides the batch). `stored`: the RocksDB values of `keys()`;
    /// `targets`: per run, (target index, key order: indexes into the run's key columns in the
    /// target's key order, the stage's data columns (`cell_writer.data_columns`)).
    ///
    /// Returns `(applied, duplicates, counts, states, replaced, staged, stale)`: counts as
    /// `(run, op, outcome, n)`; states and replaced as `(row id, bytes)` (replaced: the stored
    /// value, None for a new row); staged as `(target index, COPY text, {(stored place,
    /// alive): rows})`; stale as `(run, partition, offset, row id, version, newest version)`.
    fn decide<'py>(
        &self,
        py: Python<'py>,
        stored: Vec<Option<Bound<'py, PyBytes>>>,
        targets: Vec<Target>,
        now_us: i64,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if stored.len() != self.keys.len() || targets.len() != self.runs.len() {
            return Err(PyValueError::new_err(
                "decide: stored or targets do not match the batch",
            ));
        }
        let runs: Vec<&CellRun> = self.runs.iter().map(|r| r.get()).collect();
        for (run, (_, key_order, _)) in runs.iter().zip(&targets) {
            if key_order.iter().any(|k| *k >= run.key_columns.len()) {
                return Err(PyValueError::new_err("decide: a key order is out of range"));
            }
        }
        let raw: Vec<Option<&[u8]>> = stored
            .iter()
            .map(|s| s.as_ref().map(|b| b.as_bytes()))
            .collect();
        let slots = &self.slots;
        let Some(decided) = py.allow_threads(|| decide(&runs, slots, &raw, &targets, now_us))
        else {
            return Ok(None);
        };
        let key = |slot: usize| self.keys[slot].clone_ref(py);
        let states: Vec<_> = decided
            .states
            .iter()
            .map(|(slot, state)| (key(*slot), PyBytes::new(py, state)))
            .collect();
        let replaced: Vec<_> = decided
            .states
            .iter()
            .map(|(slot, _)| (key(*slot), stored[*slot].clone()))
            .collect();
        let staged = decided
            .staged
            .iter()
            .map(|(target, text, moves)| {
                let counted = PyDict::new(py);
                for ((place, alive), n) in moves {
                    counted.set_item(((*place as char).to_string(), *alive), *n)?;
                }
                Ok((*target, PyBytes::new(py, text.as_bytes()), counted))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let stale: Vec<_> = decided
            .stale
            .iter()
            .map(|&(run, partition, offset, slot, ts, newest)| {
                (
                    run,
                    partition,
                    offset,
                    key(slot),
                    PyBytes::new(py, &writetime_version(ts)),
                    PyBytes::new(py, &writetime_version(newest)),
                )
            })
            .collect();
        Ok(Some(PyTuple::new(
            py,
            [
                decided.applied.into_pyobject(py)?.into_any(),
                decided.duplicates.into_pyobject(py)?.into_any(),
                decided.counts.into_pyobject(py)?.into_any(),
                states.into_pyobject(py)?.into_any(),
                replaced.into_pyobject(py)?.into_any(),
                staged.into_pyobject(py)?.into_any(),
                stale.into_pyobject(py)?.into_any(),
            ],
        )?))
    }
}

/// `operators.versions.writetime_version`.
fn writetime_version(ts_us: i64) -> [u8; 9] {
    let mut version = [0x03; 9];
    version[1..].copy_from_slice(&((i128::from(ts_us) + INT64_BIAS) as u64).to_be_bytes());
    version
}

/// The cell rank a write gives its cell (`cell_meta.cell_rank`).
fn rank_of(ts_us: i64, value: Option<&CellText>, expires_us: i64) -> Rank<'_> {
    match value {
        None => Rank {
            ts: ts_us,
            kind: NULL,
            expires: 0,
            tie: "",
        },
        Some(text) if expires_us != 0 => Rank {
            ts: ts_us,
            kind: EXPIRING,
            expires: expires_us,
            tie: &text.tie,
        },
        Some(text) => Rank {
            ts: ts_us,
            kind: VALUE,
            expires: 0,
            tie: &text.tie,
        },
    }
}

/// `decide_cells` over the runs' records, then `_settle` of each row with its stage row; None
/// to decline.
fn decide<'a>(
    runs: &[&'a CellRun],
    slots: &[Vec<usize>],
    raw: &[Option<&'a [u8]>],
    targets: &'a [Target],
    now_us: i64,
) -> Option<Decided> {
    let mut columns = Columns::default();
    let run_columns: Vec<Vec<u32>> = runs
        .iter()
        .map(|run| run.columns.iter().map(|c| columns.id(c)).collect())
        .collect();
    let staged_by_target: Vec<Vec<bool>> = runs
        .iter()
        .zip(targets)
        .map(|(run, (_, _, data))| {
            run.columns
                .iter()
                .map(|c| data.iter().any(|d| **d == **c))
                .collect()
        })
        .collect();
    let mut rows: Vec<Option<Row<'a>>> = (0..raw.len()).map(|_| None).collect();
    let mut out = Decided::default();
    for (i, run) in runs.iter().enumerate() {
        for (j, record) in run.records.iter().enumerate() {
            if record.ts_us < 0 {
                return None; // Python's merge of a negative deletion time fails
            }
            let slot = slots[i][j];
            let row = match &mut rows[slot] {
                Some(row) => {
                    if targets[row.first.0].0 != targets[i].0 {
                        return None;
                    }
                    row
                }
                empty => {
                    let (place, stored) = parse_state(raw[slot], &mut columns)?;
                    empty.insert(Row {
                        first: (i, j),
                        place,
                        meta: stored.clone(),
                        stored,
                        won: Vec::new(),
                    })
                }
            };
            let ts = record.ts_us;
            let delete = record.kind == ChangeKind::RowDelete;
            let delta = if delete {
                Meta {
                    marker: None,
                    deleted: Some(ts),
                    cells: Vec::new(),
                }
            } else {
                let mut cells = Vec::with_capacity(record.cells.len());
                for cell in &record.cells {
                    let column = usize::from(cell.column);
                    if !staged_by_target[i][column] {
                        return None;
                    }
                    cells.push((
                        run_columns[i][column],
                        rank_of(ts, cell.value.as_ref(), cell.expires_us),
                    ));
                }
                cells.sort_unstable_by_key(|(c, _)| *c);
                Meta {
                    marker: record.marker.then_some((ts, record.marker_expires_us)),
                    deleted: None,
                    cells,
                }
            };
            let op = if delete { "delete" } else { "write" };
            let merged = match &row.meta {
                None => delta.shadowed(),
                Some(before) => {
                    let merged = before.merge(&delta);
                    if merged == *before {
                        if before.contains(&delta) {
                            out.count(i, op, "duplicate");
                            out.duplicates += 1;
                        } else {
                            out.count(i, op, "stale");
                            out.stale.push((
                                i,
                                record.partition,
                                record.offset,
                                slot,
                                ts,
                                before.newest_write(),
                            ));
                        }
                        continue;
                    }
                    merged
                }
            };
            out.count(i, op, "applied");
            out.applied += 1;
            for cell in &record.cells {
                let column = run_columns[i][usize::from(cell.column)];
                let rank = merged.cell(column);
                if rank.is_some() && rank == delta.cell(column) {
                    let won = (column, *rank.unwrap(), cell.value.as_ref());
                    match row.won.iter_mut().find(|w| w.0 == column) {
                        Some(w) => *w = won,
                        None => row.won.push(won),
                    }
                }
            }
            row.meta = Some(merged);
        }
    }
    for (slot, row) in rows.iter().enumerate() {
        let Some(row) = row else { continue };
        settle(&mut out, slot, row, runs, targets, &columns, now_us)?;
    }
    Some(out)
}

/// `cell_rows._settle` of one row, and its stage row (`CellWriter._copy`); None to decline.
fn settle(
    out: &mut Decided,
    slot: usize,
    row: &Row<'_>,
    runs: &[&CellRun],
    targets: &[Target],
    columns: &Columns<'_>,
    now_us: i64,
) -> Option<()> {
    let Some(meta) = &row.meta else {
        return Some(());
    };
    if Some(meta) == row.stored.as_ref() && !expired_in_table(row, now_us) {
        return Some(());
    }
    let alive = meta.row_alive(now_us);
    let mut set: Vec<u32> = row.won.iter().map(|w| w.0).collect();
    if let Some(stored) = &row.stored {
        set.extend(stored.cells.iter().map(|(c, _)| *c));
    }
    set.sort_unstable();
    set.dedup();
    // the columns the write sets: a winning cell's value, None for a cell that no longer reads
    let mut values: Vec<(u32, Option<&CellText>)> = Vec::with_capacity(set.len());
    for column in set {
        let live = meta.cell_live(column, now_us);
        let won = row.won.iter().find(|w| w.0 == column);
        match won {
            Some(w) if live && meta.cell(column) == Some(&w.1) => values.push((column, w.2)),
            _ if !live => values.push((column, None)),
            _ => {}
        }
    }
    let mut state = String::with_capacity(64);
    meta.write_json(&mut state, &columns.names);
    let mut encoded = Vec::with_capacity(state.len() + 2);
    encoded.push(STATE);
    encoded.push(if alive { b'L' } else { b'T' });
    encoded.extend_from_slice(state.as_bytes());
    out.states.push((slot, encoded));

    let (run, record) = row.first;
    let record = &runs[run].records[record];
    let (target, key_order, data) = &targets[run];
    let group = match out.staged.iter().position(|s| s.0 == *target) {
        Some(group) => group,
        None => {
            out.staged.push((*target, String::new(), Vec::new()));
            out.staged.len() - 1
        }
    };
    let (_, text, moves) = &mut out.staged[group];
    match moves.iter_mut().find(|m| m.0 == (row.place, alive)) {
        Some(m) => m.1 += 1,
        None => moves.push(((row.place, alive), 1)),
    }
    for k in key_order {
        text.push_str(&record.key_copy[*k]);
        text.push('\t');
    }
    // `_cdc_set`: a bit per data column, 1 where the row sets it
    let mut set_bits = String::with_capacity(data.len());
    for name in data {
        let set = columns
            .ids
            .get(name.as_str())
            .and_then(|id| values.iter().find(|(c, _)| c == id));
        match set.and_then(|(_, v)| *v) {
            Some(v) => text.push_str(&v.copy),
            None => text.push_str("\\N"),
        }
        text.push('\t');
        set_bits.push(if set.is_some() { '1' } else { '0' });
    }
    text.push_str(&set_bits);
    text.push('\t');
    let mut scratch = String::new();
    escape_copy(text, &record.key_json);
    text.push('\t');
    match &row.stored {
        Some(stored) => {
            scratch.clear();
            stored.write_json(&mut scratch, &columns.names);
            escape_copy(text, &scratch);
        }
        None => text.push_str("\\N"),
    }
    text.push('\t');
    text.push(row.place as char);
    text.push('\t');
    text.push(if alive { 't' } else { 'f' });
    text.push('\t');
    escape_copy(text, &state);
    text.push('\t');
    write_bytea(text, &writetime_version(meta.newest_write()));
    text.push('\t');
    match meta.next_expiry(now_us) {
        Some(expires) => {
            let (date, clock) = datetime_from_micros(i128::from(expires))?;
            write_field(text, &Val::DateTime(date, clock));
            text.push_str("+00:00");
        }
        None => text.push_str("\\N"),
    }
    text.push('\n');
    Some(())
}

/// `cell_rows._expired_in_table`.
fn expired_in_table(row: &Row<'_>, now_us: i64) -> bool {
    row.place == b'L'
        && row
            .stored
            .as_ref()
            .and_then(|stored| stored.next_expiry(0))
            .is_some_and(|expiry| expiry <= now_us)
}
