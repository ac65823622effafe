"""The bench's plots and ``report.md`` from ``results.json`` (``panacea plot`` redraws them)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..plots import plot_hs_fa, point, pyplot
from ..rundir import write_atomic, write_json
from .results import _fmt
from .spec import TARGETS

# scaling imports torch: its report and plot are imported where a bench measured scaling


# --------------------------------------------------------------------------- plots and report


def plot_all(results: dict, out_dir: Path) -> list[Path]:
    plt = pyplot()

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
        from ..scaling import plot_scaling

        paths.append(plot_scaling(results["scaling"]["points"], out_dir))
    return paths


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
        from ..scaling import scaling_report

        L += ["", "## Scaling: step time and memory vs sequence length and LoRA rank", ""]
        L += scaling_report(sc_points["points"], sc_points.get("growth") or {})
        L += ["", "![scaling](scaling.png)"]
    for prof in results.get("profiles") or []:
        from ..scaling import profile_report

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

    write_json(out_dir / "results.json", results)
    plot_all(results, out_dir)
    write_atomic(out_dir / "report.md", report_md(results))


def replot(results_json: str | Path) -> list[Path]:
    path = Path(results_json)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read bench results ({e})") from None
    if "methods" not in results:
        raise UserError(f"{path}: not a panacea bench results.json (no 'methods')")
    return plot_all(results, path.parent)
