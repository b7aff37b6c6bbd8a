"""Attack on the inference routes of one real TorchServe: hostile bodies on every route are a typed 4xx
({code, type, error, hint}), never a 5xx from our code, never a worker restart, never describe data."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
import pytest

from serving.torchserve import TorchServeProcess
from tests.integration.conftest import Trained, http, package
from tests.integration.test_request_hardening import send

pytestmark = pytest.mark.integration

ROUTES = [
    "/predictions/digits",
    "/v2/models/digits/infer",
    "/v1/models/digits:predict",
    "/models/digits/invoke",
]
JSON = {"Content-Type": "application/json"}
FLAT = [0.0] * 64


def _v2(**field: Any) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input__0", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": FLAT, **field}]}
    ).encode()


def _npy_header(header: str) -> bytes:
    text = (header.ljust(117) + "\n").encode()
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


# (name, body, headers, the status a client must get)
HOSTILE: list[tuple[str, bytes, dict[str, str], int]] = [
    ("v2-datatype-list", _v2(datatype=["FP32"]), JSON, 400),
    ("v2-datatype-object", _v2(datatype={"FP32": 1}), JSON, 400),
    ("v2-shape-product-overflows", _v2(shape=[2**62, 2**62, 8, 8]), JSON, 400),
    ("v2-data-length-mismatch", _v2(data=[0.0] * 63), JSON, 400),
    ("v2-integer-beyond-64-bits", _v2(datatype="INT64", data=[10**30] * 64), JSON, 400),
    ("v1-nan-literal", b'{"instances": [[[' + b",".join([b"[NaN,0,0,0,0,0,0,0]"] * 8) + b"]]]}", JSON, 400),
    ("v1-integer-beyond-64-bits", json.dumps({"instances": [[[[10**30] * 8] * 8]]}).encode(), JSON, 400),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, JSON, 400),
    ("random-bytes", bytes(range(256)) * 16, {}, 400),
    (
        "npy-object-pickle",
        _npy(np.array([{"a": 1}], dtype=object)),
        {"Content-Type": "application/x-npy"},
        400,
    ),
    (
        "npy-shape-of-477-gib",
        _npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (10**9, 1, 8, 8), }"),
        {"Content-Type": "application/x-npy"},
        400,
    ),
    (
        "npy-bad-header",
        b"\x93NUMPY\x01\x00\x10\x00{'descr': 'zz'}  ",
        {"Content-Type": "application/octet-stream"},
        400,
    ),
    (
        "json-as-image-png",
        json.dumps({"instances": [[[[0.0] * 8] * 8]]}).encode(),
        {"Content-Type": "image/png"},
        415,
    ),
    ("describe-header-no-body", b"", {"describe": "True"}, 400),
    (
        "describe-header-form-no-body",
        b"",
        {"describe": "True", "Content-Type": "application/x-www-form-urlencoded"},
        415,
    ),
]


@pytest.fixture(scope="module")
def server(trained: Trained, start_server, tmp_path_factory: pytest.TempPathFactory) -> TorchServeProcess:
    store = tmp_path_factory.mktemp("attack-store")
    watch = tmp_path_factory.mktemp("attack-watch")
    (watch / "model_epoch_1.pth").write_bytes(trained.epochs[1].read_bytes())
    package(store, "digits", handler={"watch_dir": str(watch)}, top={"minWorkers": 2, "maxWorkers": 2})
    server = start_server(store, ["digits"])
    # start_server returns at the first READY worker; the pids compared below must be both workers'.
    deadline = time.monotonic() + 120
    while not all(w["status"] == "READY" and int(w["pid"]) > 0 for w in workers(server)):
        assert time.monotonic() < deadline, f"workers never all READY: {workers(server)}"
        time.sleep(0.2)
    return server


def workers(server: TorchServeProcess) -> list[dict[str, Any]]:
    status, _, body = http(f"{server.urls.management}/models/digits")
    assert status == 200, body
    return list(json.loads(body)[0]["workers"])


def worker_pids(server: TorchServeProcess) -> list[int]:
    return sorted(int(w["pid"]) for w in workers(server))


def test_hostile_bodies_on_every_route_are_typed_4xx_and_no_worker_restarts(
    server: TorchServeProcess,
) -> None:
    before = worker_pids(server)
    for route in ROUTES:
        for name, body, headers, expected in HOSTILE:
            status, answer = send(server, route, body, headers)
            assert status == expected, f"{route} {name}: {status} {answer[:300]!r}"
            error = json.loads(answer)
            assert set(error) == {"code", "type", "error", "hint"}, f"{route} {name}: {error}"
            assert error["error"] and error["hint"], f"{route} {name}: {error}"
            assert "watch_dir" not in answer.decode(errors="replace"), f"{route} {name}: describe leaked"
    assert worker_pids(server) == before, "a hostile request killed or restarted a worker"
