"""The ordered codec registry: the first codec that claims a request decodes it and answers it."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from serving.codecs.base import Body, Codec, DecodedRequest, ModelRef
from serving.codecs.checks import HINT_V1, fmt
from serving.codecs.config import InputSpec, PostProcess
from serving.codecs.jsontext import FORM_TYPE, json_error, parse_json
from serving.codecs.kserve_v1 import KServeV1Codec
from serving.codecs.npy import NpyCodec
from serving.codecs.oip_v2 import OipV2Codec
from serving.codecs.postprocess import postprocess
from serving.errors import CkptServeError, PayloadTooLargeError, RequestError, UnsupportedMediaTypeError

# Types that say nothing of the format (none sent, octet-stream, a multipart part without its own
# type, a form): every codec may claim such a body by sniffing it.
_SNIFFED_TYPES = frozenset({"", "application/octet-stream", "multipart/form-data", FORM_TYPE})
_ACCEPTED_TEXT = "application/json (KServe v1 or OIP v2), application/x-npy or application/octet-stream"
# A body cannot hold more than max_instances instances: refused on its byte count before parsing.
# 64 bytes per element covers the longest float repr (24 characters), separators and indentation;
# the slack covers the keys of an OIP v2 document and its "id".
BYTES_PER_ELEMENT = 64
BODY_SLACK_BYTES = 64 * 1024


class Registry:
    """Codecs in the order they are asked: raw-body readers first, then JSON readers after one parse."""

    def __init__(self, codecs: Iterable[Codec]) -> None:
        self.codecs = tuple(codecs)
        self._by_protocol = {codec.protocol: codec for codec in self.codecs}

    def decode(self, body: Body, content_type: str | None, spec: InputSpec) -> DecodedRequest:
        """Turn one request body (raw, or already parsed by TorchServe's worker) into a checked batch."""
        try:
            return self._decode(body, (content_type or "").split(";", 1)[0].strip().lower(), spec)
        except RecursionError:  # json, numpy and the error-path walkers all recurse on hostile nesting
            raise RequestError(
                "the JSON nests too deeply; expected lists as deep as the instance shape", hint=HINT_V1
            ) from None

    def codec_for(self, protocol: str) -> Codec:
        return self._by_protocol[protocol]

    def encode_error(self, error: CkptServeError, protocol: str | None = None) -> bytes:
        """The error body in the request's codec; before any codec claimed it, the JSON one."""
        return json_error(error) if protocol is None else self.codec_for(protocol).encode_error(error)

    def _decode(self, body: Body, media: str, spec: InputSpec) -> DecodedRequest:
        if body is None:
            body = b""
        if isinstance(body, (bytes, bytearray, str)):
            if media not in _SNIFFED_TYPES and not any(codec.speaks(media) for codec in self.codecs):
                # a foreign type is refused before any parsing
                raise UnsupportedMediaTypeError(
                    f"content type {media!r} is not supported; expected {_ACCEPTED_TEXT}",
                    hint="send the tensor as JSON or as numpy.save bytes, with its content type",
                )
            _check_size(len(body), spec)  # str: characters, a lower bound of its bytes
            for codec in self.codecs:
                if codec.reads == "bytes" and codec.matches(body, media):
                    return codec.decode(body, spec)
            body = parse_json(body, media)
        for codec in self.codecs:
            if codec.reads == "json" and codec.matches(body, media):
                return codec.decode(body, spec)
        if isinstance(body, dict):
            found = sorted(body)[:10]
            raise RequestError(
                f"the JSON object lacks 'instances' (KServe v1) or 'inputs' (OIP v2); found {found}",
                hint=HINT_V1,
            )
        raise RequestError(
            f"the JSON body is a {type(body).__name__}; expected an object or a list of instances",
            hint=HINT_V1,
        )


# The one place codecs are registered, in the order they are asked (npy's magic is never JSON, and
# OIP v2 claims an object with "inputs" before v1 can take its "instances").
CODECS = Registry([NpyCodec(), OipV2Codec(), KServeV1Codec()])


def max_body_bytes(spec: InputSpec) -> int | None:
    """The largest raw body ``spec`` can need (JSON is the wordiest format); None when an axis is free."""
    if any(d < 0 for d in spec.shape):
        return None
    return spec.max_instances * math.prod(spec.shape) * BYTES_PER_ELEMENT + BODY_SLACK_BYTES


def _check_size(size: int, spec: InputSpec) -> None:
    limit = max_body_bytes(spec)
    if limit is not None and size > limit:
        raise PayloadTooLargeError(
            f"the body has {size} bytes; {spec.max_instances} instances of shape {fmt(spec.shape)} "
            f"need at most {limit} bytes (max_instances x elements x {BYTES_PER_ELEMENT} + "
            f"{BODY_SLACK_BYTES // 1024} KiB)",
            hint="send fewer instances per request, as compact JSON or npy",
        )


def decode_request(body: Body, content_type: str | None, spec: InputSpec) -> DecodedRequest:
    """Turn one request body (raw, or already parsed by TorchServe's worker) into a checked batch."""
    return CODECS.decode(body, content_type, spec)


def encode_response(
    outputs: torch.Tensor,
    request: DecodedRequest,
    *,
    model_name: str,
    post: PostProcess,
    model_version: str | None = None,
    ranked: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[bytes, str]:
    """Post-process the model's (n, ...) outputs and serialize them in the request's protocol.

    ``ranked``: this request's (scores, indices) for top-k, when the caller ranked a whole batch at once.
    """
    named = postprocess(outputs, len(request.instances), post, ranked)
    return CODECS.codec_for(request.protocol).encode(named, request, ModelRef(model_name, model_version))


def encode_error(error: CkptServeError, protocol: str | None = None) -> bytes:
    """The JSON error body; one shape for every built-in protocol, since v1 and OIP v2 both read "error"."""
    return CODECS.encode_error(error, protocol)
