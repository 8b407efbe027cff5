"""Python values as JSON with their type kept (`{"decimal": "1.50"}`), for the expected values
stored next to the captured messages."""

from __future__ import annotations

import base64
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any


def dump(v: Any) -> Any:
    if v is None or type(v) in (bool, int, float, str):
        return v
    if isinstance(v, list):
        return [dump(x) for x in v]
    if isinstance(v, dict):
        return {"json": v}  # a json/jsonb value, kept as is
    if isinstance(v, Decimal):
        return {"decimal": str(v)}
    if isinstance(v, datetime):
        return {"datetime": v.isoformat()}
    if isinstance(v, date):
        return {"date": v.isoformat()}
    if isinstance(v, time):
        return {"time": v.isoformat()}
    if isinstance(v, timedelta):
        return {"timedelta": [v.days, v.seconds, v.microseconds]}
    if isinstance(v, uuid.UUID):
        return {"uuid": str(v)}
    if isinstance(v, bytes):
        return {"bytes": base64.b64encode(v).decode()}
    raise TypeError(f"no tagged JSON form for {type(v).__name__}")


_LOAD = {
    "json": lambda v: v,
    "decimal": Decimal,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "timedelta": lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "uuid": uuid.UUID,
    "bytes": base64.b64decode,
}


def load(v: Any) -> Any:
    if isinstance(v, list):
        return [load(x) for x in v]
    if isinstance(v, dict):
        ((tag, payload),) = v.items()
        return _LOAD[tag](payload)
    return v
