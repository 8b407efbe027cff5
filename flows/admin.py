"""The admin subcommands of `replicate` (`flows/cli.py`): status, replay, dlq, state.

Each reads the same `REPLICATE_*` settings as the flow, prints text (JSON with `--json`) and
returns 0, or prints one line naming what is wrong and returns 2. Those that change a flow
(replay, dlq replay, state rebuild) need it stopped, and keep it from starting while they run.
"""

from __future__ import annotations

import argparse

from flows import admin_dlq, admin_replay, admin_state, admin_status


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `status`, `replay`, `dlq` and `state`, each with a `handler(args) -> int`."""
    for module in (admin_status, admin_replay, admin_dlq, admin_state):
        module.add_command(subparsers)
