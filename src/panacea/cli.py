"""The ``panacea`` command: a thin dispatcher, no method logic (docs/contributing.md#habits, habit 5).

    panacea run CONFIG [key=value ...] [--force]    run an experiment (one YAML = one experiment)
    panacea run --config CONFIG --output_dir DIR    the same with the flags TRL/torchtune users type
    panacea run CONFIG --launcher accelerate --num-processes N [--accelerate-config FILE]
                                                    the same on N processes (GPUs) via accelerate
    panacea validate CONFIG [key=value ...]         check a config and its data without training
    panacea plan CONFIG [key=value ...] [--force]   the stage graph: each stage reused or computed, est. time
    panacea ls [defenses|attacks|datasets|judges|matchers]  what is registered, one line each
    panacea judge-eval --judge NAME --data FILE [--fields prompt=COL,...] [--invert-labels]
                                                    AUROC, accuracy, F1 of a judge on labelled pairs
    panacea rejudge RUN --judge NAME                re-score a finished run's answers with a judge
    panacea export RUN [--format alpaca_eval]       saved answers in an external scorer's format
    panacea analyze RUN                             per-layer safety coefficients of Panacea's ε
    panacea record RUN [RUN ...] results/NAME       keep finished runs' config, metrics, answers, provenance
    panacea tables [results] [--write F --readme F] markdown tables (mean ± 95% over seeds) from results/
    panacea bench [CONFIG] [--quick] [--dry-run]    every defense compared, overhead, plots, report
    panacea sweep CONFIG [key=value ...] [--engine local|ray|slurm] [--dry-run]
                                                    a grid or Optuna search of experiments, worst case per defense
    panacea plot RESULTS.json | RUN                 redraw the bench plots, or a run's results.md and hs_fa.png
    panacea compare RUN [RUN ...] [--out DIR]       several finished runs in one table and one plot
    panacea --version                               the installed version

Every ``run`` writes ``results.md`` (the table, what each column means) and ``hs_fa.png`` into its
run directory and ends with the line ``results: <run_dir>/results.md`` (docs/reading_results.md).

``run`` with ``seeds: [..]`` in the config runs once per seed into ``<run_dir>/seed_<s>/`` and
writes ``summary.json`` (mean ± 95 % interval per metric, ``panacea.seeds``).

Bad input (config, overrides, data, names) prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .distributed import is_main, process_index
from .errors import ConfigError, UserError
from .eval.export import export_run
from .paths import expand_path

# `panacea --help` stays quick: the modules that cost import time (config and yaml, registry, report,
# api, bench, sweep, ...) are imported where a command runs; pipeline, eval.rejudge, analysis load torch

EPILOG = """examples:
  panacea run configs/demo.yaml
  panacea run configs/demo.yaml finetune.data.poison_ratio=0.2 finetune.runs.panacea.rho=2
  panacea run configs/demo.yaml output_dir=/tmp/demo --force
  panacea run --config configs/quickstart.yaml --output_dir runs/quickstart
  panacea ls defenses
  panacea bench --quick
  panacea run configs/paper/booster__sst2__llama2-7b.yaml --launcher accelerate --num-processes 8
  accelerate launch --config_file configs/accelerate/fsdp.yaml -m panacea run CONFIG
  panacea run configs/demo.yaml 'seeds=[43, 44, 45]'
  panacea judge-eval --judge llm --data labelled.jsonl --judge-option calibration=cal.jsonl
  panacea judge-eval --judge learned --data pyrit-human:test
  panacea judge-eval --judge harm --data mine.csv --fields prompt=question,response=answer,label=is_safe --invert-labels
  panacea rejudge runs/demo --judge gate --judge-option then=llm --judge-option then_options.threshold=0.7
  panacea compare runs/demo runs/tiny --out runs/compare/demo-vs-tiny
  panacea bench --quick --dry-run
  panacea sweep configs/sweeps/cpu.yaml --dry-run
  panacea sweep configs/sweeps/cpu.yaml --engine ray --address auto
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors are bad input like any other: one line, exit code 2 (no usage block)."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="panacea",
        description="Harmful fine-tuning defenses (Panacea, Booster, baselines) and the three-stage "
        "threat-model pipeline: align, fine-tune on poisoned user data, repair, evaluate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"panacea {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    r = sub.add_parser("run", help="run an experiment from a YAML config",
                       description="Run every stage of CONFIG and write runs/<name>/ (or output_dir).")
    _config_args(r, "experiment YAML file")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. finetune.data.n=100")
    _output_dir_arg(r)
    r.add_argument("--force", action="store_true",
                   help="replace an existing run directory and compute every stage again (without it, a run "
                   "resumes and a changed config reuses the stages it leaves unchanged, docs/stages.md); "
                   "only a panacea run (a valid run.json) is replaced, and files panacea did not write in it are kept")
    r.add_argument("--launcher", choices=["none", "accelerate"], default="none",
                   help="accelerate: re-run this command under `accelerate launch` on --num-processes "
                   "processes (same as `accelerate launch [--config_file F] -m panacea run ...`)")
    r.add_argument("--num-processes", "--num_processes", dest="num_processes", type=int, metavar="N",
                   help="processes (GPUs) for --launcher accelerate (accelerate's spelling --num_processes works too)")
    r.add_argument("--accelerate-config", metavar="FILE",
                   help="accelerate config for --launcher accelerate, e.g. configs/accelerate/fsdp.yaml "
                   "(default: plain DDP, one process per GPU)")
    v = sub.add_parser("validate", help="validate a config and load its data, without training")
    _config_args(v, "experiment YAML file")
    v.add_argument("overrides", nargs="*", metavar="key=value")
    _output_dir_arg(v)
    pn = sub.add_parser("plan", help="print the stage graph of a config: what is reused, what runs, the time it takes",
                        description="Print every stage of CONFIG (alignment, fine-tuning runs, post defenses, one "
                        "evaluation per variant) with its key, the stages it consumes, and whether `panacea run` "
                        "would reuse it (its run directory or the cache_dir holds it, checksums verified) or "
                        "compute it. Loads the data, never a model; writes nothing (docs/stages.md).",
                        epilog="estimated time: a stage to compute takes its optimizer steps × the seconds per "
                        "step that finished stages of the same defense recorded (record.json: step_seconds, "
                        "the median over the run directory and the cache); a post defense or an evaluation "
                        "the seconds a finished one took. With nothing measured yet it says 'time unknown' "
                        "(`panacea bench --dry-run` measures a step by loading the model).")
    _config_args(pn, "experiment YAML file")
    pn.add_argument("overrides", nargs="*", metavar="key=value")
    _output_dir_arg(pn)
    pn.add_argument("--force", action="store_true", help="plan as `panacea run --force` would: every stage computed")
    ls = sub.add_parser("ls", help="list registered defenses, attacks, datasets, judges and answer matchers")
    ls.add_argument("what", nargs="?", choices=["defenses", "attacks", "datasets", "judges", "matchers"], help="only this kind")
    opt = dict(action="append", default=[], metavar="key=value",
               help="a judge option (eval.judge_options); repeat it; dotted keys nest, e.g. then_options.threshold=0.7")
    je = sub.add_parser("judge-eval", help="score a judge against a labelled file (AUROC, accuracy, F1)",
                        description="Run a judge on a CSV/JSONL file with prompt, response, label (1 = harmful) "
                        "and print AUROC, and accuracy and F1 at the judge's threshold.")
    je.add_argument("--judge", required=True, help="judge name (panacea ls judges)")
    je.add_argument("--data", required=True, help="labelled .csv or .jsonl file, or pyrit-human:SPLIT (train, validation, "
                    "test, all): pyrit's human-labelled answers split by prompt (docs/judge.md)")
    je.add_argument("--fields", metavar="prompt=COL,response=COL,label=COL",
                    help="the file's column names for prompt, response and label, e.g. "
                    "prompt=question,response=answer,label=is_harmful (unnamed ones keep their own name)")
    je.add_argument("--invert-labels", action="store_true",
                    help="the label column marks safe answers (e.g. is_safe): 1/true = not harmful")
    je.add_argument("--judge-option", dest="judge_options", **opt)
    je.add_argument("--out", help="also write the full report (with per-row scores) to this JSON file")
    rj = sub.add_parser("rejudge", help="re-score a finished run's saved answers with another judge",
                        description="Re-judge RUN/generations/*.jsonl and write RUN/rejudge_<judge>.json; "
                        "metrics.json is not touched. An earlier re-judging with the same judge (and --tag) is "
                        "refused unless --force.")
    rj.add_argument("run", help="run directory (or a multi-seed run directory)")
    rj.add_argument("--judge", required=True, help="judge name (panacea ls judges)")
    rj.add_argument("--judge-option", dest="judge_options", **opt)
    rj.add_argument("--tag", help="suffix of the output name, to keep several re-judgings with one judge")
    rj.add_argument("--force", action="store_true",
                    help="replace an earlier re-judging with the same judge and tag (refused without it)")
    ex = sub.add_parser("export", help="export a finished run's saved answers for an external scorer",
                        description="Write RUN/exports/<format>/<set>/<variant>.json from RUN/generations/*.jsonl "
                        "(alpaca_eval: the input of the alpaca_eval tool, for the papers' AlpacaEval win rate); "
                        "each --set has its own folder.")
    ex.add_argument("run", help="run directory")
    ex.add_argument("--format", default="alpaca_eval", help="alpaca_eval (default)")
    ex.add_argument("--set", dest="answer_set", default="benign",
                    help="which saved answers: benign (default; evaluate with eval.benign={name: alpaca_eval}), harmful or task")
    ex.add_argument("--force", action="store_true", help="replace existing export files of the same format and set")
    b = sub.add_parser("bench", help="every registered defense in one run: HS/FA, overhead, ε per layer, plots",
                       description="Build the comparison of every registered defense from CONFIG (a base "
                       "experiment plus a `bench:` section, default configs/bench.yaml), run it, and write "
                       "OUT/results.json, OUT/report.md and PNG plots. Prints the plan and the expected time "
                       "before it creates or removes anything.")
    _config_args(b, "bench YAML (default: configs/bench.yaml)")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the base experiment")
    b.add_argument("--quick", action="store_true", help="apply the config's bench.quick profile (< 15 min on 2 CPU cores)")
    b.add_argument("--out", "--output_dir", "--output-dir", dest="out", default="bench_results",
                   help="output folder (default: bench_results)")
    b.add_argument("--force", action="store_true", help="replace an existing output folder")
    b.add_argument("--resume", action="store_true",
                   help="continue an interrupted bench in OUT with the same config: finished stages and "
                        "evaluations are kept (checked against their checksums), the rest runs")
    b.add_argument("--dry-run", action="store_true",
                   help="print the plan and the time estimate, then exit without writing anything")
    sw = sub.add_parser("sweep", help="a grid (or an Optuna search) of experiments: one table, plots, worst case per defense",
                        description="Run CONFIG (an experiment plus a `sweep:` section, docs/sweeps.md) at every "
                        "grid point × seed, each a normal run directory OUT/points/<point>/, and write OUT/table.csv "
                        "and table.json (one row per point × seed × variant, every metric with its interval), "
                        "OUT/plots/<key>.png (HS and FA against each swept key) and OUT/sweep.md with each "
                        "defense's worst case: its highest HS over the points where its FA stays within "
                        "sweep.fa_margin (default 3 points) of the baseline's (sweep.baseline, default sft) at "
                        "the same point. `sweep.search: optuna` searches sweep.space ranges for the worst attack "
                        "instead (sweep.trials, sweep.target; OUT/study.db resumes, OUT/best_attack.yaml "
                        "reproduces the best). The same command resumes an interrupted sweep; finished points "
                        "are never recomputed. Exit code 1 when a point failed (the others are in the table).")
    _config_args(sw, "sweep YAML: an experiment with a sweep: section")
    sw.add_argument("overrides", nargs="*", metavar="key=value",
                    help="dotted overrides; sweep.<key>=... edits the sweep section, e.g. 'sweep.seeds=[43,44]'")
    sw.add_argument("--engine", choices=["local", "ray", "slurm"],
                    help="local (default: one point after another in this process), ray (Ray tasks on --address "
                    "or a local Ray cluster) or slurm (SLURM jobs through submitit, sweep.slurm: {partition, "
                    "gpus_per_node, timeout_min, ...}); default: sweep.engine")
    sw.add_argument("--address", help="--engine ray: the Ray cluster (HOST:PORT, ray://HOST:PORT or auto); "
                    "without it a local Ray cluster is started (sweep.parallel CPUs, default all)")
    sw.add_argument("--num-gpus", "--num_gpus", dest="num_gpus", type=float, metavar="N",
                    help="GPUs per point for --engine ray/slurm (default sweep.num_gpus; unset: 1 on a cluster "
                    "with GPUs, 0 without)")
    sw.add_argument("--out", "--output_dir", "--output-dir", dest="out",
                    help="the sweep folder (default: sweep.output_dir, else output_dir, else runs/sweeps/<name>)")
    sw.add_argument("--force", action="store_true",
                    help="reuse a folder that holds another sweep (or points of another config); finished points "
                    "of the same config are still read, not recomputed")
    sw.add_argument("--dry-run", action="store_true",
                    help="validate every point (config, options, data) and print the plan, without writing anything")
    pl = sub.add_parser("plot", help="redraw the plots of a bench (results.json) or of a finished run (RUN)",
                        description="Redraw hs_vs_fa.png and overhead.png next to RESULTS (a bench results.json), "
                        "or a finished run's results.md and hs_fa.png (RESULTS: the run directory).")
    pl.add_argument("results", help="bench_results/results.json, or a run directory")
    cp = sub.add_parser("compare", help="several finished runs side by side: one table, one HS-vs-FA plot",
                        description="Put the variants of finished runs (one seed, a seeds: [...] run, or a recorded "
                        "result) in one table (rows <run>/<variant>) and one plot: print the table and write "
                        "compare.md and compare.png into --out.")
    cp.add_argument("runs", nargs="+", metavar="RUN", help="finished run directories")
    cp.add_argument("--out", help="output folder (default: runs/compare/<timestamp> under the current directory)")
    cp.add_argument("--force", action="store_true", help="write into a non-empty --out (replaces compare.md/.png)")
    rc = sub.add_parser("record", help="keep a finished run's citable part (config, metrics, answers, provenance) under results/",
                        description="Copy RUN's resolved config, every seed's metrics.json and saved answers "
                        "(generations/*.jsonl, for re-judging), summary.json, and a result.json with the command, "
                        "seeds, package versions, git commit, machine and wall time into OUT. No adapters. "
                        "A finished sweep folder (panacea sweep) is recorded with its table, summary, plots and "
                        "each point's metrics and answers (docs/sweeps.md#recording-a-sweep).")
    rc.add_argument("paths", nargs="+", metavar="RUN ... OUT",
                    help="finished run directories (one seed, a seeds: [...] parent, or several runs of one "
                    "config that differ only in seed) or one finished sweep folder, then the new folder, "
                    "e.g. results/demo")
    rc.add_argument("--command", help="the command that produced RUN (default: panacea run RUN/config.yaml)")
    rc.add_argument("--force", action="store_true", help="replace OUT if it is a result this command recorded")
    rc.add_argument("--commit", metavar="SHA", help="the git commit the run's code was at, for runs whose "
                    "metrics.json has no provenance (made before runs recorded it); default: the recording "
                    "checkout's commit, labelled as such")
    tb = sub.add_parser("tables", help="markdown tables from recorded results (docs/results.md, README blocks)",
                        description="Print one section per RESULTS/*/result.json: HS, FA, OR as mean ± 95%% "
                        "interval over seeds next to the per-prompt interval, each variant's method, and a "
                        "search's selection. --write and --readme update files; --check verifies them.")
    tb.add_argument("results", nargs="?", default="results", help="results folder (default: results)")
    tb.add_argument("--judge", help="use RESULT/.../rejudge_<JUDGE>.json (panacea rejudge) instead of metrics.json")
    tb.add_argument("--write", metavar="FILE", help="write the document to FILE (e.g. docs/results.md)")
    tb.add_argument("--readme", metavar="FILE", help="regenerate FILE's <!-- results:NAME --> blocks")
    tb.add_argument("--check", action="store_true", help="fail (exit 2) if --write/--readme files are not up to date")
    an = sub.add_parser("analyze", help="per-layer safety coefficients of Panacea's ε in a finished run",
                        description="For every Panacea stage of RUN, write analysis/<stage>/safety_coefficients_"
                        "{layers,modules}.csv and a bar plot: per decoder layer the share of ‖ε‖ (the statistic "
                        "docs/algorithms.md#per-layer-safety-coefficients infers for the paper's figure), mean |ε|, "
                        "‖ε‖ relative to the LoRA weights and the effective-weight change (additions).")
    an.add_argument("run", help="run directory")
    an.add_argument("--no-plot", action="store_true", help="CSV only")
    return p


def _config_args(parser, help: str) -> None:
    """``CONFIG`` positional, or ``--config CONFIG`` as TRL, torchtune and lm-eval users type it."""
    parser.add_argument("config", nargs="?", help=help)
    parser.add_argument("--config", dest="config_flag", metavar="CONFIG", help="the same as the positional CONFIG")


def _output_dir_arg(parser) -> None:
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", metavar="DIR",
                        help="the run directory; the same as the override output_dir=DIR")


def resolve_config_args(args, default: str | None = None) -> None:
    """Fold ``--config`` and ``--output_dir`` into ``args.config`` and ``args.overrides``.

    With ``--config``, a positional word is the first override (argparse gives it to ``config``
    because that comes first); ``--output_dir DIR`` becomes the override ``output_dir=DIR`` so that
    a relaunch under accelerate (``launch_command``) and the run's identity see one spelling.
    """
    flag = getattr(args, "config_flag", None)
    if flag is not None:
        if args.config is not None:
            if "=" not in args.config:
                raise UserError(f"two configs given: {args.config!r} and --config {flag!r}; give one")
            args.overrides = [args.config, *args.overrides]
        args.config = flag
    if args.config is None:
        if default is None:
            raise UserError(f"{args.cmd} needs a config: panacea {args.cmd} CONFIG or --config CONFIG")
        args.config = default
    out = getattr(args, "output_dir", None)
    if out is not None:
        if not out.strip():
            raise UserError("--output_dir must not be empty")
        if any(o.split("=", 1)[0].strip() == "output_dir" for o in args.overrides):
            raise UserError("the run directory is given twice: --output_dir and output_dir=; give one")
        args.overrides = [*args.overrides, f"output_dir={json.dumps(out)}"]  # a JSON string is YAML


def judge_options(items: list[str]) -> dict:
    """``["k=v", "a.b=v"]`` → ``{"k": v, "a": {"b": v}}`` with YAML values."""
    from .config import apply_overrides

    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--judge-option {item!r} must look like key=value")
    from .config import check_tree

    out = apply_overrides({}, items)
    check_tree(out, "--judge-option")
    return out


def cmd_judge_eval(args) -> int:
    from .eval.judge_eval import format_judge_report, judge_report, load_labelled
    from .rundir import write_json
    from .registry import JUDGES

    entry = JUDGES.get(args.judge, "--judge")
    data = load_labelled(args.data, fields=parse_fields(args.fields),
                         invert=args.invert_labels)  # before a model is loaded
    judge = entry.obj(judge_options(args.judge_options))
    rep = judge_report(judge, data)
    print(format_judge_report(rep))
    if args.out:
        write_json(Path(args.out), _json_safe(rep))
    return 0


def parse_fields(text: str | None) -> dict[str, str]:
    """``--fields prompt=question,response=answer`` → ``{"prompt": "question", "response": "answer"}``."""
    from .judges.calibration import COLUMNS

    if text is None:
        return {}
    out = {}
    for item in text.split(","):
        ours, _, theirs = item.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if ours not in COLUMNS or not theirs:
            raise UserError(f"--fields {item.strip()!r} must look like NAME=COLUMN with NAME one of {', '.join(COLUMNS)}")
        if ours in out:
            raise UserError(f"--fields names {ours!r} twice")
        out[ours] = theirs
    return out


def cmd_rejudge(args) -> int:
    from .eval.rejudge import rejudge
    from .report import format_rejudge

    out = rejudge(args.run, args.judge, judge_options(args.judge_options), args.tag, force=args.force)
    print(format_rejudge(out))
    return 0


def cmd_run(cfg, force: bool) -> int:
    from .api import run_experiment  # the Python API's code path (api.py)
    from .report import format_results, format_summary

    run = run_experiment(cfg, force=force)
    # only the main process prints the tables (and writes the run files, see rundir.write_atomic)
    if not is_main():
        return 0
    if not cfg.seeds:
        print(format_results(run.metrics))
    else:
        for seed, metrics in run.seeds.items():
            print(f"--- seed {seed}")
            print(format_results(metrics, samples=False))
        print(format_summary(run.metrics, judge=cfg.eval.judge))
    print(results_line(run.run_dir))
    return 0


def results_line(run_dir: Path) -> str:
    """The last line of ``panacea run``: where its results are (``results.md``, or the folder of
    a run finished by an older panacea that wrote none)."""
    from .report import RESULTS_MD

    md = run_dir / RESULTS_MD
    return f"results: {md if md.is_file() else str(run_dir) + '/'}"


def launch_command(args, processes: int) -> list[str]:
    """The ``accelerate launch`` command line that re-runs ``panacea run`` on ``processes`` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    if args.accelerate_config:
        cmd += ["--config_file", args.accelerate_config]
    else:  # plain DDP through torchrun (one process per GPU; gloo on a machine without GPU)
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", "panacea", "run", args.config, *args.overrides]
    return cmd + (["--force"] if args.force else [])


def cmd_launch(args) -> int:
    """``panacea run --launcher accelerate``: validate here (one line, exit 2), then relaunch."""
    from .config import load_config
    from .judges.options import check_judge
    from .pipeline import Plan

    n = args.num_processes
    if n is None or n < 1:
        raise ConfigError(f"--num-processes must be ≥ 1 with --launcher accelerate, got {n}")
    preset = None
    if args.accelerate_config:
        preset = _accelerate_preset(args.accelerate_config)
        if preset.get("distributed_type", "NO") == "NO" and n > 1:
            raise ConfigError(f"--accelerate-config {args.accelerate_config} runs one process (distributed_type: NO); "
                              f"use configs/accelerate/ddp.yaml or fsdp.yaml for --num-processes {n}")
    cfg, _ = load_config(args.config, args.overrides)
    Plan(cfg).check_processes(n)  # e.g. a global_batch_size the world size does not divide
    check_judge(cfg)
    cmd = launch_command(args, n)
    print("panacea: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return subprocess.run(cmd).returncode


def _accelerate_preset(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--accelerate-config: no such file {path!r} (presets: configs/accelerate/*.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"--accelerate-config {path}: not readable YAML ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--accelerate-config {path}: not an accelerate config (a YAML mapping)")
    return data


def _json_safe(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def cmd_ls(what: str | None) -> None:
    from .registry import ATTACKS, DATASETS, DEFENSES, JUDGES, MATCHERS, STAGES

    if what in (None, "defenses"):
        for stage in STAGES:
            print(f"defenses ({stage}):")
            for e in DEFENSES[stage].entries():
                print(f"  {e.name:<22} {e.help}")
    if what in (None, "attacks"):
        print("attacks (finetune.data.attack):")
        for e in ATTACKS.entries():
            print(f"  {e.name:<22} {e.help}")
    if what in (None, "datasets"):
        print("datasets:")
        for e in DATASETS.entries():
            print(f"  {e.name:<22} [{e.meta.get('kind', '')}] {e.help}")
    if what in (None, "judges"):
        print("judges:")
        for e in JUDGES.entries():
            print(f"  {e.name:<22} {e.help}")
    if what in (None, "matchers"):
        print("matchers (eval.utility.match):")
        for e in MATCHERS.entries():
            print(f"  {e.name:<22} {e.help}")


def _error_elsewhere(message: str) -> None:
    """A non-main process's error. Config and data errors are raised by every process alike and
    the main process prints them; the launcher stops this one meanwhile. Only an error of this
    process alone gets here to print, after a grace period, so there is one line either way."""
    time.sleep(5)
    _error(f"(process {process_index()}) {message}")


def _error(message: str) -> None:
    from .rundir import redact

    print(redact(f"panacea: error: {message}"), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # undecodable argv bytes must not crash a message
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    try:
        parser = _parser()
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit as e:  # --help, --version: printed, a normal exit
            return e.code or 0
        # key=value overrides may follow options (`bench CONFIG --out X k=v`): argparse leaves
        # positionals after an option unparsed when the nargs="*" list was already taken
        if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = list(args.overrides or []) + extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.cmd in ("run", "validate", "bench", "sweep", "plan"):
            resolve_config_args(args, "configs/bench.yaml" if args.cmd == "bench" else None)
    except UserError as e:
        _error(str(e))
        return e.exit_code
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    if args.cmd is None:
        _parser().print_help()
        return 2
    try:
        if args.cmd in ("rejudge", "analyze", "export"):  # one absolute run path, as output_dir (paths.py)
            args.run = str(expand_path(args.run, "RUN"))
        if args.cmd == "ls":
            cmd_ls(args.what)
            return 0
        if args.cmd == "judge-eval":
            return cmd_judge_eval(args)
        if args.cmd == "rejudge":
            return cmd_rejudge(args)
        if args.cmd == "bench":
            from .bench import run_bench
            from .report import format_bench

            if args.force and args.resume:
                raise UserError("--force and --resume exclude each other: --force deletes what --resume keeps")
            res = run_bench(args.config, args.quick, args.out, args.force, args.overrides, resume=args.resume,
                            command="panacea " + " ".join(sys.argv[1:]) if argv is None else "panacea " + " ".join(argv),
                            dry_run=args.dry_run)
            if args.dry_run:
                print(f"dry run: nothing was written; without --dry-run the bench writes {args.out}/")
                return 0
            print(format_bench(res))
            print(f"→ {args.out}/results.json, {args.out}/report.md")
            return 0
        if args.cmd == "sweep":
            from .sweep import run_sweep

            res = run_sweep(args.config, args.overrides, out=args.out, engine=args.engine, address=args.address,
                            num_gpus=args.num_gpus, force=args.force, dry_run=args.dry_run)
            if args.dry_run:
                print(f"dry run: nothing was written; without --dry-run the sweep writes {res['sweep_dir']}/")
                return 0
            return 1 if res["failed"] else 0
        if args.cmd == "record":
            from .results import record

            if len(args.paths) < 2:
                raise UserError("record needs at least one RUN and the OUT folder")
            kept = record(args.paths[:-1], args.paths[-1], args.command, args.force, args.commit)
            print(f"recorded {', '.join(args.paths[:-1])} → {kept}")
            return 0
        if args.cmd == "tables":
            from .results import tables

            doc = tables(args.results, args.judge, args.write, args.readme, args.check)
            if not (args.write or args.readme):
                print(doc, end="")
            return 0
        if args.cmd == "compare":
            from .compare import compare

            res = compare(args.runs, args.out, args.force)
            print(res["text"])
            print(f"compare: {res['markdown']}")
            return 0
        if args.cmd == "plot":
            target = Path(args.results)
            if target.is_dir() or target.name in ("metrics.json", "summary.json"):  # a run's results.md, hs_fa.png
                from .compare import redraw

                paths = redraw(target)
            else:
                from .bench import replot

                paths = replot(args.results)
            for path in paths:
                print(path)
            return 0
        if args.cmd == "analyze":
            from .analysis.coefficients import analyze_run

            for st in analyze_run(args.run, plots=not args.no_plot):
                top = ", ".join(f"layer {i}: {sh}%" for i, sh in st["top_layers"])
                print(f"{st['stage']}: ‖ε‖ {st['epsilon_norm']:.4g} over {st['layers']} layers; largest shares {top}")
                print(f"  → {st['folder']}")
            return 0
        if args.cmd == "export":
            for path in export_run(args.run, args.format, args.answer_set, args.force):
                print(path)
            return 0
        if args.cmd == "run" and (args.launcher == "accelerate" or args.num_processes or args.accelerate_config):
            if args.launcher != "accelerate":
                raise UserError("--num-processes and --accelerate-config need --launcher accelerate")
            return cmd_launch(args)
        from .config import load_config

        cfg, _ = load_config(args.config, args.overrides)
        if args.cmd == "plan":
            from .stages import show_plan

            print("\n".join(show_plan(cfg, args.force)))
            return 0
        if args.cmd == "validate":
            from .api import validate
            from .pipeline import plan_warnings

            plan, sizes = validate(cfg)
            print(f"{args.config}: valid; variants: {', '.join(plan.variants)}; pools: "
                  + ", ".join(f"{k}={v}" for k, v in sizes.items())
                  + (f"; seeds: {', '.join(map(str, cfg.seeds))}" if cfg.seeds else ""))
            for warning in plan_warnings(plan, sizes):
                print(warning)
            return 0
        return cmd_run(cfg, args.force)
    except UserError as e:
        if is_main():
            _error(str(e))
        else:
            _error_elsewhere(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        print("panacea: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
