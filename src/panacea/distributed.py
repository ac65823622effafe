"""Process plumbing for runs on several processes (``accelerate launch -m panacea run CONFIG``).

The engine is accelerate: ``accelerate launch`` (or ``torchrun``) starts N copies of ``panacea
run``; each builds the same models and runs every stage, the ``transformers.Trainer`` wraps the
model for DDP or FSDP from the accelerate config, and the multi-pass trainers reduce their own
gradients (``panacea.training.process_gradients``). This module holds only what the pipeline needs
around that:

* ``init``: create accelerate's ``PartialState`` (the process group) when launched on several
  processes, on the CPU (gloo) when no GPU is visible, as ``training_arguments`` does;
* ``is_main`` / ``barrier`` / ``on_main``: only the main process writes run files and prints;
  the others wait for files they read back (saved adapters) and receive the main process's
  result (or its error) where one is needed;
* ``map_sharded``: split a list over the processes (item i goes to process i mod N), apply a
  function on each share, gather the results back in the original order (evaluation).

On one process every function is the identity or a no-op, and nothing here initialises anything.
This is the one module of process primitives: ``weights`` and ``training`` count processes with
``num_processes``, and the run-directory writers and the CLI ask ``is_main``. Asking does not import
torch: before torch is imported no process group can exist (``_torch``).
"""

from __future__ import annotations

import os
import sys

from .errors import UserError


def _torch():
    """The torch module once something has imported it, else None (then nothing is distributed)."""
    return sys.modules.get("torch")


def _initialized() -> bool:
    torch = _torch()
    return torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized()


def launched_processes() -> int:
    """The world size the launcher asked for (``WORLD_SIZE``), whether or not the group exists yet."""
    if _initialized():
        return _torch().distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def init():
    """Initialise the process group through accelerate when launched on several processes.

    Returns accelerate's ``PartialState`` then, ``None`` on a single process.
    """
    if launched_processes() <= 1:
        return None
    import torch  # launched on several processes: torch is needed anyway
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def num_processes() -> int:
    return _torch().distributed.get_world_size() if _initialized() else 1


def process_index() -> int:
    return _torch().distributed.get_rank() if _initialized() else 0


def is_main() -> bool:
    return process_index() == 0


def barrier() -> None:
    if num_processes() > 1:
        _torch().distributed.barrier()


def device():
    """This process's device under a multi-process launch (its own GPU), else ``None``."""
    if num_processes() == 1:
        return None
    from accelerate import PartialState

    return PartialState().device


def on_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the main process only; every process returns its result.

    A ``UserError`` raised on the main process is raised on every process with the same message,
    any other exception as a ``RuntimeError`` naming it (so no process waits forever). The result
    must be picklable.
    """
    if num_processes() == 1:
        return fn(*args, **kwargs)
    box: list = [None]
    error = None
    if is_main():
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except UserError as e:
            box[0], error = ("user", str(e)), e
        except BaseException as e:  # noqa: BLE001 - reported to the other processes, then re-raised
            box[0], error = ("fail", f"{type(e).__name__}: {e}"), e
    _torch().distributed.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "user":
        raise UserError(value)
    if kind == "fail":
        raise RuntimeError(f"the main process failed: {value}")
    return value


def map_sharded(fn, items: list) -> list:
    """``fn(items)`` computed as ``fn`` of each process's share, gathered in the original order.

    ``fn`` takes a list and returns one picklable result per element. Process r handles
    ``items[r::N]`` (interleaved, so long and short prompts spread evenly); every process returns
    the full list. On one process this is exactly ``fn(items)``.
    """
    n = num_processes()
    if n == 1:
        return fn(items)
    share = items[process_index() :: n]
    mine = list(fn(share)) if share else []
    if len(mine) != len(share):
        raise RuntimeError(f"map_sharded: {len(mine)} results for {len(share)} items")
    parts: list = [None] * n
    _torch().distributed.all_gather_object(parts, mine)
    out: list = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::n] = part
    return out
