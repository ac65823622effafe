"""Stages as a graph of cached, content-addressed steps (docs/stages.md).

A run is a graph of stages: the alignments, the fine-tuning runs, the post-fine-tuning defenses
and one evaluation per variant. A ``Stage`` holds what it consumes (the keys of its input stages)
and its resolved settings; its ``key`` is the sha256 of both. Everything that can change a
stage's output is in its settings: the model (its name and, for a local folder, the names and
sizes of its files and the contents of its small files), LoRA, template and tokenizer settings,
the seed, the stage's data sections and a digest of the rows it reads, its defense and options,
its train or eval settings, the number of processes, and the panacea version. When in doubt a setting is included: a
needless recomputation costs time, a wrong reuse costs correctness.

Finished stages are kept twice, for free when the file system allows hard links:

* in the run directory, under their usual names (``alignment/adapter/``, ``finetune/<run>/``,
  ``post/<name>/``, ``eval/<variant>/`` + ``generations/<variant>.jsonl``), each with its
  manifest ``done.json`` that now records the stage key (``rundir.write_manifest``);
* in the cache, ``<cache_dir>/<kind>/<key>/`` with ``entry.json`` (the key, the sha256 of every
  file and of the input adapters it was built from). ``cache_dir`` is a top-level config key;
  its default is ``cache/`` inside the run directory, so a run directory holds no absolute path
  and can be moved; several runs of one experiment family may share one folder.

A stage is reused when its run-directory manifest verifies with the same key, else when its cache
entry verifies (its files are linked or copied into the run directory); otherwise it is computed
under a lock on its key in the cache (``Cache.lock``: a second process computing the same stage
waits, saying so in one line) and then published to the cache. An entry whose checksums do not
match is never used. ``--force`` reads nothing from the cache (and replaces what it publishes).

This module loads no model: ``panacea plan`` (``plan_lines``) uses it to print the graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from . import __version__, attacks
from .config import ExperimentConfig, from_dict, to_dict
from .distributed import is_main, num_processes
from .errors import ConfigError, UserError
from .paths import expand_path
from .rundir import MANIFEST, adapter_files, atomic_path, read_marker, sha256_file, verify_manifest, write_json

# pipeline imports stages, and models and checkpoint load torch (`panacea plan` reads this module
# first): they are imported inside the functions that need them

#: Bumped when the meaning of a key's contents changes.
KEY_SCHEMA = "panacea-stage/1"
ENTRY = "entry.json"
#: A file of a local model folder up to this size is hashed; a larger one counts by name and size.
SMALL_FILE = 1 << 22
#: Written into a training stage's folder when it starts computing: the key its checkpoints belong to.
STAGE_KEY_FILE = "stage_key"


def digest(obj) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys; unknown types by ``str``)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_plain)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plain(o):
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    return str(o)


def rows_digest(rows) -> str:
    """The digest of the rows a stage reads (every field of every ``Example``, in order)."""
    return digest([dataclasses.asdict(r) for r in rows])


@dataclass
class Stage:
    """One step of the graph: ``kind`` (alignment, finetune, post, eval), the variant ``name``,
    its folder in the run directory, the stages it consumes and its resolved ``settings``."""

    kind: str
    name: str
    folder: str
    inputs: list = field(default_factory=list)
    """The keys of the stages it consumes (an adapter chain), oldest first."""
    settings: dict = field(default_factory=dict)
    estimate: dict = field(default_factory=dict)
    """What ``plan`` needs to estimate its time: ``steps`` (training stages), ``defense``."""
    parts: dict = field(default_factory=dict)
    """An evaluation's prompt sets (``harmful``, ``task``, ``benign``, ``triggered``), each a
    ``Stage`` of its own key, kept in the cache by itself: when the evaluation's key changes, only
    the sets whose own settings changed are generated again (``pipeline.evaluate_all``)."""

    @property
    def key(self) -> str:
        return digest({"schema": KEY_SCHEMA, "kind": self.kind, "inputs": self.inputs, "settings": self.settings})

    @property
    def label(self) -> str:
        return {"alignment": "alignment", "finetune": "fine-tuning", "post": "post-fine-tuning",
                "eval": "evaluation"}[self.kind] + f" {self.name}"


def model_fingerprint(mcfg) -> dict:
    """What identifies the model's weights and tokenizer without loading them: ``embedded`` with
    its package version; a local folder by its files' names and sizes and its small files'
    sha256 (config, tokenizer, template); a hub id by its name."""
    from . import models

    out = {"name_or_path": mcfg.name_or_path}
    if mcfg.name_or_path == models.EMBEDDED:
        try:
            out["package"] = metadata.version(models.EMBEDDED_PACKAGE.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out["package"] = None
        return out
    folder = models.local_folder(mcfg.name_or_path)
    if folder is not None:
        files = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
                size = p.stat().st_size
                files[p.relative_to(folder).as_posix()] = sha256_file(p) if size <= SMALL_FILE else size
        out["files"] = files
    return out


def _asdict(obj):
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _steps(n: int, train) -> int:
    """Optimizer steps of a training stage on one process (``max_steps`` wins when set)."""
    if train.max_steps and train.max_steps > 0:
        return int(train.max_steps)
    batch = (train.global_batch_size or train.per_device_train_batch_size * train.gradient_accumulation_steps)
    return int(math.ceil(n / batch) * train.num_train_epochs) if n else 0


def build_graph(cfg, plan, ctx) -> dict[str, Stage]:
    """Every stage of ``cfg`` by its variant name (evaluations as ``eval/<variant>``), in run order.

    ``ctx`` is a ``pipeline.Context`` without a tokenizer (``Plan.check_data`` has loaded its pools):
    the rows each stage reads are digested from it. No model is loaded.
    """
    def spec(s):
        return to_dict(s) if s is not None else None

    def defender_rows(entry, opts, key):
        return {k: rows_digest(ctx.examples(getattr(opts, k), f"{key}.{k}"))
                for k in entry.spec.defender_data_keys + entry.spec.safety_data_keys}

    # processes: a global_batch_size is split over them, and evaluation prompts are sharded
    base = {"panacea": __version__, "model": {**to_dict(cfg.model), "fingerprint": model_fingerprint(cfg.model)},
            "lora": to_dict(cfg.lora), "seed": cfg.seed, "processes": num_processes()}
    graph: dict[str, Stage] = {}
    a = cfg.alignment
    align_rows = None
    for name, planned in plan.aligns.items():
        entry, opts, train = planned.entry, planned.options, planned.train
        if entry.name == "none":
            continue  # the base model: no stage, no adapter
        if align_rows is None:
            rows = ctx.examples(a.data, "alignment.data")
            if a.benign is not None:
                rows = rows + ctx.examples(a.benign, "alignment.benign")
            align_rows = (rows_digest(rows), len(rows))
        folder = "alignment" if name == plan.main else f"alignment/{name}"
        graph[name] = Stage("alignment", name, folder, [], {
            **base, "data": spec(a.data), "benign": spec(a.benign), "rows": align_rows[0],
            "defense": entry.name, "options": _asdict(opts), "train": _asdict(train),
            "defender_rows": defender_rows(entry, opts, planned.key)},
            {"steps": _steps(align_rows[1], train), "defense": entry.name})
    fd = cfg.finetune.data
    user_rows = {k: rows_digest(v) for k, v in attacks.pools(ctx, fd, plan.attack, plan.attack_opts).items()}
    for name, run in plan.runs.items():
        entry, opts, train = run.entry, run.options, run.train
        align = plan.run_alignment[name]
        inputs = [graph[align].key] if align in graph else []
        graph[name] = Stage("finetune", name, f"finetune/{name}", inputs, {
            **base, "alignment": inputs[0] if inputs else None, "adapter_mode": plan.adapter_mode[name],
            "data": to_dict(fd), "poison_ratio": run.poison_ratio, "mix_seed": cfg.seed if fd.seed is None else fd.seed,
            "attack": plan.attack.name, "attack_options": _asdict(plan.attack_opts), "user_rows": user_rows,
            "defense": entry.name, "options": _asdict(opts), "train": _asdict(train),
            "defender_rows": defender_rows(entry, opts, run.key)},
            {"steps": _steps(fd.n, train), "defense": entry.name})
    for name, planned in plan.posts.items():
        entry, opts = planned.entry, planned.options
        src = cfg.post[name].source
        align = plan.run_alignment[src]
        inputs = [graph[src].key] + ([graph[align].key] if align in graph else [])
        graph[name] = Stage("post", name, f"post/{name}", inputs, {
            **base, "source": src, "defense": entry.name, "options": _asdict(opts),
            "defender_rows": defender_rows(entry, opts, planned.key)}, {"defense": entry.name})
    e = cfg.eval
    eval_rows = {k: rows_digest(ctx.examples(getattr(e, k), f"eval.{k}"))
                 for k in ("harmful", "utility", "benign") if getattr(e, k) is not None}
    settings = {k: v for k, v in to_dict(e).items() if k != "variants"}
    triggered = {"attack": plan.attack.name, "attack_options": _asdict(plan.attack_opts)} if e.triggered else None
    # what each prompt set's answers and scores depend on (EvalConfig's other keys, ``samples`` and
    # ``variants``, change only which rows are printed or which variants are evaluated)
    # each prompt set reads one eval section (its spec and rows) and has settings of its own
    reads = {"harmful": "harmful", "task": "utility", "benign": "benign", "triggered": "harmful"}
    judged = {"judge": e.judge, "judge_options": e.judge_options}
    own = {"harmful": {**judged, "max_new_tokens": e.max_new_tokens},
           "task": {"max_new_tokens": e.utility_max_new_tokens},
           "benign": {"max_new_tokens": e.max_new_tokens},
           "triggered": {**judged, "max_new_tokens": e.max_new_tokens, **(triggered or {})}}
    sets = [part for part, k in reads.items() if k in eval_rows and (part != "triggered" or e.triggered)]
    for v in plan.variants:
        inputs = [graph[v].key] if v in graph else []
        parts = {part: Stage("eval", f"{v} ({part})", f"eval/{v}", inputs, {
            **base, "variant": v, "set": part, "spec": spec(getattr(e, reads[part])),
            "rows": eval_rows[reads[part]], "batch_size": e.batch_size, **own[part]}) for part in sets}
        graph[f"eval/{v}"] = Stage("eval", v, f"eval/{v}", inputs, {
            **base, "variant": v, "eval": settings, "rows": eval_rows, "triggered": triggered}, {}, parts)
    return graph


def recorded_keys(run_dir: Path) -> dict[str, str]:
    """The stage keys (by folder) of the config a run directory was made with, when a stage
    manifest in it has no key (written before stage keys existed); else, or when that config no
    longer loads, ``{}``. A keyless manifest then counts for a stage only if that stage's key is
    unchanged (``pipeline.StageStore``)."""
    from .pipeline import Context, Plan

    run_dir = Path(run_dir)
    try:
        if not run_dir.is_dir() or read_marker(run_dir) is None:
            return {}
        keyless = False
        for m in run_dir.rglob(MANIFEST):
            if "cache" not in m.relative_to(run_dir).parts[:1] and "key" not in json.loads(m.read_text(encoding="utf-8")):
                keyless = True
                break
        if not keyless:
            return {}
        old = from_dict(ExperimentConfig, yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))
        plan = Plan(old)
        ctx = Context(old)
        plan.check_data(ctx)
        return {st.folder: st.key for st in build_graph(old, plan, ctx).values()}
    except (UserError, OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError):
        return {}


# --------------------------------------------------------------------------- the cache


def cache_root(cfg, run_dir: Path) -> Path:
    """``cfg.cache_dir`` (expanded, paths.expand_path), else ``<run_dir>/cache``."""
    if getattr(cfg, "cache_dir", None):
        return expand_path(cfg.cache_dir, "cache_dir")
    return Path(run_dir) / "cache"


def open_cache(cfg, run_dir: Path, read: bool = True) -> "Cache":
    """The run's ``Cache``, its folder created (a one-line ``ConfigError`` naming ``cache_dir``
    when it cannot be: a file, no permission, a read-only file system)."""
    root = cache_root(cfg, run_dir)
    try:
        if root.exists() and not root.is_dir():
            raise ConfigError(f"cache_dir: {str(root)!r} is a file, not a folder")
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cache_dir: cannot use {str(root)!r} ({e.strerror or type(e).__name__})") from None
    return Cache(root, read)


def _link_or_copy(src: Path, dest: Path) -> None:
    """A hard link of ``src`` at ``dest`` when the file system allows it, else a copy. Files are
    never changed in place (every write is a rename), so a link shares nothing that can change."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _input_sums(inputs: list[Path]) -> list[str]:
    return sorted(sha256_file(p) for p in adapter_files(inputs))


class Cache:
    """Finished stages by key: ``<root>/<kind>/<key>/`` with ``entry.json`` written last."""

    def __init__(self, root: Path, read: bool = True):
        self.root, self.read = Path(root), read

    def entry(self, st: Stage) -> Path:
        return self.root / st.kind / st.key

    def lookup(self, st: Stage, inputs: list[Path]) -> Path | None:
        """The verified entry of ``st`` (every file has its sha256, built from exactly ``inputs``), else None."""
        if not self.read:
            return None
        path = self.entry(st)
        try:
            m = json.loads((path / ENTRY).read_text(encoding="utf-8"))
            if m.get("key") != st.key or not isinstance(m.get("files"), dict) or not m["files"]:
                return None
            for rel, sha in m["files"].items():
                p = path / rel
                if Path(rel).is_absolute() or ".." in Path(rel).parts or sha256_file(p) != sha:
                    return None
            if m.get("inputs") != _input_sums(inputs):
                return None
        except (OSError, ValueError, TypeError, AttributeError):
            return None
        return path

    def files(self, entry: Path) -> list[str]:
        return sorted(json.loads((entry / ENTRY).read_text(encoding="utf-8"))["files"])

    def publish(self, st: Stage, files: dict[str, Path], inputs: list[Path]) -> None:
        """Keep ``files`` (entry name → file in the run directory) as the entry of ``st``,
        atomically (a folder renamed into place); an entry that verifies is left as it is."""
        if not is_main() or (self.read and self.lookup(st, inputs) is not None):
            return
        with atomic_path(self.entry(st)) as tmp:
            for rel, src in files.items():
                _link_or_copy(Path(src), tmp / rel)
            write_json(tmp / ENTRY, {"key": st.key, "stage": st.folder,
                                     "files": {rel: sha256_file(Path(src)) for rel, src in files.items()},
                                     "inputs": _input_sums(inputs)})

    def put(self, st: Stage, texts: dict[str, str], inputs: list[Path]) -> Path:
        """Keep ``texts`` (entry name → file contents) as the entry of ``st`` (a part of an
        evaluation, which has no files of its own in the run directory), atomically; returns the
        entry's folder."""
        if is_main():
            with atomic_path(self.entry(st)) as tmp:
                tmp.mkdir(parents=True)
                for rel, text in texts.items():
                    (tmp / rel).write_text(text, encoding="utf-8")
                write_json(tmp / ENTRY, {"key": st.key, "stage": st.folder, "set": st.settings.get("set"),
                                         "files": {rel: sha256_file(tmp / rel) for rel in texts},
                                         "inputs": _input_sums(inputs)})
        return self.entry(st)

    @contextlib.contextmanager
    def lock(self, st: Stage, say=print):
        """Hold ``<root>/<kind>/<key>.lock`` while ``st`` is computed: a second process that
        computes the same stage waits here (one line), then finds it in the cache."""
        if not is_main():
            yield
            return
        folder = self.root / st.kind
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / f"{st.key}.lock", "a+")
        try:
            try:
                import fcntl
            except ImportError:  # not POSIX: no lock
                yield
                return
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                say(f"    {st.label}: another process is computing this stage (cache {str(folder)!r}); waiting for it")
                fcntl.flock(f, fcntl.LOCK_EX)
            yield
        finally:
            f.close()


def clear_stage(out: Path) -> None:
    """Remove what a training or post stage wrote into ``out`` (its top-level files, ``adapter/``,
    checkpoints, manifest), keeping nested stages (``alignment/<variant>/``): before it is computed
    for another key or filled from the cache."""
    from .checkpoint import remove_checkpoints

    if not out.is_dir():
        return
    remove_checkpoints(out)
    for p in out.iterdir():
        if p.is_file() and not p.is_symlink():
            p.unlink()
    if (out / "adapter").is_dir():
        shutil.rmtree(out / "adapter")


def fill(entry: Path, files: list[str], dests: dict[str, Path]) -> None:
    """Link (or copy) the entry's ``files`` to ``dests`` (entry name → path in the run directory),
    a folder at a time through ``atomic_path``."""
    groups: dict[str, list[str]] = {}
    for rel in files:
        groups.setdefault(rel.split("/", 1)[0] if "/" in rel else "", []).append(rel)
    for top, rels in groups.items():
        if top:  # a folder, e.g. adapter/: replaced as a whole
            dest_dir = dests[rels[0]].parents[len(Path(rels[0]).parts) - 2]
            with atomic_path(dest_dir) as tmp:
                for rel in rels:
                    _link_or_copy(entry / rel, tmp / Path(rel).relative_to(top))
        else:
            for rel in rels:
                with atomic_path(dests[rel]) as tmp:
                    _link_or_copy(entry / rel, tmp)


# --------------------------------------------------------------------------- planning


def stage_status(st: Stage, run_dir: Path, cache: Cache, chain: list[Path], legacy: dict | None = None) -> str:
    """``done`` (verified in the run directory), ``cached`` (a verified cache entry) or ``compute``."""
    if verify_manifest(run_dir, run_dir / st.folder, adapter_files(chain), key=st.key,
                       legacy=(legacy or {}).get(st.folder) == st.key):
        return "done"
    return "cached" if cache.lookup(st, chain) is not None else "compute"


def step_costs(run_dir: Path, cache: Cache) -> dict:
    """Seconds per optimizer step by defense, and seconds per evaluation, from the records of
    finished stages in the run directory and the cache (the median of what was measured)."""
    found: dict[str, list[float]] = {}
    evals: list[float] = []
    roots = [Path(run_dir)] + ([cache.root] if cache.root.is_dir() else [])
    for root in roots:
        if not root.is_dir():
            continue
        for rec in root.rglob("record.json"):
            try:
                r = json.loads(rec.read_text(encoding="utf-8"))
                if r.get("step_seconds") and r.get("defense"):
                    found.setdefault(r["defense"], []).append(float(r["step_seconds"]))
                elif r.get("apply_seconds") is not None and r.get("defense"):
                    found.setdefault("post:" + r["defense"], []).append(float(r["apply_seconds"]))
            except (OSError, ValueError, TypeError, AttributeError):
                continue
        for res in root.rglob("result.json"):
            try:
                secs = json.loads(res.read_text(encoding="utf-8")).get("eval_seconds")
                if secs is not None:
                    evals.append(float(secs))
            except (OSError, ValueError, TypeError, AttributeError):
                continue
    if cache.root.is_dir():  # the parts of evaluations (one prompt set each), by set
        for part in (cache.root / "eval").glob("*/part.json"):
            try:
                entry = json.loads((part.parent / ENTRY).read_text(encoding="utf-8"))
                found.setdefault("eval:" + str(entry["set"]), []).append(
                    float(json.loads(part.read_text(encoding="utf-8"))["seconds"]))
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                continue
    med = {k: sorted(v)[len(v) // 2] for k, v in found.items()}
    if evals:
        med["eval"] = sorted(evals)[len(evals) // 2]
    return med


def estimate(st: Stage, costs: dict, todo=None) -> float | None:
    """Seconds to compute ``st``: steps × the measured seconds per step of its defense, a post
    defense's measured seconds, an evaluation's (the sum over the parts ``todo`` when each was
    measured, else a whole evaluation's); None when nothing was measured."""
    if st.kind in ("alignment", "finetune"):
        per = costs.get(st.estimate.get("defense"))
        return None if per is None else st.estimate["steps"] * per
    if st.kind == "post":
        return costs.get("post:" + st.estimate.get("defense", ""))
    todo = list(st.parts) if todo is None else todo
    if st.parts and not todo:  # every prompt set is in the cache: only the result is assembled
        return 0.0
    if todo and all("eval:" + part in costs for part in todo):
        return sum(costs["eval:" + part] for part in todo)
    return costs.get("eval")


def chain_paths(graph: dict[str, Stage], plan, run_dir: Path) -> dict[str, list[Path]]:
    """The adapter folders (oldest first) each variant's model is built from, as ``pipeline._run`` builds them."""
    chains: dict[str, list[Path]] = {}
    for name in plan.aligns:
        chains[name] = [run_dir / graph[name].folder / "adapter"] if name in graph else []
    for name in plan.runs:
        align = chains[plan.run_alignment[name]]
        chains[name] = (align if plan.adapter_mode[name] == "merge_new" else []) + [run_dir / f"finetune/{name}/adapter"]
    for name, pc in plan.cfg.post.items():
        chains[name] = chains[pc.source][:-1] + [run_dir / f"post/{name}/adapter"]
    return chains


def stage_inputs(st: Stage, plan, chains: dict[str, list[Path]]) -> list[Path]:
    """The adapter folders a stage is built from (its manifest's inputs), as ``pipeline._run`` passes them."""
    if st.kind == "alignment":
        return []
    if st.kind == "finetune":
        return chains[plan.run_alignment[st.name]]
    if st.kind == "post":
        return chains[plan.cfg.post[st.name].source]
    return chains[st.name]


def plan_lines(cfg, plan, graph: dict[str, Stage], run_dir: Path, cache: Cache, legacy: dict | None = None,
               force: bool = False) -> list[str]:
    """The stage graph as ``panacea plan`` prints it: one line per stage with its key, what it
    consumes, whether it is reused or computed (everything with ``force``), and the estimated time."""
    chains = chain_paths(graph, plan, run_dir)
    costs = step_costs(run_dir, cache)
    by_key = {st.key: st for st in graph.values()}
    lines, total, unknown = [], 0.0, 0
    for st in graph.values():
        inputs = stage_inputs(st, plan, chains)
        status = "compute" if force else stage_status(st, run_dir, cache, inputs, legacy)
        uses = ", ".join(by_key[k].folder for k in st.inputs if k in by_key) or "-"
        if status == "compute":
            kept = [] if force else [part for part, pst in st.parts.items() if cache.lookup(pst, inputs) is not None]
            secs = estimate(st, costs, [part for part in st.parts if part not in kept])
            if secs is None:
                unknown += 1
                when = "time unknown"
            else:
                total += secs
                when = f"≈ {secs:.0f} s"
            what = f"compute ({when}" + (f"; {', '.join(kept)} reused from the cache)" if kept else ")")
        else:
            what = "reuse (run directory)" if status == "done" else "reuse (cache)"
        steps = f", {st.estimate['steps']} steps" if "steps" in st.estimate else ""
        lines.append(f"  {st.folder:<28} {st.key[:12]}  from {uses:<24} {what}{steps}")
    n = sum(1 for ln in lines if " compute (" in ln)
    lines.append(f"{len(graph)} stages: {len(graph) - n} reused, {n} to compute; estimated ≈ {total:.0f} s"
                 + (f" + {unknown} stage(s) of unknown time (no finished stage of that kind measured yet)" if unknown else ""))
    return lines


def show_plan(cfg, force: bool = False) -> list[str]:
    """``panacea plan``: the stage graph of ``cfg`` against its run directory and cache, as lines.
    Validates the config and loads its data (as ``panacea validate``), loads no model and writes
    nothing. With ``seeds``, one graph per seed (``<run_dir>/seed_<s>/``)."""
    from .pipeline import Context, Plan, run_dir_of

    if cfg.seeds:
        lines = []
        parent = run_dir_of(cfg)
        for seed in cfg.seeds:
            sub = dataclasses.replace(cfg, seed=seed, seeds=None, output_dir=str(parent / f"seed_{seed}"))
            lines += [f"seed {seed}:"] + show_plan(sub, force)
        return lines
    plan = Plan(cfg)
    ctx = Context(cfg)
    plan.check_data(ctx)
    graph = build_graph(cfg, plan, ctx)
    run_dir = run_dir_of(cfg)
    legacy = recorded_keys(run_dir) if not force else {}
    cache = Cache(cache_root(cfg, run_dir), read=not force)
    head = [f"{cfg.name}: {len(graph)} stages, run directory {run_dir}, cache {cache.root}"]
    return head + plan_lines(cfg, plan, graph, run_dir, cache, legacy, force)


__all__ = ["Stage", "Cache", "build_graph", "cache_root", "clear_stage", "fill", "plan_lines", "MANIFEST"]
