"""What every codec shares: the ``Codec`` protocol, a decoded request, and the outputs it encodes."""

from __future__ import annotations

import enum
import typing
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from serving.codecs.config import InputSpec
from serving.errors import CkptServeError

# A request body as it reaches a codec: raw bytes or text, or JSON TorchServe's worker already parsed.
Body = bytes | bytearray | str | dict[str, Any] | list[Any] | int | float | bool | None
# Post-processed outputs of one request by name, in reply order: numbers as tensors, texts (OIP
# BYTES) as numpy object arrays of str.
NamedOutputs = dict[str, torch.Tensor | np.ndarray]


class Protocol(str, enum.Enum):
    """The built-in codecs' protocols; a new codec may name its own (``DecodedRequest.protocol`` is a str)."""

    V1 = "v1"
    V2 = "v2"
    NPY = "npy"


@dataclass
class DecodedRequest:
    instances: torch.Tensor  # (n, *instance_shape), dtype = spec.dtype, contiguous, CPU
    protocol: str  # the decoding codec's: its encode answers this request
    request_id: str | None = None  # the OIP v2 "id", echoed back
    outputs: tuple[str, ...] | None = None  # OIP v2 output names the client asked for; None = all


@dataclass(frozen=True)
class ModelRef:
    """The model a reply names."""

    name: str
    version: str | None = None


class Codec(typing.Protocol):
    """One wire format: which requests it claims, how it decodes them and how it answers them.

    The registry (serving.codecs.registry) asks its codecs in order; the first that claims a request
    decodes it, and the same codec (by ``protocol``) encodes its reply and its errors.
    """

    protocol: str
    # "bytes": asked first, with the raw body; "json": asked with the document after the one JSON parse.
    reads: Literal["bytes", "json"]

    def speaks(self, media: str) -> bool:
        """Whether a body of this media type may be in this format (a type no codec speaks is a 415)."""
        ...

    def matches(self, body: Body, media: str) -> bool:
        """Whether this codec claims the request (its media type, or a sniff of the body)."""
        ...

    def decode(self, body: Body, spec: InputSpec) -> DecodedRequest:
        """The checked batch of a request this codec claimed; a bad one raises RequestError."""
        ...

    def encode(self, outputs: NamedOutputs, request: DecodedRequest, model: ModelRef) -> tuple[bytes, str]:
        """The reply body and its content type."""
        ...

    def encode_error(self, error: CkptServeError) -> bytes:
        """The error body (served as application/json)."""
        ...
