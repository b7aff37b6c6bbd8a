"""What the handler metrics cost: demo-model throughput with and without them (handler config `metrics`).

Two servers run side by side, identical but for `metrics: false` in the second archive; wrk loads one
at a time, alternating which goes first in each round, because this shared machine drifts by tens of
percent between identical runs. Prints requests/s per run, the server's CPU time per request (Java
frontend + workers, steadier than throughput on a shared machine), and on/off ratios of the medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import save_results
from benchmarks.http import DIGITS, sample_body, start_demo_server, wrk

VARIANTS = ("on", "off")


def start_without_metrics(reference: Any, workdir: Path) -> Any:
    """A second demo server like ``reference`` (same checkpoint, same config) with ``metrics: false``."""
    from serving.torchserve import free_ports
    from serving.torchserve.package import package_model
    from serving.torchserve.server import Server

    store = workdir / "store"
    store.mkdir(parents=True, exist_ok=True)
    package_model(
        "digits",
        model_store=store,
        model_file=DIGITS / "model.py",
        config=DIGITS / "model-config.yaml",
        checkpoint=reference.settings.model_store.parent / "checkpoints" / "model_epoch_1.pth",
        extra_files=[DIGITS / "index_to_name.json"],
        handler_overrides={"metrics": False},
    )
    settings = dataclasses.replace(
        reference.settings,
        model_store=store,
        runtime_dir=workdir / "rt",
        log_dir=workdir / "rt" / "logs",
        **free_ports(),
    )
    server = Server(settings)
    server.start()
    return server


def cpu_seconds(server: Any) -> tuple[float, float]:
    """CPU time used so far by the server: (Java frontend, everything else: workers, wrapper, reaped
    children such as TorchServe's periodic system-metrics collector)."""
    frontend = other = 0.0
    java = server.torchserve.java_pid
    for pid in server.torchserve.pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:  # a process that just exited
            continue
        used = times.user + times.system + times.children_user + times.children_system
        if pid == java:
            frontend += used
        else:
            other += used
    return frontend, other


def measure(server: Any, url: str, body: Path, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run, plus the server's CPU microseconds per request during it (total, and the frontend's)."""
    before = cpu_seconds(server)
    result = wrk(url, body, connections, seconds)
    after = cpu_seconds(server)
    requests = result["rps"] * seconds
    result["frontend_cpu_us_per_request"] = (after[0] - before[0]) / requests * 1e6
    result["cpu_us_per_request"] = (sum(after) - sum(before)) / requests * 1e6
    return result


def handler_batches(server: Any) -> float:
    """Batches the handler reported (ckptserve_preprocess_seconds_count): proves which variant is which."""
    with urllib.request.urlopen(f"{server.torchserve.urls.metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ckptserve_preprocess_seconds_count")
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=8, help="runs per variant and load level, alternated")
    parser.add_argument(
        "--connections", type=int, nargs="*", default=[16, 1], help="load levels; c=1: one request per batch"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    runs: dict[int, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="ckptserve-bench-metrics-") as tmp:
        workdir = Path(tmp)
        servers: dict[str, Any] = {}
        try:
            servers["on"] = start_demo_server(workdir / "on")  # the demo as shipped: metrics on
            servers["off"] = start_without_metrics(servers["on"], workdir / "off")
            urls = {v: f"{s.torchserve.urls.inference}/predictions/digits" for v, s in servers.items()}
            body = sample_body(workdir / "body.json")
            for variant in VARIANTS:
                wrk(urls[variant], body, 16, args.seconds)  # warm-up: JIT, caches, first batches
            print(
                f"{'c':>3} {'round':>5} {'variant':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
                f"{'CPU us/req':>10} {'of which Java':>13}"
            )
            for connections in args.connections:
                runs[connections] = {v: [] for v in VARIANTS}
                for round_ in range(args.rounds):
                    for variant in VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]:
                        r = measure(servers[variant], urls[variant], body, connections, args.seconds)
                        runs[connections][variant].append(r)
                        print(
                            f"{connections:>3} {round_ + 1:>5} {variant:>7} {r['rps']:>9.0f} "
                            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['cpu_us_per_request']:>10.0f} "
                            f"{r['frontend_cpu_us_per_request']:>13.0f}"
                        )
            batches = {v: handler_batches(s) for v, s in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
    if batches["on"] <= 0 or batches["off"] != 0:
        sys.exit(f"the variants are not what they claim: handler batches reported {batches}")
    summaries = {c: _summary(r) for c, r in runs.items()}
    for connections, summary in summaries.items():
        on, off = summary["on"], summary["off"]
        print(
            f"c={connections}: median req/s on {on['rps']:.0f}, off {off['rps']:.0f},"
            f" on/off {summary['ratio']:.3f}"
            f" (per round: {', '.join(f'{r:.2f}' for r in summary['round_ratios'])}); median CPU per request"
            f" on {on['cpu_us_per_request']:.0f} us, off {off['cpu_us_per_request']:.0f} us,"
            f" on/off {summary['cpu_ratio']:.3f} (Java frontend: on {on['frontend_cpu_us_per_request']:.0f},"
            f" off {off['frontend_cpu_us_per_request']:.0f} us)"
        )
    setup = (
        "demo model-config.yaml (2 workers, batchSize 8, maxBatchDelay 5 ms, 1 thread per worker), "
        f"two servers side by side, wrk {args.seconds} s per run, on/off alternated, {args.rounds} rounds"
    )
    results = {f"c{c}": {"runs": runs[c], "summary": summaries[c]} for c in runs}
    path = save_results("metrics", {"setup": setup, "results": results})
    print(f"results: {path}")


def _summary(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    keys = ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "frontend_cpu_us_per_request")
    summary: dict[str, Any] = {
        v: {k: statistics.median(r[k] for r in runs[v]) for k in keys} for v in VARIANTS
    }
    summary["ratio"] = summary["on"]["rps"] / summary["off"]["rps"]
    summary["cpu_ratio"] = summary["on"]["cpu_us_per_request"] / summary["off"]["cpu_us_per_request"]
    summary["round_ratios"] = [
        on["rps"] / off["rps"] for on, off in zip(runs["on"], runs["off"], strict=True)
    ]
    return summary


if __name__ == "__main__":
    main()
