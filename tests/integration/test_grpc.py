"""gRPC through a real TorchServe: its Predictions / StreamPredictions2, the OIP v2 gateway, clients, CLI."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
import torch

from serving.client import AsyncGrpcClient, AsyncHttpClient, GrpcClient, HttpClient
from serving.errors import ModelNotFoundError, RequestError, ServerError, UnsupportedModelError
from serving.protos import grpc_predict_v2_pb2 as oip
from serving.protos import grpc_predict_v2_pb2_grpc as oip_grpc
from serving.protos import inference_pb2, inference_pb2_grpc
from serving.torchserve import TorchServeProcess, distinct_free_ports, free_port
from serving.torchserve.gateway.process import GatewayProcess, GatewaySettings
from tests.integration.conftest import DIGITS, Trained, package

pytestmark = pytest.mark.integration

LABELS = json.loads((DIGITS / "index_to_name.json").read_text())
# What TorchServe 0.12 needs before it streams (StreamPredictions2) to a model; see the README.
STREAM_CONFIG = {
    "minWorkers": 1,
    "maxWorkers": 1,
    "batchSize": 8,
    "maxBatchDelay": 5,
    "sequenceBatching": True,
    "sequenceMaxIdleMSec": 10000,
    "maxSequenceJobQueueSize": 64,
    "maxNumSequence": 16,
}
Tensor = oip.ModelInferRequest.InferInputTensor


@dataclass
class Served:
    torchserve: TorchServeProcess
    gateway: GatewayProcess

    @property
    def grpc(self) -> str:
        return self.torchserve.urls.grpc_inference

    @property
    def oip(self) -> str:
        return self.gateway.settings.endpoint

    def client(self, **kwargs: object) -> GrpcClient:
        return GrpcClient(self.grpc, oip_target=self.oip, **kwargs)


@pytest.fixture(scope="module")
def served(trained: Trained, start_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = tmp_path_factory.mktemp("grpc-store")
    checkpoint = trained.epochs[1]
    package(
        store,
        "digits",
        handler={"postprocess": {"kind": "raw"}},
        top={"minWorkers": 2, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 20},
        checkpoint=checkpoint,
    )
    package(
        store,
        "digits_topk",
        handler={"postprocess": {"kind": "topk", "k": 3, "labels": "index_to_name.json"}},
        checkpoint=checkpoint,
    )
    package(
        store,
        "digits_stream",
        handler={"postprocess": {"kind": "raw"}},
        top=STREAM_CONFIG,
        checkpoint=checkpoint,
    )
    torchserve = start_server(store, ["digits", "digits_topk", "digits_stream"])
    urls = torchserve.urls
    gateway = GatewayProcess(
        GatewaySettings(
            host="127.0.0.1",
            port=free_port(),
            inference=urls.grpc_inference,
            management=urls.grpc_management,
            runtime_dir=torchserve.runtime_dir,
            log_dir=torchserve.log_dir,
            http_inference=urls.inference,
            watch_pgid=torchserve.pid,
        )
    ).start()
    yield Served(torchserve, gateway)
    gateway.stop()


@pytest.fixture(scope="module")
def oip_stub(served: Served) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(served.oip) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _topk(trained: Trained, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    expected = torch.softmax(trained.reference(1, images), dim=1).topk(3)
    return expected.indices, expected.values


# --- TorchServe's own gRPC API, answered by ckptserve's handler -----------------------------------


def test_predictions_json_and_npy_match_the_in_process_model(served: Served, trained: Trained) -> None:
    images = trained.images[:4]
    with grpc.insecure_channel(served.grpc) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        as_json = stub.Predictions(
            inference_pb2.PredictionsRequest(
                model_name="digits", input={"data": json.dumps({"instances": images.tolist()}).encode()}
            ),
            timeout=30,
        )
        as_npy = stub.Predictions(
            inference_pb2.PredictionsRequest(model_name="digits", input={"data": _npy(images.numpy())}),
            timeout=30,
        )
    reference = trained.reference(1, images)
    torch.testing.assert_close(torch.tensor(json.loads(as_json.prediction)["predictions"]), reference)
    torch.testing.assert_close(torch.from_numpy(np.load(io.BytesIO(as_npy.prediction))), reference)


def test_predictions_topk_carries_indices_labels_and_scores(served: Served, trained: Trained) -> None:
    images = trained.images[4:7]
    with served.client() as client:
        rows = client.predict("digits_topk", images.tolist())
    indices, scores = _topk(trained, images)
    assert [[e["index"] for e in row] for row in rows] == indices.tolist()
    assert [[e["label"] for e in row] for row in rows] == [
        [LABELS[str(i)] for i in r] for r in indices.tolist()
    ]
    torch.testing.assert_close(torch.tensor([[e["score"] for e in row] for row in rows]), scores)


def test_stream_predictions2_pipelines_a_stream_and_answers_in_order(
    served: Served, trained: Trained
) -> None:
    images = trained.images[:40]
    with served.client() as client:
        # gRPC pulls the requests on its own thread without waiting for answers: a pipelined stream.
        answers = list(client.stream_predict("digits_stream", (images[i : i + 1].numpy() for i in range(40))))
    assert len(answers) == 40
    torch.testing.assert_close(torch.from_numpy(np.concatenate(answers)), trained.reference(1, images))


def test_stream_predictions2_reports_errors_inside_the_stream(served: Served, trained: Trained) -> None:
    good = trained.images[:1].numpy()
    with served.client() as client:
        stream = client.stream_predict("digits_stream", [good, b'{"instances": [[1, 2]]}', good])
        torch.testing.assert_close(torch.from_numpy(next(stream)), trained.reference(1, trained.images[:1]))
        with pytest.raises(RequestError, match="instance 0 has shape"):
            next(stream)


def test_stream_predictions2_needs_a_sequence_batching_registration(served: Served, trained: Trained) -> None:
    # TorchServe 0.12 fails the stream with a bare UNKNOWN for any other model (Model.getJobGroup).
    with served.client() as client, pytest.raises(UnsupportedModelError, match="sequence batching"):
        list(client.stream_predict("digits", [trained.images[:1].numpy()]))


# --- the standard OIP v2 service --------------------------------------------------------------------


def test_health_and_metadata_reflect_torchserve(served: Served, oip_stub) -> None:
    assert oip_stub.ServerLive(oip.ServerLiveRequest(), timeout=10).live
    assert oip_stub.ServerReady(oip.ServerReadyRequest(), timeout=10).ready
    assert oip_stub.ModelReady(oip.ModelReadyRequest(name="digits"), timeout=10).ready
    assert not oip_stub.ModelReady(oip.ModelReadyRequest(name="no_such_model"), timeout=10).ready
    server = oip_stub.ServerMetadata(oip.ServerMetadataRequest(), timeout=10)
    assert server.name == "ckptserve" and server.version
    meta = oip_stub.ModelMetadata(oip.ModelMetadataRequest(name="digits"), timeout=30)
    assert (meta.name, list(meta.versions), meta.platform) == ("digits", ["1.0"], "pytorch_torchserve")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input__0", "FP32", [-1, 1, 8, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("output__0", "FP32", [-1, 10])]
    topk = oip_stub.ModelMetadata(oip.ModelMetadataRequest(name="digits_topk"), timeout=30)
    assert [(t.name, t.datatype, list(t.shape)) for t in topk.outputs] == [
        ("topk_indices", "INT64", [-1, 3]),
        ("topk_scores", "FP32", [-1, 3]),
        ("topk_labels", "BYTES", [-1, 3]),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        oip_stub.ModelMetadata(oip.ModelMetadataRequest(name="no_such_model"), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        oip_stub.ModelMetadata(oip.ModelMetadataRequest(name="digits_stream"), timeout=10)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "StreamPredictions2" in (caught.value.details() or "")


def test_readiness_follows_the_workers(served: Served, oip_stub) -> None:
    scale = f"{served.torchserve.urls.management}/models/digits_topk?synchronous=true"

    def put(query: str) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{scale}&{query}", method="PUT"), timeout=60).read()

    put("min_worker=0&max_worker=0")
    try:
        assert not oip_stub.ModelReady(oip.ModelReadyRequest(name="digits_topk"), timeout=10).ready
        assert not oip_stub.ServerReady(oip.ServerReadyRequest(), timeout=10).ready
        assert oip_stub.ModelReady(oip.ModelReadyRequest(name="digits"), timeout=10).ready
    finally:
        put("min_worker=1&max_worker=1")
    deadline = time.monotonic() + 60
    while not oip_stub.ModelReady(oip.ModelReadyRequest(name="digits_topk"), timeout=10).ready:
        assert time.monotonic() < deadline, "digits_topk never came back"
        time.sleep(0.2)
    assert oip_stub.ServerReady(oip.ServerReadyRequest(), timeout=10).ready


def test_model_infer_typed_contents_in_typed_out(served: Served, oip_stub, trained: Trained) -> None:
    images = trained.images[:3]
    request = oip.ModelInferRequest(
        model_name="digits",
        id="req-1",
        inputs=[
            Tensor(
                name="input__0",
                datatype="FP32",
                shape=[3, 1, 8, 8],
                contents=oip.InferTensorContents(fp32_contents=images.flatten().tolist()),
            )
        ],
    )
    reply = oip_stub.ModelInfer(request, timeout=30)
    assert (reply.model_name, reply.model_version, reply.id) == ("digits", "1.0", "req-1")
    assert not reply.raw_output_contents
    (output,) = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("output__0", "FP32", [3, 10])
    torch.testing.assert_close(
        torch.tensor(list(output.contents.fp32_contents)).reshape(3, 10), trained.reference(1, images)
    )


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT64", "UINT8"])
def test_model_infer_raw_contents_in_raw_out(
    served: Served, oip_stub, trained: Trained, datatype: str
) -> None:
    images = trained.images[3:5]  # 0..16 integers: exact in every datatype here
    dtype = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "UINT8": "u1"}[datatype]
    request = oip.ModelInferRequest(
        model_name="digits",
        inputs=[Tensor(name="x", datatype=datatype, shape=[2, 1, 8, 8])],
        raw_input_contents=[images.numpy().astype(dtype).tobytes()],
    )
    reply = oip_stub.ModelInfer(request, timeout=30)
    (output,) = reply.outputs
    assert (output.datatype, list(output.shape), len(reply.raw_output_contents)) == ("FP32", [2, 10], 1)
    logits = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    torch.testing.assert_close(torch.from_numpy(logits.copy()), trained.reference(1, images))


def test_model_infer_topk_outputs_and_output_selection(served: Served, oip_stub, trained: Trained) -> None:
    images = trained.images[5:7]
    request = oip.ModelInferRequest(
        model_name="digits_topk",
        inputs=[Tensor(name="input__0", datatype="FP32", shape=[2, 1, 8, 8])],
        raw_input_contents=[images.numpy().tobytes()],
        outputs=[
            oip.ModelInferRequest.InferRequestedOutputTensor(name="topk_labels"),
            oip.ModelInferRequest.InferRequestedOutputTensor(name="topk_scores"),
        ],
    )
    reply = oip_stub.ModelInfer(request, timeout=30)
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [
        ("topk_labels", "BYTES", [2, 3]),
        ("topk_scores", "FP32", [2, 3]),
    ]
    indices, scores = _topk(trained, images)
    with served.client() as client:
        result = client.infer("digits_topk", {"input__0": images})
    assert result.outputs["topk_indices"].tolist() == indices.tolist()
    torch.testing.assert_close(torch.from_numpy(result.outputs["topk_scores"]), scores)
    assert result.outputs["topk_labels"].tolist() == [
        [LABELS[str(i)].encode() for i in r] for r in indices.tolist()
    ]
    raw_scores = np.frombuffer(reply.raw_output_contents[1], dtype="<f4").reshape(2, 3)
    torch.testing.assert_close(torch.from_numpy(raw_scores.copy()), scores)


def _tensor(shape: list[int], datatype: str = "FP32", values: list[float] | None = None) -> Tensor:
    count = int(np.prod(shape))
    return Tensor(
        name="input__0",
        datatype=datatype,
        shape=shape,
        contents=oip.InferTensorContents(fp32_contents=values if values is not None else [0.0] * count),
    )


BAD_INFER: dict[str, tuple[dict[str, Any], str]] = {  # ModelInferRequest fields, message fragment
    "no batch axis": ({"inputs": [_tensor([1, 8, 8])]}, "expected [n, 1, 8, 8]"),
    "wrong size": ({"inputs": [_tensor([1, 1, 8, 7])]}, "has shape [1, 1, 8, 7]"),
    "NaN": ({"inputs": [_tensor([1, 1, 8, 8], values=[float("nan")] * 64)]}, "NaN"),
    "too many instances": ({"inputs": [_tensor([65, 1, 8, 8])]}, "at most 64"),
    "elements vs shape": ({"inputs": [_tensor([2, 1, 8, 8], values=[0.0] * 64)]}, "needs 128"),
    "raw bytes vs shape": (
        {
            "inputs": [Tensor(name="x", datatype="FP32", shape=[1, 1, 8, 8])],
            "raw_input_contents": [b"\0" * 12],
        },
        "needs 256",
    ),
    "unknown datatype": ({"inputs": [Tensor(name="x", datatype="FLOAT", shape=[1, 1, 8, 8])]}, "FLOAT"),
    "strings": (
        {
            "inputs": [
                Tensor(
                    name="x",
                    datatype="BYTES",
                    shape=[1, 1, 8, 8],
                    contents=oip.InferTensorContents(bytes_contents=[b"a"] * 64),
                )
            ]
        },
        "BYTES",
    ),
    "two inputs": ({"inputs": [_tensor([1, 1, 8, 8]), _tensor([1, 1, 8, 8])]}, "exactly one input"),
    "unknown output": (
        {
            "inputs": [_tensor([1, 1, 8, 8])],
            "outputs": [oip.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
        },
        "do not exist",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INFER))
def test_bad_requests_get_invalid_argument_with_a_readable_message(oip_stub, case: str) -> None:
    fields, fragment = BAD_INFER[case]
    with pytest.raises(grpc.RpcError) as caught:
        oip_stub.ModelInfer(oip.ModelInferRequest(model_name="digits", **fields), timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert fragment in (caught.value.details() or "")
    assert "Traceback" not in (caught.value.details() or "")


def test_unknown_model_is_not_found_everywhere(served: Served, oip_stub, trained: Trained) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        oip_stub.ModelInfer(oip.ModelInferRequest(model_name="no_such_model", inputs=[_tensor([1, 1, 8, 8])]))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in (caught.value.details() or "")
    with served.client() as client, pytest.raises(ModelNotFoundError):
        client.predict("no_such_model", trained.images[:1].numpy())


def test_clients_share_one_call_shape_over_http_and_grpc(served: Served, trained: Trained) -> None:
    images = trained.images[7:10]
    reference = trained.reference(1, images)
    http_url = served.torchserve.urls.inference
    with served.client() as grpc_client, HttpClient(http_url) as http_client:
        for client in (grpc_client, http_client):
            torch.testing.assert_close(torch.tensor(client.predict("digits", images.tolist())), reference)
            torch.testing.assert_close(torch.from_numpy(client.predict("digits", images)), reference)
            result = client.infer("digits", {"input__0": images.numpy()}, request_id="r7")
            torch.testing.assert_close(torch.from_numpy(result.outputs["output__0"]), reference)
            assert result["id"] == "r7" and result["outputs"][0]["shape"] == [3, 10]
            with pytest.raises(RequestError, match="shape"):
                client.predict("digits", [[1.0, 2.0]])
            with pytest.raises(RequestError, match="shape"):
                client.infer("digits", {"input__0": images.numpy()[0]})

    async def run_async() -> list[torch.Tensor]:
        async with AsyncGrpcClient(served.grpc, oip_target=served.oip) as a, AsyncHttpClient(http_url) as h:
            calls = [c.predict("digits", images.numpy()) for c in (a, h) for _ in range(8)]
            results = await asyncio.gather(
                *calls, a.infer("digits", {"x": images}), h.infer("digits", {"x": images})
            )
            streamed = [x async for x in a.stream_predict("digits_stream", [images.numpy()] * 4)]
            with pytest.raises(RequestError):
                await a.predict("digits", [[1.0]])
            with pytest.raises(RequestError):
                await h.infer("digits", {"x": images.numpy()[0]})
        arrays = [torch.from_numpy(r) for r in results[:16]]
        arrays += [torch.from_numpy(r.outputs["output__0"]) for r in results[16:]]
        return arrays + [torch.from_numpy(s) for s in streamed]

    for answer in asyncio.run(run_async()):
        torch.testing.assert_close(answer, reference)


def test_ckptserve_predict_over_grpc_prints_the_answer(served: Served, trained: Trained) -> None:
    port = served.grpc.rsplit(":", 1)[1]
    body = json.dumps({"instances": trained.images[:1].tolist()})
    base = [sys.executable, "-m", "serving", "predict", "digits", "--grpc", "--port", port, "--json"]
    out = subprocess.run([*base, body], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    torch.testing.assert_close(
        torch.tensor(json.loads(out.stdout)["predictions"]), trained.reference(1, trained.images[:1])
    )
    bad = subprocess.run([*base, '{"instances": [1, 2'], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 400


# tritonclient's generated protos define the same `inference` package as ours: another process.
TRITON_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

client = triton.InferenceServerClient(sys.argv[1])
images = np.load(sys.argv[2])
answer = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready("digits"),
    "server": client.get_server_metadata(as_json=True),
    "metadata": client.get_model_metadata("digits", as_json=True),
}
inputs = triton.InferInput("input__0", list(images.shape), "FP32")
inputs.set_data_from_numpy(images)
wanted = [triton.InferRequestedOutput("output__0")]
result = client.infer("digits", [inputs], request_id="t-1", outputs=wanted)
answer["id"] = result.get_response().id
answer["logits"] = result.as_numpy("output__0").tolist()
topk = client.infer("digits_topk", [inputs])
answer["indices"] = topk.as_numpy("topk_indices").tolist()
answer["labels"] = [[label.decode() for label in row] for row in topk.as_numpy("topk_labels")]
bad = triton.InferInput("input__0", [1, 8, 8], "FP32")
bad.set_data_from_numpy(images[0])
try:
    client.infer("digits", [bad])
except InferenceServerException as exc:
    answer["error"] = [exc.status(), exc.message()]
print(json.dumps(answer))
"""


def test_tritonclient_works_against_the_gateway_unchanged(
    served: Served, trained: Trained, tmp_path: Path
) -> None:
    images = trained.images[:2]
    np.save(tmp_path / "images.npy", images.numpy())
    out = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, served.oip, str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["live"] and answer["ready"] and answer["model_ready"]
    assert answer["server"]["name"] == "ckptserve"
    assert answer["metadata"]["inputs"][0]["datatype"] == "FP32"
    assert [int(d) for d in answer["metadata"]["inputs"][0]["shape"]] == [-1, 1, 8, 8]
    assert answer["id"] == "t-1"
    torch.testing.assert_close(torch.tensor(answer["logits"]), trained.reference(1, images))
    indices, _ = _topk(trained, images)
    assert answer["indices"] == indices.tolist()
    assert answer["labels"] == [[LABELS[str(i)] for i in row] for row in indices.tolist()]
    assert (
        answer["error"][0] == "StatusCode.INVALID_ARGUMENT" and "expected [n, 1, 8, 8]" in answer["error"][1]
    )


def test_gateway_without_torchserve_answers_unavailable_at_once(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    gateway = GatewayProcess(
        GatewaySettings(
            "127.0.0.1",
            free_port(),
            dead,
            dead,
            runtime_dir=tmp_path,
            log_dir=tmp_path,
            http_inference=f"http://{dead}",
        )
    ).start()
    try:
        with grpc.insecure_channel(gateway.settings.endpoint) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            assert not stub.ServerLive(oip.ServerLiveRequest(), timeout=10).live
            assert not stub.ServerReady(oip.ServerReadyRequest(), timeout=10).ready
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(
                    oip.ModelInferRequest(model_name="digits", inputs=[_tensor([1, 1, 8, 8])]), timeout=5
                )
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 5
    finally:
        gateway.stop()


# --- `ckptserve serve`: the gateway beside TorchServe, in the background, with token authorization ----


def test_serve_runs_the_gateway_in_the_background_and_stop_ends_it(trained: Trained, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    package(store, "digits", handler={"postprocess": {"kind": "raw"}}, checkpoint=trained.epochs[1])
    runtime = tmp_path / "rt"
    names = ("http", "management", "metrics", "grpc", "grpc-management", "oip-grpc")
    ports = dict(zip(names, distinct_free_ports(len(names)), strict=True))
    flags = [f"--{name}-port={port}" for name, port in ports.items()]
    command = [sys.executable, "-m", "serving", "serve", "--model-store", str(store)]
    command += ["--models", "digits=digits.mar", "--runtime-dir", str(runtime), "--token-auth", *flags]
    serve = subprocess.run(
        command, capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    stopped = False
    try:
        assert serve.returncode == 0, serve.stderr
        assert f"gRPC (OIP v2)      127.0.0.1:{ports['oip-grpc']}" in serve.stdout
        gateway_pid = json.loads((runtime / "oip-grpc.json").read_text())["pid"]
        assert psutil.pid_exists(gateway_pid), "the gateway did not outlive `ckptserve serve`"
        keys = json.loads((runtime / "key_file.json").read_text())
        token = keys["inference"]["key"]
        image = trained.images[:1]
        oip_target = f"127.0.0.1:{ports['oip-grpc']}"
        with GrpcClient(
            f"127.0.0.1:{ports['grpc']}", oip_target=oip_target, token=token, timeout_s=30
        ) as client:
            torch.testing.assert_close(
                torch.from_numpy(client.predict("digits", image)), trained.reference(1, image)
            )
            result = client.infer("digits", {"input__0": image})
            torch.testing.assert_close(
                torch.from_numpy(result.outputs["output__0"]), trained.reference(1, image)
            )
        with grpc.insecure_channel(oip_target) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(
                    oip.ModelInferRequest(model_name="digits", inputs=[_tensor([1, 1, 8, 8])]), timeout=10
                )
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert stub.ServerLive(oip.ServerLiveRequest(), timeout=10).live  # probes need no token

        stop = subprocess.run(
            [sys.executable, "-m", "serving", "stop", "--runtime-dir", str(runtime)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        stopped = True
        assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stderr
        assert (
            not psutil.pid_exists(gateway_pid) or psutil.Process(gateway_pid).status() == psutil.STATUS_ZOMBIE
        )
        for target in (oip_target, f"127.0.0.1:{ports['grpc']}"):
            with GrpcClient(target, oip_target=target, timeout_s=3, retries=1) as client:
                started = time.monotonic()
                with pytest.raises(ServerError) as unavailable:
                    if target == oip_target:
                        client.infer("digits", {"input__0": image})
                    else:
                        client.predict("digits", image)
                assert unavailable.value.grpc_code == "UNAVAILABLE"
                assert time.monotonic() - started < 3.5
    finally:
        if not stopped:
            subprocess.run(
                [sys.executable, "-m", "serving", "stop", "--runtime-dir", str(runtime)], timeout=60
            )
