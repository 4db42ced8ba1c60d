"""Learning-rate schedules, stepped every minibatch (iteration t = 0, 1, 2, ...).

With η the initial LR and N the minibatches per epoch:

* ``none``:     η_t = η
* ``lrstep``:   η_t = η · γ^⌊t / (S·N)⌋                  (halve every S = 15 epochs by default)
* ``lossstep``: η_t = η · γ^k, k incremented at the end of an epoch whose mean training loss has
  not improved on the best for more than ``patience`` epochs (then the count restarts)
* ``cosine``, eq. (4) as written, with period P = 10 epochs of iterations::

      η_t = η_min + ½ (η − η_min) (1 + cos(π t / P))

  which falls to η_min over P iterations and rises back over the next P, repeating for the whole
  run; with ``warm_restarts`` t is taken modulo P (SGDR: a jump back to η every P iterations).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from qsnn.config import TrainConfig


class Schedule:
    """η_t as a function of the iteration t (and, for ``lossstep``, of past epoch losses)."""

    def __init__(
        self,
        kind: str,
        lr: float,
        iters_per_epoch: int,
        *,
        period_epochs: float = 10.0,
        eta_min: float = 0.0,
        warm_restarts: bool = False,
        step_epochs: int = 15,
        gamma: float = 0.5,
        loss_patience: int = 0,
    ) -> None:
        if kind not in ("none", "lrstep", "lossstep", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}")
        if iters_per_epoch < 1:
            raise ValueError("iters_per_epoch must be >= 1")
        self.kind, self.lr, self.iters_per_epoch = kind, lr, iters_per_epoch
        self.period = max(1, round(period_epochs * iters_per_epoch))
        self.eta_min, self.warm_restarts = eta_min, warm_restarts
        self.step_iters = step_epochs * iters_per_epoch
        self.gamma, self.loss_patience = gamma, loss_patience
        self.t = 0  # iterations taken
        self.decays = 0  # lossstep: number of reductions so far
        self.best_loss = math.inf
        self.bad_epochs = 0

    @classmethod
    def from_config(cls, cfg: TrainConfig, iters_per_epoch: int) -> "Schedule":
        return cls(
            cfg.schedule,
            cfg.lr,
            iters_per_epoch,
            period_epochs=cfg.cosine_period_epochs,
            eta_min=cfg.eta_min,
            warm_restarts=cfg.warm_restarts,
            step_epochs=cfg.step_epochs,
            gamma=cfg.gamma,
            loss_patience=cfg.loss_patience,
        )

    def lr_at(self, t: int) -> float:
        """η_t for iteration t (``lossstep`` uses the reductions made so far)."""
        if self.kind == "none":
            return self.lr
        if self.kind == "lrstep":
            return self.lr * self.gamma ** (t // self.step_iters)
        if self.kind == "lossstep":
            return self.lr * self.gamma**self.decays
        tc = t % self.period if self.warm_restarts else t
        return self.eta_min + 0.5 * (self.lr - self.eta_min) * (1.0 + math.cos(math.pi * tc / self.period))

    @property
    def current(self) -> float:
        return self.lr_at(self.t)

    def apply(self, optimizer: torch.optim.Optimizer) -> float:
        """Set the optimizer's LR to η_t for the coming minibatch; returns it."""
        lr = self.current
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        """One minibatch done."""
        self.t += 1

    def end_epoch(self, train_loss: float) -> None:
        """Tell ``lossstep`` the epoch's mean training loss."""
        if self.kind != "lossstep":
            return
        if train_loss < self.best_loss:
            self.best_loss, self.bad_epochs = train_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.loss_patience:
            self.decays += 1
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "decays": self.decays, "best_loss": self.best_loss, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.decays = int(state["t"]), int(state["decays"])
        self.best_loss, self.bad_epochs = float(state["best_loss"]), int(state["bad_epochs"])
