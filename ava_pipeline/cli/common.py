"""Tiny helpers shared by the console entry points."""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import traceback
from typing import Callable, Iterable, Optional, Sequence

from ..errors import AvaPipelineError, ConfigError

USAGE_ERROR = 2
"""Exit status for a bad command line or unusable input (argparse uses it too)."""


class UsageError(AvaPipelineError):
    """The command line cannot be run as given (exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors on one line: ``PROG: error: <message> (see PROG --help)``, exit status 2."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------------------- argparse value types

def _number(kind: type, *, least: Optional[float] = None, above: Optional[float] = None,
            most: Optional[float] = None) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float) parsed from the text, finite and within the bounds, else an
    ``ArgumentTypeError`` that says what is wanted."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}"
                                             ) from None
        if least is not None and most is not None:
            if not least <= value <= most:  # NaN fails too
                raise argparse.ArgumentTypeError(f"{text} is outside [{least:g}, {most:g}]")
        elif least is not None and not (value >= least and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} must be at least {least:g}")
        elif above is not None and not (value > above and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} must be a positive number")
        return value
    return parse


positive_int = _number(int, least=1)
non_negative_int = _number(int, least=0)
non_negative_float = _number(float, least=0)
positive_float = _number(float, above=0)
probability = _number(float, least=0, most=1)
"""A number in [0, 1]."""


def device_name(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N")
    return text


def parse_and_run(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], prog: str,
                  argv: Optional[Sequence[str]]) -> int:
    """Parse ``argv`` and :func:`run_cli` ``run(args)``; ``--help`` and usage errors (printed by argparse on one
    line) return their exit status instead of raising ``SystemExit``."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        return exit_request.code if isinstance(exit_request.code, int) else USAGE_ERROR
    return run_cli(lambda: run(args), prog, debug=args.debug)


def run_cli(body: Callable[[], int], prog: str, debug: bool = False) -> int:
    """Run ``body()`` and return its exit status; a package error becomes one ``PROG: error: MESSAGE`` line on
    stderr and status 2, any other exception one ``internal error`` line and status 1. ``debug`` re-raises
    instead, so the traceback shows."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except AvaPipelineError as exc:
        if debug:
            raise
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into a readable line
        if debug:
            raise
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"{prog}: internal error: {type(exc).__name__}: {exc} (at {where.filename}:{where.lineno}); "
              f"rerun with --debug for the traceback and report it", file=sys.stderr)
        return 1


def one_line(message: str) -> str:
    """``message`` on one line, without terminal colour codes (some wrapped library errors carry both)."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", message).splitlines()
    return " ".join(line.strip() for line in lines if line.strip())


def refuse_overwriting_inputs(outputs: Iterable[tuple[str, object]], inputs: Iterable[tuple[str, object]]) -> None:
    """Raise :class:`ConfigError` when an output ``(option, path)`` is one of the ``(description, path)``
    inputs or an earlier output (compared after resolving links and ``..``), so that a mistyped option never
    destroys an input and two outputs never overwrite each other."""
    known: dict[str, str] = {}
    for description, path in inputs:
        known.setdefault(os.path.realpath(path), description)
    for option, output in outputs:
        resolved = os.path.realpath(output)
        overwritten = known.get(resolved)
        if overwritten is not None:
            raise ConfigError(f"{option} would write {output}, which is {overwritten}; choose another {option} path")
        known[resolved] = f"the {option} file"
