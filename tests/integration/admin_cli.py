"""Run a `replicate` subcommand in this process with a test deployment's settings."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any
from unittest import mock

from benchmarks.replicator_run import Run
from flows.cli import main


@dataclass(frozen=True)
class Answer:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def replicate(run: Run, *argv: str) -> Answer:
    """`replicate *argv` with exactly `run`'s `REPLICATE_*` environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATE_")}
    env |= {k: v for k, v in run.env().items() if k.startswith("REPLICATE_")}
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env, clear=True), redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return Answer(code, out.getvalue(), err.getvalue())
