"""A source dialect: what one connector's change events mean beyond the Debezium envelope.

Each connector (`source.connector`) writes the same envelope but orders its changes by its own
fields and marks unchanged values its own way. A dialect says, for its connector:

- `version(source, snapshot_point)`: the change's version bytes (`operators/versions.py`),
  which order the changes of one key; `snapshot_point` gives the position of the latest
  snapshot before the change in its topic partition, for a connector whose source block does
  not always order a change by itself (Postgres);
- `snapshot_point(source)`: for a row of such a snapshot, the position it was read at, which
  the decoder keeps per topic partition (`operators/snapshot_points.py`);
- `toast_placeholders(field, binary)` / `is_toast(value)`: the forms of the connector's
  placeholder for a value it did not send (Postgres' unchanged TOASTed columns), per column
  schema and, for messages without a schema, by value;
- `native`: whether the native fast path computes its versions (`native/src/version.rs`).

`formats.registry.dialect_for(source)` picks the dialect by `source.connector`; a new connector
is one module with its dialect, listed in the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar


class SourceDialect(ABC):
    connector: ClassVar[str]
    native: ClassVar[bool] = False

    @abstractmethod
    def version(self, source: Mapping[str, Any], snapshot_point: Callable[[], int]) -> bytes:
        """The version of a change from its `source` block; ValueError names a bad field.
        `snapshot_point()`: the latest snapshot position before the change (0: none), read only
        when the source block needs it."""

    def snapshot_point(self, source: Mapping[str, Any]) -> int | None:
        """The position a snapshot row was read at, if later changes rank by it; else None."""
        return None

    def toast_placeholders(self, field: Mapping[str, Any], binary: bool) -> tuple[Any, ...]:
        """The forms the placeholder of an unsent value takes in a column of this Connect
        schema; `binary`: the message is Avro (bytes are bytes, not base64 text)."""
        return ()

    def is_toast(self, value: Any) -> bool:
        """A value of a message without a schema is the placeholder of an unsent value."""
        return False
