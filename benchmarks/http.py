"""HTTP throughput and latency of the demo model on a real TorchServe, measured with wrk (a load generator).

Needs `wrk` (Debian: apt-get install wrk). Prints requests/s and p50/p99 per concurrency level.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import save_results

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "model_store" / "digits"


def start_demo_server(workdir: Path, **settings: Any) -> Any:
    """Train one epoch of the demo model, package it as the demo does, start TorchServe; return the Server."""
    sys.path.insert(0, str(DIGITS))
    from train import train

    from serving.torchserve import ServerSettings, free_ports
    from serving.torchserve.package import package_model
    from serving.torchserve.server import METRICS_CONFIG, Server

    checkpoints, store = workdir / "checkpoints", workdir / "store"
    store.mkdir(parents=True, exist_ok=True)
    train(checkpoints, epochs=1)
    package_model(
        "digits",
        model_store=store,
        model_file=DIGITS / "model.py",
        config=DIGITS / "model-config.yaml",
        checkpoint=checkpoints / "model_epoch_1.pth",
        extra_files=[DIGITS / "index_to_name.json"],
    )
    server = Server(
        ServerSettings(
            model_store=store,
            runtime_dir=workdir / "rt",
            models=["digits=digits.mar"],
            metrics_config=settings.pop(
                "metrics_config", METRICS_CONFIG if METRICS_CONFIG.is_file() else None
            ),
            **free_ports(),
            **settings,
        )
    )
    server.start()
    return server


def sample_body(path: Path) -> Path:
    sys.path.insert(0, str(DIGITS))
    from train import load_digits_split

    _, (images, _) = load_digits_split()
    path.write_text(json.dumps({"instances": images[:1].tolist()}))
    return path


def wrk(url: str, body: Path, connections: int, seconds: int, threads: int = 2) -> dict[str, float]:
    """Run wrk with a POST body; parse requests/s and the latency percentiles."""
    script = body.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body}", "r"); wrk.body = f:read("*a"); f:close()\n'
    )
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "90", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        result[f"p{pct}_ms"] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = float(sum(map(int, sockets.groups()))) if sockets else 0.0  # timeouts too
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, nargs="*", default=[1, 16])
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="ckptserve-bench-") as tmp:
        workdir = Path(tmp)
        server = start_demo_server(workdir)
        try:
            url = f"{server.torchserve.urls.inference}/predictions/digits"
            body = sample_body(workdir / "body.json")
            wrk(url, body, 16, 3)  # warm-up
            rows = {}
            print(
                f"{'connections':>11} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"
            )
            for c in args.connections:
                r = wrk(url, body, c, args.seconds)
                rows[f"c{c}"] = r
                cells = (f"{r['rps']:.0f}", *(f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms")))
                print(f"{c:>11}", " ".join(f"{x:>8}" for x in cells), f"{r['non_2xx']:>8.0f}")
        finally:
            server.stop()
    config = (
        "demo model-config.yaml: 2 workers, batchSize 8, maxBatchDelay 5 ms, 1 intra-op thread per worker"
    )
    path = save_results("http", {"setup": config, "seconds": args.seconds, "results": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
