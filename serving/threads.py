"""Torch threads for one worker: the CPUs this process may use over the workers TorchServe really starts.

Runtime-independent (no ``ts`` import): the handler passes in what it read from its context. Sources,
in TorchServe's own order of precedence for the worker count:

1. ``minWorkers`` of the model-config.yaml (TorchServe uses it when ``0 < minWorkers <= maxWorkers``);
2. ``default_workers_per_model`` of config.properties, which ``ckptserve serve --workers`` writes and
   also exports to the workers as ``CKPTSERVE_WORKERS`` (a worker cannot read config.properties);
3. TorchServe's default: one worker per GPU, else the JVM's ``availableProcessors()``, which counts
   the CPU affinity and the cgroup CPU quota, as ``usable_cpus`` does here.

The CPU count is the smallest of the affinity mask and the cgroup quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us / cpu.cfs_period_us``, on the process's own cgroup and every parent), rounded up as
the JVM does: ``os.cpu_count()`` is the node's count, 64 on a node where a container may use 2.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WORKERS_ENV = "CKPTSERVE_WORKERS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# The OpenMP environment every worker should start with (libgomp reads it once, when torch is
# imported, before any handler code runs): threads sleep at once after a parallel region instead of
# spinning for up to ~300,000 iterations on a core that a sibling worker needs.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


@dataclass(frozen=True)
class ThreadPlan:
    """Threads for one worker, and where the numbers came from (logged, shown by describe)."""

    intra_op: int
    inter_op: int
    workers: int
    workers_from: str
    cpus: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "intra_op": self.intra_op,
            "inter_op": self.inter_op,
            "workers": self.workers,
            "workers_from": self.workers_from,
            "cpus": self.cpus,
        }


def plan_threads(
    model_config: Mapping[str, Any] | None,
    *,
    threads: int | None = None,
    gpus: int = 0,
    env: Mapping[str, str] | None = None,
    cpus: int | None = None,
) -> ThreadPlan:
    """The thread plan for one worker: ``threads`` (the user's handler.threads) wins when set."""
    cpus = usable_cpus() if cpus is None else cpus
    workers, source = worker_count(model_config, env=os.environ if env is None else env, gpus=gpus, cpus=cpus)
    intra = threads if threads else max(1, cpus // workers)
    # Inter-op threads run independent ops of one graph side by side: plain eager models have none,
    # and each pool thread is one more runnable thread per worker on cores the workers already share.
    return ThreadPlan(intra_op=intra, inter_op=1, workers=workers, workers_from=source, cpus=cpus)


def worker_count(
    model_config: Mapping[str, Any] | None, *, env: Mapping[str, str], gpus: int, cpus: int
) -> tuple[int, str]:
    """How many workers of this model TorchServe starts, and which source said so."""
    config = model_config or {}
    low, high = _positive(config.get("minWorkers")), _positive(config.get("maxWorkers"))
    if low is not None and high is not None and high >= low:
        return low, "model-config minWorkers"
    configured = _positive(env.get(WORKERS_ENV))
    if configured is not None:
        return configured, f"{WORKERS_ENV} (default_workers_per_model)"
    if gpus > 0:
        return gpus, "TorchServe default (one per GPU)"
    return max(1, cpus), "TorchServe default (one per CPU)"


def usable_cpus(
    *, affinity: set[int] | None = None, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota (rounded up)."""
    if affinity is None:
        affinity = os.sched_getaffinity(0)
    count = len(affinity) or (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup or a parent; None when unlimited."""
    limits = [limit for folder in _cgroup_folders(root, proc_cgroup) if (limit := _quota(folder)) is not None]
    return min(limits) if limits else None


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """The process's cgroup folder and its parents up to the mount, for v2 and the v1 cpu controller."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    mounts: list[tuple[Path, str]] = []
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers == "":  # v2: "0::/path" (mounted at "unified" on a hybrid v1/v2 host)
            mounts += [(root, path), (root / "unified", path)]
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            mounts += [(root / name, path) for name in ("cpu,cpuacct", "cpu", "cpuacct,cpu")]
    if not mounts:  # no /proc/self/cgroup (or unreadable): the mount's top is all that can be read
        mounts = [(root, "/"), (root / "cpu,cpuacct", "/"), (root / "cpu", "/")]
    folders: list[Path] = []
    for mount, path in mounts:
        folder = mount / path.strip("/") if path.strip("/") else mount
        # Inside a container's cgroup namespace the path may name a host folder that is not mounted:
        # then only the mount's top (the container's own cgroup) exists.
        while True:
            folders.append(folder)
            if folder == mount or mount not in folder.parents:
                break
            folder = folder.parent
        folders.append(mount)
    return list(dict.fromkeys(folders))


def _quota(folder: Path) -> float | None:
    v2 = _read(folder / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _ratio(quota, period or "100000")
    v1 = _read(folder / "cpu.cfs_quota_us")
    if v1 is not None:
        return _ratio(v1, _read(folder / "cpu.cfs_period_us") or "100000")
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    return q / p if q > 0 and p > 0 else None  # v1 writes -1 for no limit


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _positive(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def worker_env(workers: int | None, inherited: Mapping[str, str]) -> dict[str, str]:
    """What the launcher adds to TorchServe's environment (the Java frontend passes it to every worker):
    the OpenMP policy unless the caller chose one, and the worker count it wrote to config.properties."""
    env = {key: value for key, value in OPENMP_ENV.items() if key not in inherited}
    if workers is not None:
        env[WORKERS_ENV] = str(workers)
    return env


def apply_threads(plan: ThreadPlan) -> None:
    """Set torch's intra-op and inter-op pools for this process (a worker runs one model)."""
    import torch

    torch.set_num_threads(plan.intra_op)
    if torch.get_num_interop_threads() != plan.inter_op:
        try:
            torch.set_num_interop_threads(plan.inter_op)
        except RuntimeError:  # the pool already started (something ran an inter-op task): keep it
            log.info("inter-op threads already started (%d); leaving them", torch.get_num_interop_threads())
