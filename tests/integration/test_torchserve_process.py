"""serving.torchserve against a real TorchServe 0.12.0: config, archives, start, readiness, stop."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from serving.errors import ServerError
from serving.protos import grpc_predict_v2_pb2, inference_pb2, inference_pb2_grpc
from serving.torchserve import (
    ServerSettings,
    TorchServeProcess,
    build_archive,
    free_ports,
    stop_from_state,
)
from serving.wire import LOAD_ERROR_MARKER
from tests.polling import wait_until

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).parent / "assets"
HANDLER = ASSETS / "echo_handler.py"
BROKEN_MESSAGE = "weights do not fit the architecture: missing key fc.weight"
CRASH_MESSAGE = "a plain bug in initialize"
# TorchServe serves the Open Inference Protocol's gRPC service under its own package, not KServe's.
OIP_GRPC_SERVICE = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"


# --- helpers ------------------------------------------------------------------------------------


def settings_for(store: Path, runtime_dir: Path, models: list[str], **kwargs: Any) -> ServerSettings:
    ports = free_ports()
    return ServerSettings(model_store=store, runtime_dir=runtime_dir, models=models, **ports, **kwargs)


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post_json(url: str, payload: object, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return http(url, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def predict(
    ts: TorchServeProcess, payload: object, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    return post_json(f"{ts.urls.inference}/predictions/echo", payload, headers)


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with a working echo model and two that cannot load."""
    root = tmp_path_factory.mktemp("archives")
    configs = {
        "echo": "minWorkers: 1\nmaxWorkers: 1\n",
        "broken": f"minWorkers: 1\nmaxWorkers: 1\necho:\n  fail: '{BROKEN_MESSAGE}'\n",
        "crashing": f"minWorkers: 1\nmaxWorkers: 1\necho:\n  crash: '{CRASH_MESSAGE}'\n",
    }
    store = root / "store"
    for name, text in configs.items():
        config = root / f"{name}.yaml"
        config.write_text(text)
        build_archive(name, handler=HANDLER, export_dir=store, config_file=config)
    return store


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServeProcess]:
    """One echo server for the module (TorchServe takes several seconds to start)."""
    settings = settings_for(store, tmp_path_factory.mktemp("server"), ["echo=echo.mar"], open_inference=True)
    with TorchServeProcess(settings) as ts:
        started = time.monotonic()
        assert ts.wait_ready(["echo"], timeout_s=90) == {"echo": 1}
        print(f"TorchServe start to ready: {time.monotonic() - started:.1f} s")
        yield ts


# --- one running server -------------------------------------------------------------------------


def test_http_request_reaches_the_handler(server: TorchServeProcess) -> None:
    status, body = predict(server, {"x": [1, 2]})
    assert status == 200
    assert json.loads(body) == {"model": "echo", "echo": {"x": [1, 2]}}


def test_open_inference_mode_adds_v2_routes_and_keeps_torchserve_routes(server: TorchServeProcess) -> None:
    infer = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
    status, body = post_json(f"{server.urls.inference}/v2/models/echo/infer", infer)
    assert status == 200 and json.loads(body) == {"model": "echo", "echo": infer}
    status, body = http(f"{server.urls.inference}/v2/health/ready")
    assert status == 200 and json.loads(body) == {"ready": True}

    channel = grpc.insecure_channel(server.urls.grpc_inference)
    stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    reply = stub.Predictions(
        inference_pb2.PredictionsRequest(model_name="echo", input={"data": b"hi"}), timeout=10
    )
    assert json.loads(reply.prediction) == {"model": "echo", "echo": "hi"}
    ready = channel.unary_unary(
        f"/{OIP_GRPC_SERVICE}/ModelReady",
        request_serializer=grpc_predict_v2_pb2.ModelReadyRequest.SerializeToString,
        response_deserializer=grpc_predict_v2_pb2.ModelReadyResponse.FromString,
    )
    assert ready(grpc_predict_v2_pb2.ModelReadyRequest(name="echo"), timeout=10).ready
    channel.close()


def test_server_listens_on_loopback_only_and_refuses_model_registration(server: TorchServeProcess) -> None:
    assert server.java_pid is not None
    listening = {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(server.java_pid).net_connections("inet")
        if conn.status == psutil.CONN_LISTEN
    }
    assert {port for _, port in listening} == set(server.settings.ports.values())
    assert {ip.removeprefix("::ffff:") for ip, _ in listening} == {"127.0.0.1"}
    status, _ = http(f"{server.urls.management}/models?url=echo.mar&model_name=again", body=b"")
    assert status == 405


def test_server_keeps_its_files_in_its_own_directories(server: TorchServeProcess) -> None:
    # Two servers on one machine must not share TorchServe's pid file or worker sockets.
    assert int((server.runtime_dir / ".model_server.pid").read_text()) == server.java_pid
    assert list(server.runtime_dir.glob(".ts.sock.*"))
    assert (server.log_dir / "ts_log.log").stat().st_size > 0
    assert server.worker_log.stat().st_size > 0


def test_requests_write_no_log_lines(server: TorchServeProcess) -> None:
    sizes = {path: path.stat().st_size for path in server.log_dir.iterdir()}
    for _ in range(20):
        assert predict(server, {"x": 1})[0] == 200
    # A last request makes the handler log one line. A worker's output reaches the log in order, so once
    # that line is there, any line the 20 requests made is there too.
    barrier = f"log barrier {uuid.uuid4().hex}"
    assert predict(server, {"log": barrier})[0] == 200
    # Worker output goes to model_log.log and to TorchServe's stdout: there, only the barrier line is new.
    echoed = [server.worker_log, server.stdout_path]
    wait_until(lambda: all(barrier in p.read_text() for p in echoed), "the barrier line", timeout_s=60)
    for path in echoed:
        with path.open("rb") as log:
            log.seek(sizes[path])
            added = log.read().decode().splitlines()
        assert len(added) == 1 and added[0].endswith(barrier), (path.name, added)
    grown = {path: path.stat().st_size for path in server.log_dir.iterdir()}
    assert {p: s for p, s in grown.items() if p not in echoed} == {
        p: s for p, s in sizes.items() if p not in echoed
    }


def test_start_fails_fast_when_a_port_is_taken(server: TorchServeProcess, tmp_path: Path) -> None:
    settings = settings_for(server.settings.model_store, tmp_path, ["echo=echo.mar"])
    ts = TorchServeProcess(dataclasses.replace(settings, http_port=server.settings.http_port))
    with pytest.raises(ServerError, match=f"http port {server.settings.http_port} .* already in use"):
        ts.start()
    assert ts.pid is None


def test_start_refuses_a_runtime_dir_in_use(server: TorchServeProcess, tmp_path: Path) -> None:
    other_ports = settings_for(server.settings.model_store, server.runtime_dir, ["echo=echo.mar"])
    ts = TorchServeProcess(dataclasses.replace(other_ports, log_dir=tmp_path))
    with pytest.raises(ServerError, match="already runs from"):
        ts.start()
    assert ts.pid is None


# --- more servers -------------------------------------------------------------------------------


def test_second_server_with_token_auth_runs_beside_the_first_and_stops_from_its_state_file(
    server: TorchServeProcess, store: Path, tmp_path: Path
) -> None:
    settings = settings_for(store, tmp_path / "second", ["echo=echo.mar"], token_auth=True)
    second = TorchServeProcess(settings, stop_on_exit=False)
    try:
        second.start()
        assert second.wait_ready(["echo"], timeout_s=90) == {"echo": 1}
        pids = second.pids
        assert second.java_pid in pids and server.java_pid not in pids

        # Token authorization: no key, no answer; TorchServe wrote the keys into the private runtime dir.
        status, body = predict(second, {"x": 1})
        assert status == 400 and b"Token Authorization failed" in body
        key = json.loads(second.key_file.read_text())["inference"]["key"]
        assert predict(second, {"x": 2}, {"Authorization": f"Bearer {key}"}) == (
            200,
            b'{"model": "echo", "echo": {"x": 2}}',
        )
        assert predict(server, {"x": 3})[0] == 200

        state = json.loads(second.state_path.read_text())
        assert state["pgid"] == second.pid and state["urls"]["inference"] == second.urls.inference
        assert stop_from_state(second.state_path, timeout_s=30) is True
        assert alive(pids) == []
        assert not second.state_path.exists() and not second.key_file.exists()
        assert predict(server, {"x": 4})[0] == 200  # the first server did not notice
    finally:
        second.stop()


def test_a_model_that_cannot_load_fails_fast_with_the_handler_message(store: Path, tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path, ["broken=broken.mar", "crashing=crashing.mar"])
    with TorchServeProcess(settings) as ts:
        with pytest.raises(ServerError) as caught:
            ts.wait_ready(["broken"], timeout_s=120)
        # The first failed attempt's marker line ended the wait, not the deadline nor the restart count:
        # TorchServe retries a worker that cannot load about ten times in 120 s (growing back-off), and
        # by the time wait_ready gave up, the worker had tried once (twice if a retry raced the read).
        marker = f"{LOAD_ERROR_MARKER} {BROKEN_MESSAGE}"
        attempts = ts.worker_log.read_text().count(marker)
        assert 1 <= attempts <= 2, attempts
        assert f"Model 'broken' failed to load: {BROKEN_MESSAGE}" in str(caught.value)
        # No marker line: the worker's traceback says what went wrong.
        with pytest.raises(ServerError, match=f"'crashing' failed to load: ValueError: {CRASH_MESSAGE}"):
            ts.wait_ready(["crashing"], timeout_s=30)
        pids = ts.pids
        assert ts.java_pid in pids
    assert alive(pids) == []
    assert ts.pids == []
    ts.stop()  # idempotent


def test_wait_ready_reports_a_server_that_exits(store: Path, tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path, ["echo=echo.mar"], extra={"max_request_size": "lots"})
    with TorchServeProcess(settings) as ts, pytest.raises(ServerError, match="exited with code"):
        ts.wait_ready(timeout_s=60)
