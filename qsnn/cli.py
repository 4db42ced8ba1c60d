"""Shared pieces of the click front ends (``qsnn-train``, ``qsnn-export``, ``qsnn-sim``): one tool.

The options every command spells the same way live here: ``--version``, ``--debug``,
``--progress/--no-progress``, ``--force`` (with the output rule of :mod:`qsnn.output_guard`),
``--profile`` / ``--profile-set`` (:func:`chosen_profile`: a ``--profile-set`` changes the profile
the command would use anyway), ``--list-profiles``. A command whose stdout carries data
(``qsnn-sim --report -``) calls :func:`claim_stdout`; :func:`say` and :func:`print_table` then go to
stderr.

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
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import click

import qsnn
from qsnn.errors import ProfileError, QsnnError
from qsnn.locks import lock_scope
from qsnn.output_guard import OutputError, os_error_message
from qsnn.profiles import PROFILES, ChipProfile, get_profile, parse_overrides

debug_option = click.option("--debug", is_flag=True, help="Show the full traceback on errors.")


def version_option(prog: str):
    """``--version``: the command's name and qsnn's version, then exit."""
    return click.version_option(
        qsnn.__version__,
        "--version",
        prog_name=prog,
        message="%(prog)s (qsnn) %(version)s",
        help="Show the qsnn version and exit.",
    )


progress_option = click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show progress bars (on stderr) for long work."
)

force_option = click.option(
    "--force",
    is_flag=True,
    default=False,
    help="Replace an existing output, but only an earlier output of the same kind written by qsnn (recognised by its "
    "format marker), once the new one is complete; never an input, a run directory or another file or folder.",
)


def profile_option(help: str):
    """``--profile NAME``: the choices and their description come from :data:`qsnn.profiles.PROFILES`."""
    return click.option(
        "--profile",
        "profile_name",
        type=click.Choice(sorted(PROFILES)),
        default=None,
        help=f"{help} Profiles: " + "; ".join(p.summary() for p in PROFILES.values()) + ".",
    )


profile_set_option = click.option(
    "--profile-set",
    "profile_sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change one field of the profile, e.g. --profile-set membrane_bits=24 --profile-set overflow=wrap "
    "(repeatable; the fields are ChipProfile's, qsnn/profiles.py).",
)


def chosen_profile(
    profile_name: str | None, profile_sets: Iterable[str], default: str | ChipProfile | None, *, without: str = ""
) -> ChipProfile | None:
    """The profile a command runs under: ``--profile NAME``, else ``default`` (the profile the command uses
    without one: a name, a profile such as an integer export's own, or None for none), with every
    ``--profile-set`` change applied. ``--profile-set`` without any profile to change is a
    :class:`ProfileError` that says why there is none (``without``) and to add ``--profile``.
    """
    overrides = parse_overrides(profile_sets)
    base = profile_name if profile_name is not None else default
    if base is None:
        if overrides:
            raise ProfileError(
                f"--profile-set {' '.join(profile_sets)}: there is no profile to change"
                + (f" ({without})" if without else "")
                + "; add --profile NAME ("
                + ", ".join(sorted(PROFILES))
                + ")"
            )
        return None
    profile = get_profile(base) if isinstance(base, str) else base
    return profile.replace(**overrides) if overrides else profile


def _field_docs() -> dict[str, str]:
    """Each ChipProfile field's description, from the Attributes section of its docstring."""
    docs: dict[str, str] = {}
    current = None
    for line in (ChipProfile.__doc__ or "").splitlines():
        text = line.strip()
        head, sep, rest = text.partition(":")
        if sep and head.isidentifier() and line.startswith(" " * 8) and not line.startswith(" " * 12):
            current = head
            docs[current] = rest.strip()
        elif current and text and line.startswith(" " * 12):
            docs[current] += " " + text
        elif not text:
            current = None
    return docs


def print_profiles() -> None:
    """Every chip profile and every field: type, the ChipProfile default, each profile's value, meaning."""
    import dataclasses

    fields = [f for f in dataclasses.fields(ChipProfile) if f.name != "name"]
    docs = _field_docs()
    names = sorted(PROFILES)
    click.echo(
        "chip profiles (qsnn/profiles.py); choose one with --profile NAME, change a field with "
        "--profile-set FIELD=VALUE"
    )
    for name in names:
        click.echo(f"  {PROFILES[name].summary()}")
    click.echo("")
    header = ["field", "type", "default", *names, "meaning"]
    rows = [
        [f.name, str(f.type), str(f.default), *(str(getattr(PROFILES[n], f.name)) for n in names), docs.get(f.name, "")]
        for f in fields
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    click.echo("\n(default: the ChipProfile field default a profile without that field would have)")


def _list_profiles(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        print_profiles()
        ctx.exit(0)


list_profiles_option = click.option(
    "--list-profiles",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_list_profiles,
    help="List the chip profiles and every field (type, default, each profile's value, meaning), then exit.",
)

#: ``--data-dir`` of every command that reads a dataset by name, with ``$QSNN_DATA_DIR`` as its default.
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    envvar="QSNN_DATA_DIR",
    help="Folder with the dataset files (env QSNN_DATA_DIR); see docs/data.md.",
)


def dataset_option(what: str = "the model"):
    """``--dataset`` of a command that runs a model on data: a named dataset or a user source
    (:class:`DatasetChoice`), by default the one ``what`` records (a model of one's own
    ``nn.Sequential`` records none: then this option is how its data is given)."""
    from qsnn.data import DATASETS

    return click.option(
        "--dataset",
        type=DatasetChoice(DATASETS),
        default=None,
        help=f"Dataset: a name, arrays:DIR or folder:DIR [default: the one {what} was trained on, as its "
        "metadata records it; a model of your own nn.Sequential records none].",
    )


allow_saturation_option = click.option(
    "--allow-saturation",
    is_flag=True,
    help="Compile even if the worst-case membrane may exceed the profile's width (values then saturate or wrap as "
    "the profile says); without it such a network is refused. On a fixed-shift profile (loihi2) it also lets the "
    "compiler scale the weights up until θ has 16 threshold steps, at the cost of a possibly saturating membrane.",
)

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
    """One-line message and exit code 1 for a QsnnError or an OSError on a user path (unless ``debug=True``).

    The command runs inside a :func:`qsnn.locks.lock_scope`: the outputs it declares to
    :func:`qsnn.output_guard.check_outputs` stay locked until it ends. A closed standard output
    (``qsnn-sim --report - | head -c0``) is one line too, on stderr.
    Brevitas' import-time notice (no ``fast_hadamard_transform``: it uses torch's kernels, which qsnn
    needs anyway) is silenced here, for every command, so that an error stays one line.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        warnings.filterwarnings("ignore", message=".*fast_hadamard_transform.*")
        try:
            with lock_scope():
                return fn(*args, **kwargs)
        except BrokenPipeError as exc:
            if debug or exc.filename is not None:
                raise
            _stdout_gone()
            _last_words(f"error: {STDOUT_NAME}: {os_error_message(exc)}")
            sys.exit(1)
        except (QsnnError, OSError) as exc:
            if debug or (
                isinstance(exc, OSError)
                and not isinstance(exc, QsnnError)
                and not on_user_path(exc, user_paths(click.get_current_context(silent=True)))
            ):
                raise
            message = (str(exc).strip() or type(exc).__name__) if isinstance(exc, QsnnError) else os_error_message(exc)
            _last_words(f"error: {message}")
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
        own = {"--help", "-h", *(opt for p in self.params for opt in [*p.opts, *p.secondary_opts])}  # --version
        if self.default_command and (not args or (args[0] not in self.commands and args[0] not in own)):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


_STDOUT_CLAIMED = "qsnn.stdout_claimed"


def claim_stdout() -> None:
    """Keep stdout for the command's data (e.g. ``--report -``): :func:`say` and :func:`print_table` use stderr."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta[_STDOUT_CLAIMED] = True


def _stdout_claimed() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().meta.get(_STDOUT_CLAIMED))


STDOUT_NAME = "standard output"


def _stdout_gone() -> None:
    """Point fd 1 at /dev/null so that Python's flush at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _last_words(line: str) -> None:
    try:
        click.echo(line, err=True)
    except OSError:  # stderr is gone too
        pass


def write_stdout(text: str, what: str = "--report -") -> None:
    """The command's data on standard output (``--report -``): a reader that closed the pipe or a full
    disk behind a redirection is an :class:`~qsnn.output_guard.OutputError` naming ``what`` and standard
    output (one ``error:`` line, exit 1)."""
    try:
        click.echo(text)
        sys.stdout.flush()
    except OSError as exc:
        _stdout_gone()
        raise OutputError(f"{what}: cannot write to {STDOUT_NAME}: {os_error_message(exc)}") from None


def say(message: str = "") -> None:
    """A line for the person running the command: stdout, or stderr when stdout carries data.

    A closed or full standard output is an :class:`~qsnn.output_guard.OutputError` (one ``error:`` line)."""
    err = _stdout_claimed()
    try:
        click.echo(message, err=err)
    except OSError as exc:
        if not err:
            _stdout_gone()
        raise OutputError(f"{'standard error' if err else STDOUT_NAME}: {os_error_message(exc)}") from None


def print_table(rows: list[tuple[str, Any]], title: str | None = None) -> None:
    """A two-column summary table on stdout (stderr when stdout carries data)."""
    width = max(len(k) for k, _ in rows)
    if title:
        say(title)
        say("-" * max(len(title), width + 20))
    for key, value in rows:
        say(f"{key:<{width}}  {value}")


class DatasetChoice(click.ParamType):
    """``--dataset``: a named dataset (``choices``), or a user source ``arrays:DIR`` / ``folder:DIR``
    (:mod:`qsnn.sources`), refused at parse time when it is neither."""

    name = "dataset"

    def __init__(self, choices: Iterable[str]):
        self.choices = tuple(choices)

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self.choices) + "|arrays:DIR|folder:DIR]"

    def convert(self, value, param, ctx):
        from qsnn import sources

        if value in self.choices:
            return value
        try:
            if sources.is_user(value):
                return sources.canonical(value)
        except QsnnError as exc:
            self.fail(str(exc), param, ctx)
        self.fail(f"{value!r} is not one of {', '.join(self.choices)}, nor arrays:DIR or folder:DIR", param, ctx)
