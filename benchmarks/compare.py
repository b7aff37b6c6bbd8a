"""ckptserve side by side with stock TorchServe, LitServe and the in-process limit, alternating in one run.

Every row serves the same model with the same weights and the same JSON body ({"instances": [x]}),
answers raw logits, and is measured in turns: each (model, concurrency) cell runs every server once
per round before the next cell, so drift in the machine's load hits all rows alike. HTTP with wrk at
each concurrency; gRPC with benchmarks/grpc.py's load generator (TorchServe's Predictions and the OIP
gateway); the in-process limit is the model's forward in a loop at each batch size. Writes
docs/benchmarks/compare.{json,md} and compare-latency.png / compare-throughput.png.

Needs wrk (apt-get install wrk) and matplotlib (pip install -c constraints.txt -e '.[bench]'); LitServe
is installed on first use into its own venv under ~/.cache/ckptserve-bench (never a project dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, percentile, save_results
from benchmarks.http import ROOT, wrk

# --- what is compared: edit here ------------------------------------------------------------------
# TorchServe model-config.yaml top-level keys per configuration; ckptserve rows add the `handler:`
# section below. "ckptserve-defaults" sets nothing: what `ckptserve package` writes for a yaml with
# only the required handler keys. The best settings come from the sweep of issue 10 on a 2-core
# machine (stock TorchServe's best: 2 workers, 1 thread, batch 8 / 5 ms).
BEST = {"minWorkers": 2, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 5}
ONE_THREAD = {"threads": 1}
CONFIGS: dict[str, dict[str, Any]] = {
    "ckptserve-defaults": {"kind": "ckptserve", "yaml": {}, "handler": {}},
    "ckptserve-best": {"kind": "ckptserve", "yaml": BEST, "handler": ONE_THREAD},
    "ckptserve-b1": {"kind": "ckptserve", "yaml": {**BEST, "batchSize": 1}, "handler": ONE_THREAD},
    "ckptserve-b8-1ms": {"kind": "ckptserve", "yaml": {**BEST, "maxBatchDelay": 1}, "handler": ONE_THREAD},
    "torchserve-stock": {"kind": "stock", "yaml": BEST},  # BaseHandler; 1 thread (stock_raw_handler.py)
    "torchserve-stock-b1": {"kind": "stock", "yaml": {**BEST, "batchSize": 1}},
    "litserve": {"kind": "litserve", "workers": 2, "max_batch_size": 8, "batch_timeout_s": 0.005},
}
GRPC_ROWS = (  # (label, configuration, load kind): TorchServe's own gRPC and the OIP gateway
    ("gRPC Predictions, ckptserve-best", "ckptserve-best", "grpc-json"),
    ("gRPC Predictions, torchserve-stock", "torchserve-stock", "grpc-json"),
    ("OIP gateway ModelInfer, ckptserve-best", "ckptserve-best", "oip"),
)
MODELS: dict[str, dict[str, Any]] = {
    "digits": {
        "file": ROOT / "model_store" / "digits" / "model.py",
        "class": "DigitsCNN",
        "shape": [1, 8, 8],
    },
    "resnet18": {"file": Path(__file__).with_name("resnet.py"), "class": "ResNet18", "shape": [3, 32, 32]},
}
CONCURRENCY = (1, 4, 16, 64)
BATCH_SIZES = (1, 2, 4, 8, 16)  # the in-process limit's sweep
LITSERVE = "litserve==0.2.19"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ckptserve-bench"
# ---------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    seconds: float
    rounds: int
    concurrency: tuple[int, ...]
    grpc_concurrency: tuple[int, ...]
    models: tuple[str, ...]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- set-up -----------------------------------------------------------------------------------------


def _weights(workdir: Path, model: str) -> Path:
    """Random weights, seeded: every server loads this same file."""
    import importlib.util

    import torch

    info = MODELS[model]
    spec = importlib.util.spec_from_file_location(f"bench_{model}", info["file"])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = getattr(module, info["class"])().eval()
    path = workdir / f"{model}.pth"
    torch.save(net.state_dict(), path)
    info["module"] = net
    return path


def _archives(workdir: Path, store: Path, weights: dict[str, Path]) -> list[str]:
    """One archive per TorchServe configuration and model; returns TorchServe's models list."""
    import yaml

    from serving.torchserve.archive import build_archive
    from serving.torchserve.package import package_model

    registered = []
    for model in weights:
        info = MODELS[model]
        for name, cfg in CONFIGS.items():
            if cfg["kind"] == "litserve":
                continue
            served = f"{model}-{name}"
            config = workdir / f"{served}.yaml"
            doc: dict[str, Any] = dict(cfg["yaml"])
            if cfg["kind"] == "ckptserve":
                handler = {"architecture": f"model:{info['class']}", "input": {"shape": info["shape"]}}
                doc["handler"] = {**handler, **cfg["handler"]}
                config.write_text(yaml.safe_dump(doc))
                model_file = workdir / model / "model.py"  # the handler imports it as "model"
                model_file.parent.mkdir(exist_ok=True)
                shutil.copy(info["file"], model_file)
                package_model(
                    served,
                    model_store=store,
                    model_file=model_file,
                    config=config,
                    checkpoint=weights[model],
                    archive_format="no-archive",  # a folder: no zip of the weights to write and unpack
                )
            else:
                config.write_text(yaml.safe_dump(doc))
                build_archive(
                    served,
                    handler=Path(__file__).with_name("stock_raw_handler.py"),
                    export_dir=store,
                    model_file=info["file"],
                    serialized_file=weights[model],
                    config_file=config,
                    archive_format="no-archive",
                )
            registered.append(f"{served}={served}")
    return registered


def _litserve_python() -> Path | None:
    """LitServe's own venv (created once); it sees this project's torch through a .pth file."""
    venv = CACHE / "litserve-venv"
    python = venv / "bin" / "python"
    if not (
        python.exists()
        and subprocess.run([python, "-c", "import litserve"], capture_output=True).returncode == 0
    ):
        _log(f"installing {LITSERVE} into {venv} (first run only)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
        install = subprocess.run(
            [python, "-m", "pip", "install", "-q", LITSERVE], capture_output=True, text=True, timeout=600
        )
        if install.returncode != 0:
            print(f"LitServe row skipped: pip install {LITSERVE} failed: {install.stderr.strip()[-500:]}")
            return None
    import site

    # Written at every run, not once: the cached venv outlives the checkout (or worktree) that made it.
    # After LitServe's own site-packages: its pins win, torch and numpy come from this project's venv.
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "ckptserve-project.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _start_litserve(
    python: Path, workdir: Path, model: str, weights: Path, port: int
) -> subprocess.Popen[bytes]:
    cfg, info = CONFIGS["litserve"], MODELS[model]
    log = (workdir / f"litserve-{model}.log").open("wb")
    args = [
        info["file"],
        info["class"],
        weights,
        port,
        cfg["workers"],
        cfg["max_batch_size"],
        cfg["batch_timeout_s"],
    ]
    return subprocess.Popen(
        # -P: benchmarks/ must not come first on sys.path (its http.py would shadow the stdlib's)
        [python, "-P", Path(__file__).with_name("litserve_app.py"), *map(str, args)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_http(url: str, body: bytes, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as reply:
                json.loads(reply.read())
                return
        except Exception as exc:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{url}: the server exited with code {proc.returncode}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s: {exc}") from exc
            time.sleep(0.5)


def _body(model: str) -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    shape = MODELS[model]["shape"]
    return json.dumps({"instances": [rng.random(shape, dtype=np.float32).round(4).tolist()]}).encode()


# --- measurements -----------------------------------------------------------------------------------


def in_process(model: str, seconds: float) -> dict[str, dict[str, float]]:
    """The limit without a server: forward passes in a loop, one thread, at each batch size."""
    import torch

    net = MODELS[model]["module"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = {}
    try:
        with torch.inference_mode():
            for batch in BATCH_SIZES:
                x = torch.rand(batch, *MODELS[model]["shape"])
                net(x)
                times: list[float] = []
                stop = time.perf_counter() + seconds
                while time.perf_counter() < stop:
                    start = time.perf_counter()
                    net(x)
                    times.append(time.perf_counter() - start)
                p50 = percentile(times, 50)  # the median call: other helpers' bursts stay out of the mean
                rows[f"batch {batch}"] = {"items_per_s": batch / p50, "p50_ms": p50 * 1000}
    finally:
        torch.set_num_threads(threads)
    return rows


def _median_row(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def run(plan: Plan) -> dict[str, Any]:
    from benchmarks.grpc import run_load
    from serving.torchserve import ServerSettings, free_port, free_ports
    from serving.torchserve.server import Server

    results: dict[str, Any] = {"http": {}, "grpc": {}, "in_process": {}, "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="ckptserve-bench-compare-") as tmp:
        workdir, store = Path(tmp), Path(tmp) / "store"
        store.mkdir()
        _log("writing random weights and packaging the archives")
        weights = {model: _weights(workdir, model) for model in plan.models}
        registered = _archives(workdir, store, weights)
        litserve = _litserve_python() if "litserve" in CONFIGS else None
        if "litserve" in CONFIGS and litserve is None:
            results["skipped"]["litserve"] = "pip install failed (see above)"
        lit_procs: dict[str, subprocess.Popen[bytes]] = {}
        lit_ports: dict[str, int] = {}
        if litserve is not None:
            for model in plan.models:
                lit_ports[model] = free_port()
                lit_procs[model] = _start_litserve(litserve, workdir, model, weights[model], lit_ports[model])
        _log(f"starting TorchServe with {len(registered)} models and the OIP gateway")
        server = Server(
            ServerSettings(model_store=store, runtime_dir=workdir / "rt", models=registered, **free_ports()),
            oip_grpc_port=free_port(),
        )
        try:
            server.start(timeout_s=600)
            assert server.gateway is not None  # started: the server was given its port
            gateway = server.gateway
            urls = server.torchserve.urls
            targets: dict[str, dict[str, str]] = {model: {} for model in plan.models}
            for model in plan.models:
                for name, cfg in CONFIGS.items():
                    if cfg["kind"] == "litserve":
                        if model in lit_ports:
                            targets[model][name] = f"http://127.0.0.1:{lit_ports[model]}/predict"
                    else:
                        targets[model][name] = f"{urls.inference}/predictions/{model}-{name}"
            bodies = {}
            for model in plan.models:
                bodies[model] = workdir / f"{model}.json"
                bodies[model].write_bytes(_body(model))
                for name, url in targets[model].items():
                    _log(f"warming up {model} on {name}")
                    _wait_http(url, _body(model), 300, lit_procs.get(model) if name == "litserve" else None)
                    wrk(url, bodies[model], 16, 1)
            samples: dict[tuple[str, str, int], list[dict[str, float]]] = {}
            cells = len(plan.models) * len(plan.concurrency) * plan.rounds
            done = 0
            for round_ in range(plan.rounds):
                for model in plan.models:
                    for c in plan.concurrency:
                        done += 1
                        _log(f"HTTP round {round_ + 1}/{plan.rounds}, {model}, c={c} ({done}/{cells})")
                        for name, url in targets[model].items():  # alternating: every server per cell
                            r = wrk(url, bodies[model], c, max(1, round(plan.seconds)))
                            samples.setdefault((model, name, c), []).append(r)
                            # wrk stops sending, the server's queue does not stop working: one request
                            # queued behind the backlog returns once it is drained, so the next row starts
                            # on an idle machine.
                            _wait_http(url, bodies[model].read_bytes(), 300)
            for (model, name, c), rows in samples.items():
                results["http"].setdefault(model, {}).setdefault(name, {})[str(c)] = _median_row(rows)
            grpc_samples: dict[tuple[str, str, int], list[dict[str, float]]] = {}
            for round_ in range(plan.rounds):
                for model in plan.models:
                    shape = [1, *MODELS[model]["shape"]]
                    raw = _raw(model)
                    for c in plan.grpc_concurrency:
                        _log(f"gRPC round {round_ + 1}/{plan.rounds}, {model}, c={c}")
                        for label, name, kind in GRPC_ROWS:
                            if name not in CONFIGS:
                                continue
                            target = gateway.settings.endpoint if kind == "oip" else urls.grpc_inference
                            r = run_load(
                                kind,
                                target,
                                raw if kind == "oip" else _body(model),
                                concurrency=c,
                                processes=min(2, c),
                                seconds=max(2.0, plan.seconds),
                                warmup_s=1.0,
                                model=f"{model}-{name}",
                                shape=shape,
                            )
                            grpc_samples.setdefault((model, label, c), []).append(r)
            for (model, label, c), rows in grpc_samples.items():
                results["grpc"].setdefault(model, {}).setdefault(label, {})[str(c)] = _median_row(rows)
        finally:
            server.stop()
            for proc in lit_procs.values():
                _stop(proc)
    for model in plan.models:
        _log(f"in-process limit, {model}")
        results["in_process"][model] = in_process(model, max(0.5, plan.seconds / 2))
    return results


def _raw(model: str) -> bytes:
    import numpy as np

    doc = json.loads(_body(model))
    return np.asarray(doc["instances"], dtype="<f4").tobytes()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """LitServe runs its workers in its process group: end the group, which this benchmark started."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)


# --- reports ----------------------------------------------------------------------------------------


def _cell(r: dict[str, float]) -> str:
    if not r["rps"]:
        return "no answer in time"
    failed = r.get("non_2xx", 0) + r.get("socket_errors", 0) + r.get("errors", 0)
    return f"{r['rps']:,.0f} ({r['p50_ms']:.2f} / {r['p99_ms']:.1f})" + (
        f", {failed:.0f} failed" if failed else ""
    )


def _table(title: str, first: str, rows: dict[str, dict[str, Any]], levels: tuple[int, ...]) -> list[str]:
    lines = [title, "", f"| {first} | " + " | ".join(f"c={c}" for c in levels) + " |"]
    lines.append("|---" * (len(levels) + 1) + "|")
    for name, by_c in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(by_c[str(c)]) for c in levels) + " |")
    return [*lines, ""]


def markdown(results: dict[str, Any], plan: Plan) -> str:
    lines = [
        "# ckptserve vs stock TorchServe vs LitServe",
        "",
        f"Measured {results['measured_at']} on {results['cpus']} CPUs, {plan.rounds} round(s) of "
        f"{plan.seconds:g} s per cell, servers alternating; medians over rounds. Configurations: "
        "CONFIGS in `benchmarks/compare.py`. Cells: req/s (p50 / p99 ms).",
        "",
    ]
    for model, rows in results["http"].items():
        lines += _table(f"## {model}: HTTP (wrk)", "configuration", rows, plan.concurrency)
        if results["grpc"].get(model):
            title = f"## {model}: gRPC (benchmarks/grpc.py load generator)"
            lines += _table(title, "row", results["grpc"][model], plan.grpc_concurrency)
        limit = results["in_process"].get(model, {})
        if limit:
            lines += [f"## {model}: in-process limit (forward in a loop, 1 thread)", ""]
            lines += ["| batch | items/s | p50 ms per call |", "|---|---|---|"]
            lines += [
                f"| {k.split()[1]} | {v['items_per_s']:,.0f} | {v['p50_ms']:.3f} |" for k, v in limit.items()
            ]
            lines.append("")
        ratios = _ratios(results, model, plan)
        if ratios:
            lines += [f"## {model}: ratios", "", *[f"- {r}" for r in ratios], ""]
    for name, why in results["skipped"].items():
        lines.append(f"- {name} skipped: {why}")
    return "\n".join(lines) + "\n"


def _ratios(results: dict[str, Any], model: str, plan: Plan) -> list[str]:
    http, out = results["http"].get(model, {}), []
    mid = str(16 if 16 in plan.concurrency else max(plan.concurrency))
    low = str(min(plan.concurrency))

    def versus(name: str, base_name: str) -> str:
        ours, theirs = http[name], http[base_name]
        rps = f"x{ours[mid]['rps'] / theirs[mid]['rps']:.2f}" if theirs[mid]["rps"] else "n/a"
        p50 = (
            f"x{ours[low]['p50_ms'] / theirs[low]['p50_ms']:.2f}"
            if ours[low]["rps"] and theirs[low]["rps"]
            else "n/a"
        )
        return f"{name} / {base_name}: req/s {rps} at c={mid}, p50 {p50} at c={low}"

    if "torchserve-stock" in http:  # everything against stock TorchServe at its best
        out += [versus(name, "torchserve-stock") for name in http if name != "torchserve-stock"]
    if "ckptserve-b1" in http and "torchserve-stock-b1" in http:  # equal settings, unbatched
        out.append(versus("ckptserve-b1", "torchserve-stock-b1"))
    grpc = results["grpc"].get(model, {})
    direct, via = grpc.get(GRPC_ROWS[0][0]), grpc.get(GRPC_ROWS[2][0])
    for c in (str(c) for c in plan.grpc_concurrency if direct and via and direct[str(c)]["rps"]):
        rps = via[c]["rps"] / direct[c]["rps"]
        out.append(
            f"OIP gateway / TorchServe gRPC at c={c}: req/s x{rps:.2f}, "
            f"p50 {via[c]['p50_ms'] - direct[c]['p50_ms']:+.2f} ms"
        )
    return out


def plots(results: dict[str, Any], plan: Plan) -> list[Path]:
    """Latency percentiles against concurrency, throughput against batch size: one panel per model."""

    def latency(ax: Any, model: str) -> None:
        for i, (name, by_c) in enumerate(results["http"][model].items()):
            xs = [int(c) for c, r in by_c.items() if r["rps"]]  # a cell without answers has no latency
            p50, p99 = ([r[k] for r in by_c.values() if r["rps"]] for k in ("p50_ms", "p99_ms"))
            ax.plot(xs, p50, "o-", color=f"C{i}", label=f"{name} p50")
            ax.plot(xs, p99, "s--", color=f"C{i}", alpha=0.6, label=f"{name} p99")
        ax.set(xscale="log", yscale="log", xlabel="concurrent connections (wrk)", ylabel="latency (ms)")
        ax.set_xticks(list(plan.concurrency), [str(c) for c in plan.concurrency])
        ax.set_title(f"{model}: HTTP latency percentiles")

    def throughput(ax: Any, model: str) -> None:
        limit = results["in_process"].get(model, {})
        sizes = [int(k.split()[1]) for k in limit]
        ax.plot(
            sizes, [v["items_per_s"] for v in limit.values()], "o-k", label="in-process forward, 1 thread"
        )
        for i, (name, by_c) in enumerate(results["http"][model].items()):
            best = max(r["rps"] for r in by_c.values())
            ax.axhline(best, color=f"C{i}", ls="--", label=f"{name}: best HTTP req/s")
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="items per second")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_title(f"{model}: throughput against batch size")

    return [
        _figure(list(results["http"]), draw, name)
        for draw, name in ((latency, "latency"), (throughput, "throughput"))
    ]


def _figure(models: list[str], draw: Any, name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        draw(ax, model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS / f"compare-{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="one short round on the demo model (under 2 min)"
    )
    parser.add_argument("--seconds", type=float, help="per cell (default 5, quick 1)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 2, quick 1)")
    parser.add_argument("--models", nargs="*", choices=list(MODELS), help="default: all; quick: digits")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("matplotlib is missing: pip install -c constraints.txt -e '.[bench]'")
    plan = Plan(
        seconds=args.seconds or (1.0 if args.quick else 5.0),
        rounds=args.rounds or (1 if args.quick else 2),
        concurrency=CONCURRENCY,
        grpc_concurrency=(16,) if args.quick else (1, 16),
        models=tuple(args.models or (["digits"] if args.quick else list(MODELS))),
    )
    started = time.monotonic()
    results = run(plan)
    config = {
        "configs": CONFIGS,
        "models": {m: {k: str(v) for k, v in MODELS[m].items() if k != "module"} for m in plan.models},
        "plan": plan.__dict__,
    }
    path = save_results("compare", {**config, **results, "wall_s": round(time.monotonic() - started, 1)})
    saved = json.loads(path.read_text())
    table = markdown(saved, plan)
    (RESULTS / "compare.md").write_text(table)
    images = plots(saved, plan)
    print(table)
    print(f"results: {path}, {RESULTS / 'compare.md'}, {', '.join(str(p) for p in images)}")
    _log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
