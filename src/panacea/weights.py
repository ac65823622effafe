"""Weight-space helpers shared by the gradient-surgery defenses (docs/algorithms.md#shared-rules,
rules 1–3).

* ``global_l2``: the ℓ2 norm over all given tensors concatenated, accumulated as Σ‖t‖² in fp32
  on one device (never ``torch.stack`` of per-device norms). With ``sharded=True`` (each process
  holds a different part of the tensors, as under FSDP/ZeRO, or a different part of the batch
  for activation gradients) the sum is all-reduced across processes before the square root;
  replicated tensors (DDP) must not be summed. FSDP2 parameters and their gradients are
  ``DTensor``s: their local shards are summed and reduced over the mesh dimensions they are
  sharded on, whatever ``sharded`` says.
* ``average_across_processes``: the mean over processes of per-process tensors, e.g. the gradient
  lists a trainer takes with ``torch.autograd.grad``, which bypasses DDP's all-reduce (rule 2).
* ``perturbed``: add a perturbation to parameters and restore the saved copies exactly on exit,
  even when the body raises (no ``w += ε; …; w −= ε`` round trip in low precision). Works on
  FSDP2's sharded parameters as well: each process perturbs and restores its own shard.
"""

from __future__ import annotations

import contextlib

import torch

from .distributed import _initialized, num_processes


def is_dtensor(t) -> bool:
    """True for a ``DTensor`` (FSDP2 parameters and gradients)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def global_l2(tensors, sharded: bool = False) -> torch.Tensor:
    """‖(t_1, …, t_n)‖₂ in fp32, identical on every process.

    Args:
        tensors: tensors (``None`` entries are skipped); plain tensors and/or ``DTensor`` shards.
        sharded: the plain tensors are disjoint parts of one whole spread over the processes, so
            their sums of squares are all-reduced (DTensors are always reduced over their mesh).
    """
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return torch.zeros(())
    first = tensors[0].to_local() if is_dtensor(tensors[0]) else tensors[0]
    device = first.device
    sq = torch.zeros((), dtype=torch.float32, device=device)
    per_mesh: dict = {}  # (mesh, placements) -> Σ‖local shard‖² of the DTensors laid out that way
    for t in tensors:
        if is_dtensor(t):
            key = (t.device_mesh, tuple(t.placements))
            s = t.to_local().detach().float().pow(2).sum().to(device)
            per_mesh[key] = per_mesh[key] + s if key in per_mesh else s
        else:
            sq = sq + t.detach().float().pow(2).sum().to(device)
    if sharded and _initialized():
        torch.distributed.all_reduce(sq)
    for (mesh, placements), s in per_mesh.items():
        for dim, placement in enumerate(placements):
            if placement.is_shard():  # replicated mesh dimensions hold copies: not summed
                torch.distributed.all_reduce(s, group=mesh.get_group(dim))
        sq = sq + s
    return sq.sqrt()


def average_across_processes(tensors) -> list[torch.Tensor]:
    """The element-wise mean over processes of each tensor (the identity on one process).

    For per-process gradients of replicated parameters (DDP) taken with ``torch.autograd.grad``:
    afterwards every process holds the gradient DDP's all-reduce would have produced, bit for bit
    the same on every process. One all-reduce of a flat fp32 buffer; each result keeps the dtype
    and device of its input. Not for ``DTensor``s (FSDP2 already averages their gradients).
    """
    tensors = list(tensors)
    if not _initialized() or num_processes() == 1 or not tensors:
        return tensors
    if any(is_dtensor(t) for t in tensors):
        raise TypeError("average_across_processes: DTensor gradients are already averaged by FSDP")
    device = tensors[0].device
    flat = torch.cat([t.detach().reshape(-1).float().to(device) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= num_processes()
    out, i = [], 0
    for t in tensors:
        out.append(flat[i : i + t.numel()].view(t.shape).to(device=t.device, dtype=t.dtype))
        i += t.numel()
    return out


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
