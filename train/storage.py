"""Optuna storages shared by ``qsnn-train tune`` and ``qsnn-train study --storage``.

One URL names the storage every worker joins:

* ``sqlite:///PATH`` — one file; fine for several processes on one machine (not on a network file
  system: SQLite's locking is not safe there);
* ``postgresql://user:password@host:port/db`` — a database server, for workers on many machines.
  The driver is psycopg (``pip install 'qsnn[postgres]'``); a plain ``postgresql://`` URL uses it when
  psycopg2 is not installed (SQLAlchemy's default driver for that scheme);
* ``mysql+pymysql://…`` or any other SQLAlchemy URL Optuna's ``RDBStorage`` accepts;
* ``journal:PATH`` — Optuna's journal file (no heartbeats).

RDB storages get Optuna's heartbeat: each running trial records a heartbeat every ``heartbeat``
seconds, and a trial whose heartbeat is older than ``grace`` seconds is failed by the next worker
that looks (its process died). ``retry`` (``qsnn-train study``) re-queues such a trial as a waiting
one with the same cell (Optuna's ``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import importlib.util
import random
import re
import time
import warnings
from pathlib import Path
from typing import Any

from qsnn.errors import QsnnError
from qsnn.optional import install_hint, require

DEFAULT_HEARTBEAT = 60


def default_storage(out: str | Path, name: str = "tune.db") -> str:
    return f"sqlite:///{Path(out).resolve() / name}"


def redact(url: str) -> str:
    """A storage URL without its password (for logs and the TOML header)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def sqlalchemy_url(url: str) -> str:
    """``url`` with a PostgreSQL driver SQLAlchemy can load: ``postgresql://`` → ``postgresql+psycopg://``
    when only psycopg (3) is installed; ``postgres://`` (Heroku style) is accepted as ``postgresql://``."""
    scheme, sep, rest = url.partition("://")
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme != "postgresql":
        return f"{scheme}{sep}{rest}"
    has = {m: importlib.util.find_spec(m) is not None for m in ("psycopg", "psycopg2")}
    if has["psycopg2"]:
        return f"postgresql://{rest}"
    if has["psycopg"]:
        return f"postgresql+psycopg://{rest}"
    raise QsnnError(
        f"storage {redact(url)}: PostgreSQL needs a driver, psycopg, which is not installed: "
        f"{install_hint('psycopg')} (or make install)"
    )


def retry_callback(max_retry: int | None):
    """Optuna's callback that re-queues a trial failed for a stale heartbeat (``max_retry`` times)."""
    st = require("optuna.storages", "an Optuna storage (--storage)")

    cls = getattr(st, "RetryHeartbeatStaleTrialCallback", None) or st.RetryFailedTrialCallback  # name before 4.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental"
        return cls(max_retry=max_retry)


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT, grace: int | None = None, retry=None):
    """An Optuna storage for ``url``: RDB (sqlite/postgresql/mysql URL) with heartbeats, or ``journal:PATH``.

    ``grace`` (seconds, default 2 × ``heartbeat`` but at least 120 s) is how old a running trial's
    heartbeat may get before another worker fails it; ``retry`` is a stale-trial callback.
    """
    optuna = require("optuna", "an Optuna storage (--storage)")
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    if url.startswith("journal:"):
        journal = require("optuna.storages.journal", "an Optuna storage (--storage)")
        JournalFileBackend, JournalStorage = journal.JournalFileBackend, journal.JournalStorage

        path = Path(url[len("journal:") :].removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise QsnnError(
            f"--storage {url!r}: expected an Optuna storage URL such as sqlite:///tune.db, "
            f"postgresql://user:password@host/db or journal:PATH"
        )
    if heartbeat < 1:
        raise QsnnError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    grace = grace if grace is not None else max(2 * heartbeat, 120)
    if grace <= heartbeat:
        raise QsnnError(
            f"--grace ({grace} s) must be longer than --heartbeat ({heartbeat} s), or live workers "
            f"would be taken for dead"
        )
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        # Several processes share one file: wait for the lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 120}}
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    else:
        # Workers live for hours: test pooled connections before use (servers drop idle ones).
        engine_kwargs = {"pool_pre_ping": True}
    target = sqlalchemy_url(url)
    callback = {}
    if retry is not None:
        import inspect

        key = (
            "heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
            else "failed_trial_callback"
        )  # Optuna < 4.9
        callback = {key: retry}
    last_error: Exception | None = None
    for attempt in range(8):  # two workers creating the tables of a new database at once may collide
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    target, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=grace, **callback
                )
        except DBAPIError as exc:  # e.g. both inserting the schema version, a server still starting: retry
            last_error = exc
            time.sleep(0.2 + random.random() * (attempt + 1))
        except SQLAlchemyError as exc:  # a malformed URL, an unknown dialect: retrying will not help
            raise QsnnError(f"cannot open Optuna storage {redact(url)}: {str(exc).splitlines()[0]}") from None
        except ImportError as exc:
            raise QsnnError(
                f"storage {redact(url)}: {exc}; install the database driver (PostgreSQL: "
                f"`pip install 'qsnn[postgres]'`)"
            ) from None
    raise QsnnError(f"cannot open Optuna storage {redact(url)}: {str(last_error).splitlines()[0]}")


__all__ = ["DEFAULT_HEARTBEAT", "default_storage", "redact", "sqlalchemy_url", "retry_callback", "open_storage"]
