"""Where a sweep's points run: ``local`` (one after another, in this process), ``ray`` (Ray tasks on
an existing cluster or a local one) or ``slurm`` (SLURM jobs through ``submitit``).

Every engine runs the same function, :func:`run_point`: ``panacea.api.run_experiment`` on one
point's config, whose ``output_dir`` is the point's run directory under the sweep folder (one
shared file system). A point that fails returns its one-line error instead of raising, so the
others go on; the engines report each point as it finishes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..api import run_experiment
from ..errors import UserError


@dataclass
class Job:
    id: str
    """The point's folder name under ``<sweep>/points/``."""
    config: dict
    """The point's full experiment mapping (``output_dir`` is its run directory)."""
    force: bool = False
    """Replace the run directory (it holds a run of another config and the sweep has ``--force``)."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if not isinstance(e, UserError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text[:500]


def run_point(config: dict, force: bool = False) -> dict:
    """Run one point (in this process, a Ray worker or a SLURM job) and return
    ``{"ok": True, "results": [...], "wall_seconds": s}`` or ``{"ok": False, "error": "one line"}``."""
    t0 = time.perf_counter()
    try:
        run = run_experiment(config, force=force)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 — reported as this point's failure, the others go on
        return {"ok": False, "error": _one_line(e), "wall_seconds": round(time.perf_counter() - t0, 1)}
    rows = [{k: v for k, v in r.items() if k not in ("samples",)} for r in run.metrics.get("results", [])]
    return {"ok": True, "results": rows, "wall_seconds": round(time.perf_counter() - t0, 1)}


class LocalEngine:
    """Points one after another in this process."""

    name = "local"
    slots = 1

    def __init__(self, force: bool = False):
        self.force = force

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def describe(self) -> str:
        return "local: one point after another in this process"

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, dict]]:
        for job in jobs:
            yield job, run_point(job.config, job.force)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast (one line) when ``host:port`` does not accept a connection; ``auto`` and
    ``ray://`` addresses are left to Ray."""
    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379), ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"--address {address}: no Ray cluster reachable there ({e.strerror or type(e).__name__}); "
                        f"start one with `ray start --head` or leave --address out for a local one") from None


class RayEngine:
    """Points as Ray tasks with their resources declared (``num_cpus``, ``num_gpus`` per point).

    ``address`` None: a local Ray cluster of ``local_cpus`` CPUs started here, its session files in a
    temporary folder removed at the end, no dashboard, no usage statistics."""

    name = "ray"

    def __init__(self, address: str | None, num_gpus: float | None, num_cpus: float, local_cpus: int | None,
                 force: bool = False):
        self.address, self.num_gpus, self.num_cpus = address, num_gpus, num_cpus
        self.local_cpus, self.force = local_cpus, force
        self.tmp: str | None = None
        self.slots = 1

    def __enter__(self):
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        try:
            import ray
        except ImportError:
            raise UserError("--engine ray needs ray: pip install 'panacea[sweep]'") from None

        common = dict(include_dashboard=False, logging_level=logging.WARNING, ignore_reinit_error=False)
        self._env = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN",)}
        if self.address in (None, "local"):
            # short path: Ray's unix sockets live under it (at most 107 characters)
            self.tmp = tempfile.mkdtemp(prefix="panacea-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
            if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                    or (Path.home() / ".ray" / "auth_token").exists()):
                # a new local cluster enables token authentication and would save a token in
                # ~/.ray/auth_token; this cluster's token lives in the environment of its processes
                os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
            cpus = self.local_cpus or os.cpu_count() or 1
            try:
                ray.init(num_cpus=cpus, _temp_dir=self.tmp, **common)
            except Exception as e:  # noqa: BLE001
                self._cleanup()
                raise UserError(f"--engine ray: the local Ray cluster did not start ({_one_line(e)})") from None
        else:
            check_address(self.address)
            try:
                ray.init(address=self.address, **common)
            except Exception as e:  # noqa: BLE001
                raise UserError(f"--address {self.address}: cannot connect to a Ray cluster ({_one_line(e)})") from None
        res = ray.cluster_resources()
        if self.num_gpus is None:  # one GPU per point on a GPU cluster, none on a CPU one
            self.num_gpus = 1.0 if res.get("GPU", 0) > 0 else 0.0
        if self.num_gpus > res.get("GPU", 0):
            self.__exit__()
            raise UserError(f"sweep.num_gpus: {self.num_gpus:g} GPU(s) per point, but the Ray cluster has "
                            f"{res.get('GPU', 0):g}; set --num-gpus 0 on a CPU cluster")
        if self.num_cpus > res.get("CPU", 0):
            self.__exit__()
            raise UserError(f"sweep.num_cpus: {self.num_cpus:g} CPU(s) per point, but the Ray cluster has "
                            f"{res.get('CPU', 0):g}")
        by_cpu = int(res.get("CPU", 1) // self.num_cpus)
        by_gpu = int(res.get("GPU", 0) // self.num_gpus) if self.num_gpus else by_cpu
        self.slots = max(1, min(by_cpu, by_gpu))
        self.resources = res
        return self

    def describe(self) -> str:
        where = "a local Ray cluster" if self.address in (None, "local") else f"the Ray cluster at {self.address}"
        return (f"ray: {where} ({self.resources.get('CPU', 0):g} CPUs, {self.resources.get('GPU', 0):g} GPUs); "
                f"per point {self.num_cpus:g} CPU, {self.num_gpus:g} GPU; {self.slots} at a time")

    def _cleanup(self):
        for k, v in getattr(self, "_env", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __exit__(self, *exc):
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self._cleanup()
        return False

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, dict]]:
        import ray

        task = ray.remote(run_point).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0,
                                             name="panacea-sweep-point")
        pending = {task.remote(job.config, job.force): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as e:  # noqa: BLE001 — the worker died, a task error, ...
                    out = {"ok": False, "error": f"ray: {_one_line(e).splitlines()[0][:300]}"}
                yield job, out


class SlurmEngine:
    """Points as SLURM jobs through ``submitit`` (``sweep.slurm``: partition, GPUs, time limit, ...).

    ``sweep.slurm.cluster: local`` runs the same jobs as local processes (submitit's local
    executor), for a test without SLURM; ``debug`` runs them in this process."""

    name = "slurm"

    def __init__(self, folder: Path, slurm: dict, num_gpus: float | None, num_cpus: float, force: bool = False):
        self.folder, self.slurm, self.force = Path(folder), dict(slurm), force
        self.cluster = str(self.slurm.get("cluster", "slurm"))
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self.slots = 10**6  # the scheduler decides

    def __enter__(self):
        try:
            import submitit
        except ImportError:
            raise UserError("--engine slurm needs submitit: pip install 'panacea[sweep]'") from None
        if self.cluster not in ("slurm", "local", "debug"):
            raise UserError(f"sweep.slurm.cluster must be slurm, local or debug, got {self.cluster!r}")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError("--engine slurm: no sbatch on this machine (not a SLURM login node); "
                            "sweep.slurm.cluster=local runs the jobs as local processes")
        s = self.slurm
        gpus = self.num_gpus if self.num_gpus is not None else s.get("gpus_per_node", 1 if self.cluster == "slurm" else 0)
        self.num_gpus = gpus
        params = {"name": "panacea-sweep", "timeout_min": int(s.get("timeout_min", 24 * 60)),
                  "gpus_per_node": int(gpus), "cpus_per_task": int(s.get("cpus_per_task", max(1, int(self.num_cpus)))),
                  "nodes": 1, "tasks_per_node": 1}
        if s.get("mem_gb") is not None:
            params["mem_gb"] = float(s["mem_gb"])
        if s.get("partition"):
            params["slurm_partition"] = str(s["partition"])
        if s.get("setup"):
            params["slurm_setup"] = list(s["setup"])
        if s.get("additional_parameters"):
            params["slurm_additional_parameters"] = dict(s["additional_parameters"])
        try:
            self.executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster)
            self.executor.update_parameters(**params)
        except (AssertionError, NameError, ValueError, TypeError) as e:
            raise UserError(f"sweep.slurm: {_one_line(e).splitlines()[0][:300]}") from None
        self.params = params
        return self

    def describe(self) -> str:
        where = {"slurm": "SLURM jobs", "local": "local processes (submitit's local executor)",
                 "debug": "this process (submitit's debug executor)"}[self.cluster]
        part = f", partition {self.params['slurm_partition']}" if "slurm_partition" in self.params else ""
        return (f"slurm: {where}; per point {self.params['gpus_per_node']} GPU, {self.params['cpus_per_task']} CPU, "
                f"time limit {self.params['timeout_min']} min{part}; logs in {self.folder}/")

    def __exit__(self, *exc):
        return False

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, dict]]:
        import submitit

        submitted = {}
        for job in jobs:
            self.executor.update_parameters(name=f"panacea-{job.id}"[:100])
            submitted[self.executor.submit(run_point, job.config, job.force)] = job
        for sj in submitit.helpers.as_completed(list(submitted), poll_frequency=2):
            job = submitted[sj]
            try:
                out = sj.result()
            except Exception as e:  # noqa: BLE001 — the job failed, timed out or was cancelled
                first = _one_line(e).replace("\\n", " ")[:300]
                out = {"ok": False, "error": f"slurm job {sj.job_id}: {first} (log: {sj.paths.stderr})"}
            yield job, out


def preflight(spec) -> None:
    """What can be checked about the engine before anything is written: its package, the Ray
    address (it accepts connections), the SLURM cluster kind and ``sbatch``."""
    if spec.engine == "ray":
        if importlib.util.find_spec("ray") is None:
            raise UserError("--engine ray needs ray: pip install 'panacea[sweep]'")
        if spec.address not in (None, "local"):
            check_address(spec.address)
    if spec.engine == "slurm":
        if importlib.util.find_spec("submitit") is None:
            raise UserError("--engine slurm needs submitit: pip install 'panacea[sweep]'")
        cluster = str(spec.slurm.get("cluster", "slurm"))
        if cluster not in ("slurm", "local", "debug"):
            raise UserError(f"sweep.slurm.cluster must be slurm, local or debug, got {cluster!r}")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError("--engine slurm: no sbatch on this machine (not a SLURM login node); "
                            "sweep.slurm.cluster=local runs the jobs as local processes")


def make_engine(name: str, spec, sweep_dir: Path, force: bool = False):
    if name == "local":
        return LocalEngine(force)
    if name == "ray":
        return RayEngine(spec.address, spec.num_gpus, spec.num_cpus, spec.parallel, force)
    if name == "slurm":
        return SlurmEngine(sweep_dir / "slurm", spec.slurm, spec.num_gpus, spec.num_cpus, force)
    raise UserError(f"--engine must be one of local, ray, slurm, got {name!r}")
