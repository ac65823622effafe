"""The bench's rows from a finished run: one per defense, the ablations and their findings, and the
overhead targets."""

from __future__ import annotations

import dataclasses

from ..registry import DEFENSES
from .spec import TARGETS, _attack, _options, _spec, _targeted


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


def _fmt(v, nd=1, signed=False):
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


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
