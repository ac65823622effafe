"""Architecture-independent addressing of hook points, and scoped forward hooks (docs/contributing.md#habits, habit 7).

Defenses that act on hidden states (Vaccine on attention outputs, RepNoise on MLP outputs and the
logit lens, Antidote on the inputs of LoRA layers) name *anchors*, never module paths:

==============  =========================================================================
anchor          module
==============  =========================================================================
``layers``      every decoder block, in depth order
``attn_output`` every block's attention module (its output[0] is the attention output)
``mlp_output``  every block's MLP module (its output is the MLP output)
``final_norm``  the norm applied before the LM head
``lm_head``     the output projection
==============  =========================================================================

``FAMILIES`` maps ``config.model_type`` to the dotted paths of those modules in the bare
``*ForCausalLM`` model; a peft wrapper is looked through. A model type without an entry, or an
entry whose path does not resolve on the loaded model, raises a ``ConfigError`` that names the
model type and the anchor. To support another family, add one line to ``FAMILIES``.

``forward_hooks`` registers hooks only for the duration of a ``with`` block, checks that every
hook point exists, and removes every handle in ``finally`` (also when the body raises).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from .errors import ConfigError

ANCHORS = ("layers", "attn_output", "mlp_output", "final_norm", "lm_head")


@dataclass(frozen=True)
class Family:
    layers: tuple[str, ...]
    """Candidate paths of the decoder-block ``ModuleList`` (the first that resolves is used)."""
    attn: str
    """Path of the attention module inside one block."""
    mlp: str
    """Path of the MLP module inside one block."""
    final_norm: tuple[str, ...]
    lm_head: str = "lm_head"


_LLAMA_LIKE = Family(layers=("model.layers", "model.language_model.layers"), attn="self_attn", mlp="mlp",
                     final_norm=("model.norm", "model.language_model.norm"))

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": Family(("model.layers",), "self_attn", "block_sparse_moe", ("model.norm",)),
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "gpt2": Family(layers=("transformer.h",), attn="attn", mlp="mlp", final_norm=("transformer.ln_f",)),
}


def bare_model(model):
    """The transformers model under any DDP and peft wrapper."""
    import torch

    while isinstance(model, torch.nn.parallel.DistributedDataParallel):  # the Trainer's model under DDP
        model = model.module
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _get(root, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def family(model) -> tuple[str, Family]:
    m = bare_model(model)
    mt = getattr(getattr(m, "config", None), "model_type", None)
    if mt not in FAMILIES:
        raise ConfigError(
            f"model.name_or_path: model type {mt!r} has no hook-point map (supported: "
            f"{', '.join(sorted(FAMILIES))}); add it to panacea.hooks.FAMILIES"
        )
    return mt, FAMILIES[mt]


def resolve(model, anchor: str) -> list:
    """The modules of ``anchor`` on ``model``, in depth order (one element for single anchors)."""
    if anchor not in ANCHORS:
        raise ConfigError(f"hook point {anchor!r} is unknown (choose from {', '.join(ANCHORS)})")
    mt, fam = family(model)
    m = bare_model(model)

    def first(paths):
        for p in paths:
            obj = _get(m, p)
            if obj is not None:
                return obj
        raise ConfigError(f"hook point {anchor!r} does not resolve on model type {mt!r} (tried {', '.join(paths)})")

    if anchor == "final_norm":
        return [first(fam.final_norm)]
    if anchor == "lm_head":
        return [first((fam.lm_head,))]
    layers = list(first(fam.layers))
    if not layers:
        raise ConfigError(f"hook point {anchor!r}: model type {mt!r} has no decoder layers")
    if anchor == "layers":
        return layers
    sub = fam.attn if anchor == "attn_output" else fam.mlp
    out = [_get(layer, sub) for layer in layers]
    if any(o is None for o in out):
        raise ConfigError(f"hook point {anchor!r} does not resolve on model type {mt!r} (no '{sub}' in a decoder layer)")
    return out


def first_output(output):
    """The hidden-state tensor of a module output (attention modules return tuples)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_first(output, new):
    """``output`` with its hidden-state tensor replaced by ``new`` (a new tuple, never in place)."""
    if isinstance(output, tuple):
        return (new,) + output[1:]
    if isinstance(output, list):
        return [new] + output[1:]
    return new


@contextlib.contextmanager
def forward_hooks(modules, hook, *, with_index: bool = True, pre: bool = False):
    """Register ``hook`` on every module for the ``with`` block; always remove the handles.

    With ``with_index`` the hook is called as ``hook(i, module, args, output)`` (``i`` = position in
    ``modules``), else with the usual ``(module, args, output)``. ``pre=True`` registers forward
    pre-hooks (``hook(i, module, args)``).
    """
    modules = list(modules)
    if not modules:
        raise ConfigError("forward_hooks: no module to hook (the hook point resolved to nothing)")
    handles = []
    try:
        for i, mod in enumerate(modules):
            fn = (lambda *a, _i=i: hook(_i, *a)) if with_index else hook
            handles.append(mod.register_forward_pre_hook(fn) if pre else mod.register_forward_hook(fn))
        yield handles
    finally:
        for h in handles:
            h.remove()


def hooked_modules_count(modules) -> int:
    """How many forward (pre-)hooks are attached to ``modules`` (tests use it to check cleanup)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)
