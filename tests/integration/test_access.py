"""Access end to end: token authorization beyond loopback and TLS, against a real TorchServe and gateway."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from serving.client import AsyncHttpClient, GrpcClient, HttpClient
from serving.errors import AuthenticationError, ServerError
from serving.protos import grpc_predict_v2_pb2 as oip
from serving.protos import grpc_predict_v2_pb2_grpc as oip_grpc
from serving.protos import inference_pb2, inference_pb2_grpc
from serving.torchserve import ServerSettings, free_port, free_ports
from serving.torchserve.server import Server
from tests.certificates import Pki, make_pki
from tests.integration.conftest import Trained, package

pytestmark = pytest.mark.integration


@dataclass
class Secured:
    """`serve` on every interface with TLS and the default access settings (token auth on)."""

    server: Server
    pki: Pki

    @property
    def keys(self) -> dict[str, str]:
        doc = json.loads(self.server.torchserve.key_file.read_text())
        return {api: entry["key"] for api, entry in doc.items()}

    @property
    def key_file(self) -> Path:
        return self.server.torchserve.key_file

    @property
    def oip(self) -> str:
        return f"127.0.0.1:{self.server.oip_grpc_port}"


@pytest.fixture(scope="module")
def secured(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    store = tmp_path_factory.mktemp("access-store")
    package(store, "digits", handler={"postprocess": {"kind": "raw"}}, checkpoint=trained.epochs[1])
    settings = ServerSettings(
        model_store=store,
        runtime_dir=tmp_path_factory.mktemp("rt"),
        models=["digits=digits.mar"],
        host="0.0.0.0",  # beyond loopback: token authorization turns on without being asked
        tls_cert=pki.cert,
        tls_key=pki.key,
        **free_ports(),
    )
    server = Server(settings, oip_grpc_port=free_port())
    server.start(timeout_s=240)
    try:
        yield Secured(server, pki)
    finally:
        server.stop()


def curl(url: str, *args: str) -> tuple[int, bytes]:
    """(HTTP status, body) from the curl CLI; status 0 when curl got no HTTP answer (e.g. a TLS failure)."""
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}", *args, url],
        capture_output=True,
        timeout=90,
    )
    body, _, status = out.stdout.rpartition(b"\n")
    return int(status or 0), body


def _body(trained: Trained, n: int = 2) -> bytes:
    return json.dumps({"instances": trained.images[:n].tolist()}).encode()


def test_beyond_loopback_https_inference_needs_the_inference_key(
    secured: Secured, trained: Trained, tmp_path: Path
) -> None:
    assert secured.server.settings.auth_enabled and secured.server.settings.token_auth is None
    urls = secured.server.torchserve.urls
    assert urls.inference.startswith("https://127.0.0.1:")
    (tmp_path / "body.json").write_bytes(_body(trained))
    url = f"{urls.inference}/predictions/digits"
    post = ["--cacert", str(secured.pki.ca), "-H", "Content-Type: application/json"]
    post += ["--data-binary", f"@{tmp_path / 'body.json'}"]
    # TorchServe 0.12 answers a missing or wrong key with 400 InvalidKeyException (not 401).
    status, body = curl(url, *post)
    assert (status, json.loads(body)["type"]) == (400, "InvalidKeyException"), body
    status, _ = curl(url, *post, "-H", f"Authorization: Bearer {secured.keys['management']}")
    assert status == 400  # the management key is no inference key
    status, body = curl(url, *post, "-H", f"Authorization: Bearer {secured.keys['inference']}")
    assert status == 200, body
    torch.testing.assert_close(
        torch.tensor(json.loads(body)["predictions"]), trained.reference(1, trained.images[:2])
    )
    # The certificate is verified: without the CA curl refuses it, and plain HTTP is no way around it.
    status, _ = curl(url, *post[2:], "-H", f"Authorization: Bearer {secured.keys['inference']}")
    assert status == 0
    status, _ = curl(url.replace("https://", "http://"), *post[2:])
    assert status in (0, 403)


def test_https_management_needs_the_management_key_and_metrics_stay_open(secured: Secured) -> None:
    urls = secured.server.torchserve.urls
    ca = ["--cacert", str(secured.pki.ca)]
    assert curl(f"{urls.management}/models", *ca)[0] == 400
    assert (
        curl(f"{urls.management}/models", *ca, "-H", f"Authorization: Bearer {secured.keys['inference']}")[0]
        == 400
    )
    status, body = curl(
        f"{urls.management}/models/digits", *ca, "-H", f"Authorization: Bearer {secured.keys['management']}"
    )
    assert status == 200 and json.loads(body)[0]["modelName"] == "digits"
    # Deliberately open (SECURITY.md): Prometheus scrapes without a key, over the same TLS.
    status, body = curl(f"{urls.metrics}/metrics", *ca)
    assert status == 200 and b"ts_inference_requests_total" in body
    # Also open (TorchServe describes its API before it checks keys): the API description, no model data.
    status, body = curl(f"{urls.inference}/", *ca, "-X", "OPTIONS")
    assert status == 200 and b'"openapi"' in body and b"digits" not in body
    # TorchServe asks for the inference key on /ping too: probes beyond loopback must send it.
    assert curl(f"{urls.inference}/ping", *ca)[0] == 400
    ping = curl(f"{urls.inference}/ping", *ca, "-H", f"Authorization: Bearer {secured.keys['inference']}")
    assert ping[0] == 200


def _ssl(secured: Secured) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=secured.pki.ca.read_bytes())


def test_grpcio_with_ssl_credentials_and_the_key_reaches_torchserve(
    secured: Secured, trained: Trained
) -> None:
    target = secured.server.torchserve.urls.grpc_inference
    request = inference_pb2.PredictionsRequest(model_name="digits", input={"data": _body(trained, 1)})
    auth = (("authorization", f"Bearer {secured.keys['inference']}"),)
    with grpc.secure_channel(target, _ssl(secured)) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        reply = stub.Predictions(request, metadata=auth, timeout=60)
        torch.testing.assert_close(
            torch.tensor(json.loads(reply.prediction)["predictions"]),
            trained.reference(1, trained.images[:1]),
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predictions(request, timeout=60)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with grpc.insecure_channel(target) as channel:  # no TLS: no answer at all
        with pytest.raises(grpc.RpcError) as caught:
            inference_pb2_grpc.InferenceAPIsServiceStub(channel).Predictions(
                request, metadata=auth, timeout=10
            )
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_grpcio_with_ssl_credentials_and_the_key_reaches_the_oip_gateway(
    secured: Secured, trained: Trained
) -> None:
    images = trained.images[:2].numpy()
    request = oip.ModelInferRequest(model_name="digits", raw_input_contents=[images.tobytes()])
    request.inputs.add(name="input__0", datatype="FP32", shape=list(images.shape))
    auth = (("authorization", f"Bearer {secured.keys['inference']}"),)
    with grpc.secure_channel(secured.oip, _ssl(secured)) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(request, metadata=auth, timeout=60)
        logits = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(2, -1)
        torch.testing.assert_close(torch.from_numpy(logits.copy()), trained.reference(1, trained.images[:2]))
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=60)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert stub.ServerReady(oip.ServerReadyRequest(), timeout=30).ready  # upstream TLS + key work


TRITON_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

url, ca, key, images = sys.argv[1], sys.argv[2], sys.argv[3], np.load(sys.argv[4])
client = triton.InferenceServerClient(url, ssl=True, root_certificates=ca)
inputs = triton.InferInput("input__0", list(images.shape), "FP32")
inputs.set_data_from_numpy(images)
answer = {"live": client.is_server_live()}
result = client.infer("digits", [inputs], headers={"authorization": f"Bearer {key}"})
answer["logits"] = result.as_numpy("output__0").tolist()
try:
    client.infer("digits", [inputs])
except InferenceServerException as exc:
    answer["without_key"] = exc.status()
print(json.dumps(answer))
"""


def test_tritonclient_over_tls_with_the_key(secured: Secured, trained: Trained, tmp_path: Path) -> None:
    np.save(tmp_path / "images.npy", trained.images[:2].numpy())
    args = [secured.oip, str(secured.pki.ca), secured.keys["inference"], str(tmp_path / "images.npy")]
    # tritonclient's generated protos define the same `inference` package as ours: another process.
    out = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["live"]
    torch.testing.assert_close(torch.tensor(answer["logits"]), trained.reference(1, trained.images[:2]))
    assert answer["without_key"] == "StatusCode.UNAUTHENTICATED"


def test_our_clients_read_the_key_file_and_verify_with_the_ca(secured: Secured, trained: Trained) -> None:
    urls = secured.server.torchserve.urls
    image = trained.images[:1]
    expected = trained.reference(1, image)
    access: dict[str, Any] = {"tls_ca": secured.pki.ca, "key_file": secured.key_file}
    with HttpClient(urls.inference, timeout_s=60, **access) as client:
        torch.testing.assert_close(torch.from_numpy(client.predict("digits", image)), expected)

    async def async_predict() -> np.ndarray:
        async with AsyncHttpClient(urls.inference, timeout_s=60, **access) as client:
            return await client.predict("digits", image)

    torch.testing.assert_close(torch.from_numpy(asyncio.run(async_predict())), expected)
    with GrpcClient(urls.grpc_inference, oip_target=secured.oip, timeout_s=60, **access) as rpc:
        torch.testing.assert_close(torch.from_numpy(rpc.predict("digits", image)), expected)
        result = rpc.infer("digits", {"input__0": image})
        torch.testing.assert_close(torch.from_numpy(result.outputs["output__0"]), expected)
    with (
        HttpClient(urls.inference, tls_ca=secured.pki.ca) as client,
        pytest.raises(AuthenticationError, match="Token Authorization failed") as refused,
    ):
        client.predict("digits", image)
    assert "inference key" in (refused.value.hint or "")
    # Without the CA the system's roots do not vouch for the test CA: no request goes through.
    with (
        HttpClient(urls.inference, key_file=secured.key_file, retries=0) as client,
        pytest.raises(ServerError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.predict("digits", image)


def test_predict_cli_over_https_and_grpc_with_the_key(secured: Secured, trained: Trained) -> None:
    settings = secured.server.settings
    body = _body(trained, 1).decode()
    expected = trained.reference(1, trained.images[:1])
    base = [
        sys.executable,
        "-m",
        "serving",
        "predict",
        "digits",
        "--tls-ca",
        str(secured.pki.ca),
        "--json",
        body,
    ]
    # The key from the server's runtime directory, from --key-file, and from the environment.
    runs = [
        ([*base, "--port", str(settings.http_port), "--runtime-dir", str(settings.runtime_dir)], {}),
        (
            [
                *base,
                "--grpc",
                "--port",
                str(settings.grpc_inference_port),
                "--key-file",
                str(secured.key_file),
            ],
            {},
        ),
        ([*base, "--port", str(settings.http_port)], {"CKPTSERVE_TOKEN": secured.keys["inference"]}),
    ]
    for command, env in runs:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
        assert out.returncode == 0, (command, out.stderr)
        torch.testing.assert_close(torch.tensor(json.loads(out.stdout)["predictions"]), expected)
    refused = subprocess.run(
        [*base, "--port", str(settings.http_port)], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1 and json.loads(refused.stdout)["code"] == 400


def _health_check(runtime: Path) -> list[str]:
    """The Dockerfile's HEALTHCHECK command, pointed at this server's runtime directory."""
    lines = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text().splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("HEALTHCHECK"))
    argv = json.loads(lines[at + 1].strip().removeprefix("CMD "))
    assert argv[0] == "ckptserve", "the health check changed shape"
    return [sys.executable, "-m", "serving", *argv[1:], "--runtime-dir", str(runtime)]


def test_serve_on_every_interface_asks_for_the_key_without_being_told(
    trained: Trained, tmp_path: Path
) -> None:
    """The CLI as a container runs it: --host 0.0.0.0, no auth flag. Before, anyone got answers."""
    store = tmp_path / "store"
    store.mkdir()
    package(store, "digits", handler={"postprocess": {"kind": "raw"}}, checkpoint=trained.epochs[1])
    runtime = tmp_path / "rt"
    ports = free_ports()
    flags = [f"--{name.removesuffix('_port').replace('_inference', '').replace('_', '-')}-port={port}"
             for name, port in ports.items()]  # fmt: skip
    command = [sys.executable, "-m", "serving", "serve", "--host", "0.0.0.0", "--model-store", str(store)]
    command += ["--models", "digits=digits.mar", "--runtime-dir", str(runtime), "--no-oip-grpc", *flags]
    serve = subprocess.run(command, capture_output=True, text=True, timeout=240)
    try:
        assert serve.returncode == 0, serve.stderr
        assert "warning" not in serve.stderr
        assert f"keys in {runtime / 'key_file.json'}" in serve.stdout
        url = f"http://127.0.0.1:{ports['http_port']}/predictions/digits"
        request = urllib.request.Request(url, _body(trained, 1), {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=60)
        assert caught.value.code == 400 and b"InvalidKeyException" in caught.value.read()
        # The image's health check reads the management key from the runtime directory by itself.
        health = subprocess.run(_health_check(runtime), capture_output=True, timeout=60)
        assert health.returncode == 0, health.stderr
        predict = [sys.executable, "-m", "serving", "predict", "digits", "--port", str(ports["http_port"])]
        predict += ["--runtime-dir", str(runtime), "--json", _body(trained, 1).decode()]
        out = subprocess.run(predict, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        torch.testing.assert_close(
            torch.tensor(json.loads(out.stdout)["predictions"]), trained.reference(1, trained.images[:1])
        )
    finally:
        subprocess.run([sys.executable, "-m", "serving", "stop", "--runtime-dir", str(runtime)], timeout=60)
