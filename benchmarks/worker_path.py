"""The Python cost of one batch inside a TorchServe worker, ours against stock BaseHandler, with no server.

``python -m benchmarks worker_path [--batch 1 8] [--iterations 3000] [--profile ours]``: loads both
handlers through TorchServe's own model loader (as a worker does), calls ``Service.predict`` with the
messages a worker receives, alternating the two handlers in rounds; prints microseconds per batch.
``--profile NAME`` prints a cProfile of that handler's batches instead.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.http import DIGITS, sample_body
from benchmarks.sweep import STOCK_HANDLER, _demo_yaml, _prepare


def _load(model_dir: Path, batch_size: int) -> Any:
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import TsModelLoader

    from serving.torchserve.server import METRICS_CONFIG

    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    sys.path.insert(0, str(model_dir))
    metrics = MetricsCacheYamlImpl(str(METRICS_CONFIG))
    metrics.initialize_cache()
    service = TsModelLoader().load(
        manifest["model"]["modelName"],
        str(model_dir),
        manifest["model"]["handler"],
        None,
        batch_size,
        metrics_cache=metrics,
    )
    sys.path.remove(str(model_dir))
    service.set_cl_socket(None)  # streaming replies only; a plain batch never writes to it
    return service


def _build(workdir: Path, batch_size: int) -> dict[str, Any]:
    import yaml

    from serving.torchserve.archive import build_archive
    from serving.torchserve.package import package_model

    checkpoint, state_dict = _prepare(workdir)
    data = {**_demo_yaml(), "batchSize": batch_size, "maxBatchDelay": 1}
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    ours = package_model(
        "ours",
        model_store=workdir / "store",
        model_file=DIGITS / "model.py",
        config=config,
        checkpoint=checkpoint,
        extra_files=[DIGITS / "index_to_name.json"],
        archive_format="no-archive",
    )
    data.pop("handler")
    config.write_text(yaml.safe_dump(data))
    stock = build_archive(
        "stock",
        handler=STOCK_HANDLER,
        export_dir=workdir / "store",
        model_file=DIGITS / "model.py",
        serialized_file=state_dict,
        config_file=config,
        archive_format="no-archive",
    )
    return {"ours": _load(ours, batch_size), "stock": _load(stock, batch_size)}


def _messages(body: bytes, batch_size: int) -> list[dict[str, Any]]:
    # What ts.protocol.otf_message_handler hands Service.predict for a raw HTTP body.
    return [
        {
            "requestId": f"req-{i}".encode(),
            "headers": [{"name": b"Content-Type", "value": b"application/json"}],
            "parameters": [{"name": "body", "contentType": "application/json", "value": body}],
        }
        for i in range(batch_size)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", choices=["ours", "stock"])
    args = parser.parse_args(argv)
    os.environ["TS_DECODE_INPUT_REQUEST"] = "false"  # as ckptserve's config.properties sets it
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ckptserve-worker-path-") as tmp:
        workdir = Path(tmp)
        body = sample_body(workdir / "body.json").read_bytes()
        for batch_size in args.batch:
            services = _build(workdir / f"b{batch_size}", batch_size)
            batch = _messages(body, batch_size)
            for service in services.values():
                for _ in range(200):  # warm-up
                    service.predict(batch)
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(args.iterations):
                    services[args.profile].predict(batch)
                profiler.disable()
                print(f"--- {args.profile}, batch {batch_size}")
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
                continue
            # Alternate every batch: a neighbour's load falls on both handlers alike.
            per_batch: dict[str, list[float]] = {name: [] for name in services}
            for _ in range(args.rounds):
                spent = dict.fromkeys(services, 0.0)
                for _ in range(args.iterations // args.rounds):
                    for name, service in services.items():
                        started = time.perf_counter()
                        service.predict(batch)
                        spent[name] += time.perf_counter() - started
                for name in services:
                    per_batch[name].append(spent[name] / (args.iterations // args.rounds))
            ratios = [s / o for s, o in zip(per_batch["stock"], per_batch["ours"], strict=True)]
            print(
                f"batch {batch_size}: ours {statistics.median(per_batch['ours']) * 1e6:.0f} us, "
                f"stock {statistics.median(per_batch['stock']) * 1e6:.0f} us per batch; "
                f"stock/ours time {statistics.median(ratios):.2f} (>1: ours is faster)"
            )


if __name__ == "__main__":
    main()
