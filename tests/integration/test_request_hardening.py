"""Hostile HTTP requests against a real TorchServe: describe stays on the management API, bodies are
checked on their media type and size before any parsing, and refused bodies leave no memory behind."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from urllib.parse import urlsplit

import pytest

from benchmarks.bodies import MIB, body_of, worker_rss
from serving.torchserve import TorchServeProcess
from tests.integration.conftest import Trained, describe, http, package

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(trained: Trained, start_server, tmp_path_factory: pytest.TempPathFactory) -> TorchServeProcess:
    store = tmp_path_factory.mktemp("hardening-store")
    watch = tmp_path_factory.mktemp("hardening-watch")
    (watch / "model_epoch_1.pth").write_bytes(trained.epochs[1].read_bytes())
    package(
        store,
        "digits",
        handler={"postprocess": {"kind": "raw"}, "watch_dir": str(watch)},
        top={"minWorkers": 2, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 20},
    )
    return start_server(store, ["digits"])


def send(
    server: TorchServeProcess, path: str, body: bytes, headers: dict[str, str], timeout: float = 60
) -> tuple[int, bytes]:
    """One request with exactly these headers (urllib would add a Content-Type of its own)."""
    url = urlsplit(server.urls.inference)
    assert url.hostname is not None
    conn = HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Length": str(len(body)), **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _one_image(trained: Trained) -> bytes:
    return json.dumps({"instances": trained.images[:1].tolist()}).encode()


@pytest.mark.parametrize(
    "path",
    [
        "/predictions/digits",
        "/v2/models/digits/infer",
        "/v1/models/digits:predict",
        "/models/digits/invoke",
        "/invocations?model_name=digits",
        "/digits/predict",
    ],
)
@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "application/json"],
)
def test_a_describe_header_on_any_inference_route_gets_no_describe_data(
    server: TorchServeProcess, path: str, content_type: str
) -> None:
    status, body = send(server, path, b"", {"describe": "True", "Content-Type": content_type})
    assert 400 <= status < 500, body
    text = body.decode(errors="replace")
    for leak in ("pid", "sha256", "watch_dir", "checkpoint_metadata", "rejections"):
        assert leak not in text, text


def test_the_management_api_still_describes(server: TorchServeProcess) -> None:
    meta = describe(server, "digits")
    assert meta["checkpoint"]["sha256"] and meta["pid"] > 0
    assert meta["reload"]["watch_dir"]


def test_a_body_without_content_type_is_read(server: TorchServeProcess, trained: Trained) -> None:
    status, body = send(server, "/predictions/digits", _one_image(trained), {})
    assert status == 200, body
    assert len(json.loads(body)["predictions"][0]) == 10


def test_json_sent_as_a_form_says_which_content_type_to_send(
    server: TorchServeProcess, trained: Trained
) -> None:
    # urllib and curl -d label a body application/x-www-form-urlencoded unless told otherwise; the
    # frontend then turns the JSON into the name of an empty form field ("the request body is empty").
    request = urllib.request.Request(f"{server.urls.inference}/predictions/digits", data=_one_image(trained))
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    answer = json.loads(info.value.read())
    assert info.value.code == 415 and "Content-Type: application/json" in answer["hint"], answer


@pytest.mark.parametrize("content_type", ["image/png", "application/xml", "text/html"])
def test_json_under_a_foreign_media_type_is_415(
    server: TorchServeProcess, trained: Trained, content_type: str
) -> None:
    status, body = send(server, "/predictions/digits", _one_image(trained), {"Content-Type": content_type})
    assert status == 415, body
    answer = json.loads(body)
    assert answer["type"] == "UnsupportedMediaTypeError" and "application/json" in answer["error"]


def test_a_body_beyond_what_max_instances_allow_is_413_naming_the_limit(server: TorchServeProcess) -> None:
    status, _, body = http(f"{server.urls.inference}/predictions/digits", body_of(6 * MIB))
    assert status == 413, body
    answer = json.loads(body)
    assert answer["type"] == "PayloadTooLargeError"
    assert "bytes" in answer["error"] and "64 instances" in answer["error"], answer


def test_large_refused_bodies_leave_the_workers_no_bigger(
    server: TorchServeProcess, trained: Trained
) -> None:
    # The attack of issue 9.4: 48 JSON bodies of 6 MB, 16 at a time, all refused (before the fix the
    # workers parsed each one and kept 150-1,000 MB more for good).
    before = worker_rss(server.urls.management)
    body = body_of(6 * MIB)

    def one(_: int) -> int:
        return http(f"{server.urls.inference}/predictions/digits", body, timeout=120)[0]

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(48)))
    assert statuses == [413] * 48
    ok = send(server, "/predictions/digits", _one_image(trained), {"Content-Type": "application/json"})
    assert ok[0] == 200
    after = worker_rss(server.urls.management)
    assert after.keys() == before.keys(), "a worker restarted"
    growth = {pid: after[pid] - before[pid] for pid in before}  # MiB
    assert all(g < 150 for g in growth.values()), growth


def test_an_empty_multipart_boundary_fails_in_the_frontend_and_harms_no_worker(
    server: TorchServeProcess, trained: Trained
) -> None:
    # TorchServe 0.12.0's frontend throws (netty's HttpPostRequestDecoder.getMultipartDataBoundary)
    # before any job exists: nothing in its config or in the handler can turn this 500 into a 4xx.
    before = worker_rss(server.urls.management)
    status, _ = send(server, "/predictions/digits", b"ab", {"Content-Type": "multipart/form-data; boundary="})
    assert status == 500
    ok = send(server, "/predictions/digits", _one_image(trained), {"Content-Type": "application/json"})
    assert ok[0] == 200 and worker_rss(server.urls.management).keys() == before.keys()
