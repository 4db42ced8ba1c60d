"""Shared pieces of the click front ends (``qsnn-train``, ``qsnn-export``, ``qsnn-sim``).

Expected failures print ``error: <message>`` (one line, followed by details such as the paths
searched where the message has them) and exit with status 1; ``--debug`` shows the traceback
instead. Expected are a :class:`~qsnn.errors.QsnnError` (raised where a bad input is detected) and
an ``OSError`` on one of the user's paths (a path given on the command line, a file inside such a
folder, or a file next to such a file: outputs written beside the input, temporaries of atomic
writes; commands add default outputs and scratch folders with :func:`note_user_path`). Everything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from qsnn.errors import QsnnError
from qsnn.profiles import PROFILES

debug_option = click.option("--debug", is_flag=True, help="Show the full traceback on errors.")


def profile_option(help: str):
    """``--profile NAME``: the choices and their description come from :data:`qsnn.profiles.PROFILES`."""
    return click.option("--profile", "profile_name", type=click.Choice(sorted(PROFILES)), default=None,
                        help=f"{help} Profiles: " + "; ".join(p.summary() for p in PROFILES.values()) + ".")


profile_set_option = click.option(
    "--profile-set", "profile_sets", multiple=True, metavar="KEY=VALUE",
    help="Change one field of the profile, e.g. --profile-set membrane_bits=24 --profile-set overflow=wrap "
         "(repeatable; the fields are ChipProfile's, qsnn/profiles.py).")

allow_saturation_option = click.option(
    "--allow-saturation", is_flag=True,
    help="Compile even if the worst-case membrane may exceed the profile's width (values then saturate or wrap as "
         "the profile says); without it such a network is refused.")

_USER_PATHS = "qsnn.user_paths"


def note_user_path(path: str | os.PathLike) -> None:
    """Count ``path`` (e.g. a default output folder) as one of the running command's user paths."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta.setdefault(_USER_PATHS, []).append(os.fspath(path))


def user_paths(ctx: click.Context | None) -> list[str]:
    """The paths the command works on: its ``click.Path`` parameters' values and the noted ones."""
    if ctx is None:
        return []
    paths = list(ctx.meta.get(_USER_PATHS, []))
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param.type, click.Path) and value is not None:
            paths += [os.fspath(v) for v in (value if isinstance(value, (tuple, list)) else [value])]
    return paths


def on_user_path(exc: OSError, paths: Iterable[str | os.PathLike]) -> bool:
    """Whether ``exc`` names a file that is a user path, lies inside one, or lies next to one."""
    names = [n for n in (exc.filename, exc.filename2) if isinstance(n, (str, bytes, os.PathLike))]
    for name in names:
        failed = Path(os.path.abspath(os.fsdecode(name)))
        for user in paths:
            user = Path(os.path.abspath(os.fspath(user)))
            if failed == user or user in failed.parents or failed.parent == user.parent:
                return True
    return False


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One-line message and exit code 1 for a QsnnError or an OSError on a user path (unless ``debug=True``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (QsnnError, OSError) as exc:
            if debug or (isinstance(exc, OSError) and not isinstance(exc, QsnnError)
                         and not on_user_path(exc, user_paths(click.get_current_context(silent=True)))):
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
