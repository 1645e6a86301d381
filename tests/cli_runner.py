"""Runs ``transferkit`` commands in-process for the CLI tests and keeps what they print."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from typing import NamedTuple

from transferkit.cli import main


class Result(NamedTuple):
    code: int
    out: str
    err: str


def run(*argv: object) -> Result:
    """``transferkit *argv``: its exit status, stdout and stderr (``code, out, err = run(...)`` works too)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Result(code, out.getvalue(), err.getvalue())
