"""`replicate dlq list|show ID|replay`: read the dead-letter queue (`cdc.dlq`) and replay it
(`flows/admin_dlq_replay.py`)."""

from __future__ import annotations

import argparse

from flows.admin_common import AdminError, Output, command, open_conn, stopped_flow
from flows.admin_dlq_replay import DlqReplay, pending_rows, replay_output
from operators.settings import Settings

ERROR_PREVIEW_CHARS = 80


def printable(raw: bytes | None) -> dict[str, str | None]:
    """Raw bytes as text when they are UTF-8 (JSON), else as hex (Avro)."""
    if raw is None:
        return {"text": None, "hex": None}
    try:
        return {"text": raw.decode(), "hex": None}
    except UnicodeDecodeError:
        return {"text": None, "hex": raw.hex()}


def dlq_list(args: argparse.Namespace, settings: Settings) -> Output:
    with open_conn(settings) as conn:
        rows = conn.execute(
            'SELECT id, topic, partition, "offset", error_type, replay_status, first_seen, error '
            "FROM cdc.dlq WHERE flow_id = %s AND (%s::text IS NULL OR error_type = %s) "
            "ORDER BY id LIMIT %s",
            (settings.flow_id, args.error_type, args.error_type, args.limit)).fetchall()
    names = ("id", "topic", "partition", "offset", "error_type", "replay_status", "first_seen",
             "error")
    found = [dict(zip(names, row, strict=True)) for row in rows]
    lines = [f"{r['id']:>8} {r['topic']}[{r['partition']}]@{r['offset']} {r['error_type']} "
             f"({r['replay_status']}): {r['error'][:ERROR_PREVIEW_CHARS]}" for r in found]
    return Output({"flow_id": settings.flow_id, "rows": found},
                  lines or [f"flow {settings.flow_id}: no DLQ rows"])


def dlq_show(args: argparse.Namespace, settings: Settings) -> Output:
    with open_conn(settings) as conn:
        row = conn.execute(
            'SELECT id, topic, partition, "offset", error_type, error, replay_status, first_seen, '
            "raw_key, raw_value FROM cdc.dlq WHERE flow_id = %s AND id = %s",
            (settings.flow_id, args.id)).fetchone()
    if row is None:
        raise AdminError(f"flow {settings.flow_id!r} has no DLQ row {args.id}")
    *head, raw_key, raw_value = row
    names = ("id", "topic", "partition", "offset", "error_type", "error", "replay_status",
             "first_seen")
    data = dict(zip(names, head, strict=True))
    data["key"] = printable(None if raw_key is None else bytes(raw_key))
    data["value"] = printable(None if raw_value is None else bytes(raw_value))
    lines = [f"{name}: {data[name]}" for name in names]
    for part in ("key", "value"):
        shown = data[part]
        lines.append(f"{part}: " + ("(none)" if shown["text"] is None and shown["hex"] is None
                                    else shown["text"] if shown["text"] is not None
                                    else f"(hex) {shown['hex']}"))
    return Output(data, lines)


def dlq_replay(args: argparse.Namespace, settings: Settings) -> Output:
    with stopped_flow(settings) as conn:
        rows = pending_rows(conn, settings.flow_id, args.error_type)
        outcomes = DlqReplay(settings, conn, args.dry_run).run(rows)
    return replay_output(settings, rows, outcomes, args.dry_run)


def add_command(sub: argparse._SubParsersAction) -> None:
    dlq = sub.add_parser("dlq", help="the dead-letter queue: list, show, replay")
    actions = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = actions.add_parser("list", help="DLQ rows, oldest first")
    listing.add_argument("--error-type")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(handler=command("dlq list", dlq_list))
    show = actions.add_parser("show", help="one row with its raw key and value")
    show.add_argument("id", type=int)
    show.set_defaults(handler=command("dlq show", dlq_show))
    replay = actions.add_parser(
        "replay", help="decode pending rows again and apply them through the LWW guard "
                       "(flow stopped)")
    replay.add_argument("--error-type")
    replay.add_argument("--dry-run", action="store_true",
                        help="say what each row would become; change nothing")
    replay.set_defaults(handler=command("dlq replay", dlq_replay))
