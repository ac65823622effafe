"""The ``panacea`` command: a thin dispatcher, no method logic (style.md, habit 5).

    panacea run CONFIG [key=value ...] [--force]    run an experiment (one YAML = one experiment)
    panacea validate CONFIG [key=value ...]         check a config and its data without training
    panacea ls [defenses|datasets|judges]           what is registered, one line each

Bad input (config, overrides, data, names) prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .errors import UserError

EPILOG = """examples:
  panacea run configs/demo.yaml
  panacea run configs/demo.yaml finetune.data.poison_ratio=0.2 finetune.runs.panacea.rho=2
  panacea run configs/demo.yaml output_dir=/tmp/demo --force
  panacea ls defenses
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="panacea",
        description="Harmful fine-tuning defenses (Panacea, Booster, baselines) and the three-stage "
        "threat-model pipeline: align, fine-tune on poisoned user data, repair, evaluate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    r = sub.add_parser("run", help="run an experiment from a YAML config",
                       description="Run every stage of CONFIG and write runs/<name>/ (or output_dir).")
    r.add_argument("config", help="experiment YAML file")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. finetune.data.n=100")
    r.add_argument("--force", action="store_true", help="replace an existing run directory of the same name")
    v = sub.add_parser("validate", help="validate a config and load its data, without training")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*", metavar="key=value")
    ls = sub.add_parser("ls", help="list registered defenses, datasets and judges")
    ls.add_argument("what", nargs="?", choices=["defenses", "datasets", "judges"], help="only this kind")
    return p


def cmd_ls(what: str | None) -> None:
    from .registry import DATASETS, DEFENSES, JUDGES, STAGES

    if what in (None, "defenses"):
        for stage in STAGES:
            print(f"defenses ({stage}):")
            for e in DEFENSES[stage].entries():
                print(f"  {e.name:<22} {e.help}")
    if what in (None, "datasets"):
        print("datasets:")
        for e in DATASETS.entries():
            print(f"  {e.name:<22} [{e.meta.get('kind', '')}] {e.help}")
    if what in (None, "judges"):
        print("judges:")
        for e in JUDGES.entries():
            print(f"  {e.name:<22} {e.help}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    if args.cmd is None:
        _parser().print_help()
        return 2
    try:
        if args.cmd == "ls":
            cmd_ls(args.what)
            return 0
        from .config import load_config

        cfg, _ = load_config(args.config, args.overrides)
        if args.cmd == "validate":
            from .pipeline import Context, Plan

            plan = Plan(cfg)
            sizes = plan.check_data(Context(cfg))
            print(f"{args.config}: valid; variants: {', '.join(plan.variants)}; pools: "
                  + ", ".join(f"{k}={v}" for k, v in sizes.items()))
            return 0
        from .pipeline import run_experiment
        from .report import format_results

        metrics = run_experiment(cfg, force=args.force)
        print(format_results(metrics))
        return 0
    except UserError as e:
        print(f"panacea: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("panacea: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
