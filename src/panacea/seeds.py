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

The interval is Student-t over the seeds (``eval.stats.summarize``, ``eval.stats.mean_ci``): ``mean ± t_{0.975,n−1}·s/√n``.
With one seed there is no spread to estimate and the half-width is ``null``. A single run's HS
also carries its binomial (Wilson) interval over the prompts, ``harmful_score_ci``; the seed
interval is the one to use when comparing defenses (it includes training noise).
"""

from __future__ import annotations

import dataclasses
import time

from .config import to_dict
from .eval.stats import summarize
from .pipeline import Context, Plan, open_run_dir_on_main, run_dir_of, run_experiment, say
from .provenance import provenance
from .report import files_section, summary_rows, write_results


def run_seeds(cfg, force: bool = False) -> tuple[dict, dict[int, dict]]:
    """Run ``cfg`` once per ``cfg.seeds`` and write ``summary.json`` (module docstring).

    Returns ``(summary, {seed: metrics})``. A parent directory of the same config resumes (each
    seed's run resumes on its own); a finished one returns its summary and no per-seed metrics.
    """
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
    judge = (cfg.get("eval") or {}).get("judge")
    return write_results(parent, summary["name"], summary_rows(summary), judge, cfg=cfg, seeds=summary["seeds"],
                         wall=summary.get("wall_seconds"), prov=summary.get("provenance"),
                         extra=files_section(summary["seeds"]))
