"""Serving configurations of the demo model side by side: all servers up at once, alternating rounds.

``python -m benchmarks sweep --configs NAME ... [--rounds 3 --seconds 5]``. Each configuration is a
TorchServe of its own (model-config.yaml keys, handler keys, config.properties keys, environment);
each round runs wrk at each concurrency against each server in turn, so a neighbour's load on a
shared machine hits every configuration alike. Prints medians over rounds and the ratio of each
configuration to the first one; ``--list`` shows the named configurations.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import save_results
from benchmarks.http import DIGITS, sample_body, wrk

STOCK_HANDLER = Path(__file__).resolve().with_name("stock_handler.py")
_DEMO_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")


@dataclass(frozen=True)
class Config:
    """One server: ``model`` keys go to the top of model-config.yaml (None: leave it out), ``handler``
    keys into its handler section, ``properties`` into config.properties, ``env`` into TorchServe's."""

    model: dict[str, Any] = field(default_factory=dict)
    handler: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    register: str | None = None  # query of POST /models: register through the API instead of load_models
    stock: bool = False  # TorchServe's BaseHandler (benchmarks/stock_handler.py) instead of ours


# model-config.yaml and config.properties' models entry both read maxBatchDelay 0 as unset (TorchServe
# then applies 100 ms); only the registration API takes 0 as given.
D0 = "batch_size=8&max_batch_delay=0"


W2 = {"minWorkers": 2, "maxWorkers": 2}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
CONFIGS: dict[str, Config] = {
    # what ckptserve package writes for a yaml with only a handler: section (the current defaults)
    "defaults": Config(),
    # main at 6a5262e with a handler-only yaml: 2 threads x 2 workers, libgomp's default spinning
    # (an explicit GOMP_SPINCOUNT wins over the launcher's OMP_WAIT_POLICY)
    "old-defaults": Config(handler={"threads": 2}, env={"GOMP_SPINCOUNT": "300000"}),
    "w2-b1": Config(model={**W2, "batchSize": 1}),
    "w2-b8-d5": Config(model={**W2, "batchSize": 8, "maxBatchDelay": 5}),
    "w2-b8-d1": Config(model={**W2, "batchSize": 8, "maxBatchDelay": 1}),
    "w2-b4-d1": Config(model={**W2, "batchSize": 4, "maxBatchDelay": 1}),
    "w2-b16-d1": Config(model={**W2, "batchSize": 16, "maxBatchDelay": 1}),
    "w2-b8-d0": Config(model=W2, register=D0),
    "w3-b8-d0": Config(model={"minWorkers": 3, "maxWorkers": 3}, register=D0),
    "w4-b8-d0": Config(model={"minWorkers": 4, "maxWorkers": 4}, register=D0),
    "w4-b1": Config(model={"minWorkers": 4, "maxWorkers": 4, "batchSize": 1}),
    "w4-b8-d1": Config(model={"minWorkers": 4, "maxWorkers": 4, "batchSize": 8, "maxBatchDelay": 1}),
    "w1-b8-d1": Config(model={"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 1}),
    "w1-t2-b8-d1": Config(
        model={"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 1}, handler={"threads": 2}
    ),
    # TorchServe's own knobs, on the defaults
    "netty1": Config(properties={"number_of_netty_threads": "1", "netty_client_threads": "1"}),
    "netty4": Config(properties={"number_of_netty_threads": "4", "netty_client_threads": "4"}),
    "fj1": Config(properties={"vmargs": "-Djava.util.concurrent.ForkJoinPool.common.parallelism=1"}),
    "queue100": Config(properties={"job_queue_size": "100"}),
    "omp-active": Config(env={"OMP_WAIT_POLICY": "ACTIVE"}),
    "stock-w2-b1": Config(model={**W2, "batchSize": 1}, env=ONE_THREAD, stock=True),
    "stock-w2-b8-d5": Config(model={**W2, "batchSize": 8, "maxBatchDelay": 5}, env=ONE_THREAD, stock=True),
    "stock-w2-b8-d1": Config(model={**W2, "batchSize": 8, "maxBatchDelay": 1}, env=ONE_THREAD, stock=True),
    "stock-w2-b8-d0": Config(model=W2, register=D0, env=ONE_THREAD, stock=True),
    # our handler at stock's settings (OMP_NUM_THREADS=1 too), for the equal-settings ratio
    "ours-w2-b1": Config(model={**W2, "batchSize": 1}, env=ONE_THREAD),
    "ours-w2-b8-d5": Config(model={**W2, "batchSize": 8, "maxBatchDelay": 5}, env=ONE_THREAD),
}


def _demo_yaml() -> dict[str, Any]:
    data = yaml.safe_load((DIGITS / "model-config.yaml").read_text())
    for key in _DEMO_KEYS:  # the sweep decides these; absent means "what ckptserve package writes"
        data.pop(key, None)
    return data


def _archive(name: str, cfg: Config, store: Path, checkpoint: Path, state_dict: Path) -> None:
    from serving.torchserve.archive import build_archive
    from serving.torchserve.package import package_model

    data = _demo_yaml()
    data.update({k: v for k, v in cfg.model.items() if v is not None})
    data["handler"] = {**data["handler"], **cfg.handler}
    config = store / f"{name}.yaml"
    if cfg.stock:
        data.pop("handler")
        config.write_text(yaml.safe_dump(data))
        build_archive(
            "digits",
            handler=STOCK_HANDLER,
            export_dir=store,
            model_file=DIGITS / "model.py",
            serialized_file=state_dict,
            config_file=config,
        )
        return
    config.write_text(yaml.safe_dump(data))
    package_model(
        "digits",
        model_store=store,
        model_file=DIGITS / "model.py",
        config=config,
        checkpoint=checkpoint,
        extra_files=[DIGITS / "index_to_name.json"],
    )


@contextlib.contextmanager
def _environment(changes: dict[str, str]) -> Iterator[None]:
    # TorchServeProcess hands its own environment to Java, which hands it to every worker.
    saved = {key: os.environ.get(key) for key in changes}
    for key, value in changes.items():
        if value:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _start(name: str, cfg: Config, workdir: Path, checkpoint: Path, state_dict: Path) -> Any:
    from serving.torchserve import ServerSettings, free_ports
    from serving.torchserve.server import METRICS_CONFIG, Server

    store = workdir / name / "store"
    store.mkdir(parents=True)
    _archive(name, cfg, store, checkpoint, state_dict)
    settings = ServerSettings(
        model_store=store,
        runtime_dir=workdir / name / "rt",
        models=[] if cfg.register else ["digits=digits.mar"],
        metrics_config=None if cfg.stock else METRICS_CONFIG,
        extra={**cfg.properties, **({"enable_model_api": "true"} if cfg.register else {})},
        **free_ports(),
    )
    server = Server(settings)
    with _environment(cfg.env):
        server.start(timeout_s=300)
        if cfg.register:
            workers = cfg.model.get("minWorkers", 2)
            query = f"url=digits.mar&initial_workers={workers}&synchronous=true&{cfg.register}"
            url = f"{server.torchserve.urls.management}/models?{query}"
            deadline = time.monotonic() + 120
            while True:  # with no model to wait for, start() returns before the API listens
                try:
                    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=300) as r:
                        r.read()
                    break
                except urllib.error.URLError as exc:
                    if isinstance(exc, urllib.error.HTTPError) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
    return server


def _prepare(workdir: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(DIGITS))
    import torch
    from train import train

    from serving.loader import load_model

    train(workdir / "checkpoints", epochs=1)
    checkpoint = workdir / "checkpoints" / "model_epoch_1.pth"
    model = load_model("model:DigitsCNN", checkpoint, search_paths=[DIGITS])
    state_dict = workdir / "digits_state_dict.pt"
    torch.save(model.state_dict(), state_dict)
    return checkpoint, state_dict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=["defaults", "w2-b8-d5", "w2-b1"])
    parser.add_argument("--connections", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--name", default="sweep", help="results file: docs/benchmarks/NAME.json")
    parser.add_argument("--list", action="store_true", help="print the named configurations")
    args = parser.parse_args(argv)
    if args.list:
        for name, cfg in CONFIGS.items():
            print(f"{name:>20}  {cfg}")
        return
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configurations {unknown}; --list shows them")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        c: {f"c{n}": [] for n in args.connections} for c in args.configs
    }
    servers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ckptserve-sweep-") as tmp:
        workdir = Path(tmp)
        try:
            checkpoint, state_dict = _prepare(workdir)
            for name in args.configs:
                print(f"starting {name} ...", flush=True)
                servers[name] = _start(name, CONFIGS[name], workdir, checkpoint, state_dict)
            body = sample_body(workdir / "body.json")
            urls = {n: f"{s.torchserve.urls.inference}/predictions/digits" for n, s in servers.items()}
            for url in urls.values():
                wrk(url, body, 16, 2)  # warm-up: JIT, first batches
            for r in range(args.rounds):
                order = args.configs[r % len(args.configs) :] + args.configs[: r % len(args.configs)]
                for name in order:
                    for c in args.connections:
                        result = wrk(urls[name], body, c, args.seconds)
                        runs[name][f"c{c}"].append(result)
                        print(
                            f"round {r + 1} {name:>20} c={c:<3} {result['rps']:8.0f} req/s "
                            f"p50 {result['p50_ms']:6.2f} ms  non-2xx {result['non_2xx']:.0f}",
                            flush=True,
                        )
        finally:
            for server in servers.values():
                server.stop()
    summary = _summarize(runs, args.configs, args.connections)
    path = save_results(args.name, {"rounds": args.rounds, "seconds": args.seconds, "results": summary})
    print(f"results: {path}")


def _summarize(
    runs: dict[str, dict[str, list[dict[str, float]]]], names: list[str], connections: list[int]
) -> dict[str, Any]:
    base = names[0]
    summary: dict[str, Any] = {}
    print(f"\nmedians over rounds; ratio = req/s against {base} in the same rounds")
    header = "".join(f"{f'c={c} req/s':>12}{'p50 ms':>9}{'ratio':>7}" for c in connections)
    print(f"{'config':>20}{header}")
    for name in names:
        row: dict[str, Any] = {}
        cells = ""
        for c in connections:
            key = f"c{c}"
            rps = [r["rps"] for r in runs[name][key]]
            ratios = [a / b for a, b in zip(rps, [r["rps"] for r in runs[base][key]], strict=True) if b]
            row[key] = {
                "rps": statistics.median(rps),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs[name][key]),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs[name][key]),
                "ratio": statistics.median(ratios) if ratios else None,
                "rounds": runs[name][key],
            }
            cells += f"{row[key]['rps']:12.0f}{row[key]['p50_ms']:9.2f}{row[key]['ratio'] or 0:7.2f}"
        summary[name] = {"config": str(CONFIGS[name]), **row}
        print(f"{name:>20}{cells}")
    return summary


if __name__ == "__main__":
    main()
