"""`ckptserve demo`: train the embedded model, serve it while training goes on, watch accuracy climb."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from serving.client.http import HttpClient
from serving.torchserve import ServerSettings, free_port, free_ports
from serving.torchserve.package import package_model
from serving.torchserve.server import METRICS_CONFIG, Server
from serving.wire import CHECKPOINT_HEADER, JSON_TYPE


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(workdir: Path, *, epochs: int = 5, keep_running: bool = False, clients: int = 16) -> int:
    # The demo's own training script, installed with ckptserve (the wheel ships model_store/digits).
    from model_store.digits import train as trainer
    from model_store.digits.train import accuracy, load_digits_split, train

    model_dir = Path(trainer.__file__).parent

    workdir = workdir.resolve()
    checkpoints, store = workdir / "checkpoints", workdir / "model_store"
    for path in (checkpoints, store):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    _, test = load_digits_split()

    _say(f"1. training epoch 1 of the digits CNN; checkpoints go to {checkpoints}")
    model, optimizer = train(checkpoints, epochs=1)
    _say(f"   in-process accuracy after epoch 1: {accuracy(model, test):.3f}")

    _say("2. packaging the model: architecture + handler + config; weights stay in the watched directory")
    archive = package_model(
        "digits",
        model_store=store,
        model_file=model_dir / "model.py",
        config=model_dir / "model-config.yaml",
        watch_dir=checkpoints,
        extra_files=[model_dir / "index_to_name.json"],
        handler_overrides={"checkpoint": None, "poll_interval_s": 0.5},
    )
    _say(f"   {archive}")

    settings = ServerSettings(
        model_store=store,
        # In the temp folder (TMPDIR): TorchServe's pid file and worker sockets; removed at the end.
        runtime_dir=Path(tempfile.mkdtemp(prefix="ckptserve-demo-")),
        log_dir=workdir / "logs",
        models=["digits=digits.mar"],
        **free_ports(),
        metrics_config=METRICS_CONFIG if METRICS_CONFIG.is_file() else None,
    )
    # With the OIP v2 gateway, as `ckptserve serve` runs it: the README's gRPC examples work against it.
    server = Server(settings, oip_grpc_port=free_port())
    _say("3. starting TorchServe (Java frontend, 2 Python workers) and the OIP gRPC gateway on loopback")
    started = time.perf_counter()
    try:
        server.start()
        _say(f"   ready in {time.perf_counter() - started:.1f}s\n" + _indent(server.describe_endpoints()))
        url = server.torchserve.urls.inference
        _say(f"4. sending the {len(test[1])} held-out images over HTTP, {clients} clients in parallel")
        served = _evaluate(url, test, clients)
        _say(f"   {served['epochs']}: served accuracy {served['accuracy']:.3f} ({served['rps']:.0f} req/s)")

        _say(f"5. training goes on: epochs 2..{epochs}; each new checkpoint is hot-reloaded while we query")
        for epoch in range(2, epochs + 1):
            model, optimizer = train(
                checkpoints, epochs=1, start_epoch=epoch, model=model, optimizer=optimizer
            )
            waited = _wait_for_epoch(url, test, epoch)
            served = _evaluate(url, test, clients)
            _say(
                f"   epoch {epoch}: picked up in {waited:.1f}s, served accuracy {served['accuracy']:.3f} "
                f"(in-process {accuracy(model, test):.3f})"
            )
        if keep_running:
            _say("6. the server stays up; try it yourself:\n" + _indent(_try_it(server, checkpoints, test)))
        else:
            _say("6. done; `ckptserve demo --keep-running` leaves the server up to try it yourself")
    except BaseException:
        _stop(server)
        raise
    if keep_running:
        server.detach()
    else:
        _stop(server)
    return 0


def _try_it(server: Server, checkpoints: Path, test: tuple[torch.Tensor, torch.Tensor]) -> str:
    """Commands that work against the running demo server, its ports filled in."""
    sample = json.dumps({"instances": test[0][:1].int().tolist()}, separators=(",", ":"))
    urls, ports = server.torchserve.urls, server.settings
    return "\n".join(
        [
            f"curl -s {urls.inference}/predictions/digits -H 'Content-Type: application/json' -d '{sample}'",
            f"ckptserve predict digits --port {ports.http_port} --json '{sample}'",
            f"ckptserve predict digits --grpc --port {ports.grpc_inference_port} --json '{sample}'",
            f"OIP v2 gRPC (GRPCInferenceService): 127.0.0.1:{server.oip_grpc_port}",
            f"curl -s '{urls.management}/models/digits?customized=true'  # the live checkpoint",
            f"python model_store/digits/train.py {checkpoints} --epochs 3   # new checkpoints get served",
            f"ckptserve stop --runtime-dir {server.runtime_dir}",
        ]
    )


def _stop(server: Server) -> None:
    server.stop()
    shutil.rmtree(server.runtime_dir, ignore_errors=True)


def _evaluate(url: str, test: tuple[torch.Tensor, torch.Tensor], clients: int) -> dict[str, float | str]:
    images, labels = test
    shards = [range(i, len(labels), clients) for i in range(clients)]

    def run(indices: range) -> int:
        correct = 0
        with HttpClient(url) as client:
            for i in indices:
                _, body = client.request(
                    "POST",
                    "/predictions/digits",
                    json.dumps({"instances": images[i : i + 1].tolist()}).encode(),
                    JSON_TYPE,
                )
                top = json.loads(body)["predictions"][0][0]["index"]
                correct += int(top == int(labels[i]))
        return correct

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(run, shards))
    elapsed = time.perf_counter() - started
    epochs = _served_epochs(url)
    return {
        "accuracy": sum(results) / len(labels),
        "rps": len(labels) / elapsed,
        "epochs": epochs,
    }


def _served_epochs(url: str) -> str:
    """The checkpoint(s) answering right now, from the response header (both workers, usually)."""
    seen = set()
    with HttpClient(url) as client:
        for _ in range(8):
            client.request("POST", "/predictions/digits", b'{"instances": [' + _ZEROS + b"]}", JSON_TYPE)
            seen.add(client.last_headers.get(CHECKPOINT_HEADER, "?").split("@")[0])
    return ",".join(sorted(seen))


_ZEROS = json.dumps(torch.zeros(1, 8, 8).tolist()).encode()


def _wait_for_epoch(
    url: str, test: tuple[torch.Tensor, torch.Tensor], epoch: int, timeout_s: float = 30.0
) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if _served_epochs(url) == f"epoch={epoch}":
            return time.perf_counter() - started
        time.sleep(0.1)
    raise TimeoutError(f"the server did not pick up epoch {epoch} within {timeout_s:.0f}s")


def _indent(text: str) -> str:
    return "\n".join(f"   {line}" for line in text.splitlines())
