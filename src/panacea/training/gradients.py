"""Gradients on one or several processes.

Several processes (docs/algorithms.md#shared-rules, rules 2 and 6). The Trainer averages the
gradient of its own ``backward`` over processes (DDP all-reduce, FSDP reduce-scatter); the
multi-pass trainers take gradients themselves and write ``.grad``, so they use
``process_gradients``, which returns the same average: ``torch.autograd.grad`` +
``average_across_processes`` for replicated parameters (one process, DDP: ``.grad`` and DDP's
reducer are never touched, so nothing is averaged twice), or one ``backward`` read out of ``.grad``
for FSDP2's sharded parameters (``autograd.grad`` cannot reach them). The Trainer's own loss
(``compute_loss`` with ``num_items_in_batch``) is already weighted by target tokens across processes
(``average_tokens_across_devices``, on by default: the token count is summed over processes and the
loss multiplied by their number), so its gradient is averaged plainly. A loss the trainer computes
itself (the defender's harmful batch) is a token mean over the process's own share of the batch;
``token_share`` rescales it so that the plain average over processes is the token mean over the
global batch, as on one process with the batches concatenated. DeepSpeed (it keeps gradients in its
own partitioned buffers) and FSDP1 (flat parameters) are refused by ``require_gradient_access`` with
one line.
"""

from __future__ import annotations

import torch

from ..distributed import num_processes
from ..errors import ConfigError
from ..weights import average_across_processes, is_dtensor


# --------------------------------------------------------------------------- several processes


def require_gradient_access(trainer, method: str) -> None:
    """Refuse engines under which a trainer cannot write ``.grad`` itself (one line, exit 2)."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        raise ConfigError(
            f"{method} writes its own gradients, which DeepSpeed keeps in its partitioned buffers; "
            "launch it with configs/accelerate/ddp.yaml or configs/accelerate/fsdp.yaml"
        )
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is not None and getattr(plugin, "fsdp_version", 1) != 2:
        raise ConfigError(f"{method} under FSDP needs fsdp_version: 2 (see configs/accelerate/fsdp.yaml)")


def process_gradients(loss, params, model=None) -> list[torch.Tensor]:
    """∇loss w.r.t. ``params`` averaged over processes, without changing ``.grad``.

    These are the values DDP or FSDP would leave in ``.grad`` after ``loss.backward()``, identical
    on every process (sharded like the parameters under FSDP2). On one process: exactly
    ``torch.autograd.grad(loss, params)``.
    """
    if any(is_dtensor(p) for p in params):
        # FSDP2: the registered parameters are shards outside the autograd graph; one backward
        # reduce-scatters their averaged gradient into .grad, which is read and put back as it was
        if model is not None and hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(True)  # also inside the Trainer's no_sync window
        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        for p, g in zip(params, saved):
            p.grad = g
        return grads
    return average_across_processes(torch.autograd.grad(loss, params))


def micro_batch_scale(trainer, num_items_in_batch) -> float:
    """The factor a micro-batch's loss gets before its gradient is added, as ``Trainer.training_step``
    applies it: 1 when the model's loss already divides by the whole step's target-token count
    (``num_items_in_batch``, token-weighted across micro-batches), else 1/GA."""
    scaled = trainer.model_accepts_loss_kwargs and num_items_in_batch is not None
    return 1.0 if scaled else 1.0 / trainer.current_gradient_accumulation_steps


def accumulate_grads(params, grads) -> None:
    """``p.grad += G`` (G in ``p``'s dtype; ``p.grad = G`` when there is none yet), outside autograd:
    how a trainer that computes its own gradient adds one micro-batch, as ``backward`` would.
    ``grads`` may be a generator; it is evaluated under ``no_grad``."""
    with torch.no_grad():
        for p, g in zip(params, grads):
            g = g.to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g


def token_share(batch):
    """N·n_r / Σ_r n_r for this process r's batch (n = target tokens, N = processes); 1.0 on one.

    A token-mean loss multiplied by it has, averaged over processes, the gradient of the token
    mean over all processes' batches together (what one process computes on the concatenation).
    """
    n_proc = num_processes()
    if n_proc == 1:
        return 1.0
    n = (batch["labels"][..., 1:] != -100).sum().float()
    total = n.clone()
    torch.distributed.all_reduce(total)
    return n_proc * n / total.clamp_min(1.0)


def process_mean(value: torch.Tensor, share=1.0) -> torch.Tensor:
    """The mean over processes of ``value × share`` (with ``token_share``: the global token mean)."""
    value = value.detach()
    if num_processes() == 1:
        return value
    v = (value.float() * share).reshape(1)
    torch.distributed.all_reduce(v)
    return (v / num_processes())[0]


def full_tensors(tensors) -> list[torch.Tensor]:
    """Whole tensors from FSDP2 shards (collective: call it on every process); others unchanged."""
    return [t.full_tensor() if is_dtensor(t) else t for t in tensors]
