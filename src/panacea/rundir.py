"""The run directory: atomic files, checksummed stage manifests, resume, locking and free space.

A run directory belongs to one resolved config at a time. ``run.json``, the run marker, records the
sha256 of its canonical YAML (``config_digest``; ``output_dir`` and ``cache_dir`` excluded, so a moved
directory still resumes) and a schema; it is written first, atomically, when a run starts, and it is the only
proof that a folder is a panacea run (``read_marker``): a folder without a valid marker that holds
anything but the lock and temporaries of an interrupted start is never written into nor deleted
from, ``--force`` or not. ``panacea run`` on a proven run does one of three things (``open_run_dir``):

* the config differs: the run becomes the run of the new config (``RunDir.changed`` names the first
  differing dotted key; its results are removed, its stages stay and each is reused only if its
  key is unchanged, docs/stages.md). ``--force`` replaces the run, removing what panacea wrote and
  keeping any other file;
* the run finished (``status.json`` says done and ``metrics.json`` matches its checksum): report it
  and do nothing;
* otherwise resume: every stage whose manifest verifies is skipped, an interrupted training stage
  continues from its newest complete checkpoint (``checkpoint.py``), the rest runs.

A stage's manifest ``done.json`` is written last, after all its outputs, and lists the sha256 of
every output file and of every input adapter file it was built from::

    {"stage": "finetune/panacea", "files": {"finetune/panacea/adapter/...": "<sha256>", ...},
     "inputs": {"alignment/adapter/adapter_model.safetensors": "<sha256>", ...}, "key": "<stage key>"}

A stage counts as done only if every listed file still has its checksum, so a truncated file, a
half-written directory or a re-trained upstream stage with different weights re-runs it. Every
file is written under a temporary name, flushed to disk and renamed (``write_atomic``,
``atomic_path``); opening a run removes the stale temporaries of that naming left by a kill
(``clean_temporaries``). Tokens in the environment (``HF_TOKEN`` and friends) are replaced by
``<redacted>`` in everything written through this module, except that a config holding one is
refused instead (``secret_in``): redacting ``config.yaml`` would change the run's identity.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from .distributed import is_main
from .errors import UserError
from .paths import expand_path

MANIFEST = "done.json"
LOCK = ".lock"
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_TOKEN", "HUGGINGFACE_TOKEN")


# --------------------------------------------------------------------------- writing


def redact(text: str) -> str:
    """``text`` with the value of every hub token variable of the environment replaced."""
    for name in TOKEN_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= 8 and value in text:
            text = text.replace(value, "<redacted>")
    return text


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, flush it to disk, rename it over ``path``.

    On several processes (``accelerate launch``) only the main process writes; elsewhere a no-op.
    """
    if not is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(redact(text))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _finite(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_json(path: Path) -> dict:
    """A JSON file written by panacea (a result, a summary); a missing or unreadable one is a
    one-line ``UserError`` naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def read_status(folder: Path) -> dict | None:
    """``folder/status.json`` (a run's or a sweep's state: running, failed, done), or None when it
    is missing, unreadable or not an object."""
    try:
        status = json.loads((Path(folder) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def write_json(path: Path, obj) -> None:
    """``obj`` as valid JSON: the stages stop on a non-finite number they compute (pipeline's fault
    guards); any other one is written as ``null``, never as a bare ``NaN``/``Infinity``."""
    write_atomic(path, json.dumps(_finite(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_path(dest: Path):
    """Yield a temporary path beside ``dest`` (file or folder) to write; rename it to ``dest`` on success.

    A folder replaces an existing ``dest`` by renaming the old one aside first, so at every moment
    ``dest`` is either the old complete folder or the new one. On an exception nothing is renamed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    target = tmp / dest.name  # the writer creates it (file or folder)
    try:
        yield target
        if not target.exists():  # nothing written (e.g. not the main process): leave dest alone
            return
        for f in [target] if target.is_file() else sorted(target.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(target, dest)
        _fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- checksums and manifests

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a file (cached by path, size and modification time within a process)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def stage_outputs(stage_dir: Path) -> list[Path]:
    """The files a training or post stage leaves: its top-level files and its ``adapter/`` folder
    (not checkpoints, not nested stages such as ``alignment/<variant>/``, not hidden temporaries)."""
    out = [p for p in stage_dir.iterdir() if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")]
    adapter = stage_dir / "adapter"
    if adapter.is_dir():
        out += [p for p in adapter.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return sorted(out)


def adapter_files(chain: list[Path]) -> list[Path]:
    """Every file of the adapter folders a model is built from (a stage's inputs)."""
    return sorted(p for a in chain for p in Path(a).rglob("*") if p.is_file())


def _rel(run_dir: Path, p: Path) -> str:
    return Path(p).resolve().relative_to(Path(run_dir).resolve()).as_posix()


def write_manifest(run_dir: Path, stage_dir: Path, files: list[Path], inputs: list[Path], **info) -> None:
    """Mark a stage done: ``stage_dir/done.json`` with the checksums of ``files`` and ``inputs``
    (by the main process only: the files are its own)."""
    if not is_main():
        return
    write_json(stage_dir / MANIFEST, {
        "stage": _rel(run_dir, stage_dir),
        "files": {_rel(run_dir, p): sha256_file(p) for p in files},
        "inputs": {_rel(run_dir, p): sha256_file(p) for p in inputs},
        **info,
    })


def verify_manifest(run_dir: Path, stage_dir: Path, inputs: list[Path], key: str | None = None,
                    legacy: bool = False) -> bool:
    """True if ``stage_dir`` is done: its manifest exists, every listed output still has its
    checksum, and it was built from exactly the current ``inputs``; with ``key``, for that stage
    key (stages.py) too. A manifest written before stage keys existed (none recorded) counts
    only with ``legacy`` (the run directory's config is unchanged)."""
    try:
        m = json.loads((stage_dir / MANIFEST).read_text(encoding="utf-8"))
        files, recorded = m["files"], m["inputs"]
        if not files or not isinstance(files, dict) or not isinstance(recorded, dict):
            return False
        if key is not None and not (m.get("key") == key or ("key" not in m and legacy)):
            return False
        for rel, digest in files.items():
            if sha256_file(run_dir / rel) != digest:
                return False
        current = {_rel(run_dir, p): sha256_file(p) for p in inputs}
        return current == recorded
    except (OSError, ValueError, KeyError, TypeError):
        return False


def invalidate(stage_dir: Path) -> None:
    """Forget that a stage was done (before it is run again)."""
    (stage_dir / MANIFEST).unlink(missing_ok=True)


# --------------------------------------------------------------------------- the config a directory belongs to


#: Keys that change nothing when unset (a bound on how a run reads its inputs, the own-task keys of
#: a data section), left out of its identity when unset, so a run made before they existed still resumes.
_UNSET_NOT_IDENTITY = ("max_bytes", "holdout", "match", "pattern")


def _identity(node):
    if isinstance(node, dict):
        return {k: _identity(v) for k, v in node.items() if not (k in _UNSET_NOT_IDENTITY and v is None)}
    if isinstance(node, list):
        return [_identity(v) for v in node]
    return node


#: Keys added after runs existed (dotted path → the default that reproduces the older behaviour),
#: left out of a run's identity while they hold that default, so an older run still resumes.
_DEFAULT_NOT_IDENTITY = {
    ("finetune", "data", "attack"): "poison_mix",
    ("finetune", "data", "attack_options"): {},
    ("eval", "triggered"): False,
}


def _drop_defaults(data: dict) -> dict:
    for (*parents, key), default in _DEFAULT_NOT_IDENTITY.items():
        node = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node and node[key] == default:
            del node[key]
    return data


#: Top-level keys that say where a run is kept, not what it computes.
_NOT_IDENTITY = ("output_dir", "cache_dir")


def canonical(resolved: dict) -> str:
    """The canonical YAML of a resolved config (sorted keys, ``output_dir`` and ``cache_dir`` left out, and unset
    ``_UNSET_NOT_IDENTITY`` keys and ``_DEFAULT_NOT_IDENTITY`` keys at their default)."""
    data = _drop_defaults({k: _identity(v) for k, v in resolved.items() if k not in _NOT_IDENTITY})
    return yaml.safe_dump(data, sort_keys=True, allow_unicode=True)


def config_digest(resolved: dict) -> str:
    return hashlib.sha256(canonical(resolved).encode("utf-8")).hexdigest()


def first_difference(old, new, key: str = "") -> str | None:
    """The first dotted key (in ``new``'s order) whose value differs between two resolved configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*new, *(k for k in old if k not in new)]:
            if k in _NOT_IDENTITY and not key:
                continue
            sub = f"{key}.{k}" if key else str(k)
            if k not in old or k not in new:
                return sub
            d = first_difference(old[k], new[k], sub)
            if d is not None:
                return d
        return None
    return None if old == new else (key or "the config")


def _lookup(d, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return "(absent)"
        d = d[part]
    return d


def _short(v) -> str:
    text = json.dumps(v, ensure_ascii=False, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:39] + "…"


# --------------------------------------------------------------------------- opening a run directory

#: ``run.json``, the run marker: the proof that a folder is a panacea run. It is written first
#: (atomically) when a run directory is created; only a folder holding a valid marker is ever
#: resumed or replaced (``--force``).
MARKER_FILE = "run.json"
SCHEMA = "panacea-run/1"

#: The temporaries this module names, and nothing else: ``write_atomic``'s ``.<name>.<pid>.tmp``
#: (also ``checkpoint.py``'s), ``atomic_path``'s ``.<name>.tmp-<random>/`` and the
#: ``.<name>.old-<pid>/`` copy it moves aside while a folder is replaced.
_TMP_FILE = re.compile(r"\..+\.\d+\.tmp")
_TMP_DIR = re.compile(r"\..+\.tmp-[A-Za-z0-9_]+")
_OLD_DIR = re.compile(r"\.(.+)\.old-\d+")

#: What a run directory holds at its top level (pipeline.py, seeds.py, rejudge, export,
#: analyze): ``--force`` removes these from a proven run and keeps anything else.
_OWN_FILES = {"config.yaml", MARKER_FILE, "status.json", "metrics.json", "timings.json", "summary.json",
              "results.md", "hs_fa.png"}
_OWN_DIRS = {"alignment", "finetune", "post", "eval", "generations", "exports", "analysis", "cache"}
_OWN_PATTERNS = (re.compile(r"rejudge_[A-Za-z0-9_.+-]+(\.json)?"), re.compile(r"seed_-?\d+"))


def _is_temporary(p: Path) -> bool:
    name = p.name
    if p.is_symlink():
        return False
    if p.is_file():
        return bool(_TMP_FILE.fullmatch(name))
    return p.is_dir() and bool(_TMP_DIR.fullmatch(name) or _OLD_DIR.fullmatch(name))


def read_marker(run_dir: Path) -> dict | None:
    """The run marker of ``run_dir`` if it is valid, else None.

    Valid: ``run.json`` is a JSON object with ``schema`` ``panacea-run/1`` and a sha256
    ``config_sha256``. A marker of an older panacea (no ``schema``) counts only if the folder's
    ``config.yaml`` has exactly that sha256, which no folder has by chance.
    """
    p = run_dir / MARKER_FILE
    try:
        if p.is_symlink() or not p.is_file() or p.stat().st_size > 1 << 16:
            return None
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(m.get("config_sha256", ""))):
        return None
    if m.get("schema") == SCHEMA:
        return m
    if "schema" in m:
        return None
    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return m if isinstance(old, dict) and config_digest(old) == m["config_sha256"] else None


def _classify(run_dir: Path) -> str:
    """``absent``, ``file``, ``empty`` (nothing but the lock and temporaries of an interrupted
    start), ``run`` (a valid marker) or ``foreign`` (anything else)."""
    if not run_dir.exists() and not run_dir.is_symlink():
        return "absent"
    if not run_dir.is_dir():
        return "file"
    if read_marker(run_dir) is not None:
        return "run"
    rest = [p for p in run_dir.iterdir() if p.name != LOCK and not _is_temporary(p)]
    return "foreign" if rest else "empty"


def clean_temporaries(run_dir: Path) -> list[Path]:
    """Remove the stale temporaries of ``run_dir``'s own naming (``_TMP_FILE``, ``_TMP_DIR``,
    ``_OLD_DIR``) anywhere inside it, never following symbolic links; call it only with the
    run's lock held, so no other panacea process is writing them.

    A ``.<name>.old-<pid>/`` copy whose ``<name>`` is missing (a kill between the two renames of
    ``atomic_path``) is renamed back to ``<name>``: it is the last complete version, and the
    stage manifest decides whether it is still valid. Returns what was removed or restored.
    """
    touched = []
    for root, dirs, files in os.walk(run_dir, topdown=True, followlinks=False):
        here = Path(root)
        for name in files:
            if _TMP_FILE.fullmatch(name) and not (here / name).is_symlink():
                (here / name).unlink(missing_ok=True)
                touched.append(here / name)
        for name in list(dirs):
            p = here / name
            if p.is_symlink():
                continue
            old = _OLD_DIR.fullmatch(name)
            if old and not (here / old.group(1)).exists():
                os.replace(p, here / old.group(1))
                touched.append(p)
                dirs.remove(name)
            elif old or _TMP_DIR.fullmatch(name):
                shutil.rmtree(p, ignore_errors=True)
                touched.append(p)
                dirs.remove(name)
    if touched:
        _fsync_dir(run_dir)
    return touched


def _remove_run(run_dir: Path) -> list[str]:
    """``--force``: remove what a panacea run writes at the top of ``run_dir`` (``_OWN_FILES``,
    ``_OWN_DIRS``, ``rejudge_*``, the ``seed_<s>/`` runs, which are themselves checked for their
    marker or hold nothing but a lock) and keep everything else. Returns the names kept."""
    kept = []
    for p in sorted(run_dir.iterdir()):
        name = p.name
        if name == LOCK:
            continue
        if p.is_symlink():
            if name in _OWN_FILES:
                p.unlink()
            else:
                kept.append(name)
        elif p.is_file() and (name in _OWN_FILES or _OWN_PATTERNS[0].fullmatch(name)):
            p.unlink()
        elif p.is_dir() and (name in _OWN_DIRS or _OWN_PATTERNS[0].fullmatch(name)):
            shutil.rmtree(p)
        elif p.is_dir() and _OWN_PATTERNS[1].fullmatch(name) and _classify(p) in ("run", "empty"):
            sub_kept = _remove_run(p) if _classify(p) == "run" else []
            if sub_kept:
                kept += [f"{name}/{k}" for k in sub_kept]
                continue
            for q in p.iterdir():  # what is left: the lock and temporaries of a start
                shutil.rmtree(q) if q.is_dir() and not q.is_symlink() else q.unlink()
            p.rmdir()
        else:
            kept.append(name)
    return kept


def secret_in(resolved: dict) -> tuple[str, str] | None:
    """``(dotted key, variable)`` of the first config value or key holding the value of a hub
    token variable of the environment (``TOKEN_VARIABLES``, 8 characters or more), else None."""
    values = [(n, os.environ.get(n, "")) for n in TOKEN_VARIABLES]
    values = [(n, v) for n, v in values if len(v) >= 8]
    if not values:
        return None
    stack = [(resolved, "")]
    while stack:
        node, key = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            sub = f"{key}.{k}" if key else str(k)
            stack.append((v, sub))
            for name, value in values:
                if value in str(k) or (isinstance(v, str) and value in v):
                    return sub, name
    return None


class RunDir:
    """An open run directory, locked against a second ``panacea run`` on it.

    ``mode`` is ``new``, ``resume`` (an unfinished run, or one whose config changed: ``changed``
    then names the first difference, and each stage is reused only if its key is unchanged) or
    ``complete``.
    """

    def __init__(self, path: Path, mode: str, digest: str, lock, changed: str | None = None):
        self.path, self.mode, self.digest, self._lock, self.changed = path, mode, digest, lock, changed

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_status(self, state: str, **info) -> None:
        write_json(self.path / "status.json", {"state": state, **info})

    def finish(self, result: str, obj: dict, **info) -> None:
        """Write the run's result file, then mark the run done with the file's checksum."""
        write_json(self.path / result, obj)
        self.set_status("done", result=result, result_sha256=sha256_file(self.path / result), **info)

    def completed(self, result: str) -> dict | None:
        """The result of a finished run whose result file still matches its checksum, else None."""
        status = read_status(self.path)
        if status is None or status.get("state") != "done" or status.get("result") != result:
            return None
        try:
            if sha256_file(self.path / result) != status.get("result_sha256"):
                return None
            return json.loads((self.path / result).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def _lock(path: Path):
    """An exclusive, non-blocking lock on ``path/.lock`` held while the returned file is open."""
    f = open(path / LOCK, "a+")
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UserError(f"another panacea process is using {str(path)!r}; wait for it to finish") from None
    return f


def resolve_run_dir(run_dir: str | os.PathLike) -> Path:
    """The one absolute path of a run directory (``paths.expand_path``: ``~``, ``$VARS``, ``..``)."""
    return expand_path(run_dir, "output_dir")


def open_run_dir(run_dir: Path, resolved: dict, force: bool) -> RunDir:
    """Create, resume or (with ``force``) replace the run directory of the resolved config ``resolved``.

    ``run_dir`` is expanded and resolved first (``resolve_run_dir``); the returned ``RunDir.path``
    is that absolute path, and every check is made on it, once before and once after the folder
    is created and locked. A folder is used only if it is absent, empty (or holds nothing but
    the lock and temporaries of an interrupted start), or a proven panacea run (``read_marker``).
    A new run writes its marker ``run.json`` first, then ``config.yaml``.

    Raises:
        UserError: ``run_dir`` is a file, or a folder that is not a panacea run (with or without
            ``force``: such a folder is never written into nor deleted from); the config holds
            the value of a hub token variable; the run's ``config.yaml`` was changed by hand
            (``force`` replaces the run: it removes what panacea wrote and keeps any other file);
            another process uses it. A run of a different config is taken over (``_change_config``).
    """
    run_dir = resolve_run_dir(run_dir)
    shown = repr(str(run_dir)) if len(str(run_dir)) <= 200 else repr(str(run_dir)[:199] + "…")
    digest = config_digest(resolved)
    leak = secret_in(resolved)
    if leak is not None:
        raise UserError(f"{leak[0]} holds the value of ${leak[1]}; a token is read from the environment "
                        f"only and never stored with a run: remove it from the config")
    foreign = (f"output directory {shown} is not empty and not a panacea run (no valid {MARKER_FILE}); "
               f"panacea never writes into or deletes from such a folder: set output_dir=<new or empty folder>")
    try:
        before = _classify(run_dir)
        if before == "file":
            raise UserError(f"output directory {shown} is a file")
        if before == "foreign":
            raise UserError(foreign)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock(run_dir)
    except OSError as e:  # a name too long, no permission, a read-only or missing file system
        raise UserError(f"output directory {shown} cannot be used ({e.strerror or type(e).__name__})") from None
    try:
        # again, on the folder as it now exists and is locked: the same place, the same kind
        after = _classify(run_dir)
        if run_dir.resolve() != run_dir or after in ("file", "foreign") or (after == "run") != (before == "run"):
            raise UserError(f"output directory {shown} changed while it was being opened; {foreign.split('; ', 1)[1]}"
                            if after == "foreign" else f"output directory {shown} changed while it was being opened")
        clean_temporaries(run_dir)
        if after == "run" and force:
            kept = _remove_run(run_dir)
            if kept:
                print(f"panacea: --force kept {len(kept)} file(s) in {shown} that panacea did not write: "
                      f"{', '.join(kept[:5])}{' …' if len(kept) > 5 else ''}", flush=True)
        elif after == "run":
            changed = _same_config(run_dir, resolved, digest)
            if changed is not None:
                _change_config(run_dir, resolved, digest)
            rd = RunDir(run_dir, "resume", digest, lock, changed)
            if changed is None and (rd.completed("metrics.json") is not None or rd.completed("summary.json") is not None):
                rd.mode = "complete"
            return rd
        write_json(run_dir / MARKER_FILE, {"schema": SCHEMA, "config_sha256": digest,
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
        return RunDir(run_dir, "new", digest, lock)
    except OSError as e:
        lock.close()
        raise UserError(f"output directory {shown} cannot be used ({e.strerror or type(e).__name__})") from None
    except BaseException:
        lock.close()
        raise


def _same_config(run_dir: Path, resolved: dict, digest: str) -> str | None:
    """Check the recorded config of a proven run (``read_marker`` has vouched for ``run.json``);
    return None when it is ``resolved``, else the first difference (``key: old → new``).

    A run killed between its marker and its ``config.yaml`` (the first milliseconds of a start)
    gets its ``config.yaml`` now when the marker records this very config; one killed while its
    config was being changed (``config.yaml`` already the new config) counts as that new config.

    Raises:
        UserError: ``config.yaml`` was changed or damaged by hand (it is neither the recorded
            config nor ``resolved``).
    """
    shown = repr(str(run_dir))
    hint = "pass --force to replace it or set output_dir=<new folder>"
    recorded = read_marker(run_dir)["config_sha256"]
    if not (run_dir / "config.yaml").exists() and recorded == digest:
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        old = None
    if isinstance(old, dict) and config_digest(old) == digest != recorded:
        return "an interrupted change of config"
    if not isinstance(old, dict) or config_digest(old) != recorded:
        raise UserError(f"output directory {shown} already holds a run whose config.yaml was changed or damaged; {hint}")
    if recorded == digest:
        return None
    key = first_difference(old, resolved) or "the config"
    return f"{key}: {_short(_lookup(old, key))} → {_short(_lookup(resolved, key))}"


#: What a finished run writes from all its stages: removed when the config of the run changes,
#: so no result of the old config is left looking like one of the new config.
_RESULT_FILES = ("metrics.json", "summary.json", "timings.json", "results.md", "hs_fa.png", "status.json")


def _change_config(run_dir: Path, resolved: dict, digest: str) -> None:
    """Make the proven run ``run_dir`` the run of ``resolved``: drop its results, write
    ``config.yaml`` then the marker (a kill in between leaves ``config.yaml`` new and the marker
    old, which ``_same_config`` accepts as the new config). Its stages stay; each is reused only
    if its key is unchanged (stages.py)."""
    for name in _RESULT_FILES:
        p = run_dir / name
        if p.is_file() and not p.is_symlink():
            p.unlink()
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    old = read_marker(run_dir) or {}
    write_json(run_dir / MARKER_FILE, {"schema": SCHEMA, "config_sha256": digest,
                                       "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))})


# --------------------------------------------------------------------------- free space


def check_disk(path: Path, need_bytes: int, what: str) -> None:
    """Fail early when the file system of ``path`` has less than ``need_bytes`` free."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    if free < need_bytes:
        raise UserError(
            f"not enough free disk space in {str(path)!r} for {what}: "
            f"need ~{need_bytes / 2**20:.0f} MB, have {free / 2**20:.0f} MB"
        )
