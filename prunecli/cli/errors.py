"""The one error boundary between the commands and the terminal.

Known errors (:class:`~prunecli.errors.PruneCliError`) become ``error: <message>`` on one
stderr line and their ``exit_code`` (2 for bad input); any other exception is a bug: one
``internal error: ...`` line and exit 3. ``--debug`` adds the traceback in both cases, and
lets third-party warnings and logs through (see ``quiet``). Ctrl-C exits 130.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any

import typer

from prunecli.cli.quiet import quiet_libraries
from prunecli.errors import PruneCliError

INTERRUPTED_EXIT_CODE = 130
INTERNAL_EXIT_CODE = 3

Command = Callable[..., int | None]


def error_boundary(command: Command) -> Callable[..., None]:
    """Wrap a command function; its ``debug`` keyword argument turns tracebacks on.

    The command returns its exit code (None or 0 for success, 1 for a failed gate).
    """

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> None:
        debug = bool(kwargs.get("debug", False))
        try:
            with quiet_libraries(enabled=not debug):
                exit_code = command(*args, **kwargs)
        except typer.Exit:
            raise
        except PruneCliError as exc:
            _fail(f"error: {_one_line(exc)}", exit_code=exc.exit_code, debug=debug)
        except KeyboardInterrupt:
            _fail("error: interrupted", exit_code=INTERRUPTED_EXIT_CODE, debug=debug)
        except Exception as exc:  # the boundary: anything unexpected is reported as a bug
            hint = "" if debug else " (run with --debug for the traceback; please report it)"
            line = f"internal error: {type(exc).__name__}: {_one_line(exc)}{hint}"
            _fail(line, exit_code=INTERNAL_EXIT_CODE, debug=debug)
        if exit_code:
            raise typer.Exit(exit_code)

    return guarded


def _fail(line: str, *, exit_code: int, debug: bool) -> None:
    if debug:
        typer.echo(traceback.format_exc(), err=True, nl=False)
    typer.echo(line, err=True)
    raise typer.Exit(exit_code)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
