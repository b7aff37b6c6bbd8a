"""Batching inside the worker (TorchServe's async mode) against today's defaults and stock's best, in one run.

``python -m benchmarks async_batching [sweep's options]``: benchmarks/sweep.py's alternating rounds,
with extra configurations that package benchmarks/async_batching_handler.py (asyncCommunication,
frontend batchSize 1, 2 workers of 1 thread, a forward on whatever is queued, at most ``max_batch``).
By default: stock TorchServe at its best (batch 8 / 5 ms), ckptserve's defaults, the briefed design
and the lean loop, at 1 and 16 connections; ratios are against the first configuration.
``--cpu CONFIG ...`` instead: CPU milliseconds per request of the frontend and of the workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any
from unittest import mock

from benchmarks import sweep
from benchmarks.http import sample_body, wrk

ASYNC_HANDLER = Path(__file__).resolve().with_name("async_batching_handler.py")
ASYNC = {**sweep.W2, "batchSize": 1, "asyncCommunication": True}


def _async(workers: int = 2, **section: Any) -> sweep.Config:
    model = {**ASYNC, "minWorkers": workers, "maxWorkers": workers, "async_batching": section}
    return sweep.Config(model=model, handler={"threads": 1})


CONFIGS = {
    # the design as briefed: TorchServe's AsyncService, an async handle per job, an executor batcher
    "async-mb8": _async(max_batch=8),
    # "lean": AsyncService replaced by a reader thread + the main thread batching what is queued
    "lean-mb4": _async(max_batch=4, lean=True),
    "lean-mb8": _async(max_batch=8, lean=True),
    "lean-mb16": _async(max_batch=16, lean=True),
    "lean-w1-mb16": _async(1, max_batch=16, lean=True),
    "single-mb8": _async(max_batch=8, lean="single"),  # lean in one thread: no reader thread
    "single-w1-mb16": _async(1, max_batch=16, lean="single"),
    # under load (last batch > 1 job) wait up to linger_ms for a fuller batch; a lone client never waits
    "lean-mb8-linger3": _async(max_batch=8, lean=True, linger_ms=3),
    "lean-w1-mb16-linger2": _async(1, max_batch=16, lean=True, linger_ms=2),
    # measurement only: one complete HTTP answer instead of a chunked one (see the handler)
    "lean-mb8-full": _async(max_batch=8, lean=True, frames="full"),
}
DEFAULT = ["stock-w2-b8-d5", "defaults", "async-mb8", "lean-mb8", "lean-w1-mb16"]

_sweep_start = sweep._start


def _start(name: str, cfg: sweep.Config, workdir: Path, checkpoint: Path, state_dict: Path) -> Any:
    patch = (
        mock.patch("serving.torchserve.package.handler_path", lambda: ASYNC_HANDLER)
        if name in CONFIGS
        else contextlib.nullcontext()
    )
    with patch:
        return _sweep_start(name, cfg, workdir, checkpoint, state_dict)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _workers(management: str) -> set[int]:
    with urllib.request.urlopen(f"{management}/models/digits", timeout=30) as response:
        return {w["pid"] for w in json.loads(response.read())[0]["workers"] if w["pid"] > 0}


def cpu_per_request(names: list[str], rounds: int, seconds: int, connections: int) -> None:
    """CPU milliseconds per request of the frontend (Java + wrapper) and of the workers, at one
    concurrency, each configuration in turn per round."""
    with tempfile.TemporaryDirectory(prefix="ckptserve-async-cpu-") as tmp:
        workdir = Path(tmp)
        checkpoint, state_dict = sweep._prepare(workdir)
        servers = {n: _start(n, sweep.CONFIGS[n], workdir, checkpoint, state_dict) for n in names}
        try:
            body = sample_body(workdir / "body.json")
            for r in range(rounds):
                for name, server in servers.items():
                    urls = server.torchserve.urls
                    url = f"{urls.inference}/predictions/digits"
                    wrk(url, body, connections, 1)  # warm-up
                    workers = _workers(urls.management)
                    pids = [p for p in server.torchserve.pids if p > 0]
                    before = {p: _cpu_s(p) for p in pids}
                    result = wrk(url, body, connections, seconds)
                    used = {p: _cpu_s(p) - before[p] for p in pids}
                    count = result["rps"] * seconds
                    frontend = sum(v for p, v in used.items() if p not in workers) / count * 1e3
                    backend = sum(v for p, v in used.items() if p in workers) / count * 1e3
                    print(
                        f"round {r + 1} {name:>22} c={connections} {result['rps']:7.0f} req/s  CPU ms/req: "
                        f"frontend {frontend:.3f} workers {backend:.3f}",
                        flush=True,
                    )
        finally:
            for server in servers.values():
                server.stop()


def main(argv: list[str] | None = None) -> None:
    sweep.CONFIGS.update(CONFIGS)
    sweep._start = _start
    args = list(argv or [])
    if "--cpu" in args:  # --cpu CONFIG ...: CPU per request at 16 connections, 3 rounds of 8 s
        cpu_per_request(args[args.index("--cpu") + 1 :], rounds=3, seconds=8, connections=16)
        return
    if "--configs" not in args:
        args += ["--configs", *DEFAULT]
    if "--name" not in args:
        args += ["--name", "async-batching"]
    sweep.main(args)


if __name__ == "__main__":
    main()
