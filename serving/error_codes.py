"""Errors across the gRPC boundary: TorchServe's statuses and error bodies to typed errors, and back."""

from __future__ import annotations

import json
from typing import Any

import grpc

from serving.errors import (
    AuthenticationError,
    CkptServeError,
    DeadlineExceededError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    RequestError,
    ServerError,
    UnsupportedMediaTypeError,
)

# The handler's own 4xx statuses, which TorchServe's gRPC Predictions drops (see error_from_body).
_BY_HTTP: dict[int, type[CkptServeError]] = {
    401: AuthenticationError,
    404: ModelNotFoundError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    503: ModelNotReadyError,
    504: DeadlineExceededError,
}

TORCHSERVE_NOT_FOUND = ("ModelNotFoundException", "ModelVersionNotFoundException")
MODEL_NOT_FOUND_HINT = (
    "Check the model name (it is the archive's name, as in /predictions/NAME); the management API lists "
    "the served models: GET /models on the management port (default http://127.0.0.1:8081/models)."
)
_TORCHSERVE_BUSY = ("has no worker", "ServiceUnavailableException", "queue is full", "Service unavailable")


def error_from_http(status: int, message: str, hint: str | None = None) -> CkptServeError:
    """The typed error for an HTTP status; ``http_status`` keeps the exact code (422 stays 422)."""
    cls = _BY_HTTP.get(status) or (RequestError if 400 <= status < 500 else CkptServeError)
    err = cls(message, hint=hint)
    err.http_status = status
    return err


def error_from_body(body: bytes | bytearray) -> CkptServeError | None:
    """The handler's JSON error body ({"code", "type", "error", "hint"}) as a typed error, else None.

    TorchServe 0.12's gRPC frontend answers Predictions and StreamPredictions2 with status OK and the
    handler's bytes, whatever status the handler set for the request (GRPCJob.response ignores it), so
    an error can only be told apart by its body.
    """
    if body[:1] != b"{" or b'"error"' not in body[:512]:  # cheap test first: answers are large
        return None
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return None
    code = doc.get("code") if isinstance(doc, dict) else None
    if not isinstance(code, int) or code < 400 or not isinstance(doc.get("error"), str):
        return None
    hint = doc.get("hint") if isinstance(doc.get("hint"), str) else None
    return error_from_http(code, doc["error"], hint)


def error_from_rpc(exc: grpc.RpcError, target: str) -> CkptServeError:
    """A typed error for a failed call to TorchServe (or to the gateway) at ``target``."""
    return error_from_status(exc.code(), exc.details() or "", target)


def error_from_status(code: grpc.StatusCode | int, details: str, target: str) -> CkptServeError:
    """A typed error for a gRPC status, also one that came inside a StreamPredictions2 response."""
    if isinstance(code, int):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    # TorchServe appends "\n<exception class>" to its descriptions; keep the sentence for people.
    message = details.split("\n", 1)[0].strip() or code.name
    message, _, hint = message.partition(" | what to do: ")  # the gateway's own layout, see details()
    if any(marker in details for marker in TORCHSERVE_NOT_FOUND):
        return ModelNotFoundError(message, hint=hint or MODEL_NOT_FOUND_HINT)
    if "BadRequestException" in details:  # TorchServe's own 400s travel as INTERNAL
        return RequestError(message, hint=hint or None)
    if code is grpc.StatusCode.UNAVAILABLE:
        return ServerError(
            f"{target} is unavailable: {message}",
            hint="Is the server running? `ckptserve serve` starts it.",
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(f"No answer from {target} within the deadline.", hint="Allow more time.")
    if code is grpc.StatusCode.INTERNAL and any(marker in details for marker in _TORCHSERVE_BUSY):
        return ModelNotReadyError(message, hint=hint or "Retry later, or add workers.")
    by_code: dict[grpc.StatusCode, type[CkptServeError]] = {
        grpc.StatusCode.INVALID_ARGUMENT: RequestError,
        grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
        grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
        grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
        grpc.StatusCode.RESOURCE_EXHAUSTED: PayloadTooLargeError,
    }
    err = by_code.get(code, CkptServeError)(message, hint=hint or None)
    err.grpc_code = code.name
    return err


def details(err: CkptServeError) -> str:
    """The text of a gRPC status for ``err``: what went wrong, then what to do."""
    return f"{err.message} | what to do: {err.hint}" if err.hint else err.message


def status_code(err: CkptServeError) -> grpc.StatusCode:
    """The grpc.StatusCode an error carries (INTERNAL for an unknown name)."""
    return getattr(grpc.StatusCode, err.grpc_code, grpc.StatusCode.INTERNAL)
