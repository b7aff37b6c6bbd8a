"""Errors across the gRPC boundary: handler error bodies and TorchServe's statuses become typed errors."""

from __future__ import annotations

import json

import grpc
import pytest

from serving.error_codes import (
    details,
    error_from_body,
    error_from_status,
    status_code,
)
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


def _body(code: int, message: str = "bad", hint: str | None = "fix it") -> bytes:
    doc = {"code": code, "type": "X", "error": message, **({"hint": hint} if hint else {})}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("code", "kind", "grpc_code"),
    [
        (400, RequestError, "INVALID_ARGUMENT"),
        (413, PayloadTooLargeError, "INVALID_ARGUMENT"),
        (415, UnsupportedMediaTypeError, "INVALID_ARGUMENT"),
        (422, RequestError, "INVALID_ARGUMENT"),
        (404, ModelNotFoundError, "NOT_FOUND"),
        (503, ModelNotReadyError, "UNAVAILABLE"),
        (500, CkptServeError, "INTERNAL"),
    ],
)
def test_handler_error_bodies_become_typed_errors(code: int, kind: type, grpc_code: str) -> None:
    err = error_from_body(_body(code, "instance 0 has shape (2,)"))
    assert err is not None and type(err) is kind and err.http_status == code and err.grpc_code == grpc_code
    assert err.message == "instance 0 has shape (2,)" and err.hint == "fix it"


@pytest.mark.parametrize(
    "body",
    [
        b'{"predictions": [[0.1, 0.2]]}',
        b"\x93NUMPY\x01\x00",
        b'{"code": 200, "error": "not an error"}',
        b'{"model_name": "m", "outputs": [{"name": "error", "data": [1]}]}',
        b"[1, 2]",
        b'{"error": broken',
    ],
)
def test_answers_are_not_mistaken_for_errors(body: bytes) -> None:
    assert error_from_body(body) is None


@pytest.mark.parametrize(
    ("code", "text", "kind", "grpc_code"),
    [
        (
            grpc.StatusCode.INTERNAL,
            "Model not found: x\norg.pytorch.serve.ModelNotFoundException",
            ModelNotFoundError,
            "NOT_FOUND",
        ),
        (
            grpc.StatusCode.INTERNAL,
            "Model version: 9 does not exist\n...ModelVersionNotFoundException",
            ModelNotFoundError,
            "NOT_FOUND",
        ),
        (13, "Parameter sequenceId is required.\nBadRequestException.()", RequestError, "INVALID_ARGUMENT"),
        (
            grpc.StatusCode.INTERNAL,
            'Model "m" has no worker to serve inference request.',
            ModelNotReadyError,
            "UNAVAILABLE",
        ),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", ServerError, "UNAVAILABLE"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", DeadlineExceededError, "DEADLINE_EXCEEDED"),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            "Token Authorization failed",
            AuthenticationError,
            "UNAUTHENTICATED",
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "shape [1] | what to do: send [n, 4]",
            RequestError,
            "INVALID_ARGUMENT",
        ),
        (grpc.StatusCode.FAILED_PRECONDITION, "stateful", CkptServeError, "FAILED_PRECONDITION"),
    ],
)
def test_statuses_become_typed_errors(
    code: grpc.StatusCode | int, text: str, kind: type, grpc_code: str
) -> None:
    err = error_from_status(code, text, "127.0.0.1:7070")
    assert type(err) is kind and err.grpc_code == grpc_code
    assert "\n" not in err.message and "Exception" not in err.message


def test_details_round_trip_message_and_hint() -> None:
    sent = RequestError("input 'x' has shape [1]", hint="send [n, 1, 8, 8]")
    text = details(sent)
    assert status_code(sent) is grpc.StatusCode.INVALID_ARGUMENT
    received = error_from_status(grpc.StatusCode.INVALID_ARGUMENT, text, "gateway")
    assert (received.message, received.hint) == (sent.message, sent.hint)
