"""serving.threads: each source of the worker count and of the CPU count, with fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.threads import (
    WORKERS_ENV,
    cgroup_cpu_limit,
    plan_threads,
    usable_cpus,
    worker_count,
    worker_env,
)


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


# --- worker count ---------------------------------------------------------------------------------


def test_workers_from_model_config_min_workers() -> None:
    config = {"minWorkers": 3, "maxWorkers": 4}
    assert worker_count(config, env={WORKERS_ENV: "7"}, gpus=2, cpus=8) == (3, "model-config minWorkers")


def test_model_config_ignored_as_torchserve_ignores_it() -> None:
    # TorchServe uses the yaml's pair only when 0 < minWorkers <= maxWorkers.
    for config in ({"minWorkers": 3}, {"minWorkers": 3, "maxWorkers": 2}, {"minWorkers": 0, "maxWorkers": 2}):
        workers, source = worker_count(config, env={WORKERS_ENV: "5"}, gpus=0, cpus=8)
        assert (workers, source.split()[0]) == (5, WORKERS_ENV)


def test_workers_from_launcher_env() -> None:
    assert worker_count({}, env={WORKERS_ENV: "6"}, gpus=0, cpus=2)[0] == 6


def test_workers_default_one_per_gpu_then_one_per_cpu() -> None:
    assert worker_count(None, env={}, gpus=4, cpus=16) == (4, "TorchServe default (one per GPU)")
    assert worker_count(None, env={WORKERS_ENV: "junk"}, gpus=0, cpus=16) == (
        16,
        "TorchServe default (one per CPU)",
    )


def test_plan_divides_cpus_by_workers() -> None:
    # The case: no minWorkers, 2 CPUs, TorchServe starts 2 workers -> 1 thread each (not 2).
    plan = plan_threads({"handler": {}}, env={}, cpus=2)
    assert (plan.workers, plan.intra_op, plan.inter_op) == (2, 1, 1)
    assert plan_threads({"minWorkers": 2, "maxWorkers": 2}, env={}, cpus=8).intra_op == 4
    assert plan_threads({"minWorkers": 4, "maxWorkers": 4}, env={}, cpus=2).intra_op == 1


def test_user_threads_win() -> None:
    assert plan_threads({"minWorkers": 2, "maxWorkers": 2}, threads=3, env={}, cpus=2).intra_op == 3


# --- CPU count ------------------------------------------------------------------------------------


def test_affinity_without_quota(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "0::/", {"cpu.max": "max 100000"})
    assert usable_cpus(affinity={0, 1, 2}, cgroup_root=root, proc_cgroup=proc) == 3


def test_cgroup_v2_quota_caps_affinity(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "0::/kubepods/pod1/ctr", {"kubepods/pod1/ctr/cpu.max": "150000 100000"})
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert usable_cpus(affinity=set(range(64)), cgroup_root=root, proc_cgroup=proc) == 2  # rounded up


def test_cgroup_v2_parent_quota_counts(tmp_path: Path) -> None:
    root, proc = _cgroup(
        tmp_path,
        "0::/pod/ctr",
        {"pod/cpu.max": "300000 100000", "pod/ctr/cpu.max": "max 100000"},
    )
    assert usable_cpus(affinity=set(range(8)), cgroup_root=root, proc_cgroup=proc) == 3


def test_cgroup_v2_namespaced_path_falls_back_to_mount_top(tmp_path: Path) -> None:
    # In a container's cgroup namespace /proc/self/cgroup may name a folder the mount does not have.
    root, proc = _cgroup(tmp_path, "0::/../host/path", {"cpu.max": "200000 100000"})
    assert usable_cpus(affinity=set(range(64)), cgroup_root=root, proc_cgroup=proc) == 2


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    root, proc = _cgroup(
        tmp_path,
        "5:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        },
    )
    assert usable_cpus(affinity=set(range(32)), cgroup_root=root, proc_cgroup=proc) == 4


def test_cgroup_v1_unlimited(tmp_path: Path) -> None:
    root, proc = _cgroup(
        tmp_path,
        "5:cpu,cpuacct:/",
        {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
    )
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cpus(affinity={0, 1}, cgroup_root=root, proc_cgroup=proc) == 2


def test_no_cgroup_files_means_affinity(tmp_path: Path) -> None:
    assert usable_cpus(affinity={3}, cgroup_root=tmp_path / "none", proc_cgroup=tmp_path / "missing") == 1


def test_this_process(tmp_path: Path) -> None:
    import os

    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


# --- the launcher's environment -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "inherited", "expected"),
    [
        (None, {}, {"OMP_WAIT_POLICY": "PASSIVE"}),
        (3, {}, {"OMP_WAIT_POLICY": "PASSIVE", WORKERS_ENV: "3"}),
        (None, {"OMP_WAIT_POLICY": "ACTIVE"}, {}),  # the caller's own choice stays
    ],
)
def test_worker_env(workers: int | None, inherited: dict[str, str], expected: dict[str, str]) -> None:
    assert worker_env(workers, inherited) == expected
