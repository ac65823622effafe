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

import json
import shutil
import time
from pathlib import Path

from ..config import read_yaml
from ..errors import ConfigError, UserError
from ..paths import expand_path
from ..provenance import machine
from ..registry import DEFENSES
from ..rundir import LOCK, _classify, _lock, _remove_run, clean_temporaries, read_marker
from .measure import _probe, estimate_seconds, finished_row_steps, generation_speedup, measure_overhead
from .report import plot_all, replot, report_md, write_outputs
from .results import _base_value, ablation_findings, check_targets, collect, collect_ablations
from .spec import TARGETS, _attack, _options, _scaling_spec, _spec, _targeted, build, scaling_methods

# torch and the modules that import it (models, pipeline, scaling, analysis) are imported inside
# run_bench: `panacea plot` (replot) loads no torch


# --------------------------------------------------------------------------- the command


#: What a bench writes at the top of its folder besides ``run/`` (``--force`` removes only these).
#: the names other modules, bench/scaling.py and the tests use
__all__ = ["BENCH_FILES", "TARGETS", "ablation_findings", "build", "check_targets", "collect", "estimate_seconds",
           "finished_row_steps", "is_bench_folder", "plot_all", "remove_bench", "replot", "report_md", "run_bench",
           "scaling_methods", "_scaling_spec"]

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

    import torch

    from .. import models
    from ..analysis.coefficients import analyze_run
    from ..pipeline import Context, Plan, run_experiment, say

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
        from ..scaling import fit_growth, scaling_sweep

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
        from ..scaling import profile_step

        say(f"[bench] profiling {r['method']} ({'target missed' if r in missed else 'profile: always'})")
        ref_stage = "finetune" if r["stage"] != "alignment" else "alignment"
        for stage, name, ref in ((r["stage"], r["method"], False), (ref_stage, DEFENSES[ref_stage].baseline(), True)):
            prof = profile_step(cfg, ctx, stage, name, _options(bench, name) if not ref else {})
            prof["reason"] = ("target missed" if r in missed else "profile: always") + (
                "" if not ref else "; the SFT step it is compared with")
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
