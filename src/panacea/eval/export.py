"""Export a finished run's saved answers for external scorers (``panacea export``).

``alpaca_eval``: the Panacea and Booster papers report AlpacaEval fine-tune accuracy as a win rate
that the ``alpaca_eval`` tool computes with an LLM annotator (docs/protocol.md#data-sources,
docs/protocol.md#fine-tune-accuracy-fa). ``panacea`` does not call that annotator; it writes each
variant's answers to the evaluated prompts in the tool's input format, a JSON list of
``{"instruction", "output", "generator"}``::

    panacea run CONFIG eval.benign='{name: alpaca_eval}'     # answers saved with set: benign
    panacea export RUN --format alpaca_eval                    # RUN/exports/alpaca_eval/benign/<variant>.json
    alpaca_eval --model_outputs RUN/exports/alpaca_eval/benign/<variant>.json

Each answer set has its own folder (``exports/<format>/<set>/``), so exporting ``--set harmful``
never touches the benign export. Existing export files are never replaced silently: pass
``force=True`` (``--force``), which replaces only the files of that format and set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UserError
from .answers import read_answers

FORMATS = ("alpaca_eval",)


def export_run(run_dir: str | Path, fmt: str = "alpaca_eval", answer_set: str = "benign",
               force: bool = False) -> list[Path]:
    run = Path(run_dir)
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    gens = sorted((run / "generations").glob("*.jsonl"))
    if not gens:
        raise UserError(f"{str(run)!r} has no generations/*.jsonl: not a finished panacea run")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", answer_set) or answer_set.startswith("."):
        raise UserError(f"--set must be a set name such as benign, harmful or task, got {answer_set!r}")
    out_dir = run / "exports" / fmt / answer_set
    todo = []
    for path in gens:
        rows = [{"instruction": row["prompt"], "output": row["response"], "generator": f"{run.name}/{path.stem}"}
                for row in read_answers(path, answer_set)]
        if not rows:
            raise UserError(f"{path}: no answers of set {answer_set!r} (evaluate with eval.{answer_set} set)")
        todo.append((out_dir / f"{path.stem}.json", rows))
    for target, _ in todo:  # every file checked before any is written: no half-replaced export
        if target.exists() and not force:
            raise UserError(f"{target} exists; pass --force to replace it")
    written = []
    for target, rows in todo:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(target)
        written.append(target)
    return written
