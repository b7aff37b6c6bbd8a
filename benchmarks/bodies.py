"""Worker memory after large request bodies (issue 9.4): RSS of each worker before and after N bodies.

    python -m benchmarks bodies [--count 48] [--concurrency 16] [--mib 6]

Sends ``count`` KServe v1 JSON bodies of about ``mib`` MiB (far more instances than the demo's
max_instances allows, so each is refused with 413), ``concurrency`` at a time, to the demo model
with 2 workers, then reads each worker's VmRSS from /proc.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import save_results
from benchmarks.http import start_demo_server

MIB = 1 << 20


def body_of(size: int) -> bytes:
    """Valid JSON of about ``size`` bytes: rows of 64 numbers, the costliest kind to parse."""
    row = "[" + ",".join(["0.123456789"] * 64) + "]"
    return ('{"instances": [' + ",".join([row] * (size // (len(row) + 1))) + "]}").encode()


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def worker_rss(management: str) -> dict[int, float]:
    """VmRSS in MiB of each READY worker of the demo model."""
    with urllib.request.urlopen(f"{management}/models/digits", timeout=30) as response:
        workers = json.loads(response.read())[0]["workers"]
    rss = {}
    for worker in workers:
        if worker["status"] == "READY":
            status = Path(f"/proc/{worker['pid']}/status").read_text()
            line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
            rss[worker["pid"]] = int(line.split()[1]) / 1024
    return rss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mib", type=float, default=6)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ckptserve-bench-") as tmp:
        server = start_demo_server(Path(tmp))
        try:
            urls = server.torchserve.urls
            url = f"{urls.inference}/predictions/digits"
            body = body_of(int(args.mib * MIB))
            deadline = time.monotonic() + 120
            while len(before := worker_rss(urls.management)) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)  # the demo starts 2 workers; wait for both before measuring
            with ThreadPoolExecutor(args.concurrency) as pool:
                statuses = list(pool.map(lambda _: post(url, body), range(args.count)))
            after = worker_rss(urls.management)
        finally:
            server.stop()
    results: dict[str, Any] = {
        "bodies": args.count,
        "body_mib": round(len(body) / MIB, 2),
        "concurrency": args.concurrency,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "rss_mib_before": {str(p): round(v) for p, v in before.items()},
        "rss_mib_after": {str(p): round(after[p]) for p in before if p in after},
    }
    print(json.dumps(results, indent=2))
    print(f"results: {save_results('bodies', results)}")


if __name__ == "__main__":
    main()
