"""What a bench compares: the ``bench:`` keys of its YAML, what the registry says about each
defense, and the experiment config built from them (variants, ablations, the scaling spec)."""

from __future__ import annotations

import copy

from ..config import ExperimentConfig, apply_overrides, from_dict
from ..errors import ConfigError
from ..registry import DEFENSES, STAGES, load_builtins


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
    from ..pipeline import Plan

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
