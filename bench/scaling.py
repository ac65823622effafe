"""The bench's scaling sweep alone: step time and memory of SFT, Booster and Panacea vs sequence
length and LoRA rank (src/panacea/scaling.py), without the rest of ``panacea bench``.

Run:  PYTHONPATH=src python bench/scaling.py [configs/bench.yaml] [--quick] [--out DIR]

Reads the bench YAML's ``bench.scaling`` (``bench.quick_scaling`` with ``--quick``) and the
methods' ``bench.defense_options``; prints the same table and fitted exponents as the bench
report's "Scaling" section and writes ``DIR/scaling.json`` and ``DIR/scaling.png`` (default
``bench_results/scaling``). Full config on 2 CPU cores: about 20 minutes; ``--quick``: 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from panacea import models
from panacea.bench import _scaling_spec, build, scaling_methods
from panacea.config import read_yaml
from panacea.pipeline import Context
from panacea.scaling import fit_growth, plot_scaling, scaling_report, scaling_sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default="configs/bench.yaml")
    ap.add_argument("--quick", action="store_true", help="use bench.quick_scaling and the quick profile")
    ap.add_argument("--out", default="bench_results/scaling")
    args = ap.parse_args()
    cfg, bench, methods = build(read_yaml(args.config), quick=args.quick)
    by_method = {m["method"]: m for m in methods}
    spec = _scaling_spec(bench.get("scaling"), by_method)
    if not spec:
        raise SystemExit(f"{args.config}: no bench.scaling section")
    ctx = Context(cfg, models.load_tokenizer(cfg.model))
    points = scaling_sweep(cfg, ctx, scaling_methods(spec, bench, by_method), spec["seq_lengths"], spec["ranks"], steps=spec["steps"], warmup=spec["warmup"])
    growth = fit_growth(points)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps({"spec": spec, "points": points, "growth": growth}, indent=1))
    plot_scaling(points, out)
    print("\n".join(scaling_report(points, growth)))
    print(f"→ {out / 'scaling.json'}, {out / 'scaling.png'}")


if __name__ == "__main__":
    main()
