"""How a defense's step time and memory grow with sequence length and LoRA rank, and where the
time of one step goes (the scaling and profile sections of ``panacea bench``'s report).

``scaling_sweep`` builds, for every (method, sequence length L, LoRA rank r), a fresh model with a
new rank-r adapter (alpha 2r, the config's target modules) and the defense's real ``Trainer``
through the registry, exactly as the pipeline does, and times ``trainer.training_step`` plus
zeroing the gradients (no optimizer step: it is the same for every method). Every batch the step
sees, the user batch and the defender's harmful batches alike, is exactly L tokens: each sequence
is cut to a window of L tokens that keeps answer tokens (``fixed_length``) and right-padded.
Memory of a step:

* GPU: ``torch.cuda.max_memory_allocated`` after a reset; working memory = peak − allocated
  before the steps (activations, gradients, the defense's copies of the weights);
* CPU: the process's peak RSS (Linux ``VmHWM``, reset before the steps after returning freed heap
  to the OS with ``malloc_trim``); working memory = peak RSS − RSS right before the steps. The
  absolute peak includes the Python process and libraries and says little about a method.

The ratios to SFT at the same (L, r) are what carries over to a larger model (every method runs
the same model, the defense adds passes), and the fitted exponents (``fit_growth``) say how a
point extrapolates to another L or r. ``profile_step`` runs ``torch.profiler`` around a few steps
at the experiment's own ``model.max_length`` and aggregates self time per operator and, when the
trainers label their passes with ``record_function("<defense>/<pass>")``, time per pass.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import median

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm
from transformers import set_seed
from transformers.utils import logging as hf_logging

from . import attacks, models
from .config import ExperimentConfig, parse_options
from .errors import ConfigError
from .pipeline import Context
from .plots import pyplot
from .registry import DEFENSES
from .training import per_device_batch_size, release_freed_memory, training_arguments
from .training.memory import _reset_peak, _rss_peak_bytes

GB = 2**30
Method = tuple[str, str, dict]  # (stage, defense name, options)


def fixed_length(features: list[dict], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Collate tokenized features into tensors of exactly ``(len(features), length)``.

    A longer sequence keeps the window of ``length`` tokens starting ``length // 2`` tokens before
    its first answer token (or its tail), so a window always holds answer tokens when the sequence
    has any; a shorter one is right-padded (pad id, label −100, attention 0).
    """
    ids = torch.full((len(features), length), pad_id, dtype=torch.long)
    labels = torch.full((len(features), length), -100, dtype=torch.long)
    mask = torch.zeros((len(features), length), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        first = next((j for j, y in enumerate(f["labels"]) if y != -100), n)
        start = min(max(0, first - length // 2), max(0, n - length))
        w = min(length, n)
        ids[i, :w] = torch.tensor(f["input_ids"][start : start + w])
        labels[i, :w] = torch.tensor(f["labels"][start : start + w])
        mask[i, :w] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class _Step:
    """One method's real trainer on a fresh rank-r model, fed batches of exactly L tokens."""

    def __init__(self, cfg: ExperimentConfig, ctx, method: Method, rank: int, length: int, batch_size: int, out: str):
        stage, name, options = method
        if stage not in ("alignment", "finetune"):
            raise ConfigError(f"scaling: {name!r} is a {stage} defense; only training stages have a step to time")
        entry = DEFENSES[stage].get(name, f"scaling.{name}")
        opts = parse_options(entry.obj.Config, dict(options), f"scaling.{name}")
        # a context that never truncates: fixed_length cuts its own answer-keeping window
        long = Context(replace(cfg, model=replace(cfg.model, max_length=2**30)), ctx.tokenizer, ctx.pools)
        data = long.tokenize(_stage_examples(cfg, long, stage))
        train = cfg.alignment.train if stage == "alignment" else cfg.finetune.train
        set_seed(cfg.seed)
        self.model = models.build(cfg.model, replace(cfg.lora, r=rank, alpha=2.0 * rank), [], new_adapter=True)
        self.trainer = entry.obj.make_trainer(self.model, training_arguments(train, out, cfg.seed), data, long, opts)
        pad = ctx.tokenizer.pad_token_id
        self.trainer.data_collator = lambda feats: fixed_length(feats, length, pad)  # harmful batches too
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which is bypassed
        batch = fixed_length([data[i % len(data)] for i in range(batch_size)], length, pad)
        dev = self.trainer.args.device  # on the device before the step, as the Trainer's loader does
        self.batch = {k: v.to(dev) for k, v in batch.items()}
        self.n_items = (batch["labels"][:, 1:] != -100).sum().to(dev)

    def run(self, n: int) -> list[float]:
        times = []
        model = self.trainer.model
        for _ in range(n):
            _sync()
            t0 = time.perf_counter()
            self.trainer.training_step(model, self.batch, self.n_items)
            model.zero_grad(set_to_none=True)
            _sync()
            times.append(time.perf_counter() - t0)
        return times

    def clamped(self) -> int | None:
        """Steps so far whose clamp skipped a backward pass (Panacea's ``stats``; None for others)."""
        return (getattr(self.trainer, "stats", None) or {}).get("clamp_active_steps")

    def close(self) -> None:
        del self.trainer, self.model, self.batch
        release_freed_memory()


def _stage_examples(cfg: ExperimentConfig, ctx, stage: str) -> list:
    """The examples the stage trains on: the alignment set (+ benign) or the user set of the attack."""
    if stage == "alignment":
        exs = ctx.examples(cfg.alignment.data, "alignment.data")
        return exs + (ctx.examples(cfg.alignment.benign, "alignment.benign") if cfg.alignment.benign else [])
    fd = cfg.finetune.data
    entry, opts = attacks.resolve(cfg)  # the attack's user set (poison_mix: the poisoned mix)
    return attacks.build(entry, opts, attacks.pools(ctx, fd, entry, opts), fd.n, fd.poison_ratio,
                         cfg.seed if fd.seed is None else fd.seed)


@contextlib.contextmanager
def _quiet():
    """transformers' warnings and weight-loading bars off while models are built (restored after)."""
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _memory_baseline() -> int:
    _reset_peak()  # frees what is freeable, then VmHWM := current RSS; CUDA peak := current allocation
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else _rss_peak_bytes()


def _memory_peak() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _rss_peak_bytes()


def _device() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{os.cpu_count()}"


def reference(methods: dict[str, Method]) -> str | None:
    """The label of the method the ratios are relative to: the first whose defense is its stage's
    baseline (``DefenseSpec.role == "baseline"``, SFT), or None."""
    for label, (stage, name, _) in methods.items():
        if name in DEFENSES[stage] and DEFENSES[stage].get(name).spec.role == "baseline":
            return label
    return None


def scaling_sweep(cfg: ExperimentConfig, ctx, methods: dict[str, Method], seq_lengths: list[int], ranks: list[int],
                  steps: int = 3, warmup: int = 1, progress: bool = True, batch_size: int | None = None) -> list[dict]:
    """One point per (method, L, r): mean step seconds, peak and working memory, ratios to ``sft``.

    ``methods`` maps a label to (stage, defense, options); the baseline's label (``reference``:
    ``sft``) is the reference of the ratios. Every method gets the same batch size (default: ``finetune.train``'s per-device
    batch), so the ratios compare the same work.
    """
    bs = batch_size or per_device_batch_size(cfg.finetune.train, 1)
    combos = [(m, L, r) for m in methods for L in seq_lengths for r in ranks]
    points = []
    with tempfile.TemporaryDirectory(prefix="panacea-scaling-") as out, _quiet():
        for label, L, r in tqdm(combos, desc="scaling", disable=not progress):
            step = _Step(cfg, ctx, methods[label], r, L, bs, out)
            step.run(warmup)
            clamps = step.clamped()
            base = _memory_baseline()
            times = step.run(steps)
            peak = _memory_peak()
            point = {"method": label, "stage": methods[label][0], "seq_length": L, "lora_rank": r,
                     "batch_size": bs,
                     "trainable_params": sum(p.numel() for p in step.model.parameters() if p.requires_grad),
                     "step_seconds": sum(times) / len(times), "peak_memory_gb": round(peak / GB, 6),
                     "step_memory_gb": round(max(0, peak - base) / GB, 6),
                     "memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "process_peak_rss",
                     "device": _device()}
            if clamps is not None:  # Panacea skips its third backward while h(w+ε) ≥ c
                point["clamp_active_steps"] = step.clamped() - clamps  # of the timed steps
            points.append(point)
            step.close()
    ref_label = reference(methods)
    ref = {(p["seq_length"], p["lora_rank"]): p for p in points if p["method"] == ref_label}
    for p in points:
        s = ref.get((p["seq_length"], p["lora_rank"]))
        if s is not None:
            p["time_ratio_to_sft"] = round(p["step_seconds"] / s["step_seconds"], 3)
            work = s["step_memory_gb"]
            p["memory_ratio_to_sft"] = round(p["step_memory_gb"] / work, 3) if work > 0 else None
            p["peak_memory_ratio_to_sft"] = round(p["peak_memory_gb"] / s["peak_memory_gb"], 3)
    return points


def expected_ratio(passes: float, batch: int, harmful_batch: int | None) -> float:
    """A method's compute per step relative to SFT's, from its passes: with a second data set of
    batch b_h, (b + (passes − 1)·b_h)/b (Panacea and Booster: (b + 2·b_h)/b); else ``passes``."""
    if harmful_batch:
        return (batch + (passes - 1) * harmful_batch) / batch
    return float(passes)


def plausible(ratio: float, cpu_ratio: float | None, expected: float) -> str | None:
    """Why a measured step-time ratio cannot be trusted, or None. A training method does SFT's
    pass and more: its extra passes cost at least their forward passes, about a third of a forward
    and backward pass, so the ratio cannot fall below ``1 + (expected − 1)/3`` (less 15 % for timer
    noise); nor exceed twice what its passes allow; and wall and CPU ratios that disagree by more
    than 25 % mean the wall clock measured the machine's load, not the method."""
    floor = 0.85 * (1 + (expected - 1) / 3)
    if ratio < floor:
        return (f"below what its passes allow ({ratio:.2f}× < {floor:.2f}×; ≈{expected:.2f}× expected): "
                f"extra passes cannot be free")
    if ratio > 2 * expected:
        return f"above twice what its passes allow ({ratio:.2f}× vs ≈{expected:.2f}×)"
    if cpu_ratio is not None and abs(ratio / cpu_ratio - 1) > 0.25:
        return f"wall {ratio:.2f}× and CPU {cpu_ratio:.2f}× disagree: the machine's load, not the method"
    return None


def interleaved_overhead(cfg: ExperimentConfig, ctx, methods: dict[str, Method], expected: dict[str, float],
                         rounds: int = 5, warmup: int = 1, progress: bool = True, batch_size: int | None = None) -> dict:
    """Step time of each training method against SFT, measured so that load cannot fake the ratio.

    Every method's real trainer is built first (``_Step``: the experiment's LoRA rank, batches of
    exactly ``model.max_length`` tokens, the same batch size), warmed up, then timed in ``rounds``
    rounds of one step each, the order rotated every round, so load that comes and goes falls on
    every method alike. Per method: the median wall seconds and the median CPU seconds of the
    process (all threads) over the rounds, their ratios to ``sft``'s medians, and ``flag`` when the
    ratio is implausible (:func:`plausible`; a flagged ratio is reported, never judged against a
    target). The load average before and after is recorded. Needs every model in memory at once
    (``len(methods)`` copies): the bench model's scale, not a 7B model's.
    """
    ref_label = reference(methods)
    if ref_label is None:
        raise ConfigError(f"overhead: the methods must include {DEFENSES['finetune'].baseline()}, the reference of the ratios")
    bs = batch_size or per_device_batch_size(cfg.finetune.train, 1)
    L = cfg.model.max_length
    load_before = os.getloadavg()
    names = list(methods)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="panacea-overhead-") as out, _quiet():
        steps = {n: _Step(cfg, ctx, methods[n], cfg.lora.r, L, bs, out) for n in names}
        for n in names:
            steps[n].run(warmup)
        for i in tqdm(range(rounds), desc="overhead (interleaved)", disable=not progress):
            for n in names[i % len(names):] + names[: i % len(names)]:
                c0 = time.process_time()
                wall[n] += steps[n].run(1)
                cpu[n].append(time.process_time() - c0)
        for n in names:
            steps[n].close()
    load_after = os.getloadavg()
    ref_w, ref_c = median(wall[ref_label]), median(cpu[ref_label])
    out = {}
    for n in names:
        w, c = median(wall[n]), median(cpu[n])
        ratio, cratio = w / ref_w, (c / ref_c if ref_c > 0 else None)
        # 6 decimals: a tiny model's step takes milliseconds on a fast CPU, where 4 would cost a % of the ratio
        out[n] = {"median_step_seconds": round(w, 6), "median_cpu_seconds": round(c, 6),
                  "step_time_ratio": round(ratio, 3), "cpu_time_ratio": None if cratio is None else round(cratio, 3),
                  "expected_ratio": round(expected.get(n, 1.0), 3),
                  "flag": None if n == ref_label else plausible(ratio, cratio, expected.get(n, 1.0))}
    return {"rounds": rounds, "warmup": warmup, "seq_length": L, "batch_size": bs, "lora_rank": cfg.lora.r,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after], "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "methods": out}


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (None with < 2 distinct x or a y ≤ 0)."""
    if len(set(xs)) < 2 or min(ys) <= 0:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return round(sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx), 3)


def fit_growth(points: list[dict]) -> dict:
    """Per method: exponents a, b with time ∝ L^a (at the largest rank) and ∝ r^b (at the largest L),
    and the same for working memory; None where a sweep has one value or a memory of 0."""
    out = {}
    for m in dict.fromkeys(p["method"] for p in points):
        ps = [p for p in points if p["method"] == m]
        r, L = max(p["lora_rank"] for p in ps), max(p["seq_length"] for p in ps)
        by_l = sorted((p for p in ps if p["lora_rank"] == r), key=lambda p: p["seq_length"])
        by_r = sorted((p for p in ps if p["seq_length"] == L), key=lambda p: p["lora_rank"])
        out[m] = {"rank": r, "seq_length": L}
        for key, field in (("time", "step_seconds"), ("memory", "step_memory_gb")):
            out[m][f"{key}_vs_seq"] = _slope([p["seq_length"] for p in by_l], [p[field] for p in by_l])
            out[m][f"{key}_vs_rank"] = _slope([p["lora_rank"] for p in by_r], [p[field] for p in by_r])
    return out


def profile_step(cfg: ExperimentConfig, ctx, stage: str, defense_name: str, options: dict,
                 steps: int = 2, top: int = 15) -> dict:
    """``torch.profiler`` over ``steps`` real training steps (after one warm-up) at ``model.max_length``.

    ``top_ops``: the operators with the most self time (CUDA time on a GPU, else CPU), each with
    its share of the self time of every event; ``by_pass``: inclusive time and share of the events
    named ``<label>/<pass>``, the label ``DefenseSpec.profile_label`` or else ``defense_name``
    (empty when the trainer has no labels).
    Both user and harmful batches are exactly ``model.max_length`` tokens (``fixed_length``).
    """
    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    train = cfg.alignment.train if stage == "alignment" else cfg.finetune.train
    bs = per_device_batch_size(train, 1)
    with tempfile.TemporaryDirectory(prefix="panacea-profile-") as out, _quiet():
        step = _Step(cfg, ctx, (stage, defense_name, options), cfg.lora.r, cfg.model.max_length, bs, out)
        step.run(1)
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            step.run(steps)
            total = time.perf_counter() - t0
        step.close()
    self_t = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    events = prof.key_averages()
    denom = sum(self_t(e) for e in events) or 1.0
    spec = DEFENSES[stage].get(defense_name).spec  # record_function labels of the passes, e.g. booster/harmful_pass
    labels = (f"{spec.profile_label or defense_name}/",)
    ops = sorted((e for e in events if not e.key.startswith(labels + ("ProfilerStep",))), key=self_t, reverse=True)
    passes = [e for e in events if e.key.startswith(labels)]
    incl = (lambda e: e.device_time_total or e.cpu_time_total) if cuda else (lambda e: e.cpu_time_total)
    return {"method": defense_name, "stage": stage, "seq_length": cfg.model.max_length, "batch_size": bs,
            "lora_rank": cfg.lora.r, "steps": steps, "total_seconds": round(total, 4),
            "step_seconds": round(total / steps, 4), "time_kind": "self_cuda" if cuda else "self_cpu",
            "device": _device(),
            "top_ops": [{"name": e.key, "self_seconds": round(self_t(e) / 1e6, 6), "share": round(self_t(e) / denom, 4)}
                        for e in ops[:top]],
            "by_pass": [{"name": e.key, "seconds": round(incl(e) / 1e6, 6), "share": round(incl(e) / denom, 4)}
                        for e in sorted(passes, key=incl, reverse=True)]}


def _num(x, fmt: str = ".3g") -> str:
    return "–" if x is None else format(x, fmt)


def scaling_report(points: list[dict], growth: dict) -> list[str]:
    """Markdown: the sweep's table and how to extrapolate with the fitted exponents."""
    kind = points[0]["memory_kind"] if points else ""
    lines = [f"Step time and working memory (memory above the pre-step baseline, {kind}) on {points[0]['device'] if points else '?'}, "
             f"batch {points[0]['batch_size'] if points else '?'}, every sequence exactly L tokens.", "",
             "| method | seq length | LoRA rank | step s | ×SFT | working memory GB | ×SFT |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for p in sorted(points, key=lambda p: (p["method"], p["seq_length"], p["lora_rank"])):
        lines.append(f"| {p['method']} | {p['seq_length']} | {p['lora_rank']} | {p['step_seconds']:.4f} | "
                     f"{_num(p.get('time_ratio_to_sft'), '.2f')} | {p['step_memory_gb']:.4f} | "
                     f"{_num(p.get('memory_ratio_to_sft'), '.2f')} |")
    lines.append("")
    for m, g in growth.items():
        lines.append(f"- {m}: time ∝ L^{_num(g['time_vs_seq'], '.2f')} (rank {g['rank']}), "
                     f"∝ r^{_num(g['time_vs_rank'], '.2f')} (L = {g['seq_length']}); working memory ∝ "
                     f"L^{_num(g['memory_vs_seq'], '.2f')}, ∝ r^{_num(g['memory_vs_rank'], '.2f')}")
    if any(p.get("clamp_active_steps") for p in points):
        lines.append("- Panacea's clamp was active (h(w+ε) ≥ c: its third backward is skipped) in some timed steps; "
                     "its time there is a lower bound.")
    lines += ["", "To extrapolate: t(L′) ≈ t(L)·(L′/L)^a. On a larger model (e.g. 7B) every method runs the same "
              "model, so the ×SFT ratios carry over: its step time ≈ SFT's measured step time there × the ratio, "
              "and its working memory ≈ SFT's × the memory ratio (model weights come on top)."]
    return lines


def profile_report(prof: dict) -> list[str]:
    """Markdown: where one step's time goes (top operators and, if labelled, the passes)."""
    lines = [f"Profile of {prof['method']} ({prof['stage']}): {prof['steps']} steps, {prof['step_seconds']:.4f} s/step, "
             f"L = {prof['seq_length']}, batch {prof['batch_size']}, rank {prof['lora_rank']}, {prof['device']}.", "",
             f"| operator | {prof['time_kind'].replace('_', ' ')} s | share |", "|---|---:|---:|"]
    lines += [f"| `{o['name']}` | {o['self_seconds']:.4f} | {100 * o['share']:.1f} % |" for o in prof["top_ops"]]
    if prof.get("by_pass"):
        lines += ["", "| pass | s (inclusive) | share |", "|---|---:|---:|"]
        lines += [f"| {p['name']} | {p['seconds']:.4f} | {100 * p['share']:.1f} % |" for p in prof["by_pass"]]
    return lines


def plot_scaling(points: list[dict], out_dir) -> Path:
    """``scaling.png``: step time vs L (largest rank) and vs rank (largest L), per method, log axes."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m in dict.fromkeys(p["method"] for p in points):
        ps = [p for p in points if p["method"] == m]
        r, L = max(p["lora_rank"] for p in ps), max(p["seq_length"] for p in ps)
        for ax, x, keep in ((axes[0], "seq_length", lambda p: p["lora_rank"] == r),
                            (axes[1], "lora_rank", lambda p: p["seq_length"] == L)):
            sel = sorted((p for p in ps if keep(p)), key=lambda p: p[x])
            ax.plot([p[x] for p in sel], [p["step_seconds"] for p in sel], "o-", label=m)
    axes[0].set(xlabel="sequence length (tokens)", ylabel="step time (s)", xscale="log", yscale="log",
                title="vs sequence length (largest rank)")
    axes[1].set(xlabel="LoRA rank", ylabel="step time (s)", xscale="log", yscale="log",
                title="vs LoRA rank (largest length)")
    for ax in axes:
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(out_dir) / "scaling.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
