//! The source's native Kafka consumer (`cdc_native.Fetcher`) and what it reads (`Fetched`).
//!
//! The Python consumer made a `Message`, two `bytes` and a `RawMessage` of every message on the
//! worker thread, under the interpreter lock: a third of the replicator's time. This one copies
//! each partition's messages into one buffer without the lock, and the decoder reads them from
//! there (`FastPlan.decode_runs`); Python objects are made only of the messages Python decodes.
//! Offsets stay in Postgres: the consumer never commits, like the Python one.

use std::ffi::CString;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use rdkafka::bindings::rd_kafka_get_watermark_offsets;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::optional_bytes;

/// Where one message's key and value are in its batch's buffer.
struct Entry {
    offset: i64,
    key: Option<(usize, usize)>,
    value: Option<(usize, usize)>,
}

/// One partition's messages as they accumulate.
#[derive(Default)]
struct Pending {
    entries: Vec<Entry>,
    data: Vec<u8>,
}

impl Pending {
    fn push(&mut self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        let key = key.map(|k| self.append(k));
        let value = value.map(|v| self.append(v));
        self.entries.push(Entry { offset, key, value });
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
    pub(crate) fn key_value(&self, index: usize) -> Option<(&[u8], &[u8])> {
        let entry = &self.messages.entries[index];
        Some((self.slice(entry.key?), self.slice(entry.value?)))
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
            );
        }
        Fetched {
            topic: topic.unbind(),
            partition,
            messages: pending,
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
                optional_bytes(py, entry.value.map(|range| self.slice(range))),
            ],
        )
    }
}

/// A partition's messages fetched and not yet taken.
struct Part {
    topic: String,
    partition: i32,
    pending: Pending,
    /// The last batch's message count and bytes: the next is likely as large, so its buffers
    /// grow once (when its first message comes), not by doubling.
    sizes: (usize, usize),
}

/// One librdkafka consumer for the partitions a worker reads (see `WorkerConsumer` in
/// `operators/kafka_source.py`, whose interface this follows).
#[pyclass(frozen, module = "cdc_native")]
pub(crate) struct Fetcher {
    consumer: BaseConsumer,
    parts: Mutex<Vec<Part>>,
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
    /// `config`: librdkafka properties; a property this build does not know is a ValueError.
    #[new]
    fn new(config: Vec<(String, String)>) -> PyResult<Self> {
        let mut client = ClientConfig::new();
        for (name, value) in config {
            client.set(name, value);
        }
        let consumer = client
            .create()
            .map_err(|e| PyValueError::new_err(format!("native Kafka consumer: {e}")))?;
        Ok(Fetcher {
            consumer,
            parts: Mutex::new(Vec::new()),
        })
    }

    /// Start reading a partition at `offset`.
    fn add(&self, topic: &str, partition: i32, offset: i64) -> PyResult<()> {
        self.lock().push(Part {
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

    /// Stop reading a partition; what was fetched of it and not taken is dropped.
    fn remove(&self, topic: &str, partition: i32) -> PyResult<()> {
        self.lock()
            .retain(|p| !(p.topic == topic && p.partition == partition));
        let list = one_partition(topic, partition, None)?;
        self.consumer
            .incremental_unassign(&list)
            .map_err(|e| kafka_error("unassign", e))
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

    /// Fetch up to `max` messages of every partition, waiting up to `timeout_ms` for the
    /// first; returns how many came and librdkafka's non-fatal errors. A fatal error raises.
    fn fetch(&self, py: Python<'_>, max: usize, timeout_ms: u64) -> PyResult<(usize, Vec<String>)> {
        py.allow_threads(|| {
            let mut parts = self.lock();
            let mut warnings = Vec::new();
            let mut count = 0;
            let mut wait = Duration::from_millis(timeout_ms);
            let mut last = usize::MAX;
            while count < max {
                match self.consumer.poll(wait) {
                    None => break,
                    Some(Ok(msg)) => {
                        let at = match parts.get(last) {
                            Some(p) if p.partition == msg.partition() && p.topic == msg.topic() => {
                                last
                            }
                            _ => match parts.iter().position(|p| {
                                p.partition == msg.partition() && p.topic == msg.topic()
                            }) {
                                Some(at) => at,
                                None => continue, // removed since it was fetched
                            },
                        };
                        let part = &mut parts[at];
                        if part.pending.entries.capacity() == 0 {
                            part.pending.entries.reserve(part.sizes.0);
                            part.pending.data.reserve(part.sizes.1);
                        }
                        part.pending.push(msg.offset(), msg.key(), msg.payload());
                        last = at;
                        count += 1;
                    }
                    Some(Err(err)) => {
                        if let Some((code, reason)) = self.consumer.client().fatal_error() {
                            return Err(PyRuntimeError::new_err(format!(
                                "Kafka: fatal error {code:?}: {reason}"
                            )));
                        }
                        warnings.push(err.to_string());
                    }
                }
                wait = Duration::ZERO;
            }
            Ok((count, warnings))
        })
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

    /// The messages fetched for a partition and not taken yet, if any.
    fn take(&self, topic: Bound<'_, PyString>, partition: i32) -> PyResult<Option<Fetched>> {
        let name = topic.to_str()?;
        let mut parts = self.lock();
        let part = parts
            .iter_mut()
            .find(|p| p.partition == partition && p.topic == name)
            .ok_or_else(|| PyValueError::new_err(format!("{name}[{partition}] is not read")))?;
        if part.pending.entries.is_empty() {
            return Ok(None);
        }
        part.sizes = (part.pending.entries.len(), part.pending.data.len());
        let messages = std::mem::take(&mut part.pending);
        drop(parts);
        Ok(Some(Fetched {
            topic: topic.unbind(),
            partition,
            messages,
        }))
    }
}

impl Fetcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Part>> {
        self.parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
