"""Batching inside the worker (TorchServe's async mode) against today's defaults and stock's best, in one run.

``python -m benchmarks async_batching [sweep's options]``: benchmarks/sweep.py's alternating rounds,
with extra configurations that package benchmarks/async_batching_handler.py (asyncCommunication,
frontend batchSize 1, 2 workers of 1 thread, a forward on whatever is queued, at most ``max_batch``).
By default: ckptserve's defaults, stock TorchServe at its best (batch 8 / 5 ms), and the prototype at
in-worker max batch 8 and 16, at 1 and 16 connections. Ratios are against the first configuration.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from unittest import mock

from benchmarks import sweep

ASYNC_HANDLER = Path(__file__).resolve().with_name("async_batching_handler.py")
ASYNC = {**sweep.W2, "batchSize": 1, "asyncCommunication": True}


def _async(workers: int = 2, **section: Any) -> sweep.Config:
    model = {**ASYNC, "minWorkers": workers, "maxWorkers": workers, "async_batching": section}
    return sweep.Config(model=model, handler={"threads": 1})


CONFIGS = {
    "async-mb4": _async(max_batch=4),
    "async-mb8": _async(max_batch=8),
    "async-mb16": _async(max_batch=16),
    "async-mb8-inline": _async(max_batch=8, inline=True),
    "async-mb8-si": _async(max_batch=8, switch_interval_s=0.0002),
    "lean-mb4": _async(max_batch=4, lean=True),
    "lean-mb8": _async(max_batch=8, lean=True),
    "lean-mb16": _async(max_batch=16, lean=True),
    "lean-w1-mb16": _async(1, max_batch=16, lean=True),
    "lean-w1-mb32": _async(1, max_batch=32, lean=True),
    "lean-mb8-oneframe": _async(max_batch=8, lean=True, frames="none"),  # leaks: an upper bound only
    "lean-mb8-full": _async(max_batch=8, lean=True, frames="full"),  # measurement only
    "async-mb8-oneframe": _async(max_batch=8, frames="none"),  # leaks every job: an upper bound only
}
DEFAULT = ["defaults", "stock-w2-b8-d5", "async-mb8", "async-mb16"]

_sweep_start = sweep._start


def _start(name: str, cfg: sweep.Config, workdir: Path, checkpoint: Path, state_dict: Path) -> Any:
    patch = (
        mock.patch("serving.torchserve.package.handler_path", lambda: ASYNC_HANDLER)
        if name in CONFIGS
        else contextlib.nullcontext()
    )
    with patch:
        return _sweep_start(name, cfg, workdir, checkpoint, state_dict)


def main(argv: list[str] | None = None) -> None:
    sweep.CONFIGS.update(CONFIGS)
    sweep._start = _start
    args = list(argv or [])
    if "--configs" not in args:
        args += ["--configs", *DEFAULT]
    if "--name" not in args:
        args += ["--name", "async-batching"]
    sweep.main(args)


if __name__ == "__main__":
    main()
