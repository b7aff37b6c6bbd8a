"""Small helpers the benchmarks share: peak memory, percentiles, result files."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def peak_rss() -> int:
    """This process's own memory high-water mark in bytes (VmHWM; ru_maxrss inherits the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; fine for the sample sizes here."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def save_results(name: str, results: dict[str, Any]) -> Path:
    """Write results as JSON under docs/benchmarks/, stamped with the time and machine size."""
    import os

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), **results}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
