"""The standard OIP v2 gRPC service (inference.GRPCInferenceService) in front of TorchServe's gRPC API."""

from __future__ import annotations

import hmac
import json
import logging
from importlib import metadata
from typing import Any

import grpc
import numpy as np

from serving.codecs.datatypes import TYPES, datatype_of
from serving.codecs.oip_grpc import fill, has_typed_contents, to_numpy
from serving.error_codes import details, status_code
from serving.errors import CkptServeError, ModelNotFoundError, RequestError, ServerError
from serving.protos import grpc_predict_v2_pb2 as pb
from serving.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.torchserve.gateway.npy_frames import npy_body, npy_header, read_npy
from serving.torchserve.gateway.signature import Signature, Signatures
from serving.torchserve.gateway.upstream import TokenFile, TorchServeUpstream
from serving.wire import CHANNEL_OPTIONS, NPY_MAGIC

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0  # for callers that set no deadline: TorchServe's responseTimeout is 120 s


def _version() -> str:
    try:
        return metadata.version("ckptserve")
    except metadata.PackageNotFoundError:
        return "0.1.0"


class OipGateway(pb_grpc.GRPCInferenceServiceServicer):
    """Answers OIP v2 calls from TorchServe's real state; forwards each ModelInfer as one Predictions call.

    The tensor travels to the handler as npy bytes (no JSON on the data path) and comes back as npy
    (raw, softmax) or as the handler's top-k JSON, which becomes the topk_* outputs.
    """

    def __init__(
        self,
        upstream: TorchServeUpstream,
        *,
        tokens: TokenFile | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.upstream = upstream
        self.tokens = tokens
        self.timeout_s = timeout_s
        self.signatures = Signatures(upstream)
        self.server_version = _version()

    # --- health ----------------------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        # Health RPCs need no token: probes (kubelet's gRPC probe) cannot send one.
        return pb.ServerLiveResponse(live=await self.upstream.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        try:
            if not await self.upstream.live():
                return pb.ServerReadyResponse(ready=False)
            models = await self.upstream.models()
            ready = [await self._model_ready(name, "") for name in models]
        except CkptServeError as err:
            log.info("server not ready: %s", err)
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=all(ready))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        await self._authorize(context)
        try:
            return pb.ModelReadyResponse(ready=await self._model_ready(request.name, request.version))
        except ModelNotFoundError:
            return pb.ModelReadyResponse(ready=False)
        except CkptServeError as err:
            await context.abort(status_code(err), details(err))
            raise AssertionError("unreachable") from None

    async def _model_ready(self, name: str, version: str) -> bool:
        described = await self.upstream.describe(name, version)
        if not any(w.get("status") == "READY" for w in described.get("workers", [])):
            return False
        if described.get("stateful"):
            return True  # a customized describe would wait forever: such a model runs only sequences
        # A worker waiting for its first checkpoint is READY to TorchServe but serves nothing (503).
        custom = (await self.upstream.describe(name, version, customized=True)).get("customizedMetadata")
        if isinstance(custom, str):  # some TorchServe paths hand it over as a JSON string
            custom = json.loads(custom)
        return not (isinstance(custom, dict) and custom.get("state") == "waiting")

    # --- metadata --------------------------------------------------------------------------------

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        await self._authorize(context)
        return pb.ServerMetadataResponse(name="ckptserve", version=self.server_version, extensions=[])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        await self._authorize(context)
        try:
            sig = await self._signature(request.name, request.version)
        except CkptServeError as err:
            await context.abort(status_code(err), details(err))
            raise AssertionError("unreachable") from None
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=sig.model,
            versions=[sig.version] if sig.version else [],
            platform="pytorch_torchserve",
            inputs=[meta(name=sig.input.name, datatype=sig.input.datatype, shape=sig.input.shape)],
            outputs=[meta(name=o.name, datatype=o.datatype, shape=o.shape) for o in sig.outputs],
        )

    # --- inference -------------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        try:
            await self._authorize(context)
            sig = await self._signature(request.model_name, request.model_version)
            body = _npy_input(request, self._input(request, sig))
            remaining = context.time_remaining()
            timeout = self.timeout_s if remaining is None else max(remaining, 0.001)
            answer = await self.upstream.predict(sig.model, request.model_version, body, timeout=timeout)
            return _response(request, sig, _outputs(answer, sig))
        except CkptServeError as err:
            if isinstance(err, ModelNotFoundError):
                self.signatures.forget(request.model_name, request.model_version)
            await context.abort(status_code(err), details(err))
        except grpc.aio.AbortError:
            raise  # context.abort() ends the call by raising this: let it through
        except Exception as exc:  # a bug here must not hang the client or leak a traceback to it
            log.exception("ModelInfer for %r failed", request.model_name)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the gateway log"
            )
        raise AssertionError("unreachable")

    async def _signature(self, model: str, version: str) -> Signature:
        if not model:
            raise RequestError("model_name is empty", hint="name the model to call")
        return await self.signatures.get(model, version)

    @staticmethod
    def _input(request: pb.ModelInferRequest, sig: Signature) -> np.ndarray:
        inputs, raw = request.inputs, request.raw_input_contents
        if len(inputs) != 1:
            raise RequestError(
                f"model {sig.model!r} takes exactly one input, {sig.input.name!r}; the request has "
                f"{len(inputs)}: {[t.name for t in inputs]}",
                hint=f"send one tensor of shape {list(sig.input.shape)}",
            )
        if raw and len(raw) != len(inputs):
            raise RequestError(
                f"the request has {len(raw)} raw_input_contents entries for {len(inputs)} input(s)",
                hint="send one raw entry per input, or none",
            )
        array = to_numpy(inputs[0], raw[0] if raw else None)
        if array.dtype == object:
            raise RequestError(
                f"input {inputs[0].name!r} is BYTES; model {sig.model!r} takes {sig.input.datatype} numbers",
                hint=f"send {sig.input.datatype} elements",
            )
        # Checked here, not only by the handler: its npy decoder would also take one instance without
        # the batch axis, and its messages speak of npy, which this caller never sent.
        expected = sig.input.shape[1:]
        if array.ndim != len(expected) + 1 or any(
            e not in (-1, f) for f, e in zip(array.shape[1:], expected, strict=True)
        ):
            raise RequestError(
                f"input {inputs[0].name!r} has shape {list(array.shape)}; expected "
                f"[n{''.join(f', {d}' for d in expected)}] with n the number of instances (-1 = any size)",
                hint="put the number of instances first in 'shape'",
            )
        return array

    async def _authorize(self, context: Any) -> None:
        """With TorchServe's token authorization on, the gateway asks callers for the same inference key."""
        if self.tokens is None:
            return
        sent = dict(context.invocation_metadata() or ()).get("authorization", "")
        expected = f"Bearer {self.tokens.key('inference')}"
        if not hmac.compare_digest(str(sent).encode(), expected.encode()):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "token authorization is on: send metadata 'authorization: Bearer <inference key>' "
                "(the key is in key_file.json in the server's runtime directory)",
            )


def _npy_input(request: pb.ModelInferRequest, array: np.ndarray) -> bytes:
    """The npy body for the handler; raw contents that already hold the array's bytes go as they came."""
    raw = request.raw_input_contents
    if raw and array.dtype == TYPES[request.inputs[0].datatype].wire:  # not BF16, which to_numpy widened
        return npy_header(array.dtype, array.shape) + raw[0]
    return npy_body(array)


def _outputs(answer: bytes, sig: Signature) -> dict[str, np.ndarray]:
    """The handler's answer (npy for raw and softmax, top-k JSON otherwise) as named output arrays."""
    if answer[:6] == NPY_MAGIC:
        try:
            return {sig.outputs[0].name: read_npy(answer)}
        except ValueError as exc:  # an object array (never unpickled) or a damaged header
            raise CkptServeError(
                f"the handler of {sig.model!r} answered an npy array that cannot be read ({exc})",
                hint="is the model served by ckptserve's handler?",
            ) from None
    try:
        rows = json.loads(answer)["predictions"]
        indices = np.array([[entry["index"] for entry in row] for row in rows], dtype=np.int64)
        scores = np.array([[entry["score"] for entry in row] for row in rows], dtype=np.float32)
        outputs: dict[str, np.ndarray] = {
            "topk_indices": indices.reshape(len(rows), -1),
            "topk_scores": scores.reshape(len(rows), -1),
        }
        if "topk_labels" in sig.output_names:
            labels = [[str(entry["label"]).encode() for entry in row] for row in rows]
            outputs["topk_labels"] = np.array(labels, dtype=object).reshape(len(rows), -1)
    except (ValueError, KeyError, TypeError) as exc:
        raise CkptServeError(
            f"the handler of {sig.model!r} answered something that is neither npy nor top-k JSON ({exc})",
            hint="is the model served by ckptserve's handler?",
        ) from None
    return outputs


def _response(
    request: pb.ModelInferRequest, sig: Signature, outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    wanted = [o.name for o in request.outputs]
    unknown = [name for name in wanted if name not in outputs]
    if unknown:
        raise RequestError(
            f"requested outputs {unknown} do not exist; model {sig.model!r} has {list(outputs)}",
            hint="ask for existing outputs, or for none to get all",
        )
    selected = [(name, outputs[name]) for name in wanted] if wanted else list(outputs.items())
    # Raw in, raw out (what tritonclient reads); FP16/BF16 have no typed field and always go raw.
    raw = bool(request.raw_input_contents) or not all(
        has_typed_contents(datatype_of(a.dtype)) for _, a in selected
    )
    response = pb.ModelInferResponse(model_name=sig.model, model_version=sig.version, id=request.id)
    for name, array in selected:
        data = fill(response.outputs.add(), name, array, raw=raw)
        if data is not None:
            response.raw_output_contents.append(data)
    return response


async def start_gateway(
    listen: str,
    upstream: TorchServeUpstream,
    *,
    tokens: TokenFile | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Bind ``listen`` ("host:port"; port 0 picks one) and start serving; returns the server and its port."""
    # so_reuseport off: a second gateway on a taken port must fail, not silently share it.
    server = grpc.aio.server(options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(OipGateway(upstream, tokens=tokens), server)
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise ServerError(f"cannot listen on {listen}: {exc}", hint="choose a free port") from None
    await server.start()
    return server, port
