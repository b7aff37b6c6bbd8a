"""The Open Inference Protocol v2 JSON codec: {"inputs": [...]} in, {"model_name", "outputs": [...]} out."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

from serving.codecs.base import Body, Codec, DecodedRequest, ModelRef, NamedOutputs, Protocol
from serving.codecs.checks import HINT_V1, check_count, first_misfit, shape_ok, to_tensor
from serving.codecs.config import InputSpec
from serving.codecs.datatypes import NUMERIC, TYPES
from serving.codecs.jsontext import dumps, is_json_media, json_error
from serving.codecs.torch_dtypes import OIP_OF_TORCH
from serving.errors import CkptServeError, RequestError
from serving.wire import JSON_TYPE

_HINT_V2 = 'send {"inputs": [{"name", "shape": [n, ...], "datatype": "FP32", "data": [...]}]}'


class OipV2Codec(Codec):
    protocol = Protocol.V2
    reads: Literal["bytes", "json"] = "json"

    def speaks(self, media: str) -> bool:
        return is_json_media(media)

    def matches(self, body: Body, media: str) -> bool:
        return isinstance(body, dict) and "inputs" in body

    def decode(self, body: Body, spec: InputSpec) -> DecodedRequest:
        if not isinstance(body, dict):
            raise TypeError("OipV2Codec decodes only what it matched: a JSON object")
        if "instances" in body:
            raise RequestError("the body has both 'instances' and 'inputs'; expected one", hint=HINT_V1)
        return _decode(body, spec)

    def encode(self, outputs: NamedOutputs, request: DecodedRequest, model: ModelRef) -> tuple[bytes, str]:
        outs = [_output(name, value) for name, value in outputs.items()]
        if request.outputs is not None:
            have = {o["name"]: o for o in outs}
            unknown = [name for name in request.outputs if name not in have]
            if unknown:
                raise RequestError(
                    f"requested outputs {unknown} do not exist; this model has {list(have)}",
                    hint="ask for existing outputs, or leave 'outputs' out to get all",
                )
            outs = [have[name] for name in request.outputs]
        body: dict[str, Any] = {"model_name": model.name}
        if model.version is not None:
            body["model_version"] = model.version
        if request.request_id is not None:
            body["id"] = request.request_id
        body["outputs"] = outs
        return dumps(body), JSON_TYPE

    def encode_error(self, error: CkptServeError) -> bytes:
        return json_error(error)


def _output(name: str, value: torch.Tensor | np.ndarray) -> dict[str, Any]:
    if isinstance(value, np.ndarray):  # texts (labels)
        return dict(name=name, shape=list(value.shape), datatype="BYTES", data=value.reshape(-1).tolist())
    datatype = OIP_OF_TORCH.get(value.dtype)
    if datatype is None:
        value, datatype = value.float(), "FP32"
    return dict(name=name, shape=list(value.shape), datatype=datatype, data=value.reshape(-1).tolist())


def _decode(doc: dict[str, Any], spec: InputSpec) -> DecodedRequest:
    inputs = doc["inputs"]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, dict) for x in inputs):
        raise RequestError(
            f"'inputs' must be a non-empty list of OIP v2 input objects; found {str(inputs)[:80]}",
            hint=_HINT_V2 + ' (or use {"instances": [...]} for the row format)',
        )
    if len(inputs) > 1:
        names = [str(x.get("name")) for x in inputs]
        raise RequestError(
            f"this model takes exactly one input, {spec.name!r}; the request has {len(inputs)}: {names}",
            hint=f"send only {spec.name!r} (another name is accepted only for a lone input)",
        )
    inp = inputs[0]
    missing = [key for key in ("name", "shape", "datatype", "data") if key not in inp]
    if missing:
        raise RequestError(f"input {inp.get('name')!r} lacks {missing}", hint=_HINT_V2)
    name, shape, datatype, data = inp["name"], inp["shape"], inp["datatype"], inp["data"]
    if not isinstance(datatype, str) or datatype not in NUMERIC:  # a list or object is not hashable
        raise RequestError(
            f"input {name!r} has datatype {str(datatype)[:80]!r}; this numeric model accepts "
            f"{', '.join(NUMERIC)}",
            hint="send the tensor's numbers with one of these datatypes",
        )
    expected = (-1, *spec.shape)
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or not shape_ok(tuple(shape), expected)
    ):
        raise RequestError(
            f"input {name!r} has shape {shape}; expected [n{''.join(f', {d}' for d in spec.shape)}] "
            "with n the number of instances (-1 = any size)",
            hint="put the number of instances first in 'shape'",
        )
    check_count(shape[0], spec)
    if not isinstance(data, list):
        raise RequestError(
            f"input {name!r} has 'data' of type {type(data).__name__}; expected a list", hint=_HINT_V2
        )
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(
            f"input {name!r} has ragged 'data'; expected a flat list or nested lists of shape {shape}",
            hint="send 'data' as one flat list in row-major order",
        ) from None
    values = TYPES[datatype].values
    kinds = "b" if values.kind == "b" else "iu" if values.kind in "iu" else "iuf"
    if arr.size and arr.dtype.kind not in kinds:
        bad, value = first_misfit(data, kinds.replace("u", ""))
        found = f"{value!r} ({type(value).__name__})" if bad else f"values of numpy kind {arr.dtype.kind!r}"
        raise RequestError(
            f"input {name!r} holds {found}; expected {datatype} elements", hint="match 'data' to 'datatype'"
        )
    if arr.size and values.kind in "iu":
        info = np.iinfo(values)
        if arr.min() < info.min or arr.max() > info.max:
            raise RequestError(
                f"input {name!r} holds values outside {datatype}'s range [{info.min}, {info.max}]",
                hint="use a wider datatype",
            )
    if arr.size != math.prod(shape):
        raise RequestError(
            f"input {name!r} has {arr.size} elements in 'data'; its shape {shape} needs {math.prod(shape)}",
            hint="make 'shape' match 'data'",
        )
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f"'id' is {request_id!r}; expected a string", hint="send the id as a JSON string")
    wanted = doc.get("outputs")
    outputs = None
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and "name" in o for o in wanted):
            raise RequestError("'outputs' must be a list of {\"name\": ...} objects", hint="or leave it out")
        outputs = tuple(str(o["name"]) for o in wanted)
    # the declared datatype only validates the elements; values are cast once, straight to spec.dtype
    tensor = to_tensor(arr.reshape(shape), spec)
    return DecodedRequest(tensor, Protocol.V2, request_id=request_id, outputs=outputs)
