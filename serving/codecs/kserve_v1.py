"""The KServe v1 codec: {"instances": [...]} (or a bare list) in, {"predictions": [...]} out."""

from __future__ import annotations

from typing import Any, Literal, NoReturn

import numpy as np

from serving.codecs.base import Body, Codec, DecodedRequest, ModelRef, NamedOutputs, Protocol
from serving.codecs.checks import HINT_V1, check_count, first_misfit, fmt, nested_shape, shape_ok, to_tensor
from serving.codecs.config import InputSpec
from serving.codecs.jsontext import dumps, is_json_media, json_error
from serving.codecs.postprocess import ranking_rows, single
from serving.errors import CkptServeError, RequestError
from serving.wire import JSON_TYPE


def predictions_reply(outputs: NamedOutputs) -> tuple[bytes, str]:
    """``{"predictions": ...}``: the rows of a top-k ranking, else the one output as nested lists."""
    rows = ranking_rows(outputs)
    return dumps({"predictions": rows if rows is not None else single(outputs).tolist()}), JSON_TYPE


class KServeV1Codec(Codec):
    protocol = Protocol.V1
    reads: Literal["bytes", "json"] = "json"

    def speaks(self, media: str) -> bool:
        return is_json_media(media)

    def matches(self, body: Body, media: str) -> bool:
        return isinstance(body, list) or (isinstance(body, dict) and "instances" in body)

    def decode(self, body: Body, spec: InputSpec) -> DecodedRequest:
        instances = body["instances"] if isinstance(body, dict) else body
        if not isinstance(instances, list):
            raise RequestError(f"'instances' is a {type(instances).__name__}; expected a list", hint=HINT_V1)
        check_count(len(instances), spec)
        try:
            arr: np.ndarray | None = np.array(instances)  # one C pass over the nested lists
        except (ValueError, TypeError, OverflowError):
            arr = None
        if arr is None or arr.dtype.kind not in "biuf" or not shape_ok(arr.shape[1:], spec.shape):
            _diagnose_rows(instances, spec)
        return DecodedRequest(to_tensor(arr, spec), Protocol.V1)

    def encode(self, outputs: NamedOutputs, request: DecodedRequest, model: ModelRef) -> tuple[bytes, str]:
        return predictions_reply(outputs)

    def encode_error(self, error: CkptServeError) -> bytes:
        return json_error(error)


def _diagnose_rows(instances: list[Any], spec: InputSpec) -> NoReturn:
    """Raise the error that names the first bad instance; numpy alone only says that one is bad."""
    for i, inst in enumerate(instances):
        shape = nested_shape(inst)
        if shape is None:
            raise RequestError(
                f"instance {i} is ragged (nested lists of unequal length); expected {fmt(spec.shape)}",
                hint=HINT_V1,
            )
        if not shape_ok(shape, spec.shape):
            raise RequestError(
                f"instance {i} has shape {shape}; expected {fmt(spec.shape)}",
                hint="each entry of 'instances' is one instance: wrap a single instance in a list",
            )
        bad, value = first_misfit(inst, "bif")
        if bad:
            raise RequestError(
                f"instance {i} holds {value!r} ({type(value).__name__}); expected numbers"
                + (" (integers within 64 bits)" if isinstance(value, int) else ""),
                hint="send JSON numbers, not strings or null",
            )
    raise RequestError(
        f"the instances differ in shape; expected all of one shape {fmt(spec.shape)}",
        hint="-1 axes may vary between requests, not between the instances of one request",
    )
