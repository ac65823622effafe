"""Antidote-style one-shot pruning (arXiv 2408.09600; docs/algorithms.md#antidote): zero the LoRA
weights that matter most on harmful data, by the Wanda score.

    n_j  = Σ_tokens x_j² / #tokens          (input column j of a LoRA linear, over the calibration set)
    S_ij = |W_ij| · √n_j
    per output row i: keep the ⌊cols·(1−d)⌋ lowest-scored columns, zero the rest:  W ← W ⊙ (1 − M)

for every trainable LoRA linear (peft's ``lora_A[adapter]`` and ``lora_B[adapter]`` of each target
module; with ``merge_new`` only the user's adapter is live, in ``continue`` mode the single
adapter). The calibration set is the defender's harmful (prompt, harmful answer) pairs, run once
through the model in batches without gradients; padding is excluded through the attention mask.
Cost: one forward pass over the calibration set, O(Σ rows·cols·log cols) for the sort.

Rounding: d is the *target* fraction. Per row ⌊cols·(1−d)⌋ columns are kept, so
``cols − ⌊cols·(1−d)⌋`` are zeroed, at least one per row for any d > 0: with d = 0.1 a 32-column
``lora_B`` (r = 32) loses 4/32 = 12.5 %, a 4-column one 1/4 = 25 %, a 4096-column ``lora_A``
410/4096 ≈ 10.0 %. The record reports the effective ratio of every tensor.

Deliberate departures from the reference (``prune_wanda_outlier`` in the shared code base):
  * inputs are captured with scoped forward pre-hooks on the LoRA linears during ordinary
    forward passes, batch by batch, instead of holding every calibration input in one tensor and
    re-running the decoder layer by layer; hooks are removed when done;
  * n_j is the per-token mean; the reference's per-sample running mean differs by one factor per
    module, which leaves every row's ranking, hence the mask, unchanged;
  * no hard-coded ``cuda:0`` and no LLaMA-only module-name strings: LoRA linears are found by name
    in ``named_modules()`` (``…lora_A.<adapter>`` / ``…lora_B.<adapter>`` with a trainable weight);
  * ⌊cols·(1−d)⌋ is taken with a 1e-9 tolerance, so e.g. 10·(1 − 0.9) keeps 1 column, not 0;
  * no "good mask" subtraction (``--no_safety_mask False``): it needs an extra alignment-stage run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...data.base import DataSpec
from ...errors import ConfigError
from ...hooks import forward_hooks
from ...registry import DEFENSES
from ..base import DefenseSpec

PEFT_PREFIX = "base_model.model."


@dataclass
class AntidoteConfig:
    dense_ratio: float = 0.1
    """d, the fraction of each row to zero. git-disl/Antidote:script/finetune/antidote_poison_ratio.sh
    (dense_ratio=0.1; also the train.py default)."""
    harmful_data: DataSpec = field(default_factory=lambda: DataSpec(name="pyrit_harmful", start=100, n=100))
    """The defender's harmful calibration set; disjoint from the user's harmful samples and the
    evaluation prompts (checked by the pipeline). Reference: 2000 BeaverTails rows from row 5001
    (antidote_poison_ratio.sh, bad_sample_num=2000)."""
    batch_size: int = 10
    """Calibration batch size (ours; any value gives the same mask, padding is excluded)."""
    random_prune: bool = False
    """Control: zero a random ⌊d·numel⌋ entries of each tensor instead (--random_prune True)."""
    seed: int = 0
    """Seed of ``random_prune`` (ours; the reference draws unseeded)."""

    def __post_init__(self):
        if not 0 < self.dense_ratio < 1:
            raise ConfigError(f"dense_ratio must be in (0, 1) for antidote, got {self.dense_ratio}")
        if not self.batch_size > 0:
            raise ConfigError(f"batch_size must be > 0 for antidote, got {self.batch_size}")


def short(name: str) -> str:
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def lora_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    """Every trainable ``lora_A.<adapter>`` / ``lora_B.<adapter>`` linear, by name order."""
    out = []
    for name, mod in model.named_modules():
        parts = name.split(".")
        if (len(parts) >= 2 and parts[-2] in ("lora_A", "lora_B") and isinstance(mod, torch.nn.Linear)
                and mod.weight.requires_grad):
            out.append((name, mod))
    if not out:
        raise ConfigError("antidote: the model has no trainable LoRA linear to prune")
    return sorted(out, key=lambda t: t[0])


@torch.no_grad()
def input_statistics(model, modules, dataset, collator, batch_size: int) -> tuple[list[torch.Tensor], int]:
    """n_j = Σ_tokens x_j² / #tokens of every module's input, over non-padding tokens; and #tokens."""
    sums = [torch.zeros(m.in_features, dtype=torch.float32, device=m.weight.device) for _, m in modules]
    calls = [0] * len(modules)
    current = {}

    def hook(i, module, args):
        x = args[0]
        keep = current["keep"].to(x.device)  # no-op unless the model is spread over devices
        x = x.reshape(-1, x.shape[-1])
        if x.shape[0] != keep.numel():
            raise RuntimeError(f"antidote: input of {modules[i][0]} has {x.shape[0]} rows for {keep.numel()} tokens")
        sums[i] += x[keep].float().pow(2).sum(0).to(sums[i].device)
        calls[i] += 1

    device = modules[0][1].weight.device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    tokens = 0
    was_training = model.training
    model.eval()  # no dropout: the inputs the served model sees
    try:
        with forward_hooks([m for _, m in modules], hook, pre=True):
            for batch in loader:
                mask = batch["attention_mask"].to(device)
                current["keep"] = mask.reshape(-1).bool()
                model(input_ids=batch["input_ids"].to(device), attention_mask=mask, use_cache=False)
                tokens += int(mask.sum())
    finally:
        model.train(was_training)
    missing = [modules[i][0] for i, c in enumerate(calls) if c == 0]
    if missing:
        raise RuntimeError(f"antidote: LoRA linear {short(missing[0])} was never called (adapter disabled?)")
    return [s / max(tokens, 1) for s in sums], tokens


def wanda_scores(weight: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · √n_j (fp32)."""
    return weight.detach().float().abs() * n.to(weight.device).sqrt()[None, :]


def harmful_mask(scores: torch.Tensor, dense_ratio: float) -> torch.Tensor:
    """True where a weight is zeroed: per row, all but the ⌊cols·(1−d)⌋ lowest scores (stable sort)."""
    cols = scores.shape[1]
    keep = int(cols * (1 - dense_ratio) + 1e-9)
    order = torch.sort(scores, dim=1, stable=True).indices
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], False)
    return mask


def random_mask(shape, dense_ratio: float, gen: torch.Generator) -> torch.Tensor:
    """True on ⌊d·numel⌋ entries drawn uniformly without replacement."""
    numel = int(torch.Size(shape).numel())
    k = int(numel * dense_ratio + 1e-9)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=gen)[:k]] = True
    return mask.reshape(shape)


class Antidote:
    """Zero the top-d Wanda-score entries of each row of every live LoRA linear (or a random d)."""

    Config = AntidoteConfig

    @staticmethod
    def apply(model, ctx, cfg: AntidoteConfig) -> dict:
        modules = lora_linears(model)
        data = ctx.dataset(cfg.harmful_data, "harmful_data")
        if cfg.random_prune:
            gen = torch.Generator().manual_seed(cfg.seed)
            masks = [random_mask(m.weight.shape, cfg.dense_ratio, gen) for _, m in modules]
            tokens = 0
        else:
            stats, tokens = input_statistics(model, modules, data, ctx.collator, cfg.batch_size)
            masks = [harmful_mask(wanda_scores(m.weight, n), cfg.dense_ratio) for (_, m), n in zip(modules, stats)]
        ratios, zeroed, total = {}, 0, 0
        with torch.no_grad():
            for (name, m), mask in zip(modules, masks):
                mask = mask.to(m.weight.device)
                m.weight.masked_fill_(mask, 0)
                k = int(mask.sum())
                ratios[short(name)] = round(k / mask.numel(), 6)
                zeroed, total = zeroed + k, total + mask.numel()
        return {
            "mode": "random" if cfg.random_prune else "wanda",
            "dense_ratio": cfg.dense_ratio,
            "effective_ratio": round(zeroed / total, 6),
            "zeroed": zeroed,
            "tensors": len(modules),
            "tokens": tokens,
            "samples": len(data),
            "effective_ratio_per_tensor": ratios,
        }


DEFENSES["post"].register(
    "antidote",
    Antidote,
    help="Antidote (arXiv 2408.09600): zero the top-d Wanda-score LoRA weights per row on harmful data",
    spec=DefenseSpec(stage="post", config_cls=AntidoteConfig, defender_data_keys=("harmful_data",)),
)
