"""What a bench measures besides the pipeline's scores: the time estimate, batched generation
speed, interleaved step-time overhead and the timing probe."""

from __future__ import annotations

import math
import time

from ..config import ExperimentConfig
from ..errors import ConfigError
from .results import _base_value
from .spec import _attack, _passes, scaling_methods

# torch and the modules that import it (models, training, scaling, eval.generate, data.templates)
# are imported inside the measuring functions: importing the bench (`panacea plot`) loads no torch


# --------------------------------------------------------------------------- time estimate


#: seconds to build a model (load + adapters) before each stage and each evaluation, on 2 CPU cores
LOAD_SECONDS = 3.0


def estimate_seconds(cfg: ExperimentConfig, plan, step_seconds: float, eval_seconds: float,
                     n_gen: int = 16, scaling: dict | None = None) -> float:
    """Rough wall time from a measured SFT step and a measured evaluation, before anything runs:
    training steps × passes, one-shot post defenses as one pass over their harmful data, model
    builds, evaluations, the generation-speed test (two models, each ≈ 1.5 evaluations per 16
    prompts: the one-at-a-time half dominates) and the scaling sweep (steps × passes × L / max_length)."""

    a = cfg.alignment
    n_align = (a.data.n or 200) + ((a.benign.n or 0) if a.benign else 0)
    align_steps = math.ceil(n_align / a.train.per_device_train_batch_size) * a.train.num_train_epochs
    ft = cfg.finetune.train
    ft_steps = math.ceil(cfg.finetune.data.n / ft.per_device_train_batch_size) * ft.num_train_epochs
    total = 0.0
    for planned in plan.aligns.values():
        total += align_steps * step_seconds * planned.entry.spec.passes_per_step + LOAD_SECONDS
    for run in plan.runs.values():
        entry, opts = run.entry, run.options
        passes = entry.spec.passes_per_step
        interval = entry.spec.step_interval_option  # Panacea: the full 3 passes on every k-th step only
        k = getattr(opts, interval) if interval else 1
        total += ft_steps * step_seconds * (passes + k - 1) / k + LOAD_SECONDS
    for planned in plan.posts.values():
        entry, opts = planned.entry, planned.options
        keys = entry.spec.defender_data_keys  # gradient-based post defenses: one pass over their data
        data = getattr(opts, keys[0]) if keys else None
        total += LOAD_SECONDS + (math.ceil((data.n or 100) / ft.per_device_train_batch_size) * step_seconds if data else 0)
    total += len(plan.variants) * (eval_seconds + LOAD_SECONDS)
    total += 2 * (1.5 * eval_seconds * n_gen / 16 + LOAD_SECONDS)
    if scaling:
        for m in scaling["methods"]:
            for L in scaling["seq_lengths"]:
                per = step_seconds * _passes(m) * L / cfg.model.max_length
                total += len(scaling["ranks"]) * ((scaling["steps"] + scaling["warmup"]) * per + LOAD_SECONDS)
    return total


# --------------------------------------------------------------------------- generation speed


def finished_row_steps(prompt_lens: list[int], steps: list[int], batch_size: int) -> float:
    """Share of batched decode row-steps spent on rows whose answer had ended: ``generate`` batches
    prompts longest first and decodes each batch until its longest answer ends; ``steps[i]`` is
    the decode steps answer i needed (its tokens + the end token, at most max_new_tokens)."""
    order = sorted(range(len(prompt_lens)), key=lambda i: -prompt_lens[i])
    total = useful = 0
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        total += len(idx) * max(steps[i] for i in idx)
        useful += sum(steps[i] for i in idx)
    return 1 - useful / total if total else 0.0


def generation_speedup(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> dict:
    """Tokens per second of batched greedy generation (eval/generate.py) vs one prompt at a time
    without padding (what the reference evaluators do, docs/protocol.md#generation), and whether the
    answers are identical. Also where the batched time goes: the prefill (timed by generating one token
    per prompt; compute-bound, so batching saves little there) and the share of decode row-steps
    spent on rows whose answer had already ended (static batching decodes every row of a batch
    until its longest answer ends)."""
    import torch

    from ..data.templates import encode_prompt
    from ..eval.generate import generate

    def n_tokens(text):
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    t0 = time.perf_counter()
    single = []
    with torch.inference_mode():
        for enc in encoded:
            ids = torch.tensor([enc])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, use_cache=True)
            single.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = generate(model, tokenizer, prompts, max_new_tokens, batch_size, progress=False)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate(model, tokenizer, prompts, 1, batch_size, progress=False)  # the prefill alone
    t_prefill = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(single, batched))
    lens = [n_tokens(t) for t in batched]
    n_single, n_batched = sum(n_tokens(t) for t in single), sum(lens)
    tps_single, tps_batched = n_single / t_single, n_batched / t_batched
    # same answers → same tokens; when a model answers nothing at all, compare wall times
    speedup = tps_batched / tps_single if n_single and n_batched else t_single / t_batched
    wasted = finished_row_steps([len(e) for e in encoded], [min(n + 1, max_new_tokens) for n in lens], batch_size)
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "one_at_a_time_tokens_per_second": round(tps_single, 2),
        "batched_tokens_per_second": round(tps_batched, 2),
        "speedup": round(speedup, 2),
        "one_at_a_time_seconds": round(t_single, 3),
        "batched_seconds": round(t_batched, 3),
        "batched_prefill_seconds": round(t_prefill, 3),
        "mean_answer_tokens": round(n_batched / max(len(prompts), 1), 1),
        "finished_row_steps_fraction": round(wasted, 3),
        "identical_answers": same,
        "identical_fraction": round(same / max(len(prompts), 1), 4),
    }


def measure_overhead(cfg, ctx, bench: dict, methods: list[dict], rows: list[dict], rounds: int = 5,
                     warmup: int = 1) -> dict:
    """Step-time ratios of the training methods from interleaved steps (``scaling.interleaved_overhead``);
    each row's ``step_time_ratio`` becomes the interleaved median ratio (the ratio of the run's own
    stages, measured one after another, is kept as ``step_time_ratio_sequential``), with its CPU-time
    ratio, the ratio its passes allow and a ``ratio_flag`` when it is implausible."""
    from ..scaling import expected_ratio, interleaved_overhead
    from ..training import per_device_batch_size

    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError(f"bench.overhead.rounds must be an integer ≥ 1, got {rounds!r}")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"bench.overhead.warmup must be an integer ≥ 0, got {warmup!r}")
    by_method = {m["method"]: m for m in methods}
    attack = _attack()
    train = [attack] + [m["method"] for m in methods if m["stage"] in ("alignment", "finetune") and m["method"] != attack]
    bs = per_device_batch_size(cfg.finetune.train, 1)
    expected = {m: expected_ratio(_passes(m, by_method[m]["stage"]), bs,
                                  _base_value(bench, by_method[m], "harmful_batch_size"))
                for m in train}
    result = interleaved_overhead(cfg, ctx, scaling_methods({"methods": train}, bench, by_method), expected,
                                  rounds=rounds, warmup=warmup, batch_size=bs)
    for r in rows:
        o = result["methods"].get(r["method"])
        if o is None or r["stage"] == "post":
            continue
        r["step_time_ratio_sequential"] = r.get("step_time_ratio")
        r.update(step_time_ratio=o["step_time_ratio"], cpu_time_ratio=o["cpu_time_ratio"],
                 expected_ratio=o["expected_ratio"], ratio_flag=o["flag"], median_step_seconds=o["median_step_seconds"])
    return result


def _probe(cfg, ctx) -> tuple[float, float]:
    """Seconds of one SFT training step (forward + backward, no update) on an alignment batch, and
    of evaluating one variant (extrapolated from generating a handful of answers)."""
    import torch

    from .. import models
    from ..eval.generate import generate

    model = models.build(cfg.model, cfg.lora, [], new_adapter=True)
    exs = ctx.examples(cfg.alignment.data, "alignment.data")[: cfg.alignment.train.per_device_train_batch_size]
    batch = ctx.collator(list(ctx.tokenize(exs)))
    t0 = time.perf_counter()
    model(**batch).loss.backward()
    step = time.perf_counter() - t0
    e = cfg.eval
    prompts = [ctx.format(x) for x in ctx.examples(e.harmful, "eval.harmful")[: min(8, e.batch_size)]]
    t0 = time.perf_counter()
    with torch.no_grad():
        generate(model, ctx.tokenizer, prompts, e.max_new_tokens, e.batch_size, progress=False)
    per_batch = time.perf_counter() - t0
    n_h = e.harmful.n or 100
    n_u = (e.utility.n or 100) if e.utility else 0
    n_b = (e.benign.n or 20) if e.benign else 0
    batches = -(-n_h // e.batch_size) + -(-n_b // e.batch_size)
    per_batch_scaled = per_batch * max(1.0, min(e.batch_size, n_h) / max(len(prompts), 1)) ** 0.5
    eval_s = batches * per_batch_scaled + (n_u / max(n_h, 1)) * per_batch_scaled * e.utility_max_new_tokens / e.max_new_tokens
    del model
    return step, eval_s
