"""MSE spike-count loss (eq. 6) and the spike-count prediction.

For output spikes z (T, B, C) and labels y, the target count of class c is ⌊ρ_on·T⌋ for the correct
class and ⌊ρ_off·T⌋ for the others (ρ_on = 0.8, ρ_off = 0.2: the correct neuron should fire on 80 %
of the steps, the rest on 20 %)::

    L = 1/(T·B·C) · Σ_b Σ_c ( Σ_t z_{t,b,c} − target_{b,c} )²

(the normalisation snnTorch's ``mse_count_loss`` uses). The prediction is the argmax of the
spike counts, the first index winning ties.

Distillation (integer-exact fine-tuning, :mod:`qsnn.train.finetune`): with n^F_{b,c} the output spike
counts of the float model the fine-tuning starts from (the teacher), on the same inputs, and a weight
λ ≥ 0, the loss adds the same squared distance to the teacher's counts::

    L_λ = L + λ/(T·B·C) · Σ_b Σ_c ( Σ_t z_{t,b,c} − n^F_{b,c} )²

(equivalently, up to a constant, (1 + λ)·MSE toward the blended target (target + λ·n^F)/(1 + λ)):
the integer network is pulled toward what the float model does on each sample, not only toward the
label's idealised counts.
"""

from __future__ import annotations

import torch


def spike_count_targets(
    y: torch.Tensor, num_classes: int, num_steps: int, correct_rate: float, incorrect_rate: float
) -> torch.Tensor:
    on, off = int(num_steps * correct_rate), int(num_steps * incorrect_rate)
    target = torch.full((y.shape[0], num_classes), float(off), device=y.device)
    target[torch.arange(y.shape[0], device=y.device), y] = float(on)
    return target


def mse_count_loss(
    spikes: torch.Tensor, y: torch.Tensor, correct_rate: float = 0.8, incorrect_rate: float = 0.2
) -> torch.Tensor:
    """Eq. (6) on output spikes (T, B, C) and integer labels (B,)."""
    T, _, C = spikes.shape
    counts = spikes.sum(0)
    target = spike_count_targets(y, C, T, correct_rate, incorrect_rate)
    return torch.mean((counts - target) ** 2) / T


def distill_count_loss(
    spikes: torch.Tensor,
    y: torch.Tensor,
    teacher_counts: torch.Tensor | None,
    weight: float,
    correct_rate: float = 0.8,
    incorrect_rate: float = 0.2,
) -> torch.Tensor:
    """L_λ of the module docstring: eq. (6) plus λ times the MSE of the counts to the teacher's n^F (B, C)
    (None, and not read, when λ = 0)."""
    T = spikes.shape[0]
    loss = mse_count_loss(spikes, y, correct_rate, incorrect_rate)
    if weight:
        loss = loss + weight * torch.mean((spikes.sum(0) - teacher_counts.to(spikes.dtype)) ** 2) / T
    return loss


def predict(spikes: torch.Tensor) -> torch.Tensor:
    """Class = argmax of output spike counts (T, B, C) → (B,); ties go to the first index."""
    return spikes.sum(0).argmax(1)
