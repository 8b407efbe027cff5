//! The source's native Kafka consumer (`cdc_native.Fetcher`) and what it reads (`Fetched`).
//!
//! The Python consumer made a `Message`, two `bytes` and a `RawMessage` of every message on the
//! worker thread, under the interpreter lock: a third of the replicator's time. This one reads
//! on a thread of its own, ahead of the worker (bounded by `MAX_AHEAD_BYTES`): it copies each
//! partition's messages into one buffer and, where the decoder has taught it the topic's plan
//! (`Fetcher.teach`), already makes the records of the plain ones (`Prepared`), which
//! `FastPlan.decode_runs` then takes as they are. Python objects are made only of the messages
//! Python decodes. Offsets stay in Postgres: the consumer never commits, like the Python one.
//!
//! A message whose record was made starts with its plan's schema bytes (most of a Debezium JSON
//! message): the buffer keeps only the rest, and the value is put together again in the rare
//! case it is read (a batch decoded with another plan than the one that made its records).

use std::borrow::Cow;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use rdkafka::bindings::rd_kafka_get_watermark_offsets;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use rustc_hash::FxHashMap;

use crate::run::Record;
use crate::{optional_bytes, FastPlan};

/// How far (buffered bytes not yet taken) the reading thread may read ahead of the worker.
const MAX_AHEAD_BYTES: usize = 32 << 20;
/// How many messages the reading thread polls before it hands them over.
const READ_BATCH: usize = 256;
/// How long the reading thread waits for a message before it looks whether it should stop.
const POLL_WAIT: Duration = Duration::from_millis(50);

/// Where one message's key and value are in its batch's buffer.
struct Entry {
    offset: i64,
    key: Option<(usize, usize)>,
    value: Option<(usize, usize)>,
    /// The value starts with the batch plan's value prefix, which the buffer does not hold.
    elided: bool,
}

/// A batch's messages that have a key and a value (`Fetched::readable`).
pub(crate) struct Readable<'a> {
    pub indexes: Vec<u32>,
    pub messages: Vec<(Cow<'a, [u8]>, &'a [u8])>,
    /// `base + index` of the others.
    pub others: Vec<u32>,
}

/// What the reading thread made of a batch with one plan: its plain messages' records by shard
/// (a record's position is its message's index in the batch), and the indexes of the messages
/// it left for the decoder.
pub(crate) struct Prepared {
    pub plan: Arc<Py<FastPlan>>,
    pub records: Vec<Vec<Record>>,
    pub unread: Vec<u32>,
}

/// One partition's messages as they accumulate.
#[derive(Default)]
struct Pending {
    entries: Vec<Entry>,
    data: Vec<u8>,
    prepared: Option<Prepared>,
    /// The plan whose value prefix the elided values start with (the batch's first plan).
    prefix_of: Option<Arc<Py<FastPlan>>>,
}

impl Pending {
    /// Adds a message, without the first `elide` bytes of its value (the batch plan's value
    /// prefix, which it starts with); returns its index.
    fn push(&mut self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>, elide: usize) -> u32 {
        let key = key.map(|k| self.append(k));
        let value = value.map(|v| self.append(&v[elide..]));
        let elided = elide > 0;
        self.entries.push(Entry {
            offset,
            key,
            value,
            elided,
        });
        (self.entries.len() - 1) as u32
    }

    fn append(&mut self, bytes: &[u8]) -> (usize, usize) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        (start, self.data.len())
    }
}

/// `(offset, key, value)`
type Triple<'py> = (
    i64,
    Option<Bound<'py, PyBytes>>,
    Option<Bound<'py, PyBytes>>,
);

/// Consecutive messages of one partition, in offset order: the source's unit of work.
#[pyclass(frozen, module = "cdc_native")]
pub(crate) struct Fetched {
    topic: Py<PyString>,
    partition: i32,
    messages: Pending,
    /// The reading thread's records, until the decoder takes them.
    prepared: Mutex<Option<Prepared>>,
}

impl Fetched {
    pub(crate) fn topic(&self) -> &Py<PyString> {
        &self.topic
    }

    pub(crate) fn partition(&self) -> i32 {
        self.partition
    }

    pub(crate) fn count(&self) -> usize {
        self.messages.entries.len()
    }

    pub(crate) fn offset_of(&self, index: usize) -> i64 {
        self.messages.entries[index].offset
    }

    /// The key and value of a message that has both.
    pub(crate) fn key_value(&self, index: usize) -> Option<(&[u8], Cow<'_, [u8]>)> {
        let entry = &self.messages.entries[index];
        Some((self.slice(entry.key?), self.value(entry)?))
    }

    /// The messages at `indexes` that have a key and a value, as (value, key), with their
    /// indexes; and the positions (`base + index`) of the others, for the Python decoder.
    pub(crate) fn readable(&self, indexes: Vec<u32>, base: u32) -> Readable<'_> {
        let mut readable = Readable {
            indexes: Vec::with_capacity(indexes.len()),
            messages: Vec::with_capacity(indexes.len()),
            others: Vec::new(),
        };
        for index in indexes {
            match self.key_value(index as usize) {
                Some((key, value)) => {
                    readable.indexes.push(index);
                    readable.messages.push((value, key));
                }
                None => readable.others.push(base + index),
            }
        }
        readable
    }

    fn value(&self, entry: &Entry) -> Option<Cow<'_, [u8]>> {
        let kept = self.slice(entry.value?);
        if !entry.elided {
            return Some(Cow::Borrowed(kept));
        }
        let plan = self.messages.prefix_of.as_ref()?;
        Some(Cow::Owned([plan.get().value_prefix(), kept].concat()))
    }

    /// The records the reading thread made with `plan` for `shards` shards, once.
    pub(crate) fn take_prepared(&self, plan: &Py<FastPlan>, shards: u32) -> Option<Prepared> {
        let mut prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        match prepared.as_ref() {
            Some(p) if p.plan.as_ptr() == plan.as_ptr() && p.records.len() == shards as usize => {
                prepared.take()
            }
            _ => None,
        }
    }

    fn slice(&self, (start, end): (usize, usize)) -> &[u8] {
        &self.messages.data[start..end]
    }

    fn entry(&self, index: usize) -> PyResult<&Entry> {
        self.messages
            .entries
            .get(index)
            .ok_or_else(|| PyIndexError::new_err("no such message in this batch"))
    }
}

#[pymethods]
impl Fetched {
    /// A batch of `(offset, key, value)` read by other means (the Python consumer, tests).
    #[new]
    fn new(topic: Bound<'_, PyString>, partition: i32, messages: Vec<Triple<'_>>) -> Self {
        let mut pending = Pending::default();
        for (offset, key, value) in &messages {
            pending.push(
                *offset,
                key.as_ref().map(|k| k.as_bytes()),
                value.as_ref().map(|v| v.as_bytes()),
                0,
            );
        }
        Fetched {
            topic: topic.unbind(),
            partition,
            messages: pending,
            prepared: Mutex::new(None),
        }
    }

    #[getter(topic)]
    fn py_topic(&self, py: Python<'_>) -> Py<PyString> {
        self.topic.clone_ref(py)
    }

    #[getter(partition)]
    fn py_partition(&self) -> i32 {
        self.partition
    }

    /// How many records the reading thread made ahead (not yet taken by the decoder).
    #[getter]
    fn ahead(&self) -> usize {
        let prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        prepared
            .as_ref()
            .map_or(0, |p| p.records.iter().map(Vec::len).sum())
    }

    /// The offset after the batch's last message.
    #[getter]
    fn next_offset(&self) -> PyResult<i64> {
        let last = self.messages.entries.last();
        last.map(|e| e.offset + 1)
            .ok_or_else(|| PyValueError::new_err("an empty batch"))
    }

    fn __len__(&self) -> usize {
        self.count()
    }

    fn offset(&self, index: usize) -> PyResult<i64> {
        Ok(self.entry(index)?.offset)
    }

    /// `(topic, partition, offset, key, value)` of one message.
    fn message<'py>(&self, py: Python<'py>, index: usize) -> PyResult<Bound<'py, PyTuple>> {
        let entry = self.entry(index)?;
        PyTuple::new(
            py,
            [
                self.topic.bind(py).clone().into_any(),
                self.partition.into_pyobject(py)?.into_any(),
                entry.offset.into_pyobject(py)?.into_any(),
                optional_bytes(py, entry.key.map(|range| self.slice(range))),
                optional_bytes(py, self.value(entry).as_deref()),
            ],
        )
    }
}

/// A partition's messages read and not yet taken.
struct Part {
    topic: String,
    partition: i32,
    pending: Pending,
    /// The last batch's message count and bytes: the next is likely as large, so its buffers
    /// grow once (when its first message comes), not by doubling.
    sizes: (usize, usize),
}

/// A message the reading thread polled, with the record it made of it outside the lock.
struct Polled<'c> {
    msg: BorrowedMessage<'c>,
    plan: Option<Arc<Py<FastPlan>>>,
    read: Option<(u32, Record)>,
}

impl Part {
    /// Adds one message, with its record if it was made with the plan of the batch's first;
    /// returns the bytes it added to the buffer.
    fn push(&mut self, polled: Polled<'_>, shards: u32) -> usize {
        let pending = &mut self.pending;
        let msg = &polled.msg;
        if pending.entries.capacity() == 0 {
            pending.entries.reserve(self.sizes.0);
            pending.data.reserve(self.sizes.1);
            pending.prepared = polled.plan.as_ref().map(|plan| Prepared {
                plan: plan.clone(),
                records: (0..shards).map(|_| Vec::new()).collect(),
                unread: Vec::new(),
            });
            pending.prefix_of = polled.plan.clone();
        }
        let before = pending.data.len();
        let batch_plan = pending.prepared.as_ref().map(|p| Arc::as_ptr(&p.plan));
        let Some(batch_plan) = batch_plan else {
            // no plan when the batch began: the decoder reads all of it
            pending.push(msg.offset(), msg.key(), msg.payload(), 0);
            return pending.data.len() - before;
        };
        let made = match (polled.read, &polled.plan) {
            (Some(read), Some(plan)) if Arc::as_ptr(plan) == batch_plan => {
                Some((read, plan.get().value_prefix().len()))
            }
            _ => None,
        };
        let elide = made.as_ref().map_or(0, |(_, prefix)| *prefix);
        let index = pending.push(msg.offset(), msg.key(), msg.payload(), elide);
        let prepared = pending.prepared.as_mut().expect("the batch has a plan");
        match made {
            Some(((shard, mut record), _)) => {
                record.position = index;
                prepared.records[shard as usize].push(record);
            }
            None => prepared.unread.push(index),
        }
        pending.data.len() - before
    }
}

/// What the worker thread and the reading thread share.
#[derive(Default)]
struct Shared {
    parts: Mutex<Vec<Part>>,
    /// Each topic's newest plan, as the decoder taught it.
    plans: Mutex<FxHashMap<String, Arc<Py<FastPlan>>>>,
    /// Signalled when messages arrive (`fetch` waits on it) and when the worker takes some
    /// (the reading thread waits on it while it is `MAX_AHEAD_BYTES` ahead).
    changed: Condvar,
    ahead_bytes: AtomicUsize,
    arrived: AtomicUsize,
    problems: Mutex<Problems>,
    /// librdkafka found a partition's fetch offset out of range (`auto.offset.reset=error`
    /// then stops that partition; `Fetcher.offsets_reset` tells the source, which finds which).
    offset_reset: AtomicBool,
    stop: AtomicBool,
}

#[derive(Default)]
struct Problems {
    warnings: Vec<String>,
    fatal: Option<String>,
}

impl Shared {
    fn parts(&self) -> MutexGuard<'_, Vec<Part>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn problems(&self) -> MutexGuard<'_, Problems> {
        self.problems.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plan_of(&self, topic: &str) -> Option<Arc<Py<FastPlan>>> {
        let plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans.get(topic).cloned()
    }

    /// The reading thread: poll, make records, copy, until told to stop. It polls up to
    /// `READ_BATCH` messages and makes their records before it takes the lock once for them.
    fn read(&self, consumer: &BaseConsumer, shards: u32) {
        let mut plans: FxHashMap<String, Option<Arc<Py<FastPlan>>>> = FxHashMap::default();
        while !self.stop.load(Ordering::Relaxed) {
            if self.ahead_bytes.load(Ordering::Relaxed) >= MAX_AHEAD_BYTES {
                let parts = self.parts();
                drop(self.changed.wait_timeout(parts, POLL_WAIT));
                continue;
            }
            plans.clear(); // a plan taught since the last round counts from this one
            let mut polled = Vec::with_capacity(READ_BATCH);
            let mut reset = false;
            let mut wait = POLL_WAIT;
            while polled.len() < READ_BATCH {
                match consumer.poll(wait) {
                    None => break,
                    Some(Ok(msg)) => {
                        let plan = match plans.get(msg.topic()) {
                            Some(plan) => plan.clone(),
                            None => {
                                let plan = self.plan_of(msg.topic());
                                plans.insert(msg.topic().to_owned(), plan.clone());
                                plan
                            }
                        };
                        let read = match (&plan, msg.key(), msg.payload()) {
                            (Some(plan), Some(key), Some(value)) => plan.get().plain_record(
                                value,
                                key,
                                0, // its index in its batch, set under the lock
                                msg.partition(),
                                msg.offset(),
                                shards,
                            ),
                            _ => None,
                        };
                        polled.push(Polled { msg, plan, read });
                    }
                    Some(Err(err)) => {
                        reset |= matches!(
                            err,
                            KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)
                        );
                        if !self.note(consumer, err) {
                            return;
                        }
                    }
                }
                wait = Duration::ZERO;
            }
            if !polled.is_empty() {
                self.add(polled, shards);
            }
            if reset {
                // after the messages polled before it: the source looks for the partition
                // that stopped among those with nothing left to take
                self.offset_reset.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Notes a librdkafka error; false when it is fatal (the thread stops; `fetch` raises).
    fn note(&self, consumer: &BaseConsumer, err: KafkaError) -> bool {
        let fatal = consumer.client().fatal_error();
        let mut problems = self.problems();
        match fatal {
            Some((code, reason)) => {
                problems.fatal = Some(format!("Kafka: fatal error {code:?}: {reason}"));
                false
            }
            None => {
                problems.warnings.push(err.to_string());
                true
            }
        }
    }

    /// Hands polled messages to their parts, under the lock once.
    fn add(&self, polled: Vec<Polled<'_>>, shards: u32) {
        let count = polled.len();
        let mut bytes = 0;
        let mut parts = self.parts();
        let mut last = usize::MAX; // the part of the previous message
        for one in polled {
            let (topic, partition) = (one.msg.topic(), one.msg.partition());
            let found = match parts.get(last) {
                Some(p) if p.partition == partition && p.topic == topic => Some(last),
                _ => parts
                    .iter()
                    .position(|p| p.partition == partition && p.topic == topic),
            };
            if let Some(at) = found {
                bytes += parts[at].push(one, shards);
                last = at;
            } // else: removed since it was fetched
        }
        self.ahead_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.arrived.fetch_add(count, Ordering::Relaxed);
        drop(parts);
        self.changed.notify_all();
    }
}

/// One librdkafka consumer for the partitions a worker reads, read by a thread of its own (see
/// `WorkerConsumer` in `operators/kafka_source.py`, whose interface this follows).
#[pyclass(frozen, module = "cdc_native")]
pub(crate) struct Fetcher {
    consumer: Arc<BaseConsumer>,
    shared: Arc<Shared>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

fn kafka_error(what: &str, err: KafkaError) -> PyErr {
    PyRuntimeError::new_err(format!("Kafka: {what}: {err}"))
}

fn one_partition(topic: &str, partition: i32, offset: Option<i64>) -> PyResult<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    let mut entry = list.add_partition(topic, partition);
    if let Some(offset) = offset {
        entry
            .set_offset(Offset::Offset(offset))
            .map_err(|e| kafka_error("offset", e))?;
    }
    Ok(list)
}

#[pymethods]
impl Fetcher {
    /// `config`: librdkafka properties (one this build does not know is a ValueError);
    /// `shards`: the flow's shard count, which the records are made for.
    #[new]
    fn new(config: Vec<(String, String)>, shards: u32) -> PyResult<Self> {
        if shards == 0 {
            return Err(PyValueError::new_err("native Kafka consumer: no shards"));
        }
        let mut client = ClientConfig::new();
        for (name, value) in config {
            client.set(name, value);
        }
        let consumer: Arc<BaseConsumer> = Arc::new(
            client
                .create()
                .map_err(|e| PyValueError::new_err(format!("native Kafka consumer: {e}")))?,
        );
        let shared = Arc::new(Shared::default());
        let reader = {
            let (consumer, shared) = (consumer.clone(), shared.clone());
            std::thread::Builder::new()
                .name("cdc-kafka-read".into())
                .spawn(move || shared.read(&consumer, shards))
                .map_err(|e| PyRuntimeError::new_err(format!("native Kafka consumer: {e}")))?
        };
        Ok(Fetcher {
            consumer,
            shared,
            reader: Mutex::new(Some(reader)),
        })
    }

    /// Start reading a partition at `offset`.
    fn add(&self, topic: &str, partition: i32, offset: i64) -> PyResult<()> {
        self.shared.parts().push(Part {
            topic: topic.to_owned(),
            partition,
            pending: Pending::default(),
            sizes: (0, 0),
        });
        let list = one_partition(topic, partition, Some(offset))?;
        self.consumer
            .incremental_assign(&list)
            .map_err(|e| kafka_error("assign", e))
    }

    /// Stop reading a partition; what was read of it and not taken is dropped.
    fn remove(&self, topic: &str, partition: i32) -> PyResult<()> {
        let list = one_partition(topic, partition, None)?;
        self.consumer
            .incremental_unassign(&list)
            .map_err(|e| kafka_error("unassign", e))?;
        let mut parts = self.shared.parts();
        if let Some(at) = parts
            .iter()
            .position(|p| p.topic == topic && p.partition == partition)
        {
            let part = parts.swap_remove(at);
            self.shared
                .ahead_bytes
                .fetch_sub(part.pending.data.len(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Pause (`held`) or resume fetching a partition.
    fn hold(&self, topic: &str, partition: i32, held: bool) -> PyResult<()> {
        let list = one_partition(topic, partition, None)?;
        let done = if held {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        done.map_err(|e| kafka_error("pause", e))
    }

    /// `topic`'s newest plan: the reading thread makes records with it from now on.
    fn teach(&self, topic: String, plan: Py<FastPlan>) {
        let mut plans = self.shared.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans.insert(topic, Arc::new(plan));
    }

    /// How many messages arrived since the last call, and librdkafka's non-fatal errors since;
    /// waits up to `timeout_ms` for a message when none is waiting to be taken. A fatal error
    /// raises.
    fn fetch(&self, py: Python<'_>, timeout_ms: u64) -> PyResult<(usize, Vec<String>)> {
        let shared = &self.shared;
        let nothing = || {
            shared.arrived.load(Ordering::Relaxed) == 0
                && shared.ahead_bytes.load(Ordering::Relaxed) == 0
        };
        if nothing() {
            py.allow_threads(|| {
                let parts = shared.parts();
                if nothing() {
                    let wait = Duration::from_millis(timeout_ms);
                    drop(shared.changed.wait_timeout(parts, wait));
                }
            });
        }
        let mut problems = shared.problems();
        if let Some(fatal) = &problems.fatal {
            return Err(PyRuntimeError::new_err(fatal.clone()));
        }
        let warnings = std::mem::take(&mut problems.warnings);
        Ok((shared.arrived.swap(0, Ordering::Relaxed), warnings))
    }

    /// Whether librdkafka found a fetch offset out of range since the last call: that partition
    /// stopped, and the message did not say which (`rdkafka` drops the partition of an error).
    fn offsets_reset(&self) -> bool {
        self.shared.offset_reset.swap(false, Ordering::SeqCst)
    }

    /// The partition's end as the last fetch response told it (librdkafka's cached high
    /// watermark; with `read_committed`, its last stable offset), or None before any.
    fn known_end(&self, topic: &str, partition: i32) -> PyResult<Option<i64>> {
        let topic = CString::new(topic).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let (mut low, mut high) = (-1_i64, -1_i64);
        // SAFETY: the client outlives the call; librdkafka only reads `topic` and writes the two
        // offsets (it answers from its cache, without a request)
        let err = unsafe {
            rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        Ok((err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high))
    }

    /// The messages read of a partition and not taken yet, if any.
    fn take(&self, topic: Bound<'_, PyString>, partition: i32) -> PyResult<Option<Fetched>> {
        let name = topic.to_str()?;
        let mut parts = self.shared.parts();
        let part = parts
            .iter_mut()
            .find(|p| p.partition == partition && p.topic == name)
            .ok_or_else(|| PyValueError::new_err(format!("{name}[{partition}] is not read")))?;
        if part.pending.entries.is_empty() {
            return Ok(None);
        }
        part.sizes = (part.pending.entries.len(), part.pending.data.len());
        let mut messages = std::mem::take(&mut part.pending);
        drop(parts);
        self.shared
            .ahead_bytes
            .fetch_sub(messages.data.len(), Ordering::Relaxed);
        self.shared.changed.notify_all();
        let prepared = messages.prepared.take();
        Ok(Some(Fetched {
            topic: topic.unbind(),
            partition,
            messages,
            prepared: Mutex::new(prepared),
        }))
    }

    /// Stop the reading thread (also when the fetcher is dropped).
    fn close(&self, py: Python<'_>) {
        py.allow_threads(|| self.stop_reading());
    }
}

impl Fetcher {
    fn stop_reading(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(reader) = reader {
            let _ = reader.join(); // it only ever returns
        }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.stop_reading();
    }
}
