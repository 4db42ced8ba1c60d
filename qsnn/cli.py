"""Shared pieces of the click front ends (``qsnn-train``, ``qsnn-export``, ``qsnn-sim``).

Expected failures (:class:`~qsnn.errors.QsnnError`, and OS errors on the user's files) print
``error: <message>`` (one line, followed by details such as the paths searched where the message
has them) and exit with status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from qsnn.errors import QsnnError

debug_option = click.option("--debug", is_flag=True, help="Show the full traceback on errors.")


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn QsnnError / OSError into a one-line message and exit code 1 (unless ``debug=True``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (QsnnError, OSError, ValueError) as exc:
            if debug:
                raise
            message = str(exc).strip() or type(exc).__name__
            click.echo(f"error: {message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


class DefaultGroup(click.Group):
    """A group that runs ``default_command`` when the first argument is not a sub-command."""

    def __init__(self, *args: Any, default_command: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if self.default_command and (not args or args[0] not in self.commands) and args[:1] not in (["--help"], ["-h"]):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def print_table(rows: list[tuple[str, Any]], title: str | None = None) -> None:
    """A two-column summary table on stdout."""
    width = max(len(k) for k, _ in rows)
    if title:
        click.echo(title)
        click.echo("-" * max(len(title), width + 20))
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")
