"""The HS-vs-FA plot, one implementation for a run (``<run_dir>/hs_fa.png``), ``panacea compare``
(``compare.png``) and ``panacea bench`` (``hs_vs_fa.png``).

One point per variant at (FA, HS), its HS interval as a vertical error bar, labelled with its
name; a good defense sits low (little harm) and to the right (little lost task accuracy). Points
come from ``points``: rows of a run's ``metrics.json`` (HS with its Wilson interval over the
prompts) or of a ``summary.json`` (mean ± 95 % interval over seeds) alike. matplotlib with the Agg
backend: no display needed.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

from .paths import cache_dir

#: colours of successive groups (matplotlib's tab10, fixed so a plot does not depend on rc settings)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed), for every plot panacea draws.

    matplotlib writes a font cache into its config folder on first import (``~/.config/matplotlib``
    or ``~/.cache/matplotlib``). Unless ``MPLCONFIGDIR`` names one, or matplotlib was imported
    already, it goes under panacea's own cache folder (``paths.cache_dir()/matplotlib``) instead:
    a run writes nothing in folders it does not own. The variable is set only for the import and
    restored after it (matplotlib remembers its folder for the process)."""
    own = "matplotlib" not in sys.modules and not os.environ.get("MPLCONFIGDIR")
    if own:
        folder = cache_dir() / "matplotlib"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(folder)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        matplotlib.get_cachedir()  # read (and remembered) while the variable is set
    finally:
        if own:
            del os.environ["MPLCONFIGDIR"]
    return plt


def _mean(v):
    return v.get("mean") if isinstance(v, dict) else v


def point(row: dict, label: str | None = None, group: str = "") -> dict:
    """A plot point from a results row: HS, its interval (Wilson over prompts for one run, mean ±
    half-width over seeds for a summarised row) and FA (None when the run has no task)."""
    hs = row.get("harmful_score")
    lo = hi = None
    if isinstance(hs, dict):  # summarised over seeds
        if hs.get("mean") is not None and hs.get("ci95") is not None:
            lo, hi = hs["mean"] - hs["ci95"], hs["mean"] + hs["ci95"]
        hs = hs.get("mean")
    else:
        ci = row.get("harmful_score_ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
            lo, hi = ci
    return {"label": label or row["name"], "hs": hs, "lo": lo, "hi": hi,
            "fa": _mean(row.get("finetune_accuracy")), "group": group}


def plot_hs_fa(points: list[dict], path: str | Path, title: str, legend: list[tuple[str, dict]] | None = None,
               note: str | None = None) -> Path:
    """Draw ``points`` (``point()``'s dicts; optional style keys ``color``, ``marker``, ``size``,
    ``fontsize``, ``label_color``) into the PNG ``path`` and return it.

    Points of one ``group`` share a colour and a legend entry (``legend`` replaces the entries:
    ``[(text, {"color", "marker"}), ...]``). Points without FA cannot be placed: they are named
    under the plot; when no point has FA, HS is drawn per variant instead. ``note`` is a line of
    text under the plot (e.g. which interval the bars are)."""
    plt = pyplot()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pts = [p for p in points if p.get("hs") is not None]
    groups: list[str] = []
    for p in pts:
        if p.get("group", "") not in groups:
            groups.append(p.get("group", ""))
    color = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    with_fa = [p for p in pts if p.get("fa") is not None]
    by_variant = not with_fa  # no task evaluated anywhere: HS per variant
    shown = pts if by_variant else with_fa
    fig, ax = plt.subplots(figsize=(max(6.4, 0.5 * len(shown) + 2) if by_variant else 6.8, 5.0))
    clusters: dict[tuple[int, int], list[tuple[dict, float, str]]] = {}  # points that (nearly) coincide
    for i, p in enumerate(shown):
        x = i if by_variant else p["fa"]
        c = p.get("color") or color[p.get("group", "")]
        yerr = None
        if p.get("lo") is not None and p.get("hi") is not None:
            yerr = [[max(0.0, p["hs"] - p["lo"])], [max(0.0, p["hi"] - p["hs"])]]
        ax.errorbar([x], [p["hs"]], yerr=yerr, fmt=p.get("marker", "o"), color=c, ecolor=c, elinewidth=1,
                    capsize=3, markersize=(p.get("size", 36) ** 0.5), alpha=0.9, zorder=3)
        clusters.setdefault((round(x / 3), round(p["hs"] / 3)), []).append((p, x, c))
    entries = legend if legend is not None else [(g, {"color": color[g], "marker": "o"}) for g in groups if g]
    for text, style in entries:
        ax.scatter([], [], color=style.get("color", "gray"), marker=style.get("marker", "o"), label=text)
    if entries:
        ax.legend(fontsize=8, loc="best")
    ax.set_ylim(-4, 104)
    ax.set_ylabel("harmful score HS (%)  ↓ better")
    if by_variant:
        ax.set_xticks(range(len(shown)), [p["label"] for p in shown], rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("variant (no fine-tune accuracy: the run evaluates no task)")
    else:
        ax.set_xlim(-4, 104)
        ax.set_xlabel("fine-tune accuracy FA (%)  → better")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    lines = []
    missing = [p["label"] for p in pts if p.get("fa") is None and not by_variant]
    if missing:
        lines.append("no FA, not shown: " + ", ".join(missing))
    unscored = [p["label"] for p in points if p.get("hs") is None]
    if unscored:
        lines.append("no HS, not shown: " + ", ".join(unscored))
    if note:
        lines.append(note)
    # fixed margins (tight_layout would double the drawing time, paid by every run)
    text_h = 0.035 * len(lines)
    if lines:
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, color="#444444", va="bottom")
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=(0.22 if by_variant else 0.12) + text_h)
    if not by_variant:  # after the layout is fixed: labels are placed in display coordinates
        _place_labels(fig, ax, list(clusters.values()))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # rundir's temporary naming: cleaned after a kill
    try:
        fig.savefig(tmp, dpi=120, format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _place_labels(fig, ax, clusters: list[list[tuple[dict, float, str]]]) -> None:
    """Label every cluster of points that (nearly) coincide with one text block (one line per
    colour listing its labels), placed greedily where it overlaps no earlier block and stays inside
    the axes: right of the point, else left, else shifted up or down with a thin leader line."""
    px = fig.dpi / 72.0  # pixels per point
    box = ax.get_window_extent()
    placed: list[tuple[float, float, float, float]] = []  # the markers first: a label covers none
    for members in clusters:
        for p, x, _ in members:
            mx, my = ax.transData.transform((x, p["hs"]))
            placed.append((mx - 5, my - 5, mx + 5, my + 5))
    order = sorted(clusters, key=lambda m: -m[0][0]["hs"])
    for members in order:
        blocks: list[tuple[str, int, str]] = []  # (colour, font size, text)
        for p, _, c in members:
            colour, fs = p.get("label_color", c), p.get("fontsize", 8)
            if blocks and blocks[-1][0] == colour:
                blocks[-1] = (colour, fs, blocks[-1][2] + ", " + p["label"])
            else:
                blocks.append((colour, fs, p["label"]))
        blocks = [(c, fs, "\n".join(textwrap.wrap(t, 40))) for c, fs, t in blocks]
        heights = [(t.count("\n") + 1) * fs * 1.25 for _, fs, t in blocks]
        w = max(max(len(line) for line in t.split("\n")) * fs * 0.58 for _, fs, t in blocks)
        h = sum(heights)
        p0, x0, _ = members[0]
        ax_, ay_ = ax.transData.transform((x0, p0["hs"]))
        cands = []
        for shift in (0, 1, -1, 2, -2, 3, -3, 4, -4):
            for dx in (6, -6 - w):
                for base in (3, -3 - h):
                    cands.append((dx, base + shift * (h + 4), shift))
        best = None
        for dx, dy, shift in cands:
            x1, y1 = ax_ + dx * px, ay_ + dy * px
            rect = (x1, y1, x1 + w * px, y1 + h * px)
            inside = rect[0] >= box.x0 and rect[2] <= box.x1 and rect[1] >= box.y0 and rect[3] <= box.y1
            free = all(rect[2] <= q[0] or rect[0] >= q[2] or rect[3] <= q[1] or rect[1] >= q[3] for q in placed)
            if inside and free:
                best = (dx, dy, shift, rect)
                break
            if best is None and inside:
                best = (dx, dy, shift, rect)  # the first that fits the axes, if none is free
        if best is None:
            best = (6, 3, 0, (ax_, ay_, ax_ + w * px, ay_ + h * px))
        dx, dy, shift, rect = best
        placed.append(rect)
        y = dy + h  # blocks from the top of the box down
        for (colour, fs, text), bh in zip(blocks, heights):
            y -= bh
            ax.annotate(text, (x0, p0["hs"]), xytext=(dx, y), textcoords="offset points", fontsize=fs,
                        color=colour, ha="left", va="bottom",
                        arrowprops=dict(arrowstyle="-", color=colour, lw=0.5, alpha=0.6) if shift else None)
