"""The serving lifecycle from the user's side: `ckptserve serve/predict/status/stop` as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import torch

from serving.protos import grpc_predict_v2_pb2 as oip
from serving.protos import grpc_predict_v2_pb2_grpc as oip_grpc
from serving.torchserve import free_port, free_ports
from serving.torchserve.config import Ports
from tests.integration.conftest import Trained, http, package

START_TIMEOUT_S = 240.0  # a loaded 2-core machine starts Java and two workers slowly
GONE_WITHIN_S = 10.0  # the promise for a stop signal
_FLAGS = {
    "http_port": "--http-port",
    "management_port": "--management-port",
    "metrics_port": "--metrics-port",
    "grpc_inference_port": "--grpc-port",
    "grpc_management_port": "--grpc-management-port",
}


def ckptserve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args], capture_output=True, text=True, timeout=timeout
    )


def wait_for(what: str, condition: Callable[[], Any], timeout_s: float = START_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting {timeout_s:.0f} s for {what}"
        time.sleep(0.2)


@dataclass
class Serve:
    """One `ckptserve serve --foreground` subprocess, tagged so that all its descendants can be found."""

    proc: subprocess.Popen[str]
    runtime_dir: Path
    ports: Ports
    oip_port: int
    tag: str
    lines: list[str] = field(default_factory=list)

    @property
    def inference(self) -> str:
        return f"http://127.0.0.1:{self.ports['http_port']}"

    def output(self) -> str:
        """What serve printed so far (stdout and stderr together), read without blocking."""
        log = self.runtime_dir.parent / f"{self.runtime_dir.name}.console"
        return log.read_text(errors="replace") if log.exists() else ""

    def printed(self, text: str) -> bool:
        return text in self.output()

    def processes(self) -> list[psutil.Process]:
        """Every live process started for this server (TorchServe's wrapper, Java, workers, gateway)."""
        found = []
        for proc in psutil.process_iter():
            try:
                ours = proc.environ().get("CKPTSERVE_TEST_TAG") == self.tag
                if ours and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def kill_leftovers(self) -> None:
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(store: Path, *extra: str, models: str = "digits=digits.mar", foreground: bool = True) -> Serve:
        runtime_dir = tmp_path / f"rt{len(started)}"
        ports, oip_port, tag = free_ports(), free_port(), uuid.uuid4().hex
        flags = [arg for name, port in ports.items() for arg in (_FLAGS[name], str(port))]
        console = (tmp_path / f"{runtime_dir.name}.console").open("w")
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "serving", "serve", "--model-store", str(store)),
                *(["--foreground"] if foreground else []),
                *("--models", models, "--runtime-dir", str(runtime_dir), "--oip-grpc-port", str(oip_port)),
                *flags,
                *extra,
            ],
            stdout=console,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "CKPTSERVE_TEST_TAG": tag, "PYTHONUNBUFFERED": "1"},
        )
        console.close()
        serve = Serve(proc, runtime_dir, ports, oip_port, tag)
        started.append(serve)
        return serve

    yield start
    for serve in started:
        if serve.proc.poll() is None:
            serve.proc.send_signal(signal.SIGTERM)
            try:
                serve.proc.wait(60)
            except subprocess.TimeoutExpired:
                serve.proc.kill()
        serve.kill_leftovers()


def up(serve: Serve) -> None:
    """Wait until serve printed its endpoint list (start-up done), failing early if it exited."""

    def ready() -> bool:
        code = serve.proc.poll()
        assert code is None, f"serve exited with {code}:\n{serve.output()}"
        return serve.printed("inference (HTTP)")

    wait_for("serve to print its endpoints", ready)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Path:
    """An archive with a bundled checkpoint: the quickest server to start."""
    store = tmp_path_factory.mktemp("store")
    package(store, "digits", handler={"checkpoint": trained.epochs[1].name}, checkpoint=trained.epochs[1])
    return store


def predict_json(images: torch.Tensor) -> str:
    return json.dumps({"instances": images.tolist()})


def predict_http(serve: Serve, images: torch.Tensor) -> tuple[int, dict[str, str], bytes]:
    return http(f"{serve.inference}/predictions/digits", predict_json(images).encode())


# --- item 1: --models NAME ------------------------------------------------------------------------


def test_serve_models_by_bare_name(start_serve: Callable[..., Serve], store: Path, trained: Trained) -> None:
    serve = start_serve(store, models="digits", foreground=False)  # a bare NAME, as --help offers
    assert serve.proc.wait(START_TIMEOUT_S) == 0, serve.output()
    assert serve.printed("running in the background"), serve.output()
    code, _, body = predict_http(serve, trained.images[:2])
    assert code == 200, body
    stopped = ckptserve("stop", "--runtime-dir", str(serve.runtime_dir))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert wait_for("every process to exit", lambda: not serve.processes(), GONE_WITHIN_S)


def test_an_unknown_model_name_is_refused_before_start(tmp_path: Path, store: Path) -> None:
    run = ckptserve("serve", "--model-store", str(store), "--models", "digts", "--runtime-dir", str(tmp_path))
    assert run.returncode == 2
    assert "digts.mar" in run.stderr and "digits.mar" in run.stderr, run.stderr


# --- items 4 and 6: find the server without ports, status, a clean stop ------------------------------


def test_predict_and_status_find_the_server_and_stop_is_clean(
    start_serve: Callable[..., Serve], store: Path, trained: Trained
) -> None:
    serve = start_serve(store)
    up(serve)
    rt = str(serve.runtime_dir)

    # predict finds the server's port in the runtime dir (it is not 8080)
    answer = ckptserve("predict", "digits", "--json", predict_json(trained.images[:2]), "--runtime-dir", rt)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    got = torch.tensor(json.loads(answer.stdout)["predictions"])
    assert torch.allclose(got, trained.reference(1, trained.images[:2]), atol=1e-4)

    shown = ckptserve("status", "--runtime-dir", rt, "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["running"] and status["ready"]
    assert status["urls"]["inference"] == serve.inference
    assert status["oip_grpc"] == f"127.0.0.1:{serve.oip_port}"
    (model,) = status["models"]
    assert model["name"] == "digits" and model["state"] == "serving" and model["ready"]
    assert model["workers"] and all(w["status"] == "READY" for w in model["workers"])
    assert Path(model["checkpoint"]).name == trained.epochs[1].name and model["epoch"] == 1
    text = ckptserve("status", "--runtime-dir", rt)
    assert "digits" in text.stdout and "ready" in text.stdout and str(serve.ports["http_port"]) in text.stdout

    stopped = ckptserve("stop", "--runtime-dir", rt)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert serve.proc.wait(60) == 0, serve.output()
    assert "ERROR" not in serve.output()
    assert wait_for("every process to exit", lambda: not serve.processes(), GONE_WITHIN_S) is not None


# --- item 2: a server started before training wrote anything waits ------------------------------


def test_a_server_started_before_training_waits_for_the_first_checkpoint(
    start_serve: Callable[..., Serve], tmp_path_factory: pytest.TempPathFactory, trained: Trained
) -> None:
    store = tmp_path_factory.mktemp("waiting-store")
    watch = tmp_path_factory.mktemp("training") / "checkpoints"  # training has not even created it
    package(
        store,
        "digits",
        # The demo config's shape: a checkpoint name that is not there yet, and a watch dir.
        handler={"checkpoint": "model_epoch_1.pth", "watch_dir": str(watch), "poll_interval_s": 0.5},
        top={"startupTimeout": 10},  # a worker that blocked in initialize() would be killed after 10 s
    )
    serve = start_serve(store)
    up(serve)
    # serve prints the waiting line after a describe round trip to the worker, maybe after the endpoints.
    wait_for("the waiting line", lambda: serve.printed(f"waiting for the first checkpoint in {watch}"))
    rt = str(serve.runtime_dir)

    def status() -> dict[str, Any]:
        shown = ckptserve("status", "--runtime-dir", rt, "--json", "--ready")
        return {**json.loads(shown.stdout), "exit": shown.returncode}

    probe = ["status", "--runtime-dir", rt, "--ready", "--quiet"]  # k8s/base/deployment.yaml's readiness
    probed = ckptserve(*probe)
    assert (probed.returncode, probed.stdout) == (3, ""), probed.stderr
    before = status()
    assert before["exit"] == 3 and not before["ready"]
    (model,) = before["models"]
    assert model["state"] == "waiting" and model["waiting_for"] == str(watch) and not model["ready"]
    worker_pids = sorted(w["pid"] for w in model["workers"])
    with grpc.insecure_channel(f"127.0.0.1:{serve.oip_port}") as channel:
        ready = oip_grpc.GRPCInferenceServiceStub(channel).ModelReady
        assert not ready(oip.ModelReadyRequest(name="digits"), timeout=30).ready

        # Waiting outlasts TorchServe's startupTimeout: still up, still answering 503 with the directory.
        waited_from = time.monotonic()
        while time.monotonic() - waited_from < 15:
            code, _, body = predict_http(serve, trained.images[:1])
            assert code == 503, body
            error = json.loads(body)
            assert error["type"] == "ModelNotReadyError" and str(watch) in error["error"], error
            assert serve.proc.poll() is None, serve.output()
            time.sleep(1.0)

        watch.mkdir()
        shutil.copy(trained.epochs[2], watch / ".incoming.tmp")
        # It lands atomically, as training writes.
        os.replace(watch / ".incoming.tmp", watch / trained.epochs[2].name)

        def served() -> dict[str, str] | None:
            code, headers, body = predict_http(serve, trained.images[:4])
            return {**headers, "body": body.decode()} if code == 200 else None

        answer = wait_for("the first checkpoint to be served", served, 120)
        got = torch.tensor(json.loads(answer["body"])["predictions"])
        assert torch.allclose(got, trained.reference(2, trained.images[:4]), atol=1e-4)
        assert answer["x-ckptserve-checkpoint"].startswith("epoch=2@")
        wait_for("every worker to serve", lambda: ckptserve(*probe).returncode == 0, 120)
        assert ready(oip.ModelReadyRequest(name="digits"), timeout=30).ready

    (model,) = status()["models"]
    assert sorted(w["pid"] for w in model["workers"]) == worker_pids  # no worker was restarted
    assert Path(model["checkpoint"]).name == trained.epochs[2].name


# --- item 5: a signal at any moment stops everything and leaves nothing behind ------------------


def _first_worker(serve: Serve) -> bool:
    return any(serve.runtime_dir.glob(".ts.sock.*"))


@pytest.mark.parametrize(
    ("moment", "how"),
    [
        ("launched", signal.SIGTERM),  # TorchServe's process exists, nothing answers yet
        ("worker", signal.SIGTERM),  # a worker is loading the model
        ("steady", signal.SIGTERM),
        ("steady", signal.SIGINT),
        ("steady", "ckptserve stop"),  # item 4: a requested stop is a clean exit
        # a closed terminal or SSH session: before, the CLI died and orphaned TorchServe and the gateway
        ("launched", signal.SIGHUP),
        ("worker", signal.SIGHUP),
        ("steady", signal.SIGHUP),
    ],
)
def test_a_stop_at_any_moment_stops_every_process_cleanly(
    start_serve: Callable[..., Serve], store: Path, moment: str, how: signal.Signals | str
) -> None:
    serve = start_serve(store)
    reached: dict[str, Callable[[], bool]] = {
        "launched": lambda: (serve.runtime_dir / "server.json").exists(),
        "worker": lambda: _first_worker(serve),
        "steady": lambda: serve.printed("inference (HTTP)"),
    }
    wait_for(moment, lambda: reached[moment]() or serve.proc.poll() is not None)
    assert serve.proc.poll() is None, serve.output()
    assert serve.processes(), "nothing was started"
    if isinstance(how, str):
        stopped = ckptserve("stop", "--runtime-dir", str(serve.runtime_dir))
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    else:
        serve.proc.send_signal(how)
    gone = lambda: serve.proc.poll() is not None and not serve.processes()  # noqa: E731
    assert wait_for("every process to exit", gone, GONE_WITHIN_S)
    assert serve.proc.returncode == 0, serve.output()
    assert "Traceback" not in serve.output() and "ERROR" not in serve.output(), serve.output()
