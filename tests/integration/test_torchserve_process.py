"""serving.torchserve against a real TorchServe 0.12.0: config, archives, start, readiness, stop."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from serving.errors import ConfigError, ServerError
from serving.protos import grpc_predict_v2_pb2, inference_pb2, inference_pb2_grpc
from serving.torchserve import (
    ServerSettings,
    TorchServeProcess,
    build_archive,
    free_ports,
    render_properties,
    stop_from_state,
)
from serving.torchserve.worker_log import last_exception_lines

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).parent / "assets"
HANDLER = ASSETS / "echo_handler.py"
BROKEN_MESSAGE = "weights do not fit the architecture: missing key fc.weight"
CRASH_MESSAGE = "a plain bug in initialize"
# TorchServe serves the Open Inference Protocol's gRPC service under its own package, not KServe's.
OIP_GRPC_SERVICE = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"


# --- helpers ------------------------------------------------------------------------------------


def settings_for(store: Path, runtime_dir: Path, models: list[str], **kwargs: object) -> ServerSettings:
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


# --- configuration ------------------------------------------------------------------------------


def parse_properties(text: str) -> dict[str, str]:
    """Enough of java.util.Properties for what render_properties writes (its only escape is '\\')."""
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value.replace("\\\\", "\\") for key, value in pairs}


def test_rendered_properties_hold_the_safety_settings(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    settings = ServerSettings(model_store=store, runtime_dir=tmp_path / "rt", http_port=9080)
    props = parse_properties(render_properties(settings))

    assert props["inference_address"] == "http://127.0.0.1:9080"
    assert props["management_address"] == "http://127.0.0.1:8081"
    assert props["metrics_address"] == "http://127.0.0.1:8082"
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert (props["grpc_inference_port"], props["grpc_management_port"]) == ("7070", "7071")
    assert props["enable_model_api"] == "false"
    assert props["metrics_mode"] == "prometheus"
    assert props["install_py_dep_per_model"] == "false"
    assert props["disable_token_authorization"] == "true"
    assert props["ts_open_inference_protocol"] == "false"  # off unless asked for (see ServerSettings)
    with_oip = ServerSettings(model_store=store, runtime_dir=tmp_path / "rt", open_inference=True)
    assert parse_properties(render_properties(with_oip))["ts_open_inference_protocol"] == "true"
    # allowed_urls is a Java regex; these paths need no escapes, so Python's re reads it alike.
    allowed = re.compile(props["allowed_urls"])
    assert allowed.fullmatch(f"file://{store}/echo.mar")
    assert not allowed.fullmatch("file:///etc/passwd")
    assert not allowed.fullmatch("https://example.com/model.mar")

    with_auth = parse_properties(render_properties(ServerSettings(store, tmp_path / "rt", token_auth=True)))
    assert "disable_token_authorization" not in with_auth


def test_settings_refuse_what_torchserve_would_misread(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(ConfigError, match="inference_address"):
        render_properties(ServerSettings(store, tmp_path, extra={"inference_address": "http://0.0.0.0:1"}))
    with pytest.raises(ConfigError, match="distinct ports"):
        ServerSettings(store, tmp_path, http_port=7070).validate()
    with pytest.raises(ConfigError, match="not in the model store"):
        ServerSettings(store, tmp_path, models=["echo=missing.mar"]).validate()
    with pytest.raises(ConfigError, match="Unix socket path"):
        ServerSettings(store, tmp_path / ("d" * 120)).validate()
    # Backslashes are escapes in java.util.Properties: they must reach TorchServe doubled.
    props = render_properties(ServerSettings(store, tmp_path, extra={"cors_allowed_origin": r"a\b"}))
    assert "cors_allowed_origin=a\\\\b" in props
    # Properties files may be read as ISO-8859-1: non-ASCII goes in as \uXXXX.
    props = render_properties(ServerSettings(store, tmp_path, extra={"cors_allowed_origin": "é"}))
    assert "cors_allowed_origin=\\u00e9" in props


# --- archives -----------------------------------------------------------------------------------


def test_build_archive_names_missing_files_and_builds_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"serialized_file: expected a file, found nothing at .*nope\.pt"):
        build_archive("m", handler=HANDLER, export_dir=tmp_path, serialized_file=tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="handler"):
        build_archive("m", handler=tmp_path / "missing.py", export_dir=tmp_path)
    with pytest.raises(ConfigError, match="Archive name"):
        build_archive("bad name", handler=HANDLER, export_dir=tmp_path)

    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not really weights")
    folder = build_archive(
        "m",
        handler=HANDLER,
        export_dir=tmp_path / "out",
        serialized_file=weights,
        archive_format="no-archive",
    )
    manifest = json.loads((folder / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"] == {
        "modelName": "m",
        "serializedFile": "weights.pt",
        "handler": "echo_handler.py",
        "modelVersion": "1.0",
    }
    assert (folder / "weights.pt").read_bytes() == b"not really weights"
    with pytest.raises(ConfigError, match="already exists"):
        build_archive(
            "m", handler=HANDLER, export_dir=tmp_path / "out", archive_format="no-archive", force=False
        )


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
    time.sleep(0.5)
    assert {path: path.stat().st_size for path in server.log_dir.iterdir()} == sizes


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
        started = time.monotonic()
        with pytest.raises(ServerError) as caught:
            ts.wait_ready(["broken"], timeout_s=120)
        # Far inside the 120 s budget: the first failed attempt's marker line ended the wait, not the
        # deadline (a wide margin: this 2-core machine can be loaded by other tests).
        assert time.monotonic() - started < 60
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


def test_last_exception_line_of_a_chained_traceback() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "loader.py", line 1, in load',
        "    read()",
        "KeyError: 'fc.weight'",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "handler.py", line 2, in initialize',
        "    load()",
        "CheckpointError: weights do not fit",
        "  (indented second line of the message)",
        "Backend worker process died.",
    ]
    assert last_exception_lines(lines) == ["CheckpointError: weights do not fit"]
    # The frontend may stop reading a dying worker mid-traceback; the next worker's lines are no error.
    cut_off = ["Traceback (most recent call last):", '  File "worker.py", line 3', "s_name_part0=/tmp/x"]
    assert last_exception_lines(cut_off) == []
