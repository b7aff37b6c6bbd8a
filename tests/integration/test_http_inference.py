"""HTTP inference through a real TorchServe (Java frontend, Python workers) and ckptserve's handler."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.torchserve import TorchServeProcess
from tests.integration.conftest import Trained, describe, http, package

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(trained: Trained, start_server, tmp_path_factory: pytest.TempPathFactory) -> TorchServeProcess:
    store = tmp_path_factory.mktemp("http-store")
    package(
        store,
        "digits",
        handler={"postprocess": {"kind": "raw"}},
        top={"minWorkers": 2, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 50},
        checkpoint=trained.epochs[1],
    )
    package(
        store,
        "digits_topk",
        handler={"postprocess": {"kind": "topk", "k": 3, "labels": "index_to_name.json"}},
        checkpoint=trained.epochs[1],
    )
    return start_server(store, ["digits", "digits_topk"])


def predict(
    server: TorchServeProcess, body: bytes, content_type: str = "application/json", model: str = "digits"
):
    return http(f"{server.urls.inference}/predictions/{model}", body, content_type)


def test_kserve_v1_json_matches_the_in_process_model(server: TorchServeProcess, trained: Trained) -> None:
    images = trained.images[:3]
    status, headers, body = predict(server, json.dumps({"instances": images.tolist()}).encode())
    assert status == 200 and headers["content-type"] == "application/json"
    torch.testing.assert_close(torch.tensor(json.loads(body)["predictions"]), trained.reference(1, images))
    assert headers["x-ckptserve-checkpoint"].startswith("epoch=1@")


def test_a_bare_list_is_read_as_instances(server: TorchServeProcess, trained: Trained) -> None:
    status, _, body = predict(server, json.dumps(trained.images[:1].tolist()).encode())
    assert status == 200
    torch.testing.assert_close(
        torch.tensor(json.loads(body)["predictions"]), trained.reference(1, trained.images[:1])
    )


def test_open_inference_protocol_v2_json(server: TorchServeProcess, trained: Trained) -> None:
    images = trained.images[3:5]
    request = {
        "id": "req-7",
        "inputs": [
            {"name": "input__0", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": images.flatten().tolist()}
        ],
    }
    status, _, body = http(f"{server.urls.inference}/v2/models/digits/infer", json.dumps(request).encode())
    assert status == 200, body
    answer = json.loads(body)
    assert (answer["model_name"], answer["id"]) == ("digits", "req-7")
    (output,) = answer["outputs"]
    assert (output["shape"], output["datatype"]) == ([2, 10], "FP32")
    torch.testing.assert_close(torch.tensor(output["data"]).reshape(2, 10), trained.reference(1, images))


def test_npy_in_npy_out(server: TorchServeProcess, trained: Trained) -> None:
    images = trained.images[5:9]
    buffer = io.BytesIO()
    np.save(buffer, images.numpy())
    status, headers, body = predict(server, buffer.getvalue(), "application/x-npy")
    assert status == 200 and headers["content-type"] == "application/x-npy"
    torch.testing.assert_close(torch.from_numpy(np.load(io.BytesIO(body))), trained.reference(1, images))


def test_topk_with_labels(server: TorchServeProcess, trained: Trained) -> None:
    images = trained.images[:4]
    status, _, body = predict(
        server, json.dumps({"instances": images.tolist()}).encode(), model="digits_topk"
    )
    assert status == 200
    expected = torch.softmax(trained.reference(1, images), dim=1).topk(3)
    names = json.loads((Path(__file__).parents[2] / "model_store/digits/index_to_name.json").read_text())
    for row, scores, indices in zip(
        json.loads(body)["predictions"], expected.values, expected.indices, strict=True
    ):
        assert [entry["index"] for entry in row] == indices.tolist()
        assert [entry["label"] for entry in row] == [names[str(i)] for i in indices.tolist()]
        torch.testing.assert_close(torch.tensor([entry["score"] for entry in row]), scores)


def test_concurrent_requests_are_batched_and_match_unbatched(
    server: TorchServeProcess, trained: Trained
) -> None:
    images = trained.images[:48]

    def one(i: int) -> tuple[int, int, list[float]]:
        status, headers, body = predict(
            server, json.dumps({"instances": images[i : i + 1].tolist()}).encode()
        )
        return status, int(headers["x-ckptserve-batch-requests"]), json.loads(body)["predictions"][0]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(len(images))))
    assert all(status == 200 for status, _, _ in results)
    assert max(batch for _, batch, _ in results) > 1, "16 concurrent clients never shared a batch"
    unbatched = torch.stack([trained.reference(1, images[i : i + 1])[0] for i in range(len(images))])
    torch.testing.assert_close(torch.tensor([row for _, _, row in results]), unbatched)


BAD_REQUESTS = {
    "malformed JSON": (b'{"instances": [1, 2', "application/json", 400, "malformed JSON"),
    "wrong shape": (json.dumps({"instances": [[[0.0] * 7] * 8]}).encode(), "application/json", 400, "shape"),
    "wrong rank": (json.dumps({"instances": [1.0, 2.0]}).encode(), "application/json", 400, "shape"),
    "wrong dtype": (
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "BYTES", "data": ["a"] * 64}]}
        ).encode(),
        "application/json",
        400,
        "BYTES",
    ),
    "strings": (json.dumps({"instances": [[[["a"] * 8] * 8]]}).encode(), "application/json", 400, "number"),
    "empty body": (b" ", "application/json", 400, "empty"),
    "NaN": (json.dumps({"instances": [[[[float("nan")] * 8] * 8]]}).encode(), "application/json", 400, "NaN"),
    "too many instances": (
        json.dumps({"instances": [[[[0.0] * 8] * 8]] * 65}).encode(),
        "application/json",
        413,
        "64",
    ),
    "image bytes": (b"\x89PNG\r\n\x1a\n....", "image/png", 415, "application/json"),
}


def test_bad_requests_get_their_4xx_while_batch_neighbours_succeed(
    server: TorchServeProcess, trained: Trained
) -> None:
    workers = {w["pid"] for w in _workers(server)}
    good = json.dumps({"instances": trained.images[:1].tolist()}).encode()
    jobs = [(good, "application/json", 200, "")] * 8 + list(BAD_REQUESTS.values())

    def send(job: tuple[bytes, str, int, str]) -> tuple[int, dict[str, str], bytes]:
        return predict(server, job[0], job[1])

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    for (name, (_, _, expected, fragment)), (status, _headers, body) in zip(
        BAD_REQUESTS.items(), results[8:], strict=True
    ):
        assert status == expected, (name, body)
        error = json.loads(body)
        assert fragment.lower() in error["error"].lower(), (name, error)
        assert error["code"] == expected and error["type"]
    for status, _, body in results[:8]:
        assert status == 200
        torch.testing.assert_close(
            torch.tensor(json.loads(body)["predictions"]), trained.reference(1, trained.images[:1])
        )
    assert any(int(h["x-ckptserve-batch-requests"]) > 1 for _, h, _ in results[8:]), (
        "no bad request shared a batch"
    )
    assert {w["pid"] for w in _workers(server)} == workers, "a worker died"


def _workers(server: TorchServeProcess) -> list[dict]:
    status, _, body = http(f"{server.urls.management}/models/digits")
    assert status == 200
    return [w for w in json.loads(body)[0]["workers"] if w["status"] == "READY"]


def test_describe_shows_the_served_checkpoint(server: TorchServeProcess, trained: Trained) -> None:
    meta = describe(server, "digits")
    assert meta["checkpoint"]["path"].endswith("model_epoch_1.pth")
    assert meta["checkpoint"]["epoch"] == 1
    assert meta["checkpoint_metadata"]["metrics"]["val_accuracy"] > 0.5
    assert meta["input"] == {"name": "input__0", "shape": [1, 8, 8], "dtype": "float32"}


def test_ckptserve_predict_prints_the_answer(server: TorchServeProcess, trained: Trained) -> None:
    body = json.dumps({"instances": trained.images[:1].tolist()})
    port = server.urls.inference.rsplit(":", 1)[1]
    out = subprocess.run(
        [sys.executable, "-m", "serving", "predict", "digits", "--port", port, "--json", body],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    torch.testing.assert_close(
        torch.tensor(json.loads(out.stdout)["predictions"]), trained.reference(1, trained.images[:1])
    )


def test_serve_fails_fast_with_the_workers_reason(tmp_path: Path, trained: Trained) -> None:
    from tests.conftest import train_reference

    wrong = tmp_path / "small_net.pth"
    torch.save(train_reference().model.state_dict(), wrong)  # another architecture's weights
    store = tmp_path / "store"
    store.mkdir()
    package(store, "mismatch", handler={}, checkpoint=wrong)
    from serving.torchserve import free_port

    ports = [str(free_port()) for _ in range(5)]
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "serve",
            "--model-store",
            str(store),
            "--models",
            "mismatch=mismatch.mar",
            "--http-port",
            ports[0],
            "--management-port",
            ports[1],
            "--metrics-port",
            ports[2],
            "--grpc-port",
            ports[3],
            "--grpc-management-port",
            ports[4],
            "--runtime-dir",
            str(tmp_path / "rt"),
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    elapsed = time.monotonic() - started
    assert out.returncode != 0
    assert "do not fit the architecture" in out.stderr, out.stderr
    assert "missing key(s)" in out.stderr
    assert elapsed < 45, f"took {elapsed:.0f}s to report a load failure"


def test_a_describe_header_on_the_inference_api_is_just_a_request(
    server: TorchServeProcess, trained: Trained
) -> None:
    # TorchServe forwards client headers to the worker; only the management API's describe job may describe.
    url = f"{server.urls.inference}/predictions/digits"
    for body, expected in (
        (json.dumps({"instances": trained.images[:1].tolist()}).encode(), 200),
        (b"", 400),
    ):
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json", "describe": "True"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, answer = response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            status, answer = err.code, json.loads(err.read())
        assert status == expected, answer
        assert "checkpoint" not in answer and "reload" not in answer
    outputs = describe(server, "digits")["outputs"]
    assert outputs == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 10]}]
