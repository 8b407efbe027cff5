"""The `replicate` command (also `python -m flows.cli`): one entry point with subcommands.

Each subcommand lives in a module of its own whose `add_command(subparsers)` adds its parser and
sets `handler` (args -> exit status). Every subcommand reads the same `REPLICATE_*` settings
(docs/configuration.md); a setting that cannot be used prints one line `replicate: ...` and
exits with status 2. `--json` asks a subcommand for JSON instead of text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flows import admin, supervisor
from operators.settings import ConfigError


def parser() -> argparse.ArgumentParser:
    """The parser with every subcommand registered."""
    top = argparse.ArgumentParser(
        prog="replicate", description="Exactly-once CDC replication from Kafka into PostgreSQL.")
    top.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    supervisor.add_command(sub)
    admin.add_commands(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"replicate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
