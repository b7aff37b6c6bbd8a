"""One exception hierarchy for ckptserve: each error knows its HTTP status and gRPC code."""

from __future__ import annotations

from typing import Any


class CkptServeError(Exception):
    """Base of every error ckptserve raises on purpose.

    The message says what was expected, what was found and what to do; ``hint`` holds the "what to
    do" part separately so front ends can show it on its own line.
    """

    http_status: int = 500
    grpc_code: str = "INTERNAL"  # a grpc.StatusCode name; kept as text so this module needs no grpc

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}" if hint else message)

    def to_dict(self) -> dict[str, object]:
        """The JSON error body clients get."""
        body: dict[str, object] = {
            "code": self.http_status,
            "type": type(self).__name__,
            "error": self.message,
        }
        if self.hint:
            body["hint"] = self.hint
        return body


# --- configuration ------------------------------------------------------------------------------


class ConfigError(CkptServeError):
    """A configuration file or argument is invalid; the message names the file and key."""

    http_status = 500
    grpc_code = "FAILED_PRECONDITION"


# --- checkpoints and architectures --------------------------------------------------------------


class CheckpointError(CkptServeError):
    """A checkpoint cannot be turned into a model."""

    http_status = 500
    grpc_code = "FAILED_PRECONDITION"


class CheckpointNotFoundError(CheckpointError):
    """The checkpoint path does not exist."""

    grpc_code = "NOT_FOUND"


class EmptyCheckpointError(CheckpointError):
    """The checkpoint file has zero bytes (often: a save still in progress)."""


class CorruptCheckpointError(CheckpointError):
    """The file looks like a checkpoint but cannot be read: truncated, partly written or damaged."""


class NotACheckpointError(CheckpointError):
    """The file is of no checkpoint layout ckptserve knows."""


class AmbiguousCheckpointError(CheckpointError):
    """A checkpoint dict holds several state dicts and nothing says which one is the model."""


class UnsafeCheckpointError(CheckpointError):
    """Loading would execute pickled code, and the user has not said they trust the file."""


class CandidateRejected(CkptServeError):
    """A checkpoint failed the validation gate; it is never served."""


class ArchitectureError(CkptServeError):
    """The architecture cannot be imported or built."""

    http_status = 500
    grpc_code = "FAILED_PRECONDITION"


class ArchitectureMismatchError(ArchitectureError):
    """The checkpoint's weights do not fit the architecture (missing, unexpected or mis-shaped keys)."""


# --- requests -----------------------------------------------------------------------------------


class RequestError(CkptServeError):
    """A client sent a request that cannot be served as sent; a 4xx, never the server's fault."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class UnsupportedMediaTypeError(RequestError):
    """The request's content type is none the codecs speak."""

    http_status = 415


class PayloadTooLargeError(RequestError):
    """More instances in one request than the model allows."""

    http_status = 413


class ModelFailedError(RequestError):
    """The model raised on this request's input (for example a size its layers cannot take)."""

    http_status = 422


class ModelNotFoundError(RequestError):
    """The server has no model (or no such version of it) by that name."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class UnsupportedModelError(CkptServeError):
    """The model is served, but not in a way this API can reach."""

    http_status = 412
    grpc_code = "FAILED_PRECONDITION"


class ModelStatefulError(UnsupportedModelError):
    """The model uses TorchServe's sequence batching, which serves it through StreamPredictions2 only."""


class AuthenticationError(RequestError):
    """The server wants a token (TorchServe's token authorization) and got none, or a wrong one."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class DeadlineExceededError(CkptServeError):
    """No answer within the caller's deadline."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class ModelNotReadyError(CkptServeError):
    """No model is loaded yet, or the server is not accepting requests."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


# --- the server process -------------------------------------------------------------------------


class ServerError(CkptServeError):
    """TorchServe could not be started, stopped or reached."""

    grpc_code = "UNAVAILABLE"


class ServerReplyError(CkptServeError):
    """The server answered with an error status; ``status`` and ``body`` hold what it said."""

    def __init__(self, status: int, body: Any, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.http_status = status
