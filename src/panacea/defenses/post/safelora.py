"""SafeLoRA (arXiv 2405.16833; docs/algorithms.md#safelora): project the user's LoRA update onto
the "alignment direction" of the modules where it strays from it.

Per module (one LoRA target, e.g. layer 3's ``v_proj``), with the user's update ΔW = (α/r)·B·A:

    V = W_aligned − W_base,   Ĉ = V Vᵀ / ‖V‖_F,   s = cos(vec(Ĉ B A), vec(B A))
    selected modules:  B ← Ĉ B   (so ΔW ← Ĉ ΔW);   the others stay

Selection, after *all* similarities are computed: ``number`` projects the ``num_proj_layers``
modules with the lowest s (ties broken by module name), ``threshold`` every module with s ≤ τ.
Ĉ B is computed as V (Vᵀ B) / ‖V‖_F and s from r×r Gram matrices, so neither Ĉ (out×out) nor
Ĉ B A (out×in) is ever formed; everything in fp32. Cost: one pass over the modules, no data, no
forward pass; V is built for one module at a time.

Where V comes from:
  * default: the pipeline. The repaired run fine-tuned a new adapter on top of the aligned model
    (``adapter_mode: merge_new``), so W_aligned − W_base is the alignment adapter chain,
    V = Σ (α/r)·B_al·A_al (read with ``safetensors`` from ``adapter_model.safetensors`` and
    ``adapter_config.json``). V then has rank ≤ r, and Ĉ is a very restrictive projection —
    measure the utility cost [inference, docs/algorithms.md#safelora];
  * ``base_model`` + ``aligned_model``: two model folders (the paper's setting: Llama-2-7b-hf
    and Llama-2-7b-chat-hf); only the target modules' weights are read from their safetensors.
The user's update must be one B·A pair, so the repaired run must use ``adapter_mode: merge_new``
(in ``continue`` mode the live adapter holds alignment + user update; we refuse rather than
project a dense ΔW).

Deliberate departures from ``IBM/SafeLoRA`` (docs/algorithms.md#safelora): similarities are computed
once before any projection (the reference's ``number`` mode first projects with threshold 0.3, issue
#2); weights, projections and LoRA B are matched by module name, never by ``zip`` order, a running
index or ``shape[0] == r``; exactly K modules in ``number`` mode (the reference's K-th-smallest
threshold projects more on ties); fp32 throughout (fp16 vs bf16 changed results, issue #2); no
full-model copies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...errors import ConfigError, DataError
from ...registry import DEFENSES
from ..base import DefenseSpec

PEFT_PREFIX = "base_model.model."


@dataclass
class SafeLoRAConfig:
    select: str = "number"
    """``number`` (the K lowest similarities) or ``threshold`` (s ≤ τ). IBM/SafeLoRA:config.py
    (select_layers_type="number")."""
    num_proj_layers: int = 10
    """K in ``number`` mode: how many modules (layer × q/k/v) to project (all of them when the model
    has fewer). IBM/SafeLoRA:config.py."""
    threshold: float = 0.5
    """τ in ``threshold`` mode. IBM/SafeLoRA:config.py."""
    base_model: str | None = None
    """Folder (safetensors) of the base weights; with ``aligned_model``, replaces the pipeline's
    alignment adapter as the source of V. Paper: meta-llama/Llama-2-7b-hf."""
    aligned_model: str | None = None
    """Folder (safetensors) of the aligned weights. Paper: meta-llama/Llama-2-7b-chat-hf."""

    def __post_init__(self):
        if self.select not in ("number", "threshold"):
            raise ConfigError(f"select must be number or threshold for safelora, got {self.select!r}")
        if not self.num_proj_layers > 0:
            raise ConfigError(f"num_proj_layers must be > 0 for safelora, got {self.num_proj_layers}")
        if not -1 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be in [-1, 1] for safelora, got {self.threshold}")
        if (self.base_model is None) != (self.aligned_model is None):
            raise ConfigError("base_model and aligned_model: safelora needs both folders or neither")
        for k in ("base_model", "aligned_model"):
            folder = getattr(self, k)
            if folder is not None and not Path(folder).is_dir():
                raise ConfigError(f"{k} must be a local model folder (safetensors) for safelora, got {folder!r}")


def short(name: str) -> str:
    """Module name without the peft wrapper prefix: the name in the bare model's state dict."""
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def live_lora_modules(model) -> list[tuple[str, torch.nn.Module, str]]:
    """(name, LoRA layer, adapter name) of every module whose adapter is trainable, by name order."""
    out = []
    for name, mod in model.named_modules():
        lora_a, lora_b = getattr(mod, "lora_A", None), getattr(mod, "lora_B", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or not isinstance(lora_b, torch.nn.ModuleDict):
            continue
        live = [a for a in lora_b if lora_b[a].weight.requires_grad]
        if len(live) > 1:
            raise ConfigError(f"safelora: module {short(name)} has {len(live)} trainable adapters; expected one")
        if live:
            out.append((name, mod, live[0]))
    if not out:
        raise ConfigError("safelora: the model has no trainable LoRA adapter to project")
    return sorted(out, key=lambda t: t[0])


# --------------------------------------------------------------------------- V per module


def _adapter_deltas(folders: list) -> Callable[[str], torch.Tensor]:
    """V(name) = Σ over the adapter chain of (α/r)·B·A, read from each adapter folder."""
    from safetensors.torch import load_file

    adapters = []
    for folder in folders:
        folder = Path(folder)
        try:
            conf = json.loads((folder / "adapter_config.json").read_text())
            tensors = load_file(str(folder / "adapter_model.safetensors"))
        except (OSError, ValueError) as e:
            raise DataError(
                f"safelora: cannot read the alignment adapter in {str(folder)!r} ({type(e).__name__})") from None
        if conf.get("rank_pattern") or conf.get("alpha_pattern"):
            raise ConfigError(f"safelora: adapter {str(folder)!r} uses per-module rank/alpha patterns (unsupported)")
        r, alpha = conf["r"], conf["lora_alpha"]
        scale = alpha / (r**0.5) if conf.get("use_rslora") else alpha / r
        adapters.append((folder, tensors, scale))

    def delta(name: str) -> torch.Tensor:
        v = None
        for folder, tensors, scale in adapters:
            a, b = tensors.get(f"{name}.lora_A.weight"), tensors.get(f"{name}.lora_B.weight")
            if a is None or b is None:
                raise DataError(
                    f"safelora: the alignment adapter {str(folder)!r} has no LoRA weights for {short(name)}")
            part = scale * (b.float() @ a.float())
            v = part if v is None else v + part
        return v

    return delta


def _safetensors_index(folder: Path, key: str) -> dict[str, Path]:
    """Tensor name → file, for a single ``model.safetensors`` or a sharded checkpoint."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        wmap = json.loads(index.read_text())["weight_map"]
        return {k: folder / v for k, v in wmap.items()}
    single = folder / "model.safetensors"
    if not single.exists():
        raise DataError(f"{key}: safelora: {str(folder)!r} holds no model.safetensors (or its index)")
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        return {k: single for k in f.keys()}


def _folder_deltas(base: str, aligned: str) -> Callable[[str], torch.Tensor]:
    """V(name) = W_aligned − W_base, reading only that module's weight from both folders."""
    from safetensors import safe_open

    idx = {key: (folder, _safetensors_index(Path(folder), key))
           for key, folder in (("base_model", base), ("aligned_model", aligned))}

    def read(key, tensor):
        folder, files = idx[key]
        if tensor not in files:
            raise DataError(f"{key}: safelora: {folder!r} has no tensor {tensor!r}")
        with safe_open(str(files[tensor]), "pt") as f:
            return f.get_tensor(tensor).float()

    def delta(name: str) -> torch.Tensor:
        t = f"{short(name)}.weight"
        return read("aligned_model", t) - read("base_model", t)

    return delta


def check_source(cfg: SafeLoRAConfig, src) -> None:
    """Refuse a run SafeLoRA cannot repair (called by the pipeline before any training, and here)."""
    if src.adapter_mode != "merge_new":
        raise ConfigError(
            f"finetune.runs.{src.run}.adapter_mode: safelora needs the repaired run to use adapter_mode "
            f"merge_new (set finetune.runs.{src.run}.adapter_mode=merge_new) so that the user's update is "
            f"one B·A pair; run {src.run!r} uses {src.adapter_mode}"
        )
    if cfg.base_model is None and not src.alignment_chain:
        raise ConfigError(
            f"base_model and aligned_model: safelora needs base and aligned weights: run {src.run!r} "
            f"fine-tuned the {src.alignment!r} model, which has no alignment adapter; set base_model and "
            f"aligned_model (model folders) on this post defense or fine-tune from an aligned model"
        )


def reference_deltas(ctx, cfg: SafeLoRAConfig):
    """The V source for this run: the two folders if set, else the run's alignment adapter chain."""
    src = ctx.source
    check_source(cfg, src)
    if cfg.base_model is not None:
        return _folder_deltas(cfg.base_model, cfg.aligned_model), "folders"
    return _adapter_deltas(list(src.alignment_chain)), "alignment_adapter"


# --------------------------------------------------------------------------- projection


def project_b(V: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Ĉ B = V (Vᵀ B) / ‖V‖_F without forming Ĉ (zero when V = 0)."""
    norm = torch.linalg.matrix_norm(V)
    if norm == 0:
        return torch.zeros_like(B)
    return V @ (V.T @ B) / norm


def similarity(CB: torch.Tensor, B: torch.Tensor, A: torch.Tensor) -> float:
    """cos(vec(Ĉ B A), vec(B A)) from r×r Gram matrices: ⟨XA, YA⟩_F = Σ (XᵀY) ⊙ (A Aᵀ)."""
    G = A @ A.T
    dot = (CB.T @ B * G).sum()
    n1 = (CB.T @ CB * G).sum().clamp_min(0).sqrt()
    n2 = (B.T @ B * G).sum().clamp_min(0).sqrt()
    den = n1 * n2
    return float(dot / den) if den > 0 else 0.0


def choose(similarities: dict[str, float], cfg: SafeLoRAConfig) -> tuple[list[str], float]:
    """Names to project and the threshold that selected them (number mode: the K-th lowest s)."""
    ranked = sorted(similarities, key=lambda n: (similarities[n], n))
    if cfg.select == "threshold":
        return [n for n in ranked if similarities[n] <= cfg.threshold], cfg.threshold
    picked = ranked[: cfg.num_proj_layers]
    return picked, similarities[picked[-1]]


class SafeLoRA:
    """Project B ← Ĉ B on the modules whose update is least aligned with W_aligned − W_base."""

    Config = SafeLoRAConfig
    check_source = staticmethod(check_source)

    @staticmethod
    def apply(model, ctx, cfg: SafeLoRAConfig) -> dict:
        delta, source = reference_deltas(ctx, cfg)
        modules = live_lora_modules(model)
        sims, projected = {}, {}
        with torch.no_grad():
            for name, mod, ad in modules:  # every similarity first, nothing written yet
                B = mod.lora_B[ad].weight.detach().float()
                A = mod.lora_A[ad].weight.detach().float()
                V = delta(name).to(B.device)
                if V.shape != (B.shape[0], A.shape[1]):
                    raise DataError(f"safelora: V of {short(name)} is {tuple(V.shape)}, the module is "
                                    f"{(B.shape[0], A.shape[1])}")
                projected[name] = project_b(V, B)
                sims[name] = similarity(projected[name], B, A)
            chosen, tau = choose(sims, cfg)
            for name, mod, ad in modules:
                if name in chosen:
                    W = mod.lora_B[ad].weight
                    W.copy_(projected[name].to(W.dtype))
        return {
            "select": cfg.select,
            "reference": source,
            "modules": len(modules),
            "projected": len(chosen),
            "threshold": round(tau, 6),
            "projected_modules": [short(n) for n in sorted(chosen)],
            "similarities": {short(n): round(s, 6) for n, s in sims.items()},
        }


DEFENSES["post"].register(
    "safelora",
    SafeLoRA,
    help="SafeLoRA (arXiv 2405.16833): B ← ĈB on the LoRA modules least similar to the alignment "
    "direction (needs adapter_mode merge_new)",
    spec=DefenseSpec(stage="post", config_cls=SafeLoRAConfig, needs_merge_new=True),
)
