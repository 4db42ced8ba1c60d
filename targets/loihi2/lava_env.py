"""The Lava environment: a Python 3.10 venv with lava-nc 0.10 and lava-dl 0.6, cached outside the checkout.

``python -m qsnn.targets.loihi2.lava_env build`` (what ``make lava`` runs) creates it from the exact pins in
``targets/loihi2/lava/requirements.txt`` under ``~/.cache/qsnn/lava-<first 12 hex digits of the SHA-256 of
that file>`` (``QSNN_CACHE`` moves the cache root), so a changed requirements file gets a new venv and
an unchanged one is built once per machine. The venv is complete only once its ``.complete`` marker
exists (written last); a half-built one is removed and built again. The base interpreter is
``QSNN_LAVA_BASE_PYTHON`` or pyenv's newest 3.10 (``$(pyenv root)/versions/3.10.*``).

:func:`run_folder` runs a loihi2 folder in that venv with ``targets/loihi2/lava/run_netx.py`` (which
imports only numpy and Lava) and returns every layer's spikes.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qsnn.atomic import atomic_write_bytes, atomic_write_text

HERE = Path(__file__).resolve().parent / "lava"
REQUIREMENTS = HERE / "requirements.txt"
RUNNER = HERE / "run_netx.py"
MARKER = ".complete"


class LavaEnvError(RuntimeError):
    """The Lava venv cannot be built or run here."""


def requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]


def venv_dir() -> Path:
    root = Path(os.environ.get("QSNN_CACHE") or Path.home() / ".cache" / "qsnn").expanduser()
    return root / f"lava-{requirements_hash()}"


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def is_built() -> bool:
    return (venv_dir() / MARKER).is_file() and venv_python().exists()


def base_python() -> Path:
    """The Python 3.10 interpreter the venv is made from."""
    explicit = os.environ.get("QSNN_LAVA_BASE_PYTHON")
    if explicit:
        return Path(explicit)
    roots = []
    try:
        roots.append(Path(subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()))
    except (OSError, subprocess.CalledProcessError):
        pass
    roots.append(Path.home() / ".pyenv")
    for root in roots:
        found = sorted(
            (root / "versions").glob("3.10.*/bin/python"),
            key=lambda p: [int(v) for v in p.parent.parent.name.split(".") if v.isdigit()],
        )
        if found:
            return found[-1]
    which = shutil.which("python3.10")
    if which:
        return Path(which)
    raise LavaEnvError(
        "no Python 3.10 found (lava-nc 0.10 needs 3.10): install it with pyenv "
        "(`pyenv install 3.10`) or set QSNN_LAVA_BASE_PYTHON to a python3.10"
    )


def build(log=print) -> Path:
    """Create the venv if it is not complete yet; returns its python."""
    target = venv_dir()
    if is_built():
        return venv_python()
    if target.exists():
        log(f"lava: removing the incomplete venv {target}")
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = base_python()
    log(f"lava: building {target} from {REQUIREMENTS.name} with {base} (several GB: lava-dl needs torch)")
    subprocess.run([str(base), "-m", "venv", str(target)], check=True)
    py = str(target / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "-r", str(REQUIREMENTS)], check=True)
    check = subprocess.run(
        [
            py,
            "-c",
            "from lava.lib.dl import netx; from lava.magma.core.run_configs import "
            "Loihi2SimCfg; import lava; print('ok')",
        ],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0 or "ok" not in check.stdout:
        raise LavaEnvError(f"lava: the new venv {target} cannot import netx:\n{check.stderr[-2000:]}")
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file() and not f.is_symlink())
    atomic_write_text(target / MARKER, f"built in {time.perf_counter() - start:.0f} s, {size / 2**30:.2f} GiB\n")
    log(f"lava: built in {time.perf_counter() - start:.0f} s, {size / 2**30:.2f} GiB")
    return venv_python()


def ensure(log=print) -> Path:
    """The Lava python, built first if missing (never skipped)."""
    return venv_python() if is_built() else build(log)


def run_folder(
    folder: str | os.PathLike,
    inputs: np.ndarray,
    *,
    python: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> dict[str, np.ndarray]:
    """Run a loihi2 folder in stock Lava on ``inputs``; ``{"z1": (T, N, ...), …, "counts", "predictions", "seconds"}``."""
    py = str(python or ensure())
    with tempfile.TemporaryDirectory(prefix="qsnn-lava-") as tmp:
        inp, out = Path(tmp) / "inputs.npy", Path(tmp) / "spikes.npz"
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asarray(inputs))  # .npy bytes, written atomically
        atomic_write_bytes(inp, buf.getvalue())
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        proc = subprocess.run(
            [py, str(RUNNER), str(folder), str(inp), str(out)], capture_output=True, text=True, env=env, timeout=timeout
        )
        if proc.returncode != 0:
            raise LavaEnvError(f"lava run of {folder} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        with np.load(out) as data:
            return {k: data[k] for k in data.files}


def main(argv: list[str]) -> int:
    if argv == ["build"]:
        print(build())
        return 0
    if argv == ["path"]:
        print(venv_python())
        return 0
    print("usage: python -m qsnn.targets.loihi2.lava_env build|path", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
