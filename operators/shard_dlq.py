"""DLQ records for changes that decoded but cannot be written (a table problem, a value Postgres
refuses). Raw bytes are not kept past decoding, so a record carries the decoded key and values as
JSON (`{"table": ..., "values": ...}`; `replicate dlq replay` reads such a row's message from
Kafka again)."""

from __future__ import annotations

import orjson
import psycopg

from formats.cells import CellChange
from operators.events import ChangeEvent, DlqRecord
from operators.keys import key_json
from operators.retry import first_line


def dlq_for(change: ChangeEvent | CellChange, error_type: str, error: str) -> DlqRecord:
    """The DLQ record of a decoded change; a cell change's values are the cells it writes."""
    values = change.values if type(change) is ChangeEvent else change.cells
    detail = orjson.dumps({"table": str(change.table), "values": values}, default=str)
    return DlqRecord(change.topic, change.partition, change.offset, key_json(change.key), detail,
                     error_type, error)


def refused_to_dlq(unit: object, exc: psycopg.Error) -> DlqRecord | None:
    """The DLQ record replacing a change Postgres refused; None for anything else."""
    if type(unit) is not ChangeEvent and type(unit) is not CellChange:
        return None
    return dlq_for(unit, "write_refused", f"Postgres refused the row: {first_line(exc)}")
