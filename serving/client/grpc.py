"""gRPC clients (sync and asyncio): TorchServe's Predictions / StreamPredictions2 and the OIP v2 gateway."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from serving.client.access import grpc_credentials, resolve_token
from serving.client.common import (
    InferResult,
    Tensors,
    decode_answer,
    encode_instances,
    named_arrays,
    predictions,
    raw_input,
)
from serving.codecs.oip_grpc import fill, to_numpy
from serving.error_codes import (
    error_from_rpc,
    error_from_status,
)
from serving.errors import CkptServeError, DeadlineExceededError, UnsupportedModelError
from serving.protos import grpc_predict_v2_pb2 as oip
from serving.protos import grpc_predict_v2_pb2_grpc as oip_grpc
from serving.protos import inference_pb2, inference_pb2_grpc
from serving.retry import Backoff, retryable
from serving.wire import CHANNEL_OPTIONS

DEFAULT_OIP_PORT = 8001
_Reply = TypeVar("_Reply")  # the response message of the rpc that _call makes


def _oip_target(target: str, oip_target: str | None) -> str:
    return oip_target or f"{target.rsplit(':', 1)[0]}:{DEFAULT_OIP_PORT}"


def infer_request(
    model: str, tensors: Tensors, outputs: Sequence[str] | None, request_id: str | None, version: str
) -> oip.ModelInferRequest:
    """An OIP ModelInferRequest with every input as raw little-endian bytes (no per-element protobuf)."""
    request = oip.ModelInferRequest(model_name=model, model_version=version, id=request_id or "")
    for name, array in named_arrays(tensors):
        datatype, data = raw_input(array)
        raw = fill(request.inputs.add(), name, data, raw=True)
        request.inputs[-1].datatype = datatype
        request.raw_input_contents.append(raw or b"")
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def infer_result(reply: oip.ModelInferResponse) -> InferResult:
    raw = reply.raw_output_contents
    # Copied: arrays over the reply's bytes are read-only, which surprises callers (torch.from_numpy warns).
    outputs = {
        t.name: to_numpy(t, raw[i] if i < len(raw) else None).copy() for i, t in enumerate(reply.outputs)
    }
    datatypes = {t.name: t.datatype for t in reply.outputs}
    return InferResult(reply.model_name, reply.model_version, reply.id, outputs, datatypes)


def _stream_request(
    model: str, version: str, sequence_id: str, item: Any
) -> inference_pb2.PredictionsRequest:
    body, _ = encode_instances(item)
    return inference_pb2.PredictionsRequest(
        model_name=model, model_version=version, input={"data": body}, sequence_id=sequence_id
    )


def _stream_answer(reply: inference_pb2.PredictionResponse, target: str) -> Any:
    if reply.HasField("status") and reply.status.code != 0:
        # TorchServe reports its own refusals inside the stream; the reason sits in an ErrorInfo detail.
        reasons = "\n".join(d.value.decode("utf-8", "replace") for d in reply.status.details)
        raise error_from_status(reply.status.code, f"{reply.status.message}\n{reasons}", target)
    return predictions(decode_answer(reply.prediction))


def _stream_error(exc: grpc.RpcError, model: str, target: str) -> CkptServeError:
    if exc.code() is grpc.StatusCode.UNKNOWN and not exc.details():
        # TorchServe 0.12 dereferences the model's sequence table, which only sequence batching
        # creates (Model.getJobGroup): any other model ends the stream with a bare UNKNOWN.
        return UnsupportedModelError(
            f"TorchServe ended the StreamPredictions2 stream to {model!r} with UNKNOWN: TorchServe 0.12 "
            "streams only to models registered with sequence batching",
            hint="register the archive a second time with `sequenceBatching: true` and "
            "`sequenceMaxIdleMSec` in its model-config.yaml, and stream to that registration",
        )
    return error_from_rpc(exc, target)


class _Base:
    def __init__(
        self,
        target: str = "127.0.0.1:7070",
        *,
        oip_target: str | None = None,
        timeout_s: float = 30.0,
        token: str | None = None,
        key_file: str | Path | None = None,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        retries: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        self.target, self.oip_target = target, _oip_target(target, oip_target)
        self.timeout_s = timeout_s
        self.backoff = Backoff(retries, backoff_s)
        token = resolve_token(token, key_file)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        # TLS when asked for or given a CA: the server is verified against ``tls_ca`` or the system's roots.
        self._credentials = grpc_credentials(tls_ca) if tls or tls_ca is not None else None

    def _deadline_error(self, target: str) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"No answer from {target} within {self.timeout_s:g} s.", hint="Allow more time."
        )


class GrpcClient(_Base):
    """Synchronous client: ``predict`` over TorchServe's gRPC API (``target``, port 7070 by default),
    ``infer`` over the OIP v2 gateway (``oip_target``, the same host's port 8001 by default).

    Each call has a deadline of ``timeout_s`` that covers its retries; only UNAVAILABLE is retried,
    with exponential backoff. Errors are typed: RequestError (INVALID_ARGUMENT), ModelNotFoundError,
    ServerError (unreachable), DeadlineExceededError, ... Channels are opened once and reused.
    """

    def __init__(self, target: str = "127.0.0.1:7070", **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._channels: dict[str, grpc.Channel] = {}

    def _channel(self, target: str) -> grpc.Channel:
        if target not in self._channels:
            if self._credentials is None:
                self._channels[target] = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
            else:
                self._channels[target] = grpc.secure_channel(
                    target, self._credentials, options=CHANNEL_OPTIONS
                )
        return self._channels[target]

    def _call(self, method: Callable[..., _Reply], request: object, target: str) -> _Reply:
        attempts = self.backoff.attempts(self.timeout_s)
        while True:
            remaining = attempts.remaining()
            if remaining <= 0:
                raise self._deadline_error(target)
            try:
                return method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                err = error_from_rpc(exc, target)
            delay = attempts.next_delay() if retryable(err) else None
            if delay is None:
                raise err
            time.sleep(delay)

    def request(self, model: str, body: bytes, *, version: str = "") -> bytes:
        """One raw Predictions call: the body as sent (JSON or npy), the handler's bytes back."""
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel(self.target))
        request = inference_pb2.PredictionsRequest(
            model_name=model, model_version=version, input={"data": body}
        )
        return self._call(stub.Predictions, request, self.target).prediction

    def predict(self, model: str, instances: Any, *, version: str = "") -> Any:
        """KServe v1 rows in, predictions out; an array (or tensor) travels as npy and comes back as one."""
        body, _ = encode_instances(instances)
        return predictions(decode_answer(self.request(model, body, version=version)))

    def infer(
        self,
        model: str,
        tensors: Tensors,
        *,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
        version: str = "",
    ) -> InferResult:
        """Open Inference Protocol v2: ``{"name": array}`` (or OIP JSON inputs) in, named arrays out."""
        stub = oip_grpc.GRPCInferenceServiceStub(self._channel(self.oip_target))
        request = infer_request(model, tensors, outputs, request_id, version)
        return infer_result(self._call(stub.ModelInfer, request, self.oip_target))

    def stream_predict(
        self,
        model: str,
        items: Iterable[Any],
        *,
        version: str = "",
        sequence_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[Any]:
        """StreamPredictions2: send every item on one stream without waiting, yield the answers in order.

        The model must be registered with sequence batching (see the README's gRPC section). The
        first error ends the stream with its typed error.
        """
        sequence = sequence_id or f"ckptserve-{uuid.uuid4().hex}"
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel(self.target))
        lock = threading.Condition()
        counts = {"sent": 0, "answered": 0, "closed": False}

        def requests() -> Iterator[inference_pb2.PredictionsRequest]:
            for item in items:
                request = _stream_request(model, version, sequence, item)
                with lock:
                    counts["sent"] += 1
                yield request
            # TorchServe completes the response stream as soon as the client half-closes, dropping
            # answers still in flight: half-close only once every answer has arrived.
            with lock:
                lock.wait_for(lambda: counts["answered"] >= counts["sent"] or counts["closed"])

        call = stub.StreamPredictions2(requests(), timeout=timeout_s, metadata=self._metadata)
        try:
            for reply in call:
                with lock:
                    counts["answered"] += 1
                    lock.notify_all()
                yield _stream_answer(reply, self.target)
        except grpc.RpcError as exc:
            raise _stream_error(exc, model, self.target) from None
        finally:
            with lock:
                counts["closed"] = True
                lock.notify_all()
            call.cancel()

    def ping(self) -> bool:
        """Whether TorchServe's gRPC health check says Healthy."""
        from google.protobuf import empty_pb2

        stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel(self.target))
        try:
            return '"Healthy"' in self._call(stub.Ping, empty_pb2.Empty(), self.target).health
        except CkptServeError:
            return False

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGrpcClient(_Base):
    """The asyncio twin of GrpcClient (grpc.aio): the same methods, awaited; ``stream_predict`` is an
    async generator. Create and use it inside one event loop."""

    def __init__(self, target: str = "127.0.0.1:7070", **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            if self._credentials is None:
                self._channels[target] = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            else:
                self._channels[target] = grpc.aio.secure_channel(
                    target, self._credentials, options=CHANNEL_OPTIONS
                )
        return self._channels[target]

    async def _call(self, method: Callable[..., Awaitable[_Reply]], request: object, target: str) -> _Reply:
        attempts = self.backoff.attempts(self.timeout_s)
        while True:
            remaining = attempts.remaining()
            if remaining <= 0:
                raise self._deadline_error(target)
            try:
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                err = error_from_rpc(exc, target)
            delay = attempts.next_delay() if retryable(err) else None
            if delay is None:
                raise err
            await asyncio.sleep(delay)

    async def request(self, model: str, body: bytes, *, version: str = "") -> bytes:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel(self.target))
        request = inference_pb2.PredictionsRequest(
            model_name=model, model_version=version, input={"data": body}
        )
        return (await self._call(stub.Predictions, request, self.target)).prediction

    async def predict(self, model: str, instances: Any, *, version: str = "") -> Any:
        body, _ = encode_instances(instances)
        return predictions(decode_answer(await self.request(model, body, version=version)))

    async def infer(
        self,
        model: str,
        tensors: Tensors,
        *,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
        version: str = "",
    ) -> InferResult:
        stub = oip_grpc.GRPCInferenceServiceStub(self._channel(self.oip_target))
        request = infer_request(model, tensors, outputs, request_id, version)
        return infer_result(await self._call(stub.ModelInfer, request, self.oip_target))

    async def stream_predict(
        self,
        model: str,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        version: str = "",
        sequence_id: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Any]:
        """StreamPredictions2, pipelined; answers in order (see GrpcClient.stream_predict)."""
        sequence = sequence_id or f"ckptserve-{uuid.uuid4().hex}"
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel(self.target))
        state = asyncio.Condition()
        counts = {"sent": 0, "answered": 0, "closed": False}

        async def requests() -> AsyncIterator[inference_pb2.PredictionsRequest]:
            async for item in _aiter(items):
                counts["sent"] += 1
                yield _stream_request(model, version, sequence, item)
            async with state:  # half-close only after the last answer (see GrpcClient.stream_predict)
                await state.wait_for(lambda: counts["answered"] >= counts["sent"] or counts["closed"])

        call = stub.StreamPredictions2(requests(), timeout=timeout_s, metadata=self._metadata)
        try:
            async for reply in call:
                async with state:
                    counts["answered"] += 1
                    state.notify_all()
                yield _stream_answer(reply, self.target)
        except grpc.RpcError as exc:
            raise _stream_error(exc, model, self.target) from None
        finally:
            counts["closed"] = True
            call.cancel()

    async def ping(self) -> bool:
        from google.protobuf import empty_pb2

        stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel(self.target))
        try:
            return '"Healthy"' in (await self._call(stub.Ping, empty_pb2.Empty(), self.target)).health
        except CkptServeError:
            return False

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def __aenter__(self) -> AsyncGrpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
