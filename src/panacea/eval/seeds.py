"""Several seeds of one experiment, and their mean ± 95 % interval (docs/protocol.md#one-seed).

``seeds: [43, 44, 45]`` in an experiment file makes ``panacea run`` call
``pipeline.run_experiment`` once per seed, unchanged, with ``seed`` set to that seed and
``output_dir`` to ``<run_dir>/seed_<s>/``; everything the experiment seed drives changes with it
(training order, LoRA init, the user-data mixing unless ``finetune.data.seed`` pins it). The
parent directory gets::

    config.yaml     the resolved config, with ``seeds``
    run.json        the config's sha256: running the same command again resumes (rundir.py)
    status.json     running / failed / done
    seed_<s>/       one complete single run each (its own config.yaml, metrics.json, generations/)
    summary.json    per variant and per numeric metric: mean, 95 % half-width, interval, values
    results.md      the summary as a table (mean ± interval) with what each column means
    hs_fa.png       HS vs FA per variant, the bars the interval over seeds

The interval is Student-t over the seeds (``stats.mean_ci``): ``mean ± t_{0.975,n−1}·s/√n``.
With one seed there is no spread to estimate and the half-width is ``null``. A single run's HS
also carries its binomial (Wilson) interval over the prompts, ``harmful_score_ci``; the seed
interval is the one to use when comparing defenses (it includes training noise).
"""

from __future__ import annotations

import dataclasses
import math
import time

from .stats import mean_ci

#: per-variant keys that are not metrics (bookkeeping of one run)
_SKIP = {"name"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _clean(x):
    """JSON-safe: nan → None, rounded."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return round(x, 4)


def summarize(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Mean and 95 % interval of every numeric metric, per variant.

    Args:
        per_seed: seed → that run's ``results`` (one dict per variant, as in ``metrics.json``).

    Returns:
        One entry per variant (in the first seed's order): ``{"name", "seeds", "metrics": {key:
        {"mean", "ci95", "lo", "hi", "n", "values"}}}``. A metric missing (or nan) in some seeds is
        summarised over the others; ``n`` says how many.
    """
    order: list[str] = []
    rows: dict[str, dict[int, dict]] = {}
    for seed, results in per_seed.items():
        for r in results:
            if r["name"] not in rows:
                order.append(r["name"])
                rows[r["name"]] = {}
            rows[r["name"]][seed] = r
    out = []
    for name in order:
        by_seed = rows[name]
        keys: list[str] = []
        for r in by_seed.values():
            keys += [k for k, v in r.items() if k not in _SKIP and _number(v) and k not in keys]
        metrics = {}
        for k in keys:
            values = [r[k] for r in by_seed.values() if _number(r.get(k)) and not math.isnan(r[k])]
            if not values:
                continue
            mean, half = mean_ci(values)
            metrics[k] = {
                "mean": _clean(mean),
                "ci95": _clean(half),
                "lo": _clean(mean - half),
                "hi": _clean(mean + half),
                "n": len(values),
                "values": values,
            }
        out.append({"name": name, "seeds": list(by_seed), "metrics": metrics})
    return out


def run_seeds(cfg, force: bool = False) -> tuple[dict, dict[int, dict]]:
    """Run ``cfg`` once per ``cfg.seeds`` and write ``summary.json`` (module docstring).

    Returns ``(summary, {seed: metrics})``. A parent directory of the same config resumes (each
    seed's run resumes on its own); a finished one returns its summary and no per-seed metrics.
    """
    from ..config import to_dict
    from ..pipeline import Context, Plan, run_dir_of, run_experiment, say
    from ..provenance import provenance
    from ..pipeline import open_run_dir_on_main  # several processes: only the main one writes

    t0 = time.perf_counter()
    seeds = list(cfg.seeds)
    parent = run_dir_of(cfg)

    def sub(seed: int):
        return dataclasses.replace(cfg, seed=seed, seeds=None, output_dir=str(parent / f"seed_{seed}"))

    first = sub(seeds[0])  # validate (config, names, data) before creating anything
    Plan(first).check_data(Context(first))
    with open_run_dir_on_main(parent, to_dict(cfg), force) as rd:
        if rd.mode == "complete":
            say(f"{rd.path} is complete (summary.json verified): nothing to do; --force runs it again")
            return rd.completed("summary.json"), {}
        if rd.changed:
            say(f"{rd.path}: the config changed ({rd.changed}); each seed's run reuses the stages whose key is unchanged")
        rd.set_status("running", seeds=seeds, resumed=rd.mode == "resume")
        per_seed: dict[int, dict] = {}
        try:
            for i, seed in enumerate(seeds, 1):
                say(f"===== seed {seed} ({i}/{len(seeds)}) → {rd.path / f'seed_{seed}'}")
                per_seed[seed] = run_experiment(sub(seed))  # each seed's run resumes on its own
        except BaseException as e:
            rd.set_status("failed", seeds=seeds, finished=list(per_seed), error=f"{type(e).__name__}: {e}")
            raise
        summary = {
            "name": cfg.name,
            "seeds": seeds,
            "runs": {str(s): f"seed_{s}" for s in seeds},
            "interval": "95% Student-t over seeds: mean ± t(0.975, n-1)·sd/sqrt(n)",
            "results": summarize({s: m["results"] for s, m in per_seed.items()}),
            "provenance": provenance(),
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
        write_summary_results(rd.path, summary, to_dict(cfg))
        rd.finish("summary.json", summary, seeds=seeds, wall_seconds=summary["wall_seconds"])
    return summary, per_seed


def write_summary_results(parent, summary: dict, cfg: dict):
    """``results.md`` and ``hs_fa.png`` of a multi-seed run from its summary: every column as mean
    ± 95 % interval over the seeds, the plot's bars that interval (report.write_results)."""
    from ..report import files_section, summary_rows, write_results

    judge = (cfg.get("eval") or {}).get("judge")
    return write_results(parent, summary["name"], summary_rows(summary), judge, cfg=cfg, seeds=summary["seeds"],
                         wall=summary.get("wall_seconds"), prov=summary.get("provenance"),
                         extra=files_section(summary["seeds"]))
