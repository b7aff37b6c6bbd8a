"""The protocol-neutral data plane: decode each request, one batched forward, encode each answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from serving.allocator import LARGE_BATCH_BYTES, trim
from serving.codecs import (
    DecodedRequest,
    InputSpec,
    PostProcess,
    decode_request,
    encode_error,
    encode_response,
)
from serving.codecs.postprocess import rank_batch
from serving.devices import placement
from serving.diagnose import index_range_hint
from serving.errors import CkptServeError, ModelFailedError
from serving.wire import JSON_TYPE

log = logging.getLogger(__name__)


# One request's rows of the batch's output, and its (scores, indices) when top-k ranked the batch at once.
Output = tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]


@dataclass
class Reply:
    """One response: body bytes, content type and HTTP status, ready for any front end."""

    body: bytes
    content_type: str = JSON_TYPE
    status: int = 200
    error: CkptServeError | None = None

    @property
    def phrase(self) -> str:
        return "OK" if self.error is None else type(self.error).__name__


@dataclass
class BatchReport:
    """What one batch cost and who served it (feeds metrics and response headers)."""

    preprocess: float = 0.0  # seconds per stage
    inference: float = 0.0
    postprocess: float = 0.0
    batch_size: int = 0  # instances in the forward passes
    errors: list[str] = field(default_factory=list)  # error type names, one per failed request
    model: nn.Module | None = None  # the model that ran this batch; None: none did (none is served yet)


class InferenceService:
    """Runs batches of raw requests through the model that ``acquire()`` yields for the batch.

    ``acquire`` is a context-manager factory (a hot-reload slot's ``use``): the slot may swap the
    model between batches, and a batch keeps the model it started with.
    """

    def __init__(
        self,
        acquire: Callable[[], AbstractContextManager[nn.Module]],
        *,
        input_spec: InputSpec,
        postprocess: PostProcess,
        model_name: str,
        model_version: str | None = None,
    ) -> None:
        self._acquire = acquire
        self.input_spec = input_spec
        self.postprocess = postprocess
        self.model_name = model_name
        self.model_version = model_version
        # placement() walks every parameter: once per model, not once per batch (a reload swaps models).
        self._placed: tuple[nn.Module, tuple[torch.device, torch.dtype]] | None = None

    def infer(self, requests: Sequence[tuple[Any, str | None]]) -> tuple[list[Reply], BatchReport]:
        """``requests``: (body, content type) pairs; returns one Reply per request, in order."""
        times = BatchReport()
        started = time.perf_counter()
        replies: list[Reply | None] = [None] * len(requests)
        decoded: dict[int, DecodedRequest] = {}
        for idx, (body, content_type) in enumerate(requests):
            try:
                decoded[idx] = decode_request(body, content_type, self.input_spec)
            except Exception as exc:  # every failure becomes this request's reply
                replies[idx] = self._error_reply(exc, None)
        times.preprocess = time.perf_counter() - started

        started = time.perf_counter()
        with self._acquire() as model:
            outputs = self._forward_grouped(model, decoded, replies) if decoded else {}
        times.model = model
        times.inference = time.perf_counter() - started
        times.batch_size = sum(r.instances.shape[0] for r in decoded.values())

        started = time.perf_counter()
        for idx, (out, ranked) in outputs.items():
            try:
                body, content_type = encode_response(
                    out,
                    decoded[idx],
                    model_name=self.model_name,
                    post=self.postprocess,
                    model_version=self.model_version,
                    ranked=ranked,
                )
                replies[idx] = Reply(body, content_type)
            except Exception as exc:
                replies[idx] = self._error_reply(exc, decoded[idx].protocol)
        times.postprocess = time.perf_counter() - started
        final = [r if r is not None else self._error_reply(RuntimeError("no reply"), None) for r in replies]
        times.errors = [type(r.error).__name__ for r in final if r.error is not None]
        # TorchServe's worker reads bodies through growing bytearrays: after megabytes of them, the
        # heap keeps freed pages unless trimmed (measured with benchmarks/bodies.py, 144 refused
        # bodies of 6 MB: +17 to +82 MB per worker without, +11 to +36 MB with).
        raw_bytes = sum(len(body) for body, _ in requests if isinstance(body, (bytes, bytearray)))
        if raw_bytes >= LARGE_BATCH_BYTES:
            trim()
        return final, times

    def _forward_grouped(
        self, model: nn.Module, decoded: dict[int, DecodedRequest], replies: list[Reply | None]
    ) -> dict[int, Output]:
        # Requests of one instance shape share a forward pass; with a fixed input shape that is all.
        groups: dict[tuple[int, ...], list[int]] = {}
        for idx, req in decoded.items():
            groups.setdefault(tuple(req.instances.shape[1:]), []).append(idx)
        outputs: dict[int, Output] = {}
        for members in groups.values():
            try:
                outputs.update(self._forward(model, decoded, members))
            except Exception:  # find the request the model cannot take, serve the rest
                log.warning("batched forward failed; retrying its %d request(s) one by one", len(members))
                for idx in members:
                    try:
                        outputs.update(self._forward(model, decoded, [idx]))
                    except Exception as exc:
                        failed = self._model_failed(exc, model, decoded[idx].instances)
                        replies[idx] = self._error_reply(failed, decoded[idx].protocol)
        return outputs

    def _forward(
        self, model: nn.Module, decoded: dict[int, DecodedRequest], members: list[int]
    ) -> dict[int, Output]:
        batch = (
            torch.cat([decoded[i].instances for i in members])
            if len(members) > 1
            else decoded[members[0]].instances
        )
        if self._placed is None or self._placed[0] is not model:
            self._placed = (model, placement(model))
        device, dtype = self._placed[1]
        target = dtype if batch.is_floating_point() else batch.dtype
        if batch.device != device or batch.dtype != target:
            batch = batch.to(device=device, dtype=target)
        with torch.inference_mode():
            out = model(batch)
        if isinstance(out, (tuple, list)):  # models that return (logits, extras): serve the first
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.shape[0] != batch.shape[0]:
            raise RuntimeError(f"the model returned {type(out).__name__} without one row per instance")
        out = out.detach().float().cpu() if out.is_floating_point() else out.detach().cpu()
        ranked = rank_batch(out, self.postprocess)
        if len(members) == 1:
            return {members[0]: (out, (ranked[0], ranked[1]) if ranked is not None else None)}
        sizes = [decoded[i].instances.shape[0] for i in members]
        parts = [torch.split(t, sizes) for t in (out, *(ranked or ()))]
        return {
            idx: (part[0], (part[1], part[2]) if ranked is not None else None)
            for idx, part in zip(members, zip(*parts, strict=True), strict=True)
        }

    def _model_failed(self, exc: Exception, model: nn.Module, inputs: torch.Tensor) -> ModelFailedError:
        return ModelFailedError(
            f"The model could not process this input: {type(exc).__name__}: {str(exc)[:300]}",
            hint=index_range_hint(model, inputs, exc)
            or f"Check the input against the model's expected shape {self.input_spec.shape}.",
        )

    def _error_reply(self, exc: Exception, protocol: str | None) -> Reply:
        if not isinstance(exc, CkptServeError):
            log.error("unexpected error while serving a request", exc_info=exc)
            exc = CkptServeError(f"Internal error: {type(exc).__name__}.", hint="See the server log.")
        # The reply keeps its error; the error's traceback (and the one it was raised from) would keep
        # this batch's frames, and their megabyte bodies, in a reference cycle until the next full GC.
        exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        return Reply(encode_error(exc, protocol), JSON_TYPE, exc.http_status, exc)
