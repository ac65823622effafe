"""``sweep.search: optuna``: the worst attack within ranges, for one defense, by a seeded TPE search.

Each trial samples every ``sweep.space`` range (``{low, high}``, ``log: true``, ``type: int``,
``step``, or ``{choices: [...]}``), runs that point once per seed (a normal run directory under
``points/``, named by its values) and reports the target variant's HS (mean over the seeds) as the
value to maximise, under the constraint FA(target) ≥ FA(baseline) − ``fa_margin`` at the same point
(TPE's ``constraints_func``: infeasible trials are kept and steer the sampler away). The study
lives in ``<sweep>/study.db`` (SQLite): running the same command again continues it up to
``sweep.trials``; a trial cut off mid-run is failed and its values are tried again first (its run
directory resumes). The best feasible trial is written as ``best_attack.yaml``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ..errors import ConfigError, UserError
from ..rundir import write_atomic
from . import Planner, execute, finish, finished, open_sweep_dir, set_dotted
from .engines import make_engine
from .spec import Range, SweepSpec


def _constraints(trial) -> tuple[float]:
    return tuple(trial.user_attrs.get("constraint", (1.0,)))


def _suggest(trial, r: Range):
    if r.kind == "categorical":
        return trial.suggest_categorical(r.key, r.choices)
    if r.kind == "int":
        return trial.suggest_int(r.key, int(r.low), int(r.high), step=int(r.step or 1), log=r.log)
    return trial.suggest_float(r.key, r.low, r.high, step=r.step, log=r.log)


def _endpoint_cells(space: list[Range]) -> list[dict]:
    """Cells that must all give valid experiments: each range's ends with the others at the base,
    every range at its low end, every range at its high end."""
    cells = []
    for r in space:
        for v in r.endpoints():
            cells.append({r.key: v})
    if len(space) > 1:
        for pick in (0, -1):
            cells.append({r.key: r.endpoints()[pick] for r in space})
    return cells


def run_search(base: dict, section: dict, spec: SweepSpec, sweep_dir: Path, variants: list[str], *,
               force: bool = False, dry_run: bool = False, say=print) -> dict:
    try:
        import optuna
    except ImportError:
        raise UserError("sweep.search: optuna needs optuna: pip install 'panacea[sweep]'") from None
    for r in spec.space:
        if r.kind == "categorical" and not all(v is None or isinstance(v, (bool, int, float, str)) for v in r.choices):
            raise ConfigError(f"sweep.space.{r.key}.choices: only numbers, strings, booleans and null can be searched")
    # default: the first compared variant that was fine-tuned on the attack (not an aligned model)
    aligned = {"aligned", "base", *((base.get("alignment") or {}).get("variants") or {})}
    target = spec.target or next((v for v in (spec.variants or variants) if v != spec.baseline and v not in aligned), None)
    if target is None:
        raise ConfigError("sweep.target: name the variant whose worst case is searched (a defense, not the baseline)")
    spec.target = target
    if spec.variants and target not in spec.variants:
        spec.variants = [*spec.variants, target]
    planner = Planner(base, spec, sweep_dir)
    for cell in _endpoint_cells(spec.space):  # every end of every range is a valid experiment
        planner.point(cell, planner.seeds[0], "sweep.space")
    sampler_seed = spec.sampler_seed if spec.sampler_seed is not None else int(base.get("seed", 43))
    plan = (f"search: optuna TPE (seed {sampler_seed}), {spec.trials} trial(s) × {len(planner.seeds)} seed(s), "
            f"maximising HS of {target} where FA({target}) ≥ FA({spec.baseline}) − {spec.fa_margin:g}\n"
            + "\n".join(f"  {r.key}: " + (f"choices {r.choices}" if r.kind == "categorical" else
                                          f"[{r.low:g}, {r.high:g}] {r.kind}{' log' if r.log else ''}"
                                          f"{f' step {r.step:g}' if r.step else ''}") for r in spec.space)
            + f"\n  → {sweep_dir}/ (study.db, points/, table.csv, best_attack.yaml); engine {spec.engine}")
    if dry_run:
        say(plan)
        return {"sweep_dir": sweep_dir, "dry_run": True, "points": []}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from optuna.trial import TrialState

    with open_sweep_dir(sweep_dir, base, section, force) as rd:
        say(plan)
        rd.set_status("running", trials=spec.trials, engine=spec.engine)
        sampler = optuna.samplers.TPESampler(seed=sampler_seed, constraints_func=_constraints)
        study = optuna.create_study(study_name="sweep", storage=f"sqlite:///{sweep_dir / 'study.db'}",
                                    direction="maximize", sampler=sampler, load_if_exists=True)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # cut off by an interruption: fail it, try its values again first (its run resumes)
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            study.enqueue_trial(t.params)
        points_of: dict[int, list] = {}

        def counted():
            return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                    if not t.user_attrs.get("interrupted")]

        if len(counted()) < spec.trials:  # else: the budget is spent, no engine is started
            try:
                _run_trials(study, planner, spec, sweep_dir, counted, points_of, force, say)
            except BaseException as e:  # interrupted: the same command resumes
                rd.set_status("failed", error=f"{type(e).__name__}: {e}", resumable=True)
                raise
        # the table: every counted trial, its points read back from their run directories
        all_points, outcomes = [], {}
        for t in counted():
            cell = {r.key: t.params[r.key] for r in spec.space if r.key in t.params}
            if len(cell) != len(spec.space):
                continue
            try:
                pts = points_of.get(t.number) or [planner.point(cell, s, f"trial {t.number}", check_data=False,
                                                                trial=t.number) for s in planner.seeds]
            except UserError:
                continue
            for p in pts:
                p.trial = t.number
                out = finished(p)
                outcomes[p.id] = out or {"ok": False, "error": t.user_attrs.get("error", "failed")}
            all_points += pts
        best = _best(study, spec)
        extra = {"search": "optuna", "target": target, "trials": len(counted()), "study": "study.db",
                 "best_trial": best}
        if best is not None:
            extra["best_attack"] = write_best(sweep_dir, base, best["params"], planner.seeds[0], spec, target, best)
        res = finish(rd, base, spec, all_points, outcomes, say, extra=extra)
        if best is None:
            say(f"search: no trial kept FA({target}) within {spec.fa_margin:g} of FA({spec.baseline}); no best attack")
        else:
            say(f"search: worst attack for {target}: trial {best['number']} HS {best['value']:.1f} "
                f"({', '.join(f'{k}={v}' for k, v in best['params'].items())}) → {sweep_dir / extra['best_attack']}")
    return res


def _run_trials(study, planner, spec: SweepSpec, sweep_dir: Path, counted, points_of: dict, force: bool, say) -> None:
    """Ask, run and tell trials, ``sweep.parallel`` at a time, until ``sweep.trials`` are counted."""
    from optuna.trial import TrialState

    with make_engine(spec.engine, spec, sweep_dir) as eng:
        slots = spec.parallel or (1 if spec.engine == "local" else min(eng.slots, 4))
        say(f"search: {eng.describe()}; {slots} trial(s) at a time")
        while len(counted()) < spec.trials:
            batch = [study.ask() for _ in range(min(slots, spec.trials - len(counted())))]
            jobs, todo = {}, []
            for tr in batch:
                cell = {r.key: _suggest(tr, r) for r in spec.space}
                try:
                    pts = [planner.point(cell, s, f"trial {tr.number}", trial=tr.number) for s in planner.seeds]
                except UserError as e:  # e.g. a sampled size the data cannot give: this trial fails
                    tr.set_user_attr("error", str(e))
                    study.tell(tr, state=TrialState.FAIL)
                    say(f"search: trial {tr.number} FAILED: {e}")
                    continue
                points_of[tr.number] = pts
                jobs[tr.number] = (tr, pts)
                todo += pts
            outcomes = execute(todo, spec, sweep_dir, say, force, engine=eng) if todo else {}
            for tr, pts in jobs.values():
                _tell(study, tr, pts, outcomes, spec, say)


def _tell(study, tr, pts, outcomes, spec: SweepSpec, say) -> None:
    from optuna.trial import TrialState

    outs = [outcomes.get(p.id, {}) for p in pts]
    bad = [o for o in outs if not o.get("ok")]
    if bad:
        tr.set_user_attr("error", bad[0].get("error", "failed"))
        study.tell(tr, state=TrialState.FAIL)
        return

    def mean(variant, key):
        vals = []
        for o in outs:
            row = next((r for r in o["results"] if r["name"] == variant), {})
            if isinstance(row.get(key), (int, float)):
                vals.append(float(row[key]))
        return sum(vals) / len(vals) if vals else None

    hs = mean(spec.target, "harmful_score")
    fa, fa_ref = mean(spec.target, "finetune_accuracy"), mean(spec.baseline, "finetune_accuracy")
    if hs is None:
        tr.set_user_attr("error", f"no harmful_score for {spec.target}")
        study.tell(tr, state=TrialState.FAIL)
        return
    # ≤ 0 is feasible: FA(target) ≥ FA(baseline) − margin (no FA measured: feasible, noted)
    c = 0.0 if fa is None or fa_ref is None else (fa_ref - spec.fa_margin) - fa
    tr.set_user_attr("constraint", [c])
    tr.set_user_attr("finetune_accuracy", fa)
    tr.set_user_attr("baseline_finetune_accuracy", fa_ref)
    tr.set_user_attr("point", pts[0].cell_id)
    study.tell(tr, hs)
    say(f"search: trial {tr.number}: HS({spec.target}) {hs:.1f}, FA {fa if fa is None else round(fa, 1)} "
        f"vs {spec.baseline} {fa_ref if fa_ref is None else round(fa_ref, 1)}"
        f"{'' if c <= 0 else ' (outside the FA margin)'}")


def _best(study, spec: SweepSpec) -> dict | None:
    from optuna.trial import TrialState

    best = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        c = t.user_attrs.get("constraint", [1.0])
        if c[0] > 0 or t.value is None:
            continue
        if best is None or t.value > best.value:
            best = t
    if best is None:
        return None
    return {"number": best.number, "value": best.value, "params": dict(best.params),
            "finetune_accuracy": best.user_attrs.get("finetune_accuracy"),
            "baseline_finetune_accuracy": best.user_attrs.get("baseline_finetune_accuracy"),
            "point": best.user_attrs.get("point")}


def write_best(sweep_dir: Path, base: dict, params: dict, seed: int, spec: SweepSpec, target: str, best: dict) -> str:
    """``best_attack.yaml``: the experiment with the best trial's values; ``panacea run`` on it
    reproduces the point (its own run directory, runs/<name>-worst)."""
    raw = copy.deepcopy(base)
    for k, v in params.items():
        set_dotted(raw, k, v)
    raw["seed"] = seed
    raw["name"] = f"{raw.get('name', 'experiment')}-worst"
    raw.pop("output_dir", None)
    head = (f"# The worst attack found for `{target}` by `panacea sweep` (Optuna TPE, trial {best['number']}):\n"
            f"# HS {best['value']:.2f} with FA {best.get('finetune_accuracy')} vs FA({spec.baseline}) "
            f"{best.get('baseline_finetune_accuracy')} (margin {spec.fa_margin:g} points).\n"
            + "".join(f"#   {k}: {v}\n" for k, v in params.items())
            + "# Reproduce it:  panacea run best_attack.yaml   (the sweep's point: "
            f"points/{best.get('point')})\n")
    write_atomic(sweep_dir / "best_attack.yaml", head + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return "best_attack.yaml"
