"""TorchServe as seen from the gateway: predictions over HTTP keep-alive, the rest over gRPC; typed errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2

from serving.error_codes import error_from_rpc
from serving.errors import CkptServeError
from serving.protos import inference_pb2_grpc, management_pb2, management_pb2_grpc
from serving.tls import certificate_name, loopback_context
from serving.torchserve.gateway.http_pool import HttpPredictions
from serving.wire import CHANNEL_OPTIONS

log = logging.getLogger(__name__)


class TokenFile:
    """TorchServe's key_file.json (token authorization), re-read when TorchServe rewrites it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, str] = {}

    def key(self, api: str) -> str:
        """The current key of ``api`` ("inference" or "management"); "" while the file is missing."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                doc = json.loads(self.path.read_text())
                self._keys = {name: str(entry.get("key", "")) for name, entry in doc.items()}
                self._stamp = stamp
        except (OSError, ValueError, AttributeError):
            return ""
        return self._keys.get(api, "")


def loopback_channel(target: str, tls_cert: Path | None) -> grpc.aio.Channel:
    """A channel to TorchServe on this machine; with TLS on, it trusts exactly the served certificate."""
    if tls_cert is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    credentials, options = loopback_tls(tls_cert)
    return grpc.aio.secure_channel(target, credentials, options=[*CHANNEL_OPTIONS, *options])


def loopback_tls(tls_cert: Path) -> tuple[grpc.ChannelCredentials, list[tuple[str, str]]]:
    """Credentials trusting ``tls_cert`` and, since the target is a loopback address, its own host name."""
    name = certificate_name(tls_cert)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.ssl_channel_credentials(root_certificates=tls_cert.read_bytes()), options


class TorchServeUpstream:
    """Calls TorchServe over loopback: predictions on its HTTP inference API, health and models on gRPC.

    Predictions go over HTTP/1.1 keep-alive connections (``http_pool``): a grpc.aio client call costs
    the gateway several times the CPU of one HTTP exchange, and it was most of the gateway's cost.
    One gRPC channel per API for the gateway's lifetime: a new channel per request would pay a TCP and
    HTTP/2 handshake each time. Calls do not wait for a connection (``wait_for_ready`` off), so a
    stopped TorchServe answers UNAVAILABLE at once instead of holding requests until their deadline.
    """

    def __init__(
        self,
        inference: str,
        management: str,
        http_inference: str,
        *,
        tokens: TokenFile | None = None,
        tls_cert: Path | None = None,
    ) -> None:
        self.inference_target, self.management_target = inference, management
        self.tokens = tokens
        self._http = HttpPredictions(
            http_inference,
            token=None if tokens is None else lambda: tokens.key("inference"),
            ssl_context=None if tls_cert is None else loopback_context(tls_cert),
        )
        self._inference = loopback_channel(inference, tls_cert)
        self._management = loopback_channel(management, tls_cert)
        inference_stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._inference)
        management_stub = management_pb2_grpc.ManagementAPIsServiceStub(self._management)
        self._ping = inference_stub.Ping
        self._describe = management_stub.DescribeModel
        self._list = management_stub.ListModels

    def _auth(self, api: str) -> tuple[tuple[str, str], ...] | None:
        if self.tokens is None:
            return None
        return (("authorization", f"Bearer {self.tokens.key(api)}"),)

    async def predict(self, model: str, version: str, body: bytes, *, timeout: float) -> bytes:
        """The handler's answer to ``body``; error bodies and TorchServe's statuses raise typed errors."""
        return await self._http.predict(model, version, body, timeout=timeout)

    async def describe(self, model: str, version: str = "", *, customized: bool = False) -> dict[str, Any]:
        """TorchServe's description of one model version (workers, config; the handler's describe())."""
        request = management_pb2.DescribeModelRequest(
            model_name=model, model_version=version, customized=customized
        )
        # A customized describe is queued on a worker like a request: allow it the time one takes.
        timeout = 30.0 if customized else 5.0
        try:
            reply = await self._describe(request, timeout=timeout, metadata=self._auth("management"))
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"TorchServe's management API at {self.management_target}") from None
        described: list[dict[str, Any]] = json.loads(reply.msg)
        if not described:
            raise CkptServeError(f"TorchServe described model {model!r} as an empty list")
        return described[0]

    async def models(self) -> list[str]:
        """Every registered model name (the management API pages them)."""
        names: list[str] = []
        token = ""
        while True:
            request = management_pb2.ListModelsRequest(limit=100, next_page_token=int(token or 0))
            try:
                reply = await self._list(request, timeout=5.0, metadata=self._auth("management"))
            except grpc.RpcError as exc:
                raise error_from_rpc(
                    exc, f"TorchServe's management API at {self.management_target}"
                ) from None
            page = json.loads(reply.msg)
            names += [m["modelName"] for m in page.get("models", [])]
            token = str(page.get("nextPageToken") or "")
            if not token or not page.get("models"):
                return names

    async def live(self) -> bool:
        """Whether TorchServe answers its health check with "Healthy"."""
        try:
            reply = await self._ping(empty_pb2.Empty(), timeout=2.0, metadata=self._auth("inference"))
        except grpc.RpcError:
            return False
        try:
            return bool(json.loads(reply.health).get("status") == "Healthy")
        except (ValueError, AttributeError):
            return False

    async def close(self) -> None:
        await self._http.close()
        await self._inference.close()
        await self._management.close()
