"""``panacea bench``: every registered defense under the same data, seed and budget, in one run.

The bench turns one experiment YAML (the *base*: model, LoRA, data, training budget, evaluation)
into the full comparison, generated from the registry so a newly registered defense is included
automatically:

* alignment stage: every alignment defense but ``none`` is a variant aligned from the same data;
  the same poisoned fine-tuning (``sft``) then runs on each (``<defense>+sft``). Plain ``sft``
  alignment is the ``aligned`` model, attacked by the run ``sft``.
* fine-tuning stage: every fine-tuning defense runs on the user data from ``aligned``.
* post-fine-tuning stage: every post defense repairs ``sft`` (or ``sft_merged``, the same attack
  with ``adapter_mode: merge_new``, for defenses such as SafeLoRA that need it).

Per-defense options come from the YAML's ``bench.defense_options.<defense>`` (e.g. Panacea's ρ,
the random perturbation's norm); ``bench.exclude`` drops defenses; ``bench.quick`` is a list of
``key=value`` overrides that ``--quick`` applies (the quick profile lives in the YAML, not here),
and ``bench.quick_ablations`` / ``bench.quick_scaling`` replace the two sections below under it.

Beyond the comparison, in the same run:

* ``bench.ablations``: ``{defense: {option: [values]}}``, extra runs that change one option at a
  time (Panacea's ``perturb_every``, λ, ρ; ascent's ρ), reported with HS/FA/OR,
  time, and Panacea's clamp activity, plus the findings the report states from them (time saved
  by ``perturb_every``, the ρ where over-refusal passes 20 %, Panacea vs ascent at the same ρ);
* ``bench.scaling``: step time and memory vs sequence length and LoRA rank (``panacea.scaling``);
* ``bench.profile``: ``auto`` (default: a ``torch.profiler`` table of a step of every method that
  misses a target, and of the SFT step it is compared with), ``always`` or ``never``.

Outputs in ``--out`` (default ``bench_results/``):

* ``results.json``: ``methods`` (one object per defense: stage, variant, ``harmful_score``,
  ``finetune_accuracy``, ``over_refusal``, ``step_seconds``, ``step_time_ratio`` and
  ``peak_memory_ratio`` relative to SFT of the same stage in the same run, or ``apply_seconds``
  for one-shot post defenses), ``generation_speedup`` (batched vs one-prompt-at-a-time greedy
  generation, same answers, on the undefended fine-tuned model; the aligned model's under
  ``other_models``), ``safety_coefficients`` (Panacea's ε per layer), ``targets``,
  ``ablations``, ``findings``, ``scaling``, ``profiles``;
* ``report.md`` and PNG plots (HS vs FA with the ablation points, overhead bars, scaling, safety
  coefficients);
* ``run/``: the underlying pipeline run directory (adapters, generations, metrics.json).

``panacea plot RESULTS.json`` redraws the plots from the JSON alone.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from .config import ExperimentConfig, apply_overrides, from_dict, read_yaml
from .errors import ConfigError, UserError
from .paths import expand_path
from .registry import DEFENSES, STAGES, load_builtins
from .rundir import read_marker

#: keys of a YAML's ``bench:`` section
BENCH_KEYS = {"defense_options", "exclude", "quick", "generation_prompts", "ablations", "quick_ablations",
              "scaling", "quick_scaling", "profile", "overhead"}

#: performance targets of the issue: Panacea and Booster ≤ 3.3× SFT step time (three passes: 3× is
#: the algorithm's floor), ≤ 1.2× SFT peak memory; batched generation ≥ 5× one-at-a-time. The
#: methods judged are those whose ``DefenseSpec`` sets ``overhead_target``.
TARGETS = {"step_time_ratio": 3.3, "peak_memory_ratio": 1.2, "generation_speedup": 5.0}


# --------------------------------------------------------------------------- what the registry says


def _spec(name: str, stage: str | None = None):
    """The ``DefenseSpec`` of ``name`` in ``stage`` (else in the first stage that has it), or None."""
    for st in (stage,) if stage else STAGES:
        if name in DEFENSES[st]:
            return DEFENSES[st].get(name).spec
    return None


def _attack() -> str:
    """The fine-tuning baseline (``role="baseline"``): the attack every variant is fine-tuned with,
    and the run whose name the overhead ratios and the post defenses' sources are relative to."""
    return DEFENSES["finetune"].baseline()


def _passes(name: str, stage: str | None = None) -> float:
    """Forward+backward passes per step relative to SFT (``DefenseSpec.passes_per_step``)."""
    spec = _spec(name, stage)
    return spec.passes_per_step if spec is not None else 2


def _targeted(row: dict) -> bool:
    spec = _spec(row["method"], row.get("stage"))
    return spec is not None and spec.overhead_target


# --------------------------------------------------------------------------- building the comparison


def _options(bench: dict, name: str) -> dict:
    opts = (bench.get("defense_options") or {}).get(name) or {}
    if not isinstance(opts, dict):
        raise ConfigError(f"bench.defense_options.{name} must be a mapping, got {type(opts).__name__}")
    return copy.deepcopy(opts)


def build(raw: dict, quick: bool = False, overrides: list[str] = ()) -> tuple[ExperimentConfig, dict, list[dict]]:
    """(experiment config, bench section, method table skeleton) from a bench YAML mapping."""
    load_builtins()
    raw = copy.deepcopy(raw)
    # ``bench.<key>=value`` overrides edit the bench section (e.g. ``bench.exclude=[vaccine]``)
    raw = apply_overrides(raw, [o for o in overrides if o.startswith("bench.")])
    overrides = [o for o in overrides if not o.startswith("bench.")]
    bench = raw.pop("bench", None) or {}
    if not isinstance(bench, dict):
        raise ConfigError("bench must be a mapping")
    unknown = set(bench) - BENCH_KEYS
    if unknown:
        raise ConfigError(f"bench.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(BENCH_KEYS))})")
    if quick:
        raw = apply_overrides(raw, list(bench.get("quick") or []))
        for key in ("ablations", "scaling"):  # bench.quick_<key> replaces bench.<key> under --quick
            if f"quick_{key}" in bench:
                bench[key] = bench[f"quick_{key}"]
    raw = apply_overrides(raw, list(overrides))
    exclude = set(bench.get("exclude") or [])
    base = from_dict(ExperimentConfig, raw)  # validates the base before generating anything

    align = raw.setdefault("alignment", {})
    align["defense"] = DEFENSES["alignment"].baseline()
    align["variants"] = {}
    attack = _attack()
    runs: dict = {attack: {"defense": attack}}
    posts: dict = {}
    methods = [{"method": attack, "stage": "finetune", "variant": attack, "defense": attack}]
    for e in DEFENSES["alignment"].entries():  # baselines and controls are not compared
        if e.spec.role != "defense" or e.name in exclude:
            continue
        align["variants"][e.name] = {"defense": e.name, **_options(bench, e.name)}
        runs[f"{e.name}+{attack}"] = {"defense": attack, "alignment": e.name}
        methods.append({"method": e.name, "stage": "alignment", "variant": f"{e.name}+{attack}", "defense": e.name})
    for e in DEFENSES["finetune"].entries():
        if e.spec.role != "defense" or e.name in exclude:
            continue
        runs[e.name] = {"defense": e.name, **_options(bench, e.name)}
        methods.append({"method": e.name, "stage": "finetune", "variant": e.name, "defense": e.name})
    for e in DEFENSES["post"].entries():
        if e.spec.role != "defense" or e.name in exclude:
            continue
        src = f"{attack}_merged" if e.spec.needs_merge_new else attack
        if e.spec.needs_merge_new:
            runs.setdefault(src, {"defense": attack, "adapter_mode": "merge_new"})
        posts[f"{src}+{e.name}"] = {"from": src, "defense": e.name, **_options(bench, e.name)}
        methods.append({"method": e.name, "stage": "post", "variant": f"{src}+{e.name}", "defense": e.name,
                        "source": src})
    ablations = _ablations(bench, methods, align["variants"], runs, posts)
    raw.setdefault("finetune", {})["runs"] = runs
    raw["post"] = posts
    # evaluated: the aligned model, each method's row and each ablation (not the intermediate
    # aligned variants)
    raw.setdefault("eval", {})["variants"] = ["aligned"] + [m["variant"] for m in methods] + [a["variant"] for a in ablations]
    raw["name"] = base.name
    from .pipeline import Plan

    try:
        cfg = from_dict(ExperimentConfig, raw)
        Plan(cfg)  # every defense's options parse
    except ConfigError as e:
        raise ConfigError(f"{e} (per-defense options go under bench.defense_options.<defense>"
                          f" and bench.ablations.<defense>)") from None
    bench["_ablations"] = ablations
    _scaling_spec(bench.get("scaling"), {m["method"]: m for m in methods})  # fails now, not after the run
    if bench.get("profile", "auto") not in ("auto", "always", "never"):
        raise ConfigError(f"bench.profile must be auto, always or never, got {bench.get('profile')!r}")
    return cfg, bench, methods


def _slug(value) -> str:
    text = str(value).lower().replace(".", "p")
    return "".join(c if c.isalnum() or c in "_+-" else "_" for c in text)


def _ablations(bench: dict, methods: list[dict], variants: dict, runs: dict, posts: dict) -> list[dict]:
    """Extra runs of ``bench.ablations``: ``{defense: {option: [values]}}``, one option changed at
    a time from the defense's bench options, same data and budget. A fine-tuning defense gets a
    run from ``aligned``, a post defense repairs the same source as its main row, an alignment
    defense is aligned again and attacked by the same ``sft``. Names: ``<defense>@<option>-<value>``."""
    spec = bench.get("ablations") or {}
    if not isinstance(spec, dict):
        raise ConfigError("bench.ablations must be a mapping {defense: {option: [values]}}")
    by_method = {m["method"]: m for m in methods}
    attack = _attack()
    out = []
    for name, options in spec.items():
        if name not in by_method:
            raise ConfigError(f"bench.ablations.{name}: not a defense in this bench; choices: {', '.join(by_method)}")
        if not isinstance(options, dict) or not options:
            raise ConfigError(f"bench.ablations.{name} must map options to lists of values")
        m = by_method[name]
        base = _options(bench, name)
        for key, values in options.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"bench.ablations.{name}.{key} must be a non-empty list of values")
            for v in values:
                opts = {**base, key: v}
                variant = f"{name}@{key}-{_slug(v)}"
                if m["stage"] == "finetune":
                    runs[variant] = {"defense": name, **opts}
                elif m["stage"] == "post":
                    variant = f"{m['source']}+{variant}"
                    posts[variant] = {"from": m["source"], "defense": name, **opts}
                else:
                    variants[variant] = {"defense": name, **opts}
                    runs[f"{variant}+{attack}"] = {"defense": attack, "alignment": variant}
                    variant = f"{variant}+{attack}"
                out.append({"method": name, "stage": m["stage"], "option": key, "value": v, "variant": variant,
                            "record": variant if m["stage"] != "alignment" else variant[: -len(f"+{attack}")]})
    return out


# --------------------------------------------------------------------------- time estimate


#: seconds to build a model (load + adapters) before each stage and each evaluation, on 2 CPU cores
LOAD_SECONDS = 3.0


def estimate_seconds(cfg: ExperimentConfig, plan, step_seconds: float, eval_seconds: float,
                     n_gen: int = 16, scaling: dict | None = None) -> float:
    """Rough wall time from a measured SFT step and a measured evaluation, before anything runs:
    training steps × passes, one-shot post defenses as one pass over their harmful data, model
    builds, evaluations, the generation-speed test (two models, each ≈ 1.5 evaluations per 16
    prompts: the one-at-a-time half dominates) and the scaling sweep (steps × passes × L / max_length)."""
    import math

    a = cfg.alignment
    n_align = (a.data.n or 200) + ((a.benign.n or 0) if a.benign else 0)
    align_steps = math.ceil(n_align / a.train.per_device_train_batch_size) * a.train.num_train_epochs
    ft = cfg.finetune.train
    ft_steps = math.ceil(cfg.finetune.data.n / ft.per_device_train_batch_size) * ft.num_train_epochs
    total = 0.0
    for entry, *_ in plan.aligns.values():
        total += align_steps * step_seconds * entry.spec.passes_per_step + LOAD_SECONDS
    for entry, opts, *_ in plan.runs.values():
        passes = entry.spec.passes_per_step
        interval = entry.spec.step_interval_option  # Panacea: the full 3 passes on every k-th step only
        k = getattr(opts, interval) if interval else 1
        total += ft_steps * step_seconds * (passes + k - 1) / k + LOAD_SECONDS
    for entry, opts in plan.posts.values():
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

    from .data.templates import encode_prompt
    from .eval.generate import generate

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


# --------------------------------------------------------------------------- results


def collect(metrics: dict, methods: list[dict]) -> list[dict]:
    """One row per method from the run's metrics.json: quality and overhead vs SFT of its stage."""
    res = {r["name"]: r for r in metrics["results"]}
    rec = metrics["records"]
    base = {"alignment": rec.get("aligned", {}), "finetune": rec.get(_attack(), {})}
    rows = []
    for m in methods:
        r = res.get(m["variant"], {})
        row = {**m, "harmful_score": r.get("harmful_score"), "harmful_score_ci": r.get("harmful_score_ci"),
               "harmful_score_plus": r.get("harmful_score_plus"), "finetune_accuracy": r.get("finetune_accuracy"),
               "over_refusal": r.get("over_refusal")}
        stage_rec = rec.get(m["method"] if m["stage"] == "alignment" else m["variant"], {})
        if m["stage"] in ("alignment", "finetune"):
            ref = base[m["stage"]]
            row["step_seconds"] = stage_rec.get("step_seconds")
            row["peak_memory_gb"] = stage_rec.get("peak_memory_gb")
            if stage_rec.get("step_seconds") and ref.get("step_seconds"):
                row["step_time_ratio"] = round(stage_rec["step_seconds"] / ref["step_seconds"], 3)
            if stage_rec.get("peak_memory_gb") and ref.get("peak_memory_gb"):
                row["peak_memory_ratio"] = round(stage_rec["peak_memory_gb"] / ref["peak_memory_gb"], 3)
        else:
            row["apply_seconds"] = stage_rec.get("apply_seconds")
            row["peak_memory_gb"] = stage_rec.get("peak_memory_gb")  # of the one-shot repair
        rows.append(row)
    return rows


def _base_value(bench: dict, m: dict, key: str):
    """The option's value in the method's main row: its bench option, else the Config default."""
    import dataclasses

    opts = _options(bench, m["method"])
    if key in opts:
        return opts[key]
    cls = DEFENSES[m["stage"]].get(m["method"]).obj.Config
    for f in dataclasses.fields(cls):
        if f.name == key:
            return None if f.default is dataclasses.MISSING else f.default
    return None


#: per-stage record fields an ablation row carries (Panacea's clamp activity and ε steps among them)
_RECORD_KEYS = ("train_seconds", "steps", "epsilon_steps", "clamp_active_fraction", "epsilon_norm", "apply_seconds")


def _record_fields(stage: str, rec: dict) -> dict:
    keys = ("apply_seconds",) if stage == "post" else _RECORD_KEYS  # a post record repeats its source's train time
    return {k: rec[k] for k in keys if k in rec}


def collect_ablations(metrics: dict, ablations: list[dict], rows: list[dict], bench: dict) -> list[dict]:
    """One row per ablation run plus, per (defense, option), the main row as the ``base`` point;
    overhead as ``collect`` (step time and memory vs SFT of the stage) and the stage record's
    ``train_seconds``, Panacea's ``clamp_active_fraction`` / ``epsilon_steps``."""
    res = {r["name"]: r for r in metrics["results"]}
    rec = metrics["records"]
    main = {r["method"]: r for r in rows}
    out, seen = [], set()
    for a in ablations:
        m = main[a["method"]]
        if (a["method"], a["option"]) not in seen:
            seen.add((a["method"], a["option"]))
            base_rec = rec.get(m["method"] if m["stage"] == "alignment" else m["variant"], {})
            out.append({**{k: m.get(k) for k in ("method", "stage", "variant", "harmful_score", "harmful_score_ci",
                                                  "finetune_accuracy", "over_refusal", "step_seconds",
                                                  "step_time_ratio", "peak_memory_ratio")},
                        "option": a["option"], "value": _base_value(bench, m, a["option"]), "base": True,
                        **_record_fields(m["stage"], base_rec)})
        r = res.get(a["variant"], {})
        stage_rec = rec.get(a["record"], {})
        row = {"method": a["method"], "stage": a["stage"], "variant": a["variant"], "option": a["option"],
               "value": a["value"], "base": False, "harmful_score": r.get("harmful_score"),
               "harmful_score_ci": r.get("harmful_score_ci"), "finetune_accuracy": r.get("finetune_accuracy"),
               "over_refusal": r.get("over_refusal"), "step_seconds": stage_rec.get("step_seconds"),
               **_record_fields(a["stage"], stage_rec)}
        ref = rec.get("aligned" if a["stage"] == "alignment" else _attack(), {})
        if stage_rec.get("step_seconds") and ref.get("step_seconds") and a["stage"] != "post":
            row["step_time_ratio"] = round(stage_rec["step_seconds"] / ref["step_seconds"], 3)
        if stage_rec.get("peak_memory_gb") and ref.get("peak_memory_gb") and a["stage"] != "post":
            row["peak_memory_ratio"] = round(stage_rec["peak_memory_gb"] / ref["peak_memory_gb"], 3)
        out.append(row)
    return out


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _symbol(option: str) -> str:
    return {"rho": "ρ"}.get(option, option)


def ablation_findings(abl: list[dict], rows: list[dict], rhos: dict | None = None,
                      over_refusal_limit: float = 20.0) -> list[str]:
    """Sentences the report states from the ablation rows (each with its numbers). Which option is
    a step interval, which a strength, and which one-shot counterpart a method is compared with
    come from its ``DefenseSpec``; ``rhos`` maps a method to its main row's strength value."""
    rhos = rhos or {}
    out = []
    groups: dict = {}
    for a in abl:
        groups.setdefault((a["method"], a["option"]), []).append(a)
    main = {r["method"]: r for r in rows}
    for (method, option), g in groups.items():
        base = next((a for a in g if a["base"]), None)
        spec = _spec(method, g[0].get("stage"))
        interval = spec is not None and option == spec.step_interval_option
        strength = spec is not None and option == spec.strength_option
        sym = _symbol(option)
        if interval and base and base.get("train_seconds"):
            for a in g:
                if a["base"] or not a.get("train_seconds"):
                    continue
                saving = 1 - a["train_seconds"] / base["train_seconds"]
                dhs = None if a["harmful_score"] is None or base["harmful_score"] is None else a["harmful_score"] - base["harmful_score"]
                dfa = None if a["finetune_accuracy"] is None or base["finetune_accuracy"] is None else a["finetune_accuracy"] - base["finetune_accuracy"]
                out.append(f"{method} {option} {a['value']} (vs {base['value']}): fine-tuning time "
                           f"{a['train_seconds']:.0f} s vs {base['train_seconds']:.0f} s ({100 * saving:.0f} % saved), "
                           f"step {_fmt(a.get('step_time_ratio'), 2)}× SFT vs {_fmt(base.get('step_time_ratio'), 2)}×; "
                           f"HS {_fmt(dhs, 1, signed=True)}, FA {_fmt(dfa, 1, signed=True)} points.")
        if strength:
            pts = sorted((a for a in g if _num(a["value"]) is not None and a.get("over_refusal") is not None),
                         key=lambda a: _num(a["value"]))
            if pts:
                over = next((a for a in pts if a["over_refusal"] > over_refusal_limit), None)
                out.append(f"{method} {sym} sweep: over-refusal passes {over_refusal_limit:.0f} % at {sym} = {over['value']} "
                           f"(OR {over['over_refusal']:.1f} %, HS {_fmt(over['harmful_score'])}, FA "
                           f"{_fmt(over['finetune_accuracy'])})." if over else
                           f"{method} {sym} sweep: over-refusal stays ≤ {over_refusal_limit:.0f} % up to {sym} = {pts[-1]['value']} "
                           f"(OR {pts[-1]['over_refusal']:.1f} %); extend bench.ablations.{method}.{option} to find where it passes.")
                # a large ρ can break the model (degenerate answers: neither refusals nor task answers)
                # before it over-refuses: say where task accuracy falls below half the base's
                fa0 = base.get("finetune_accuracy") if base else None
                broken = next((a for a in pts if fa0 and a.get("finetune_accuracy") is not None
                               and a["finetune_accuracy"] < fa0 / 2), None)
                if broken and (not over or _num(broken["value"]) <= _num(over["value"])):
                    out.append(f"{method} {sym} sweep: task accuracy falls below half the base's at {sym} = {broken['value']} "
                               f"(FA {_fmt(broken['finetune_accuracy'])} vs {_fmt(fa0)} at {sym} = {base['value']}; HS "
                               f"{_fmt(broken['harmful_score'])}, OR {broken['over_refusal']:.1f} %)"
                               f"{' before over-refusal passes ' + format(over_refusal_limit, '.0f') + ' %' if not over or broken is not over else ''}.")
        elif not interval and base and len(g) > 1:  # any other option: its points vs the base
            out.append(f"{method} {option}: " + "; ".join(
                f"{a['value']}{' (base)' if a['base'] else ''} → HS {_fmt(a['harmful_score'])}, FA "
                f"{_fmt(a['finetune_accuracy'])}" for a in g) + ".")
    # a method vs its one-shot counterpart (DefenseSpec.counterpart) at the same strength: the main
    # rows (when their strengths agree) and every strength both swept
    for m in dict.fromkeys([r["method"] for r in rows] + [a["method"] for a in abl]):
        spec = _spec(m)
        cp = spec.counterpart if spec is not None else None
        if cp is None or spec.strength_option is None:
            continue
        pair = (m, cp.name)
        strength = {x: (s.strength_option if (s := _spec(x)) is not None else None) for x in pair}
        by_value: dict = {}
        for x in pair:
            if x in main and rhos.get(x) is not None:
                by_value.setdefault(_num(rhos[x]), {})[x] = main[x]
        for a in abl:
            if a["method"] in pair and a["option"] == strength[a["method"]] and not a["base"]:
                by_value.setdefault(_num(a["value"]), {})[a["method"]] = a
        pairs = [(r, d) for r, d in sorted(by_value.items()) if len(d) == 2]
        sym = _symbol(spec.strength_option)
        if pairs:
            out.append(f"{cp.sentence} at the same {sym}: " + "; ".join(
                f"{sym} {r:g}: HS {_fmt(d[m].get('harmful_score'))} vs {_fmt(d[cp.name].get('harmful_score'))}, "
                f"FA {_fmt(d[m].get('finetune_accuracy'))} vs {_fmt(d[cp.name].get('finetune_accuracy'))}"
                for r, d in pairs) + ".")
    clamp = [a for a in abl if a.get("clamp_active_fraction") is not None]
    if clamp:
        seen = set()
        parts = []
        for a in clamp:
            if a["variant"] in seen:
                continue
            seen.add(a["variant"])
            parts.append(f"{a['variant']} {100 * a['clamp_active_fraction']:.0f} %")
        out.append("Clamp min(h(w+ε), c) active on the ε-steps of: " + ", ".join(parts) + ".")
    return out


def measure_overhead(cfg, ctx, bench: dict, methods: list[dict], rows: list[dict], rounds: int = 5,
                     warmup: int = 1) -> dict:
    """Step-time ratios of the training methods from interleaved steps (``scaling.interleaved_overhead``);
    each row's ``step_time_ratio`` becomes the interleaved median ratio (the ratio of the run's own
    stages, measured one after another, is kept as ``step_time_ratio_sequential``), with its CPU-time
    ratio, the ratio its passes allow and a ``ratio_flag`` when it is implausible."""
    from .scaling import expected_ratio, interleaved_overhead
    from .training import per_device_batch_size

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


def check_targets(rows: list[dict], gen: dict | None) -> list[dict]:
    """Each target met or missed; a step-time ratio flagged as implausible is not judged (``met`` None)."""
    out = []
    for r in rows:
        if _targeted(r):
            for key in ("step_time_ratio", "peak_memory_ratio"):
                v = r.get(key)
                flag = r.get("ratio_flag") if key == "step_time_ratio" else None
                out.append({"what": f"{r['method']} {key}", "target": f"≤ {TARGETS[key]}", "value": v,
                            "met": None if flag else (v is not None and v <= TARGETS[key]), "flag": flag,
                            "miss_by": None if flag or v is None or v <= TARGETS[key] else round(v / TARGETS[key] - 1, 3)})
    if gen:
        v = gen["speedup"]
        out.append({"what": f"generation speedup ({gen.get('model', 'aligned')} model)", "target": f"≥ {TARGETS['generation_speedup']}×", "value": v,
                    "met": v >= TARGETS["generation_speedup"] and gen["identical_fraction"] == 1.0,
                    "miss_by": None if v >= TARGETS["generation_speedup"] else round(1 - v / TARGETS["generation_speedup"], 3)})
    return out


# --------------------------------------------------------------------------- plots and report


def plot_all(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_hs_fa, point

    out_dir.mkdir(parents=True, exist_ok=True)
    colors = {"alignment": "#3b6ea5", "finetune": "#c0504d", "post": "#4f9a55"}
    # HS vs FA (plots.py, shared with a run's hs_fa.png): one point per method, its HS interval as a
    # bar, coloured by stage; the ablation points as small crosses labelled option=value
    pts = [{**point({**r, "name": r["method"]}), "color": colors.get(r["stage"], "gray")}
           for r in results["methods"] if r.get("harmful_score") is not None]
    sweep = [a for a in results.get("ablations") or [] if not a["base"] and a.get("harmful_score") is not None
             and a.get("finetune_accuracy") is not None]
    pts += [{**point({**a, "name": f"{a['option']}={a['value']}"}), "color": colors.get(a["stage"], "gray"),
             "marker": "x", "size": 14, "fontsize": 6, "label_color": "#555555"} for a in sweep]
    legend = [(f"{stage} stage", {"color": c}) for stage, c in colors.items()]
    if sweep:
        legend.append(("ablation (option=value)", {"color": "gray", "marker": "x"}))
    paths = [plot_hs_fa(pts, out_dir / "hs_vs_fa.png", f"{results['name']}: every defense after the same attack",
                        legend=legend, note="bars: Wilson 95 % interval of HS over the prompts")]

    over = [r for r in results["methods"] if r.get("step_time_ratio") is not None]
    if over:
        fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(over) + 2), 3.8))
        x = range(len(over))
        ax.bar([i - 0.2 for i in x], [r["step_time_ratio"] for r in over], 0.4, label="step time / SFT")
        ax.bar([i + 0.2 for i in x], [r.get("peak_memory_ratio") or 0 for r in over], 0.4, label="peak memory / SFT")
        ax.axhline(TARGETS["step_time_ratio"], color="#c0504d", ls="--", lw=1, label=f"time target {TARGETS['step_time_ratio']}×")
        ax.axhline(TARGETS["peak_memory_ratio"], color="#4f9a55", ls=":", lw=1, label=f"memory target {TARGETS['peak_memory_ratio']}×")
        ax.set_xticks(list(x), [f"{r['method']}\n({r['stage']})" for r in over], fontsize=8)
        ax.set_ylabel("ratio to SFT of the same stage")
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / "overhead.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    if (results.get("scaling") or {}).get("points"):
        from .scaling import plot_scaling

        paths.append(plot_scaling(results["scaling"]["points"], out_dir))
    return paths


def _fmt(v, nd=1, signed=False):
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


def report_md(results: dict) -> str:
    L = [f"# panacea bench: {results['name']}", "",
         f"Machine: {results['machine'].get('platform')}, {results['machine'].get('cpus')} CPUs"
         f"{', ' + results['machine']['cuda'] if results['machine'].get('cuda') else ''}; torch "
         f"{results['machine'].get('torch')}. Wall time {results['wall_seconds']:.0f} s"
         f"{' of the resuming invocation (earlier stages ran before it)' if results.get('resumed') else ''}"
         f"{' (--quick)' if results.get('quick') else ''}. Rerun: `{results['command']}`.", "",
         "## Every defense after the same attack", "",
         "| method | stage | variant | HS [95% CI] | HS+ | FA | OR | step s | time ×SFT | memory ×SFT | apply s |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["methods"]:
        ci = r.get("harmful_score_ci")
        hs = f"{_fmt(r.get('harmful_score'))} [{ci[0]:.0f}–{ci[1]:.0f}]" if ci else _fmt(r.get("harmful_score"))
        L.append(f"| {r['method']} | {r['stage']} | {r['variant']} | {hs} | {_fmt(r.get('harmful_score_plus'))} | "
                 f"{_fmt(r.get('finetune_accuracy'))} | {_fmt(r.get('over_refusal'))} | {_fmt(r.get('step_seconds'), 2)} | "
                 f"{_fmt(r.get('step_time_ratio'), 2)} | {_fmt(r.get('peak_memory_ratio'), 2)} | {_fmt(r.get('apply_seconds'), 1)} |")
    L += ["", "HS: % of harmful prompts answered harmfully by the run's judge (lower is better); HS+: HS or "
          "incoherent; FA: task accuracy; OR: % of benign prompts refused. Alignment-stage methods are "
          "scored after the same poisoned fine-tuning (`<method>+sft`); overhead ratios are per training "
          "step against SFT of the same stage, measured in this run. Peak memory is the process's peak "
          "RSS on a CPU (includes the model, and heap the C allocator keeps after tensors are freed: "
          "`MALLOC_MMAP_THRESHOLD_=65536` in the environment removes that retention at the cost of slower "
          "steps; README, `panacea bench`), CUDA max-allocated on a GPU.", "",
          "![HS vs FA](hs_vs_fa.png)", "", "![overhead](overhead.png)", "", "## Targets", "",
          "| what | target | measured | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        miss = f" (missed by {100 * t['miss_by']:.0f} %)" if t.get("miss_by") else ""
        verdict = f"not judged: {t['flag']}" if t.get("flag") else "yes" if t["met"] else "no" + miss
        L.append(f"| {t['what']} | {t['target']} | {_fmt(t['value'], 2)} | {verdict} |")
    ov = results.get("overhead")
    if ov:
        L += ["", f"Step-time ratios: medians of {ov['rounds']} interleaved rounds (one step of every method per "
              f"round, order rotated; L {ov['seq_length']}, batch {ov['batch_size']}, rank {ov['lora_rank']}; "
              f"{ov['torch_threads']} torch threads on {ov['cpus']} CPUs; load average "
              f"{ov['load_average_before'][0]} before, {ov['load_average_after'][0]} after).", "",
              "| method | median step s | wall ×SFT | CPU ×SFT | passes allow ≈ | flag |", "|---|---|---|---|---|---|"]
        for name, o in ov["methods"].items():
            L.append(f"| {name} | {o['median_step_seconds']} | {_fmt(o['step_time_ratio'], 2)} | "
                     f"{_fmt(o['cpu_time_ratio'], 2)} | {_fmt(o['expected_ratio'], 2)} | {o['flag'] or ''} |")
    g = results.get("generation_speedup")
    if g:
        L += ["", "Generation: batched greedy (eval/generate.py: left padding, KV cache) vs one prompt at a time "
              "(the reference evaluators), same prompts, same greedy decoding; the target is judged on the first row.",
              "", "| model | prompts × new tokens | batch | batched tok/s | one at a time tok/s | speedup | identical | "
              "mean answer tokens | prefill s / batched s | finished-row steps |", "|---|---|---|---|---|---|---|---|---|---|"]
        for x in [g] + list(g.get("other_models") or []):
            L.append(f"| {x.get('model', 'aligned')} | {x['prompts']} × {x['max_new_tokens']} | {x['batch_size']} | "
                     f"{x['batched_tokens_per_second']} | {x['one_at_a_time_tokens_per_second']} | {x['speedup']}× | "
                     f"{x['identical_answers']}/{x['prompts']} | {x.get('mean_answer_tokens', '—')} | "
                     f"{x.get('batched_prefill_seconds', '—')} / {x['batched_seconds']} | "
                     f"{_fmt(100 * x['finished_row_steps_fraction'], 0) + ' %' if 'finished_row_steps_fraction' in x else '—'} |")
        L += ["", "Where the batched time goes: the prefill (timed by generating one token per prompt) is "
              "compute-bound, so batching saves little there; the decode steps are what batching makes cheap. "
              "Static batching decodes a batch until its longest answer ends, so rows whose answer ended early "
              "(finished-row steps) are wasted work. Long answers (the fine-tuned model's, or the papers' 512 new "
              "tokens) raise the ratio; short refusals lower it."]
    abl = results.get("ablations") or []
    if abl:
        L += ["", "## Ablations the paper leaves open", "",
              "One option changed at a time from the method's bench options (`bench.ablations`); the row marked "
              "base is the method's main row. Same data, seed and budget.", "",
              "| method | option | value | HS [95% CI] | FA | OR | time ×SFT | train s | clamp active | ε steps |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for a in abl:
            ci = a.get("harmful_score_ci")
            hs = f"{_fmt(a.get('harmful_score'))} [{ci[0]:.0f}–{ci[1]:.0f}]" if ci else _fmt(a.get("harmful_score"))
            clamp = a.get("clamp_active_fraction")
            L.append(f"| {a['method']} | {a['option']} | {a['value']}{' (base)' if a['base'] else ''} | {hs} | "
                     f"{_fmt(a.get('finetune_accuracy'))} | {_fmt(a.get('over_refusal'))} | {_fmt(a.get('step_time_ratio'), 2)} | "
                     f"{_fmt(a.get('train_seconds'), 0)} | {'—' if clamp is None else f'{100 * clamp:.0f} %'} | "
                     f"{_fmt(a.get('epsilon_steps'), 0)} |")
        L += [""] + [f"- {f}" for f in results.get("findings", [])]
    sc_points = results.get("scaling") or {}
    if sc_points.get("points"):
        from .scaling import scaling_report

        L += ["", "## Scaling: step time and memory vs sequence length and LoRA rank", ""]
        L += scaling_report(sc_points["points"], sc_points.get("growth") or {})
        L += ["", "![scaling](scaling.png)"]
    for prof in results.get("profiles") or []:
        from .scaling import profile_report

        L += ["", f"## Where the time goes: {prof['method']} ({prof.get('reason', 'profile')})", ""]
        L += profile_report(prof)
    for sc in results.get("safety_coefficients", []):
        L += ["", f"## Panacea's ε per layer ({sc['stage']})", "",
              "Share of Σ_i ‖ε_i‖ per decoder layer (the statistic "
              "docs/algorithms.md#per-layer-safety-coefficients infers for the paper's figure; the released "
              "code has no analysis), with mean |ε|, relative size and effective ΔW as "
              f"additions in `{sc['folder']}`. Largest shares: "
              + ", ".join(f"layer {i} {s} %" for i, s in sc["top_layers"]) + ".", "",
              f"![safety coefficients]({sc['plot_name']})"]
    return "\n".join(L) + "\n"


def write_outputs(results: dict, out_dir: Path) -> None:
    from .rundir import write_atomic, write_json

    write_json(out_dir / "results.json", results)
    plot_all(results, out_dir)
    write_atomic(out_dir / "report.md", report_md(results))


# --------------------------------------------------------------------------- the command


#: What a bench writes at the top of its folder besides ``run/`` (``--force`` removes only these).
BENCH_FILES = ("results.json", "report.md", "hs_vs_fa.png", "overhead.png", "scaling.png")


def is_bench_folder(out_dir: Path) -> bool:
    """Proof that ``out_dir`` is a bench's: ``run/`` holds a valid run marker, or ``results.json``
    is a bench's results (an object with ``methods``)."""
    if read_marker(out_dir / "run") is not None:
        return True
    try:
        res = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(res, dict) and "methods" in res


def remove_bench(out_dir: Path) -> None:
    """``--force`` on a proven bench folder: its results, report and plots and its run (what
    ``rundir`` owns in it) go; any other file stays."""
    from .rundir import LOCK, _classify, _lock, _remove_run, clean_temporaries

    run = out_dir / "run"
    lock = _lock(run) if _classify(run) == "run" else None  # a bench still running on it: refused here
    try:
        for name in BENCH_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for p in out_dir.glob("safety_coefficients_*.png"):
            p.unlink()
        if lock is not None:
            clean_temporaries(run)
            if not _remove_run(run):
                (run / LOCK).unlink(missing_ok=True)
                run.rmdir()
    finally:
        if lock is not None:
            lock.close()


def plan_lines(methods: list[dict], bench: dict, plan, out_dir: Path, action: str) -> list[str]:
    """What the bench will run and where it will write, printed before anything is written."""
    stages = {"alignment": "alignment (each + the same poisoned sft)", "finetune": "fine-tuning",
              "post": "post-fine-tuning (on sft)"}
    lines = [f"[bench] plan: {len(methods)} methods, {len(plan.variants)} evaluated variants"]
    for stage, title in stages.items():
        names = [m["method"] for m in methods if m["stage"] == stage]
        if names:
            lines.append(f"[bench]   {title}: {', '.join(names)}")
    abl = bench.get("_ablations") or []
    if abl:
        lines.append("[bench]   ablations: " + ", ".join(f"{a['method']} {a['option']}={a['value']}" for a in abl))
    sc = _scaling_spec(bench.get("scaling"), {m["method"]: m for m in methods})
    if sc:
        lines.append(f"[bench]   scaling: {', '.join(sc['methods'])} × seq {sc['seq_lengths']} × rank {sc['ranks']}")
    lines.append(f"[bench]   output: {out_dir} ({action})")
    return lines


def run_bench(config: str | Path, quick: bool, out: str | Path, force: bool = False,
              overrides: list[str] = (), command: str = "", resume: bool = False,
              dry_run: bool = False) -> dict | None:
    """Build, estimate and run the bench (module docstring). Nothing is created or removed before
    the plan and the time estimate are printed; with ``dry_run`` nothing is written at all (the
    estimate's probe may still fill the model cache once) and None is returned."""
    import shutil

    import torch

    from . import models
    from .analysis.coefficients import analyze_run
    from .pipeline import Context, Plan, run_experiment, say
    from .provenance import machine

    raw = read_yaml(config)
    if not isinstance(raw, dict) or "bench" not in raw:
        raise ConfigError(f"{config} has no `bench:` section, so it is not a bench config (see configs/bench.yaml); "
                          f"to run it as one experiment: panacea run {config}")
    out_dir = expand_path(out, "--out")
    if resume and read_marker(out_dir / "run") is None:
        raise UserError(f"--resume: {str(out_dir)!r} holds no interrupted bench (no valid run/run.json)")
    replace = False
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not resume:
        if not is_bench_folder(out_dir):  # never written into nor deleted from, --force or not
            raise UserError(f"{str(out_dir)!r} is not empty and not a panacea bench folder (no valid run/run.json "
                            f"or results.json); refusing to use it: set --out <new or empty folder>")
        if not force:
            raise UserError(f"{str(out_dir)!r} already holds bench results; pass --force, --resume or --out <new folder>")
        replace = True  # removed only once the estimate is printed (and never by --dry-run)
    cfg, bench, methods = build(raw, quick, overrides)
    cfg.output_dir = str(out_dir / "run")
    plan = Plan(cfg)
    plan.check_data(Context(cfg))
    t0 = time.perf_counter()

    action = ("resumes the interrupted bench there" if resume else "replaces the bench results there (--force)"
              if replace else "new")
    for line in plan_lines(methods, bench, plan, out_dir, action):
        say(line)
    # a short probe for the time estimate: one SFT step and a few generations on this machine
    tok = models.load_tokenizer(cfg.model)
    ctx = Context(cfg, tok)
    say("[bench] probing this machine for the time estimate …")
    probe_step, probe_eval = _probe(cfg, ctx)
    by_method = {m["method"]: m for m in methods}
    spec = _scaling_spec(bench.get("scaling"), by_method)
    n_gen = int(bench.get("generation_prompts", 16))
    est = estimate_seconds(cfg, plan, probe_step, probe_eval, n_gen, spec)
    say(f"[bench] expected wall time ≈ {est / 60:.0f} min (SFT step {probe_step:.2f} s, one evaluation ≈ {probe_eval:.0f} s)"
        f"{'; for a fresh run: --resume skips what is finished' if resume else ''}")
    if dry_run:
        return None
    if replace:
        remove_bench(out_dir)

    metrics = run_experiment(cfg, force=False)
    rows = collect(metrics, methods)
    overhead = None
    ov = bench.get("overhead", {"rounds": 5, "warmup": 1})
    if ov:
        say(f"[bench] overhead: every training method's step, interleaved, {ov.get('rounds', 5)} rounds")
        overhead = measure_overhead(cfg, ctx, bench, methods, rows, **ov)
    abl = collect_ablations(metrics, bench["_ablations"], rows, bench)
    strengths = {m: _spec(m, by_method[m]["stage"]).strength_option for m in by_method}
    rhos = {m: _base_value(bench, by_method[m], key) for m, key in strengths.items() if key}
    findings = ablation_findings(abl, rows, rhos)

    say("[bench] generation speed: batched vs one prompt at a time")
    # on the undefended fine-tuned model (`sft`), which the target is judged on: most evaluated
    # variants are fine-tuned models, whose answers to harmful prompts run long. Also on the
    # aligned model, whose short refusals leave the prefill dominant (README, `panacea bench`)
    run = Path(cfg.output_dir)
    attack = _attack()
    chains = {attack: ([run / "alignment" / "adapter"] if plan.adapter_mode[attack] == "merge_new" else [])
                      + [run / "finetune" / attack / "adapter"],
              "aligned": [run / "alignment" / "adapter"]}
    prompts = [ctx.format(ex) for ex in ctx.examples(cfg.eval.harmful, "eval.harmful")[:n_gen]]
    measured = {}
    for name, chain in chains.items():
        model = models.build(cfg.model, cfg.lora, chain, new_adapter=False)
        measured[name] = {"model": name, **generation_speedup(model, tok, prompts, cfg.eval.max_new_tokens,
                                                               cfg.eval.batch_size)}
        del model
    gen = {**measured[attack], "other_models": [measured["aligned"]]}

    scaling = None
    if spec:
        from .scaling import fit_growth, scaling_sweep

        say(f"[bench] scaling sweep: {', '.join(spec['methods'])} × seq {spec['seq_lengths']} × rank {spec['ranks']}")
        sweep_methods = scaling_methods(spec, bench, by_method)
        points = scaling_sweep(cfg, ctx, sweep_methods, spec["seq_lengths"], spec["ranks"], steps=spec["steps"],
                               warmup=spec["warmup"])
        scaling = {**{k: spec[k] for k in ("seq_lengths", "ranks", "steps")}, "points": points,
                   "growth": fit_growth(points)}

    targets = check_targets(rows, gen)
    profiles = []
    mode = bench.get("profile", "auto")
    missed = [r for r in rows if _targeted(r) and any(
        t["what"].startswith(r["method"] + " ") and t["met"] is False and t["value"] is not None for t in targets)]
    to_profile = [r for r in rows if _targeted(r)] if mode == "always" else missed if mode == "auto" else []
    for r in to_profile:
        from .scaling import profile_step

        say(f"[bench] profiling {r['method']} ({'target missed' if r in missed else 'profile: always'})")
        ref_stage = "finetune" if r["stage"] != "alignment" else "alignment"
        for stage, name, ref in ((r["stage"], r["method"], False), (ref_stage, DEFENSES[ref_stage].baseline(), True)):
            prof = profile_step(cfg, ctx, stage, name, _options(bench, name) if not ref else {})
            prof["reason"] = ("target missed" if r in missed else "profile: always") + (
                "" if not ref else f"; the SFT step it is compared with")
            profiles.append(prof)

    coeffs = []
    if any(_spec(m["method"], m["stage"]).safety_coefficients for m in methods):
        for sc in analyze_run(cfg.output_dir):
            dest = out_dir / f"safety_coefficients_{sc['stage']}.png"
            if sc["plot"]:
                shutil.copyfile(sc["plot"], dest)
            coeffs.append({**sc, "plot_name": dest.name})

    results = {
        "name": cfg.name,
        "quick": quick,
        "command": command or f"panacea bench {config}{' --quick' if quick else ''}",
        "methods": rows,
        "overhead": overhead,
        "generation_speedup": gen,
        "safety_coefficients": coeffs,
        "targets": targets,
        "ablations": abl,
        "findings": findings,
        "scaling": scaling,
        "profiles": profiles,
        "estimated_seconds": round(est, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "resumed": resume,
        "run_dir": cfg.output_dir,
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
    }
    write_outputs(results, out_dir)
    return results


def _stage_of(name: str, by_method: dict) -> str | None:
    """The training stage of a defense: its row's stage in this bench, else the registry's."""
    if name in by_method:
        return by_method[name]["stage"]
    for stage in ("alignment", "finetune"):
        if name in DEFENSES[stage]:
            return stage
    return None


def scaling_methods(spec: dict, bench: dict, by_method: dict) -> dict:
    """``panacea.scaling.scaling_sweep``'s methods: name → (stage, defense, bench options); SFT on
    the fine-tuning stage with no options."""
    attack = _attack()
    return {m: (_stage_of(m, by_method), m, _options(bench, m)) if m != attack else ("finetune", attack, {})
            for m in spec["methods"]}


def _scaling_spec(spec, by_method: dict) -> dict | None:
    """``bench.scaling``: ``{methods: [sft, booster, panacea], seq_lengths: [...], ranks: [...],
    steps: 2, warmup: 1}`` or null/absent for none."""
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise ConfigError("bench.scaling must be a mapping {methods, seq_lengths, ranks, steps, warmup}")
    unknown = set(spec) - {"methods", "seq_lengths", "ranks", "steps", "warmup"}
    if unknown:
        raise ConfigError(f"bench.scaling.{sorted(unknown)[0]}: unknown key (known: methods, seq_lengths, ranks, steps, warmup)")
    attack = _attack()  # default methods: SFT and every method with an overhead target
    targeted = [e.name for st in ("alignment", "finetune") for e in DEFENSES[st].entries() if e.spec.overhead_target]
    out = {"methods": spec.get("methods", [attack] + targeted), "seq_lengths": spec.get("seq_lengths", [64, 128]),
           "ranks": spec.get("ranks", [8, 32]), "steps": spec.get("steps", 2), "warmup": spec.get("warmup", 1)}
    for m in out["methods"]:
        if m != attack and _stage_of(m, by_method) is None:
            raise ConfigError(f"bench.scaling.methods: {m!r} is not a registered training-stage defense")
    for key in ("seq_lengths", "ranks"):
        v = out[key]
        if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
            raise ConfigError(f"bench.scaling.{key} must be a non-empty list of positive integers, got {v!r}")
    for key in ("steps", "warmup"):
        v = out[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if key == "steps" else 0):
            raise ConfigError(f"bench.scaling.{key} must be an integer ≥ {1 if key == 'steps' else 0}, got {v!r}")
    return out


def _probe(cfg, ctx) -> tuple[float, float]:
    """Seconds of one SFT training step (forward + backward, no update) on an alignment batch, and
    of evaluating one variant (extrapolated from generating a handful of answers)."""
    import torch

    from . import models
    from .eval.generate import generate

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


def replot(results_json: str | Path) -> list[Path]:
    path = Path(results_json)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read bench results ({e})") from None
    if "methods" not in results:
        raise UserError(f"{path}: not a panacea bench results.json (no 'methods')")
    return plot_all(results, path.parent)
