"""Data-parallel training under ``torchrun``: the process group and the few collectives the loop needs.

``torchrun --nproc_per_node=N $(which qsnn-train) run ...`` (or ``python -m torch.distributed.run``)
starts N copies of the same command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set. When ``WORLD_SIZE > 1`` the training loop joins a process group (``nccl`` on CUDA,
``gloo`` on the CPU) and trains with ``DistributedDataParallel``, keeping the results semantics of
one process:

* **Global batch.** ``batch_size`` is the global batch. Every rank draws the same shuffled order (the
  shuffling generator is seeded identically) and takes its contiguous slice of each global batch
  (:func:`shard_bounds`), so the union of the ranks' slices is exactly the one-process batch.
* **Gradients.** The loss (eq. 6) is a mean over the batch. Rank r computes the mean L_r over its B_r
  samples and back-propagates ``L_r · B_r · W / B`` (W ranks, B the global batch); DDP averages the
  gradients over the ranks (divides their sum by W), so the update is the gradient of
  Σ_r B_r·L_r / B, the global-batch mean, also when the last batch does not split evenly. A rank whose
  slice is empty (a last batch smaller than W) runs one sample with weight 0 so that every rank
  joins the gradient all-reduce.
* **Metrics.** Loss sums, correct counts and validation/test correct counts are all-reduced, so every
  rank sees the numbers one process would log, and early stopping decides the same everywhere.
* **One writer.** Only rank 0 reads and writes the run directory (checkpoints, logs, plots, metrics);
  what it reads (a checkpoint to resume, the best checkpoint) is broadcast, so the other ranks need
  no shared file system. Checkpoints also keep every rank's random state (``rng_ranks``) so a resume
  with the same number of ranks continues each rank's dropout stream.

Known differences from one process (documented, not hidden):

* **BatchNorm** normalises with the statistics of the rank's slice. On CUDA the loop converts it to
  ``SyncBatchNorm`` (statistics over the global batch, equal to one process up to float rounding);
  ``SyncBatchNorm`` does not run on the CPU, so CPU/gloo runs with ``batch_norm`` use per-rank
  statistics (and rank 0's running statistics, which are broadcast before every evaluation).
* **Dropout** masks come from a per-rank random stream (seeded from (seed, rank)), so with dropout
  > 0 the masks differ from one process's. Equal-loss comparisons need ``dropout = 0``.
* Float sums are reduced in another order, so losses agree to float rounding (~1e-6 relative), not
  bit for bit.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from qsnn.errors import QsnnError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size`` (1 = a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a single process) --------------------------------------------------
    def all_reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device(self, device))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; tensors keep their device)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result (or its exception) to every rank."""
        if not self.enabled:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except Exception as exc:  # re-raised on every rank below, so no rank waits forever
                outcome = ("error", exc)
        kind, value = self.broadcast_object(outcome)
        if kind == "error":
            raise value
        return value

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        if not self.enabled:
            return
        for buf in module.buffers():
            if buf.numel():
                dist.broadcast(buf.data, src=0)


SINGLE = DistContext()


def _collective_device(ctx: DistContext, device: torch.device) -> torch.device:
    return device if ctx.backend == "nccl" else torch.device("cpu")


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device: str | None = None) -> tuple[DistContext, torch.device]:
    """The process's :class:`DistContext` and training device.

    A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) gets :data:`SINGLE` and ``device`` (default:
    CUDA when present, else the CPU). Under torchrun the process group is initialised once per
    process (``nccl`` on CUDA, ``gloo`` otherwise) and left open for later runs in the same process
    (a study); it is destroyed at exit. On CUDA each rank uses ``cuda:LOCAL_RANK``.
    """
    world = env_world_size()
    if world <= 1:
        dev = resolve_device(device)
        cuda_numerics(dev)
        return SINGLE, dev
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    cuda_numerics(dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(_destroy)
    ctx = DistContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=dist.get_backend()
    )
    return ctx, dev


CUDA_MODES = ("exact", "fast")
"""``QSNN_CUDA_MODE``: how training computes on a CUDA device (the CPU is unaffected).

* ``exact`` (default): float32 convolutions and matmuls (no TF32: its 10-bit mantissa rounds the
  pixel inputs of layer 1 and float weight scales, so a GPU-trained model's reported accuracy would
  not be what the float32 export computes), deterministic cuDNN algorithms (no atomics in the
  backward pass) and cuBLAS workspaces (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set), so a run
  resumed after an interruption is meant to end with the same tensors as one that was not, as on the
  CPU (tests/test_cuda.py asserts it where a GPU is available: ``make gpu-check``).
* ``fast``: TF32 and cuDNN's autotuned, possibly non-deterministic algorithms. Resume is then equal
  to float rounding only. ``make gpu-check`` measures what each mode costs (docs/training.md).
"""


def cuda_numerics(dev: torch.device, mode: str | None = None) -> str | None:
    """Set PyTorch's CUDA numerics for training on ``dev`` per :data:`CUDA_MODES` (``mode``, else
    ``QSNN_CUDA_MODE``, else ``exact``); return the mode set, or None for a non-CUDA device."""
    if dev.type != "cuda":
        return None
    mode = mode or os.environ.get("QSNN_CUDA_MODE") or "exact"
    if mode not in CUDA_MODES:
        raise QsnnError(f"QSNN_CUDA_MODE={mode}: not a CUDA mode; use one of {', '.join(CUDA_MODES)} (or unset it)")
    fast = mode == "fast"
    if not fast:  # cuBLAS's deterministic workspaces; read when its first handle is made
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    torch.backends.cudnn.deterministic = not fast
    torch.backends.cudnn.benchmark = fast
    return mode


def is_main_process() -> bool:
    """True unless this is a rank > 0 of an initialised process group (who should print summaries)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def available_devices() -> list[str]:
    """The torch devices this process can train on: ``cpu``, each ``cuda:i``, ``mps``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else the CPU.

    A device that does not parse (``banana``) or that this build or machine lacks (``cuda`` on a
    CPU-only torch, ``cuda:3`` on a 2-GPU machine) is a :class:`QsnnError` listing the available ones.
    """
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices()
    hint = f"available here: {', '.join(available)} (or leave --device out: cuda when present, else cpu)"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise QsnnError(f"--device {device}: not a torch device; {hint}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and (dev.index is None or dev.index < torch.cuda.device_count())
        why = (
            "there is no GPU with that index"
            if torch.cuda.is_available()
            else "this torch build has no CUDA"
            if not torch.backends.cuda.is_built()
            else "no CUDA GPU is visible"
        )
    else:
        ok = f"{dev.type}" in available or str(dev) in available
        why = f"{dev.type} is not available on this machine"
    if not ok:
        raise QsnnError(f"--device {device}: {why}; {hint}")
    return dev


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous slice of n items: the first n mod W ranks take one extra."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_batch(x: torch.Tensor, y: torch.Tensor, ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(x_r, y_r, real): this rank's slice of a global batch and how many of its samples count.

    An empty slice becomes the global batch's first sample with ``real = 0`` (its loss is weighted
    by 0), so the rank still runs forward and backward and joins DDP's all-reduce.
    """
    start, stop = shard_bounds(len(y), ctx.rank, ctx.world_size)
    if stop > start:
        return x[start:stop], y[start:stop], stop - start
    return x[:1], y[:1], 0


def rank_seed(seed: int, rank: int) -> int:
    """A seed for rank's own random stream (dropout), distinct per (seed, rank)."""
    return int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1, dtype=np.uint64)[0] % (2**63))


def wrap_model(
    model: torch.nn.Module, ctx: DistContext, device: torch.device, log: Callable[[str], None] = print
) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel (SyncBatchNorm on CUDA); ``model`` itself when single."""
    if not ctx.enabled:
        return model
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif has_bn:
        log(
            "note: BatchNorm on CPU/gloo uses per-rank batch statistics (SyncBatchNorm needs CUDA); "
            "results differ slightly from one process"
        )
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
