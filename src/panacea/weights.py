"""Weight-space helpers shared by the gradient-surgery defenses (algorithms.md §0, rules 1–3).

* ``global_l2``: the ℓ2 norm over all given tensors concatenated, accumulated as Σ‖t‖² in fp32
  on one device (never ``torch.stack`` of per-device norms). With ``sharded=True`` (each process
  holds a different part of the tensors, as under FSDP/ZeRO) the sum is all-reduced across
  processes before the square root; replicated tensors (DDP) must not be summed.
* ``perturbed``: add a perturbation to parameters and restore the saved copies exactly on exit,
  even when the body raises (no ``w += ε; …; w −= ε`` round trip in low precision).
"""

from __future__ import annotations

import contextlib

import torch


def global_l2(tensors, sharded: bool = False) -> torch.Tensor:
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return torch.zeros(())
    device = tensors[0].device
    sq = torch.zeros((), dtype=torch.float32, device=device)
    for t in tensors:
        sq = sq + t.detach().float().pow(2).sum().to(device)
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sq)
    return sq.sqrt()


@contextlib.contextmanager
def perturbed(params, deltas):
    """Temporarily set ``p ← p + δ`` for each parameter; restore the exact saved values on exit."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, d in zip(params, deltas):
                p.add_(d.to(p.dtype))
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
