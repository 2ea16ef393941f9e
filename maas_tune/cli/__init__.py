"""The ``maas-tune`` command line: ``main(argv) -> int``; each subcommand is one library call.

:mod:`.parser` builds the arguments, :mod:`.commands` and :mod:`.store` run the
subcommands, :mod:`.provider` holds the provider flags.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from ..errors import BudgetExceeded, MaasTuneError
from ..providers.secrets import safe_traceback
from . import store as store_commands
from .parser import build_parser

__all__ = ["build_parser", "main"]

#: Exit status after the reader of stdout went away (``| head``): 128 + SIGPIPE, as a
#: program killed by SIGPIPE reports to the shell.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 error, 2 usage, 130 interrupted,
    141 when the reader of stdout went away, as with ``| head``)."""
    try:
        try:
            return _run(argv)
        finally:  # a closed pipe shows here, not as "Exception ignored" at exit
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again
    (the Python docs' "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it)
        pass


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.debug = debug = bool(getattr(args, "debug", False) or args.debug_global)
    args.quiet = bool(getattr(args, "quiet", False) or args.quiet_global)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "verbose", False) and not debug:
        logging.getLogger("maas_tune").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        raise
    except MaasTuneError as exc:
        if debug:  # the traceback, with every API key in use masked (chained causes too)
            print(safe_traceback(exc), file=sys.stderr, end="")
            return 1
        message = str(exc)
        if isinstance(exc, BudgetExceeded):  # with the flag that raises that budget's cap
            message = store_commands.budget_refusal(args, exc)
        print(f"maas-tune: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("maas-tune: interrupted (everything answered so far is cached)", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        if debug:
            print(safe_traceback(exc), file=sys.stderr, end="")
            return 1
        print(f"maas-tune: error: {exc} (rerun with --debug for details)", file=sys.stderr)
        return 1
