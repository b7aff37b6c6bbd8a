"""HTTP vs TorchServe gRPC (unary, bidi streaming) vs the OIP v2 gateway on the demo model, same concurrency.

Load generator: wrk for HTTP (as `python -m benchmarks http`), and for every protocol the same
multi-process asyncio client (grpc.aio / asyncio streams; `--processes` processes sharing
`--concurrency` outstanding requests), so that the rows compare protocols, not load generators.
Prints requests/s and p50/p99 per row and the gateway's overhead relative to direct TorchServe gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import median, percentile, save_results
from benchmarks.http import DIGITS, sample_body, start_demo_server, wrk

# A second registration of the demo archive for StreamPredictions2: TorchServe 0.12 streams only to
# sequence-batching models, and such a model serves nothing else (see the README's gRPC section).
STREAM_MODEL = "digits_stream"
STREAM_CONFIG = {
    "sequenceBatching": True,
    "sequenceMaxIdleMSec": 10000,
    "maxSequenceJobQueueSize": 64,
    "maxNumSequence": 64,
}


# --- the load generator (runs in child processes) ---------------------------------------------------


async def _load(
    kind: str,
    target: str,
    payload: bytes,
    concurrency: int,
    warmup_s: float,
    seconds: float,
    window: int,
    model: str = "digits",
    shape: tuple[int, ...] = (1, 1, 8, 8),
) -> dict[str, Any]:
    import grpc

    from serving.client.aio_http import AsyncHttpClient
    from serving.protos import grpc_predict_v2_pb2 as oip
    from serving.protos import grpc_predict_v2_pb2_grpc as oip_grpc
    from serving.protos import inference_pb2, inference_pb2_grpc

    latencies: list[float] = []
    errors = completed = 0  # completed: every answer, warm-up included (what a server's CPU time covers)
    start = time.perf_counter() + warmup_s
    stop = start + seconds

    def record(sent: float, ok: bool) -> None:
        nonlocal errors, completed
        completed += ok
        now = time.perf_counter()
        if start <= sent and now <= stop:
            if ok:
                latencies.append((now - sent) * 1000)
            else:
                errors += 1

    channel = grpc.aio.insecure_channel(target) if kind != "http" else None
    if kind == "http":
        client = AsyncHttpClient(target, retries=0)

        async def one() -> bool:
            status, _ = await client.request("POST", f"/predictions/{model}", payload, "application/json")
            return status == 200
    elif kind in ("grpc-json", "grpc-npy") and channel is not None:  # every kind but http has a channel
        predictions = inference_pb2_grpc.InferenceAPIsServiceStub(channel).Predictions
        request = inference_pb2.PredictionsRequest(model_name=model, input={"data": payload})

        async def one() -> bool:
            await predictions(request, timeout=30)
            return True
    elif kind == "oip" and channel is not None:
        infer = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        tensor = oip.ModelInferRequest.InferInputTensor(name="input__0", datatype="FP32", shape=list(shape))
        infer_request = oip.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[payload])

        async def one() -> bool:
            await infer(infer_request, timeout=30)
            return True

    async def unary_worker() -> None:
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            try:
                ok = await one()
            except Exception:
                ok = False
            record(sent, ok)

    async def stream_worker(index: int) -> None:
        # One stream (one TorchServe sequence), `window` requests in flight, answers in order.
        assert channel is not None  # the grpc-stream kind has one
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        sent_at: list[float] = []
        credits = asyncio.Semaphore(window)
        finished = asyncio.Event()
        request = inference_pb2.PredictionsRequest(
            model_name=STREAM_MODEL, input={"data": payload}, sequence_id=f"bench-{id(sent_at)}-{index}"
        )

        async def requests() -> Any:
            while time.perf_counter() < stop:
                await credits.acquire()
                sent_at.append(time.perf_counter())
                yield request
            await finished.wait()  # half-close only after the last answer (TorchServe drops the rest)

        call = stub.StreamPredictions2(requests())
        answered = 0
        async for reply in call:
            record(sent_at[answered], not reply.HasField("status"))
            answered += 1
            credits.release()
            if time.perf_counter() >= stop and answered == len(sent_at):
                finished.set()
                break
        call.cancel()

    if kind == "grpc-stream":
        await asyncio.gather(*(stream_worker(i) for i in range(concurrency)))
    else:
        await asyncio.gather(*(unary_worker() for _ in range(concurrency)))
    if channel is not None:
        await channel.close()
    return {"latencies": latencies, "errors": errors, "completed": completed}


def _child(args: tuple[Any, ...]) -> dict[str, Any]:
    return asyncio.run(_load(*args))


def run_load(
    kind: str,
    target: str,
    payload: bytes,
    *,
    concurrency: int,
    processes: int,
    seconds: float,
    window: int = 1,
    warmup_s: float = 2.0,
    model: str = "digits",
    shape: tuple[int, ...] | list[int] = (1, 1, 8, 8),
) -> dict[str, float]:
    """``concurrency`` callers (streams for grpc-stream) of ``model`` spread over ``processes`` processes.

    ``shape`` is the OIP request's tensor shape (batch first); other kinds send ``payload`` as it is.
    """
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    jobs = [(kind, target, payload, n, warmup_s, seconds, window, model, tuple(shape)) for n in shares if n]
    # spawn, not fork: grpc's threads do not survive a fork
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        parts = pool.map(_child, jobs)
    latencies = sorted(x for part in parts for x in part["latencies"])
    errors = sum(part["errors"] for part in parts)
    completed = float(sum(part["completed"] for part in parts))
    if not latencies:
        return {"rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "errors": float(errors), "completed": completed}
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "errors": float(errors),
        "completed": completed,
    }


# --- set-up ------------------------------------------------------------------------------------------


def _register_stream_model(server: Any, workdir: Path) -> None:
    from serving.torchserve.package import package_model

    base = (DIGITS / "model-config.yaml").read_text()
    config = workdir / "stream-config.yaml"
    config.write_text(base + "".join(f"{k}: {json.dumps(v)}\n" for k, v in STREAM_CONFIG.items()))
    package_model(
        STREAM_MODEL,
        model_store=server.settings.model_store,
        model_file=DIGITS / "model.py",
        config=config,
        checkpoint=workdir / "checkpoints" / "model_epoch_1.pth",
        extra_files=[DIGITS / "index_to_name.json"],
    )
    url = f"{server.torchserve.urls.management}/models?url={STREAM_MODEL}.mar&synchronous=true"
    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=120).read()


def _payloads() -> dict[str, bytes]:
    import numpy as np

    sys.path.insert(0, str(DIGITS))
    from train import load_digits_split

    _, (images, _) = load_digits_split()
    image = images[:1].numpy()
    buffer = io.BytesIO()
    np.save(buffer, image)
    return {
        "json": json.dumps({"instances": image.tolist()}).encode(),
        "npy": buffer.getvalue(),
        "raw": image.astype("<f4").tobytes(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--window", type=int, default=4, help="requests in flight per stream (pipelining)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of gateway vs direct")
    parser.add_argument(
        "--overhead-only",
        action="store_true",
        help="skip the table of paths: only the alternating rounds of the gateway against direct gRPC",
    )
    args = parser.parse_args(argv)

    from serving.torchserve import free_port
    from serving.torchserve.gateway.process import GatewayProcess, GatewaySettings

    with tempfile.TemporaryDirectory(prefix="ckptserve-bench-grpc-") as tmp:
        workdir = Path(tmp)
        # The model API is on only here, to add the streaming registration next to the demo's.
        server = start_demo_server(workdir, extra={"enable_model_api": "true"})
        gateway = None
        try:
            if not args.overhead_only:
                _register_stream_model(server, workdir)
            urls = server.torchserve.urls
            gateway = GatewayProcess(
                GatewaySettings(
                    "127.0.0.1",
                    free_port(),
                    urls.grpc_inference,
                    urls.grpc_management,
                    runtime_dir=server.runtime_dir,
                    log_dir=server.settings.logs,
                    http_inference=urls.inference,
                )
            ).start()
            payload = _payloads()
            c, p, s = args.concurrency, args.processes, args.seconds
            streams = max(1, c // args.window)
            plan = [
                ("HTTP /predictions (JSON), asyncio client", "http", urls.inference, payload["json"], c, 1),
                (
                    "TorchServe gRPC Predictions (JSON)",
                    "grpc-json",
                    urls.grpc_inference,
                    payload["json"],
                    c,
                    1,
                ),
                ("TorchServe gRPC Predictions (npy)", "grpc-npy", urls.grpc_inference, payload["npy"], c, 1),
                (
                    f"StreamPredictions2, {c} streams x 1 in flight",
                    "grpc-stream",
                    urls.grpc_inference,
                    payload["npy"],
                    c,
                    1,
                ),
                (
                    f"StreamPredictions2, {streams} streams x {args.window} pipelined",
                    "grpc-stream",
                    urls.grpc_inference,
                    payload["npy"],
                    streams,
                    args.window,
                ),
                (
                    "OIP v2 gateway ModelInfer (raw FP32)",
                    "oip",
                    gateway.settings.endpoint,
                    payload["raw"],
                    c,
                    1,
                ),
            ]
            rows: dict[str, dict[str, float]] = {}
            print(f"concurrency {c} outstanding requests, {s:g} s per row, load from {p} asyncio processes")
            print(f"{'':<48} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
            if shutil.which("wrk") and not args.overhead_only:
                body_file = sample_body(workdir / "body.json")
                wrk(f"{urls.inference}/predictions/digits", body_file, c, 2)  # warm-up
                result = wrk(f"{urls.inference}/predictions/digits", body_file, c, int(s))
                rows["HTTP /predictions (JSON), wrk"] = {
                    "rps": result["rps"],
                    "p50_ms": result["p50_ms"],
                    "p99_ms": result["p99_ms"],
                    "errors": result["non_2xx"],
                }
                _print("HTTP /predictions (JSON), wrk", rows["HTTP /predictions (JSON), wrk"])
            for label, kind, target, body, callers, window in [] if args.overhead_only else plan:
                rows[label] = run_load(
                    kind, target, body, concurrency=callers, processes=p, seconds=s, window=window
                )
                _print(label, rows[label])
            overhead = gateway_overhead(
                urls.grpc_inference,
                gateway.settings.endpoint,
                payload,
                rounds=args.rounds,
                seconds=s,
                processes=p,
                gateway_pid=gateway.pid,
                metrics_url=urls.metrics,
            )
        finally:
            if gateway is not None:
                gateway.stop()
            server.stop()
    setup = (
        "demo model-config.yaml (2 workers, batchSize 8, maxBatchDelay 5 ms, top-k answers); one image per "
        f"request; {STREAM_MODEL}: the same archive with {STREAM_CONFIG}; load generator and server share "
        "the machine's cores"
    )
    config = {"seconds": s, "concurrency": c, "processes": p, "window": args.window, "rounds": args.rounds}
    name = "grpc-overhead" if args.overhead_only else "grpc"
    path = save_results(name, {"setup": setup, **config, "results": rows, "gateway_overhead": overhead})
    print(f"results: {path}")


def gateway_overhead(
    direct: str,
    gateway: str,
    payload: dict[str, bytes],
    *,
    rounds: int,
    seconds: float,
    processes: int,
    gateway_pid: int | None = None,
    metrics_url: str | None = None,
) -> dict[str, dict[str, float]]:
    """The OIP gateway against direct TorchServe gRPC (npy), alternating, at 16 and 1 outstanding requests.

    Rows taken one after the other drift with the machine's load (30% here); the two sides take turns
    ``rounds`` times, which one goes first alternating, and the ratios are of the medians. With
    ``gateway_pid``, the gateway's own CPU time per answered request too: unlike req/s on a shared
    machine, it does not depend on what else runs. With ``metrics_url`` (TorchServe's metrics API),
    the mean batch each side got (the handler's ckptserve_batch_size): a batch short of batchSize
    waits maxBatchDelay for the rest.
    """
    import psutil

    gateway_process = psutil.Process(gateway_pid) if gateway_pid else None
    samples: dict[tuple[int, str], list[dict[str, float]]] = {}
    for round_ in range(rounds):
        for c in (16, 1):
            sides = [
                ("direct", "grpc-npy", direct, payload["npy"]),
                ("gateway", "oip", gateway, payload["raw"]),
            ]
            for side, kind, target, body in sides[::-1] if round_ % 2 else sides:
                spent = _cpu_seconds(gateway_process) if side == "gateway" else 0.0
                batched = _batches(metrics_url)
                r = run_load(kind, target, body, concurrency=c, processes=min(c, processes), seconds=seconds)
                instances, batches = (a - b for a, b in zip(_batches(metrics_url), batched, strict=True))
                if batches:
                    r["batch"] = instances / batches
                if side == "gateway" and gateway_process is not None and r["completed"]:
                    r["cpu_us"] = (_cpu_seconds(gateway_process) - spent) / r["completed"] * 1e6
                samples.setdefault((c, side), []).append(r)
    overhead = {}
    for c in (16, 1):
        d, g = (
            {
                k: median([r[k] for r in samples[(c, side)] if k in r] or [0.0])
                for k in ("rps", "p50_ms", "cpu_us", "batch")
            }
            for side in ("direct", "gateway")
        )
        overhead[f"c{c}"] = {
            "direct_rps": d["rps"],
            "gateway_rps": g["rps"],
            "rps_ratio": g["rps"] / d["rps"] if d["rps"] else 0.0,
            "direct_p50_ms": d["p50_ms"],
            "gateway_p50_ms": g["p50_ms"],
            "p50_added_ms": g["p50_ms"] - d["p50_ms"],
            "gateway_cpu_us_per_request": g["cpu_us"],
            "direct_mean_batch": d["batch"],
            "gateway_mean_batch": g["batch"],
        }
        o = overhead[f"c{c}"]
        print(
            f"OIP gateway vs direct TorchServe gRPC (npy), c={c}, median of {rounds} alternating rounds: "
            f"{o['gateway_rps']:.0f} vs {o['direct_rps']:.0f} req/s (x{o['rps_ratio']:.2f}), "
            f"p50 {o['gateway_p50_ms']:.2f} vs {o['direct_p50_ms']:.2f} ms ({o['p50_added_ms']:+.2f} ms), "
            f"gateway CPU {o['gateway_cpu_us_per_request']:.0f} us per request, "
            f"mean batch {o['gateway_mean_batch']:.2f} vs {o['direct_mean_batch']:.2f}"
        )
    return overhead


def _batches(metrics_url: str | None) -> tuple[float, float]:
    """Instances and batches the handler has run so far (its ckptserve_batch_size histogram)."""
    if metrics_url is None:
        return 0.0, 0.0
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()

    def total(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))

    return total("ckptserve_batch_size_sum"), total("ckptserve_batch_size_count")


def _cpu_seconds(process: Any) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


def _print(label: str, r: dict[str, float]) -> None:
    print(f"{label:<48} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>7.0f}")


if __name__ == "__main__":
    main()
