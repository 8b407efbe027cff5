"""Per-stage profile: the replicator's own decode step and shard sinks, run in-process on the
workload's messages (no Kafka, no bytewax), with a wall-clock timer around each stage.

Stages: the decode step (of which `Decoder.decode_runs`: native reads and the Python decoder),
LWW (`decide_batch`, and the native shard step's `decide_runs`), the RocksDB state store,
`PgShardWriter.write` (of which COPY + merge), and the rest of the shard sink. Each timer counts
its function's time without the timed functions it calls. The gap between this pipeline's
throughput and the real process's is bytewax + the Kafka source.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

from benchmarks.workload import Workload


class _Timers:
    """Exclusive wall time per name: a timed call's time less that of the timed calls inside."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # per open timed call: time spent in timed calls inside

    def wrap(self, name: str, fn: Callable) -> Callable:
        seconds, inner = self.seconds, self._inner

        def timed(*args: Any, **kwargs: Any) -> Any:
            inner.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                seconds[name] += elapsed - inner.pop()
                if inner:
                    inner[-1] += elapsed

        return timed


class _Inline:
    """Stands in for the committer's background thread: its Postgres work runs in the calling
    thread, so the stage times do not overlap and add up to the wall time. The work runs when the
    committer first looks at its future (settling it), not at `submit`: a transaction decided
    ahead waits for the committer to write RocksDB after submitting it."""

    def __init__(self, **_: Any) -> None:
        pass

    def submit(self, fn: Callable, *args: Any) -> Future:
        return _Deferred(fn, args)

    def shutdown(self, wait: bool = True) -> None:
        pass  # no thread of its own


class _Deferred(Future):
    """A future whose call runs in the thread that first asks for its outcome."""

    def __init__(self, fn: Callable, args: tuple) -> None:
        super().__init__()
        self._call: tuple[Callable, tuple] | None = (fn, args)

    def _run(self) -> None:
        if self._call is None:
            return
        fn, args = self._call
        self._call = None
        try:
            self.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the committer like a real future
            self.set_exception(exc)

    def done(self) -> bool:
        self._run()
        return super().done()

    def result(self, timeout: float | None = None) -> Any:
        self._run()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._run()
        return super().exception(timeout)


def _messages(wl: Workload) -> list[list[Any]]:
    """RawMessages per partition, encoded before any timer starts."""
    from operators.events import RawMessage

    return [[RawMessage(topic, partition, off, k, v)
             for off, (k, v) in enumerate(wl.iter_partition(topic, partition))]
            for topic, partition in sorted(wl.arrivals)]


def _pipeline(parts: list[list[Any]], settings: Any) -> None:
    from operators.decode_step import DecodeStep
    from operators.events import ProgressMarker
    from operators.shard_sink import ShardPartition, shard_part_name

    step = DecodeStep(settings)
    shards = {shard_part_name(k): ShardPartition(settings, k) for k in range(settings.shards)}
    chunk = settings.poll_batch_size
    for msgs in parts:
        for i in range(0, len(msgs), chunk):
            batch = msgs[i:i + chunk]
            items: list[Any] = list(batch)
            items.append(ProgressMarker(batch[0].topic, batch[0].partition,
                                        batch[-1].offset + 1))
            for name, routed in step(items):
                shards[name].write_batch([routed])
    for part in shards.values():
        part.close()


def profile(wl: Workload, prefix: str, bootstrap: str, dsn: str, workdir: Path,
            cprofile_out: Path | None = None) -> tuple[list[dict[str, Any]], float]:
    """Run the pipeline once under timers (and once more under cProfile if `cprofile_out`);
    returns the stage rows and the wall time of the timed run."""
    import importlib

    from operators import committer, decode, decode_step, lww, native_shard, pg_writer, state_store
    from operators.lifecycle import tune_gc
    from operators.settings import Settings

    def settings(suffix: str) -> Settings:
        return Settings(kafka_bootstrap=bootstrap, topics=",".join(wl.topics), pg_dsn=dsn,
                        state_dir=workdir / f"profile-state{suffix}",
                        flow_id=f"{prefix}_prof{suffix}", target_schema=f"{prefix}_prof{suffix}",
                        schema_registry_url=wl.spec.registry_url or None)

    timers = _Timers()
    store = state_store.ShardStateStore
    patches = [
        (decode_step.DecodeStep, "__call__", "decode: shard routing (rest of DecodeStep)"),
        (decode.Decoder, "decode_runs", "decode: Decoder.decode_runs"),
        (store, "get_many", "RocksDB"),
        (store, "get_encoded", "RocksDB"),
        (store, "commit", "RocksDB"),
        (store, "commit_encoded", "RocksDB"),
        (pg_writer.PgShardWriter, "write", "Postgres: merges, audit, DLQ, offsets, commit"),
        (pg_writer.PgShardWriter, "_copy", "Postgres: row building and COPY per group"),
    ]
    # the deciders are imported by name into the module that calls them: patch them there
    for module in ("operators.shard", "operators.shard_sink", "operators.committer"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if getattr(mod, "decide_batch", None) is lww.decide_batch:
            patches.append((mod, "decide_batch", "LWW: decide_batch, native decide_runs"))
        if getattr(mod, "decide_runs", None) is native_shard.decide_runs:
            patches.append((mod, "decide_runs", "LWW: decide_batch, native decide_runs"))
    tune_gc()  # as the replicator process does
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(committer, "ThreadPoolExecutor", _Inline))
        for owner, attr, name in patches:
            stack.enter_context(mock.patch.object(owner, attr,
                                                  timers.wrap(name, getattr(owner, attr))))
        parts = _messages(wl)
        t0 = time.perf_counter()
        _pipeline(parts, settings(""))
        wall = time.perf_counter() - t0
    s = timers.seconds
    n = wl.message_count
    rows = [(name, s[name]) for name in (
        "decode: Decoder.decode_runs", "decode: shard routing (rest of DecodeStep)",
        "LWW: decide_batch, native decide_runs", "RocksDB",
        "Postgres: row building and COPY per group",
        "Postgres: merges, audit, DLQ, offsets, commit")]
    accounted = sum(v for _, v in rows)
    rows.append(("shard sink other (buffering, table lookup, open/close)", wall - accounted))
    out = [{"stage": name, "seconds": sec, "share": sec / wall if wall else 0.0,
            "us_per_msg": sec / n * 1e6 if n else None} for name, sec in rows]
    if cprofile_out is not None:
        prof = cProfile.Profile()
        with mock.patch.object(committer, "ThreadPoolExecutor", _Inline):
            prof.runcall(_pipeline, parts, settings("_cp"))
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        cprofile_out.parent.mkdir(parents=True, exist_ok=True)
        cprofile_out.write_text(buf.getvalue())
    return out, wall
