"""A shard's per-key state in RocksDB, behind a narrow interface.

Keys are opaque bytes (see `operators.keys.state_key`); values encode a `KeyState`. Each commit is
one atomic RocksDB write batch that also records the commit sequence number, the commit's random
id and an *undo record* (the previous values of every key it changes, and the previous sequence
number and id). The sink writes it before the Postgres commit of the same sequence number and id,
so after a crash the store is either in step with Postgres or exactly one commit ahead, and
`rollback()` undoes that one commit (DESIGN invariant 5). The id tells this store's commit N from
another owner's commit N of the same shard (a host that wrote N to RocksDB and died before its
Postgres commit, while another host committed its own N).

Memory: every store of the process shares one block cache and one write-buffer budget
(`StoreMemory`, from `REPLICATE_STATE_CACHE_MB` and `REPLICATE_STATE_WRITE_BUFFER_MB`), so 64
shards cost one bounded pool rather than 64 default memtables.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import rocksdict

from operators.lww import KeyState

_SEQ = b"\x00meta:seq"
_COMMIT_ID = b"\x00meta:commit_id"
_UNDO = b"\x00meta:undo"
_FLOOR_PREFIX = b"\x00floor:"
_DELETED, _LIVE = b"D", b"L"

WRITE_BUFFER_BYTES = 2 << 20
LOAD_CHUNK = 50_000
MB = 1 << 20


@dataclass(frozen=True)
class StoreMemory:
    """The pool every store of a process shares."""

    block_cache_mb: int = 32
    write_buffer_mb: int = 32


@cache
def _shared_options(memory: StoreMemory) -> rocksdict.Options:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(memory.block_cache_mb * MB))
    table.set_bloom_filter(10, False)
    table.set_cache_index_and_filter_blocks(True)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_manager(
        rocksdict.WriteBufferManager(memory.write_buffer_mb * MB, False)
    )
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    options.set_max_background_jobs(1)
    options.set_keep_log_file_num(2)
    options.set_max_open_files(64)
    # RocksDB opens a store's files on up to 16 threads of their own by default; a shard store
    # has a few small files, and those threads made each of the 64 opens ~1 ms slower.
    options.set_max_file_opening_threads(1)
    return options


def encode_state(state: KeyState) -> bytes:
    return (_DELETED if state.deleted else _LIVE) + state.version


def decode_state(raw: bytes) -> KeyState:
    return KeyState(raw[1:], raw[:1] == _DELETED)


class ShardStateStore:
    """Per-key versions and tombstones of one shard, plus its table truncate floors."""

    def __init__(self, path: Path, memory: StoreMemory = StoreMemory()) -> None:
        self.path = path
        self._options = _shared_options(memory)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = rocksdict.Rdict(str(path), self._options)

    @property
    def seq(self) -> int:
        raw = self._db.get(_SEQ)
        return int(raw) if raw is not None else 0

    @property
    def commit_id(self) -> bytes | None:
        """The id of commit `seq`; None before the first commit."""
        return self._db.get(_COMMIT_ID)

    def undo_target(self) -> tuple[int, bytes | None] | None:
        """The (sequence number, id) `rollback` returns to; None without an undo record."""
        undo = self._undo()
        return None if undo is None else undo[:2]

    def _undo(self) -> tuple[int, bytes | None, list[tuple[bytes, bytes | None]]] | None:
        raw = self._db.get(_UNDO)
        if raw is None:
            return None
        previous_seq, entries, *previous_id = pickle.loads(raw)  # no id: written before ids
        return previous_seq, previous_id[0] if previous_id else None, entries

    def get_many(self, keys: list[bytes]) -> list[KeyState | None]:
        return [None if raw is None else decode_state(raw) for raw in self.get_encoded(keys)]

    def get_encoded(self, keys: list[bytes]) -> list[bytes | None]:
        """The states of `keys` as stored (`encode_state`), None for unknown keys."""
        return self._db[keys]

    def floors(self) -> dict[str, bytes]:
        """Truncate floor per table ("schema.table" → version)."""
        found: dict[str, bytes] = {}
        for key, value in self._db.items(from_key=_FLOOR_PREFIX):
            if not key.startswith(_FLOOR_PREFIX):
                break
            found[key[len(_FLOOR_PREFIX) :].decode()] = value
        return found

    def commit(self, seq: int, commit_id: bytes, states: dict[bytes, KeyState],
               floors: dict[str, bytes], replaced: Mapping[bytes, KeyState | None]) -> None:
        """Write `states` and `floors` as commit `seq` with id `commit_id`, with an undo record of
        what they replace. `replaced` holds the state each key of `states` had before (as read by
        `get_many`), which spares reading them again."""
        self.commit_encoded(
            seq, commit_id, [(key, encode_state(state)) for key, state in states.items()],
            [(key, None if (old := replaced[key]) is None else encode_state(old))
             for key in states], floors)

    def commit_encoded(self, seq: int, commit_id: bytes, states: list[tuple[bytes, bytes]],
                       replaced: list[tuple[bytes, bytes | None]],
                       floors: dict[str, bytes]) -> None:
        """`commit` with states encoded: `(key, state)` pairs, and `(key, previous state or
        None)` for each of them."""
        floor_keys = [_FLOOR_PREFIX + table.encode() for table in floors]
        undo_entries = [*replaced, *zip(floor_keys, self._db[floor_keys], strict=True)]
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, state in states:
            batch.put(key, state)
        for key, version in zip(floor_keys, floors.values(), strict=True):
            batch.put(key, version)
        batch.put(_UNDO, pickle.dumps((self.seq, undo_entries, self.commit_id),
                                      protocol=pickle.HIGHEST_PROTOCOL))
        batch.put(_SEQ, str(seq).encode())
        batch.put(_COMMIT_ID, commit_id)
        self._db.write(batch)

    def rollback(self) -> None:
        """Undo the last commit (its Postgres transaction did not commit)."""
        undo = self._undo()
        if undo is None:
            raise RuntimeError(f"{self.path}: no undo record to roll back")
        previous_seq, previous_id, entries = undo
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in [*entries, (_COMMIT_ID, previous_id)]:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.delete(_UNDO)
        batch.put(_SEQ, str(previous_seq).encode())
        self._db.write(batch)

    def load(self, seq: int, commit_id: bytes | None,
             states: Iterable[tuple[bytes, KeyState | bytes]], floors: dict[str, bytes]) -> None:
        """Bulk-load rebuilt state (after `clear`) in chunks and mark it as commit `seq` with id
        `commit_id` (None: Postgres holds no id for it). A state given as bytes is stored as it
        is (a cell row's, `operators/cell_rows.py`)."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, state in states:
            batch.put(key, state if type(state) is bytes else encode_state(state))
            if batch.len() >= LOAD_CHUNK:
                self._db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
        for table, version in floors.items():
            batch.put(_FLOOR_PREFIX + table.encode(), version)
        batch.put(_SEQ, str(seq).encode())
        if commit_id is not None:
            batch.put(_COMMIT_ID, commit_id)
        self._db.write(batch)

    def clear(self) -> None:
        """Drop every key: the store is about to be rebuilt."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = rocksdict.Rdict(str(self.path), self._options)

    def close(self) -> None:
        self._db.close()
