"""Hot reload cost on a real TorchServe: landing-to-serving time, extra peak worker RSS during the swap,
and request latency (wrk) during reloads against steady state, for ~10/100/500 MB of weights, with and
without Adam state in the file, for both reload strategies (shadow, inplace).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import save_results
from benchmarks.http import wrk

MiB = 2**20
SIZES = {"10MB": (1024, 2), "100MB": (2048, 6), "500MB": (4096, 8)}  # (width, layers) of Linear(w, w)

MODEL_FILE = """
import torch
from torch import nn


class Stack(nn.Module):
    def __init__(self, width: int = 1024, layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
"""


def stack(width: int, layers: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])


def write_checkpoint(directory: Path, width: int, layers: int, epoch: int, with_optimizer: bool) -> Path:
    from serving import save_checkpoint

    model = stack(width, layers, epoch)
    optimizer = None
    if with_optimizer:
        optimizer = torch.optim.Adam(model.parameters())
        model(torch.randn(1, width)).sum().backward()
        optimizer.step()  # Adam state: two more tensors per weight
    wrapper = nn.Module()
    wrapper.layers = model  # keys "layers.N.weight", as the served Stack names them
    return save_checkpoint(directory, wrapper, optimizer=optimizer, epoch=epoch)


def worker_memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and RssAnon of a process, in bytes."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon")}


class AnonPeak:
    """Samples RssAnon every 5 ms: the memory a reload really takes (file-backed pages of a mapped
    checkpoint count in RSS too, but the kernel can drop them at will)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, worker_memory(self.pid)["RssAnon"])

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS


def served_label(url: str, body: bytes) -> str:
    from serving.client.http import HttpClient

    with HttpClient(url) as client:
        client.request("POST", "/predictions/stack", body, "application/json")
        return client.last_headers.get("x-ckptserve-checkpoint", "")


def measure_reload(
    server: Any, watch: Path, width: int, layers: int, epoch: int, with_optimizer: bool, body: Path
) -> dict[str, float]:
    url = server.torchserve.urls.inference
    describe = json.loads(_get(f"{server.torchserve.urls.management}/models/stack?customized=true"))
    pid = describe[0]["customizedMetadata"]["pid"]
    before = worker_memory(pid)
    reset_peak(pid)
    results: dict[str, Any] = {}

    def load() -> None:
        results["wrk"] = wrk(f"{url}/predictions/stack", body, 4, 6)

    traffic = threading.Thread(target=load)
    traffic.start()
    time.sleep(1.0)
    with tempfile.TemporaryDirectory(dir=watch.parent) as staging:
        path = write_checkpoint(Path(staging), width, layers, epoch, with_optimizer)
        file_mib = path.stat().st_size / MiB
        landed = time.monotonic()
        request = body.read_bytes()
        with AnonPeak(pid) as anon:
            path.rename(watch / path.name)  # lands atomically, as save_checkpoint would
            while f"epoch={epoch}@" not in served_label(url, request):
                if time.monotonic() - landed > 120:
                    raise TimeoutError("the reload did not happen within 120 s")
                time.sleep(0.01)
            landed_to_serving = time.monotonic() - landed
    peak = worker_memory(pid)["VmHWM"]
    traffic.join()
    return {
        "file_mib": round(file_mib, 1),
        "landed_to_serving_s": round(landed_to_serving, 3),
        "extra_peak_rss_mib": round((peak - before["VmRSS"]) / MiB, 1),
        "extra_peak_anon_mib": round((anon.peak - before["RssAnon"]) / MiB, 1),
        "p50_ms_during_reload": results["wrk"]["p50_ms"],
        "p99_ms_during_reload": results["wrk"]["p99_ms"],
        "non_2xx_during_reload": results["wrk"]["non_2xx"],
    }


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def run_size(workdir: Path, size: str, strategy: str, poll_s: float) -> dict[str, Any]:
    from serving.torchserve import ServerSettings, free_ports
    from serving.torchserve.package import package_model
    from serving.torchserve.server import Server

    width, layers = SIZES[size]
    root = workdir / f"{size}-{strategy}"
    watch, store = root / "watch", root / "store"
    for d in (watch, store):
        d.mkdir(parents=True)
    (root / "stack_model.py").write_text(MODEL_FILE)
    write_checkpoint(watch, width, layers, 1, with_optimizer=False)
    config = root / "model-config.yaml"
    config.write_text(
        json.dumps(
            {
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": 4,
                "maxBatchDelay": 2,
                "responseTimeout": 120,
                "handler": {
                    "architecture": "stack_model:Stack",
                    "architecture_kwargs": {"width": width, "layers": layers},
                    "input": {"shape": [width]},
                    "watch_dir": str(watch),
                    "poll_interval_s": poll_s,
                    "reload_strategy": strategy,
                    "threads": 1,
                },
            }
        )
    )
    package_model("stack", model_store=store, model_file=root / "stack_model.py", config=config)
    server = Server(
        ServerSettings(
            model_store=store,
            runtime_dir=root / "rt",
            models=["stack=stack.mar"],
            **free_ports(),
        )
    )
    server.start(timeout_s=300)
    body = root / "body.json"
    body.write_text(json.dumps({"instances": torch.randn(1, width).tolist()}))
    try:
        url = f"{server.torchserve.urls.inference}/predictions/stack"
        wrk(url, body, 4, 2)  # warm-up
        steady = wrk(url, body, 4, 5)
        row: dict[str, Any] = {  # steady numbers, then one dict per reload kind
            "steady_p50_ms": steady["p50_ms"],
            "steady_p99_ms": steady["p99_ms"],
            "steady_rps": steady["rps"],
        }
        row["weights_only"] = measure_reload(server, watch, width, layers, 2, False, body)
        row["with_adam_state"] = measure_reload(server, watch, width, layers, 3, True, body)
        return row
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument(
        "--strategies", nargs="*", default=["shadow", "inplace"], choices=["shadow", "inplace"]
    )
    parser.add_argument("--poll", type=float, default=0.5, help="poll_interval_s of the watcher")
    args = parser.parse_args(argv)
    rows: dict[str, Any] = {}
    columns = ("size", "strategy", "file", "file MiB", "land->serve s", "+peak RSS MiB", "+peak anon MiB")
    print(" ".join(f"{c:>15}" for c in columns), f"{'p50 ms':>16} {'p99 ms':>16} errors")
    with tempfile.TemporaryDirectory(prefix="ckptserve-reload-") as tmp:
        for size in args.sizes:
            for strategy in args.strategies:
                row = run_size(Path(tmp), size, strategy, args.poll)
                rows[f"{size}/{strategy}"] = row
                for kind in ("weights_only", "with_adam_state"):
                    r = row[kind]
                    cells: tuple[object, ...] = (
                        size,
                        strategy,
                        kind,
                        f"{r['file_mib']:.0f}",
                        f"{r['landed_to_serving_s']:.2f}",
                    )
                    cells += (f"{r['extra_peak_rss_mib']:.0f}", f"{r['extra_peak_anon_mib']:.0f}")
                    p50 = f"{row['steady_p50_ms']:.1f}->{r['p50_ms_during_reload']:.1f}"
                    p99 = f"{row['steady_p99_ms']:.1f}->{r['p99_ms_during_reload']:.1f}"
                    print(
                        " ".join(f"{c:>15}" for c in cells),
                        f"{p50:>16} {p99:>16} {r['non_2xx_during_reload']:.0f}",
                    )
    note = "p50/p99: steady state -> a 6 s wrk window (4 connections) containing one reload; poll interval"
    path = save_results("reload", {"poll_interval_s": args.poll, "note": note, "results": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
