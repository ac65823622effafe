"""Per-layer "safety coefficients" of Panacea's perturbation ε (arXiv 2501.18100;
docs/algorithms.md#per-layer-safety-coefficients).

The paper reports that different layers have distinct safety coefficients / safety affinity, but
the released code ships no analysis; the only per-layer object it produces is ε itself. What the
paper plots is therefore not reproducible from the code; the statistics below follow
docs/algorithms.md#per-layer-safety-coefficients and are labelled as such:

* ``share`` (primary, [inference] in that section): s_i = ‖ε^{(i)}‖₂ over every ε tensor of
  decoder layer i, reported as s_i / Σ_j s_j so models of different depth compare
  (Σ_i s_i² = ‖ε‖² = ρ² for ``panacea``, and for ``panacea_avg``, whose ε is rescaled to ρ).
* additions of this package: ``mean_abs`` (mean |ε| per entry, removes the shape effect of GQA
  k/v projections), ``relative`` (‖ε^{(i)}‖ / ‖w^{(i)}‖, w = the LoRA weights before ε was added),
  ``delta_w`` (effective-weight change (α/r)·‖(B+ε_B)(A+ε_A) − BA‖_F summed over the layer's
  modules — what ε does to the served model).

Per module (q/k/v/o × A/B) the same numbers are written too. Inputs are the files a Panacea
fine-tuning stage saves: ``panacea_epsilon.safetensors``, ``adapter/adapter_model.safetensors``
(which already contains ε when ``epsilon_applied`` in ``record.json``) and
``adapter/adapter_config.json``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import torch

from ..errors import DataError, UserError
from ..plots import pyplot

_LAYER = re.compile(r"\.(?:layers|h)\.(\d+)\.")
_MODULE = re.compile(r"\.([A-Za-z0-9_]+)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


def _key(name: str) -> tuple[int, str, str]:
    """(layer, module, A|B) of an adapter tensor name; adapter names (``.default``) are ignored."""
    m, mm = _LAYER.search(name), _MODULE.search(name)
    if not m or not mm:
        raise DataError(f"cannot place tensor {name!r} in a decoder layer")
    return int(m.group(1)), mm.group(1), mm.group(2)


def _load(stage: Path):
    from safetensors.torch import load_file

    eps_path = stage / "panacea_epsilon.safetensors"
    ad = stage / "adapter"
    if not eps_path.exists():
        raise UserError(f"{stage}: no panacea_epsilon.safetensors (run Panacea with save_epsilon: true)")
    try:
        eps = {_key(k): v.float() for k, v in load_file(str(eps_path)).items()}
        weights = {_key(k): v.float() for k, v in load_file(str(ad / "adapter_model.safetensors")).items()}
        cfg = json.loads((ad / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{stage}: cannot read the saved adapter or ε: {e}") from None
    record = stage / "record.json"
    applied = json.loads(record.read_text()).get("epsilon_applied", True) if record.exists() else True
    if applied:  # the saved adapter is w_T + ε: recover w_T
        weights = {k: w - eps[k] if k in eps else w for k, w in weights.items()}
    scale = float(cfg["lora_alpha"]) / float(cfg["r"])
    return eps, weights, scale


def coefficients(stage: str | Path) -> dict:
    """Per-layer and per-module statistics of ε for one Panacea stage folder."""
    eps, weights, scale = _load(Path(stage))
    layers = sorted({k[0] for k in eps})
    modules = sorted({(k[0], k[1]) for k in eps})
    per_module = []
    for layer, mod in modules:
        row = {"layer": layer, "module": mod}
        for ab in ("A", "B"):
            e = eps.get((layer, mod, ab))
            row[f"norm_{ab}"] = float(e.norm()) if e is not None else 0.0
        eA, eB = eps.get((layer, mod, "A")), eps.get((layer, mod, "B"))
        A, B = weights.get((layer, mod, "A")), weights.get((layer, mod, "B"))
        if None not in (eA, eB, A, B):
            row["delta_w"] = scale * float(((B + eB) @ (A + eA) - B @ A).norm())
        per_module.append(row)
    per_layer = []
    for i in layers:
        es = [v for k, v in eps.items() if k[0] == i]
        ws = [v for k, v in weights.items() if k[0] == i and k in eps]
        n = float(torch.sqrt(sum((e.pow(2).sum() for e in es), torch.zeros(()))))
        wn = float(torch.sqrt(sum((w.pow(2).sum() for w in ws), torch.zeros(()))))
        entries = sum(e.numel() for e in es)
        per_layer.append({
            "layer": i,
            "norm": n,
            "mean_abs": float(sum(e.abs().sum() for e in es)) / max(entries, 1),
            "relative": n / wn if wn > 0 else float("nan"),
            "delta_w": sum(r.get("delta_w", 0.0) for r in per_module if r["layer"] == i),
        })
    total = sum(r["norm"] for r in per_layer) or 1.0
    for r in per_layer:
        r["share"] = r["norm"] / total
    return {"layers": per_layer, "modules": per_module, "epsilon_norm": sum(r["norm"] ** 2 for r in per_layer) ** 0.5,
            "lora_scale": scale}


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def plot(coeffs: dict, title: str, path: Path) -> Path:
    """Bar plot of the per-layer share (primary) with mean |ε| on a second axis."""
    plt = pyplot()

    rows = coeffs["layers"]
    x = [r["layer"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(x) + 2), 3.6))
    ax.bar(x, [100 * r["share"] for r in rows], color="#3b6ea5", label="share of Σ‖ε_i‖ (%)")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("share of Σ_i ‖ε_i‖ (%)")
    ax2 = ax.twinx()
    ax2.plot(x, [r["mean_abs"] for r in rows], color="#c0504d", marker="o", ms=3, label="mean |ε| per entry")
    ax2.set_ylabel("mean |ε| per entry")
    ax.set_title(title, fontsize=10)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def analyze_run(run_dir: str | Path, plots: bool = True) -> list[dict]:
    """Write ``analysis/<stage>/safety_coefficients_{layers,modules}.csv`` (+ PNG) for every
    Panacea stage of a finished run; return one summary per stage."""
    run = Path(run_dir)
    stages = sorted(p.parent for p in run.glob("finetune/*/panacea_epsilon.safetensors"))
    if not stages:
        raise UserError(f"{str(run)!r} has no Panacea stage with a saved ε (finetune/<run>/panacea_epsilon.safetensors)")
    out = []
    for st in stages:
        c = coefficients(st)
        dest = run / "analysis" / st.name
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "safety_coefficients_layers.csv").write_text(to_csv(c["layers"]), encoding="utf-8")
        (dest / "safety_coefficients_modules.csv").write_text(to_csv(c["modules"]), encoding="utf-8")
        png = plot(c, f"{run.name}/{st.name}: per-layer share of ‖ε‖ (ρ = {c['epsilon_norm']:.3g})",
                   dest / "safety_coefficients.png") if plots else None
        top = sorted(c["layers"], key=lambda r: -r["share"])[:3]
        out.append({"stage": st.name, "folder": str(dest), "plot": str(png) if png else None,
                    "epsilon_norm": c["epsilon_norm"], "layers": len(c["layers"]),
                    "top_layers": [(r["layer"], round(100 * r["share"], 2)) for r in top]})
    return out
