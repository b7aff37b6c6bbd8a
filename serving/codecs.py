"""Request and response formats of the model server: KServe v1 JSON, Open Inference Protocol v2, npy."""

from __future__ import annotations

import enum
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import torch

from serving.errors import (
    CkptServeError,
    ConfigError,
    PayloadTooLargeError,
    RequestError,
    UnsupportedMediaTypeError,
)


class Protocol(str, enum.Enum):
    V1 = "v1"
    V2 = "v2"
    NPY = "npy"


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]  # per-instance shape, no batch dim; -1 on an axis = any size
    dtype: torch.dtype = torch.float32
    name: str = "input__0"  # the OIP v2 input name the model expects
    allow_nonfinite: bool = False
    max_instances: int = 64


@dataclass(frozen=True)
class PostProcess:
    kind: Literal["raw", "softmax", "topk"] = "raw"
    k: int = 5
    labels: tuple[str, ...] | None = None  # index -> name, from an index_to_name.json
    output_name: str = "output__0"


@dataclass
class DecodedRequest:
    instances: torch.Tensor  # (n, *instance_shape), dtype = spec.dtype, contiguous, CPU
    protocol: Protocol
    request_id: str | None = None  # the OIP v2 "id", echoed back
    outputs: tuple[str, ...] | None = None  # OIP v2 output names the client asked for; None = all


_NPY_MAGIC = b"\x93NUMPY"
JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
FORM_TYPE = "application/x-www-form-urlencoded"
# Content type -> what the body may be: JSON types hold JSON (or npy, told by its magic), npy holds
# npy; the generic ones (none sent, octet-stream, a multipart part without its own type) either.
_JSON_TYPES = frozenset({JSON_TYPE, "text/json", "text/plain"})  # and any "+json" suffix
_SNIFFED_TYPES = frozenset({"", "application/octet-stream", "multipart/form-data", FORM_TYPE})
_ACCEPTED_TEXT = "application/json (KServe v1 or OIP v2), application/x-npy or application/octet-stream"
# A body cannot hold more than max_instances instances: refused on its byte count before parsing.
# 64 bytes per element covers the longest float repr (24 characters), separators and indentation;
# the slack covers the keys of an OIP v2 document and its "id".
BYTES_PER_ELEMENT = 64
BODY_SLACK_BYTES = 64 * 1024
_TORCH_NAMES = "bool uint8 uint16 uint32 uint64 int8 int16 int32 int64 float16 float32 float64 bfloat16"
# OIP v2 names from torch's: uint8 -> UINT8, float32 -> FP32, bfloat16 -> BF16
_V2_DTYPES: dict[str, torch.dtype] = {
    name.upper().replace("BFLOAT", "BF").replace("FLOAT", "FP"): getattr(torch, name)
    for name in _TORCH_NAMES.split()
}
_V2_OF_TORCH = {dtype: name for name, dtype in _V2_DTYPES.items()}
_HINT_V1 = 'send {"instances": [instance, ...]} with each instance a nested list of the instance shape'
_HINT_LABELS = 'write {"0": "cat", "1": "dog", ...} or ["cat", "dog", ...]'
_HINT_V2 = 'send {"inputs": [{"name", "shape": [n, ...], "datatype": "FP32", "data": [...]}]}'


def _shape_ok(found: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return len(found) == len(expected) and all(e in (-1, f) for f, e in zip(found, expected, strict=True))


def _fmt(shape: tuple[int, ...]) -> str:
    return f"{tuple(shape)}" + (" (-1 = any size)" if -1 in shape else "")


def _check_count(n: int, spec: InputSpec) -> None:
    if n == 0:
        raise RequestError("the request holds zero instances; expected at least one", hint=_HINT_V1)
    if n > spec.max_instances:
        raise PayloadTooLargeError(
            f"the request holds {n} instances; this model accepts at most {spec.max_instances} per request",
            hint="split the instances over several requests",
        )


def _first_misfit(x: Any, kinds: str) -> tuple[bool, Any]:
    """The first leaf of nested lists whose kind is not in ``kinds``; error path only."""
    if isinstance(x, list):
        for item in x:
            found = _first_misfit(item, kinds)
            if found[0]:
                return found
        return False, None
    # bool before int: bool is an int subclass, but OIP keeps BOOL apart from the integers
    if isinstance(x, bool):
        kind = "b"
    elif isinstance(x, int):
        kind = "i" if -(2**63) <= x < 2**64 else "O"  # beyond 64 bits numpy keeps Python objects
    else:
        kind = "f" if isinstance(x, float) else "O"
    return kind not in kinds, x


def _nested_shape(x: Any) -> tuple[int, ...] | None:
    """Shape of nested lists, None when ragged; error path only."""
    if not isinstance(x, list):
        return ()
    shapes = {_nested_shape(item) for item in x}
    if len(shapes) > 1 or None in shapes:
        return None
    return (len(x), *(shapes.pop() if shapes else ()))


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _to_tensor(arr: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """The checked (n, ...) array as a contiguous tensor of spec.dtype."""
    target_is_float = spec.dtype.is_floating_point
    if arr.dtype.kind in "iu":
        arr = arr.view(arr.dtype.str)  # numpy's ulonglong (from big Python ints) has no torch twin
        if not target_is_float and spec.dtype != torch.bool and arr.size:
            info = torch.iinfo(spec.dtype)
            if arr.min() < info.min or arr.max() > info.max:  # a cast would wrap around silently
                raise RequestError(
                    f"the input holds values outside {spec.dtype}'s range [{info.min}, {info.max}]",
                    hint="send values the model's input dtype can hold",
                )
    if arr.dtype.kind == "f" and not target_is_float:
        # an integer model cannot take NaN or 1.5: casting would silently invent a different input
        bad = ~(np.isfinite(arr) & (arr == np.trunc(arr)))
        if bad.any():
            i = int(np.argmax(bad.reshape(len(arr), -1).any(axis=1)))
            raise RequestError(
                f"instance {i} holds non-integer values; this model expects {spec.dtype} inputs",
                hint="send whole numbers",
            )
    fast = _NUMPY_FLOATS.get(spec.dtype)
    if fast is not None:
        # numpy's cast and check cost a fifth of torch's on request-sized arrays (per request, every batch)
        with np.errstate(over="ignore"):  # beyond float32's range becomes Inf: refused below, as NaN is
            cast = np.ascontiguousarray(arr, dtype=fast)
        if spec.allow_nonfinite or np.isfinite(cast).all():
            return torch.from_numpy(cast)
    tensor = torch.from_numpy(arr).to(spec.dtype).contiguous()
    # checked after the cast: float64 values beyond the float32 range become Inf here
    if target_is_float and not spec.allow_nonfinite:
        finite = torch.isfinite(tensor).reshape(len(tensor), -1).all(dim=1)
        if not bool(finite.all()):
            i = int(torch.argmin(finite.to(torch.uint8)))
            raise RequestError(
                f"instance {i} holds NaN or Infinity (or a number beyond {spec.dtype}'s range); "
                "expected finite numbers",
                hint="replace non-finite values before sending, or set allow_nonfinite for this model",
            )
    return tensor


def _decode_v1(instances: Any, spec: InputSpec) -> DecodedRequest:
    if not isinstance(instances, list):
        raise RequestError(f"'instances' is a {type(instances).__name__}; expected a list", hint=_HINT_V1)
    _check_count(len(instances), spec)
    try:
        arr: np.ndarray | None = np.array(instances)  # one C pass over the nested lists
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.dtype.kind not in "biuf" or not _shape_ok(arr.shape[1:], spec.shape):
        _diagnose_rows(instances, spec)
    return DecodedRequest(_to_tensor(arr, spec), Protocol.V1)


def _diagnose_rows(instances: list[Any], spec: InputSpec) -> NoReturn:
    """Raise the error that names the first bad instance; numpy alone only says that one is bad."""
    for i, inst in enumerate(instances):
        shape = _nested_shape(inst)
        if shape is None:
            raise RequestError(
                f"instance {i} is ragged (nested lists of unequal length); expected {_fmt(spec.shape)}",
                hint=_HINT_V1,
            )
        if not _shape_ok(shape, spec.shape):
            raise RequestError(
                f"instance {i} has shape {shape}; expected {_fmt(spec.shape)}",
                hint="each entry of 'instances' is one instance: wrap a single instance in a list",
            )
        bad, value = _first_misfit(inst, "bif")
        if bad:
            raise RequestError(
                f"instance {i} holds {value!r} ({type(value).__name__}); expected numbers"
                + (" (integers within 64 bits)" if isinstance(value, int) else ""),
                hint="send JSON numbers, not strings or null",
            )
    raise RequestError(
        f"the instances differ in shape; expected all of one shape {_fmt(spec.shape)}",
        hint="-1 axes may vary between requests, not between the instances of one request",
    )


def _decode_v2(doc: dict[str, Any], spec: InputSpec) -> DecodedRequest:
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
    if not isinstance(datatype, str) or datatype not in _V2_DTYPES:  # a list or object is not hashable
        raise RequestError(
            f"input {name!r} has datatype {str(datatype)[:80]!r}; this numeric model accepts "
            f"{', '.join(_V2_DTYPES)}",
            hint="send the tensor's numbers with one of these datatypes",
        )
    expected = (-1, *spec.shape)
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or not _shape_ok(tuple(shape), expected)
    ):
        raise RequestError(
            f"input {name!r} has shape {shape}; expected [n{''.join(f', {d}' for d in spec.shape)}] "
            "with n the number of instances (-1 = any size)",
            hint="put the number of instances first in 'shape'",
        )
    _check_count(shape[0], spec)
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
    kinds = "b" if datatype == "BOOL" else "iu" if "INT" in datatype else "iuf"
    if arr.size and arr.dtype.kind not in kinds:
        bad, value = _first_misfit(data, kinds.replace("u", ""))
        found = f"{value!r} ({type(value).__name__})" if bad else f"values of numpy kind {arr.dtype.kind!r}"
        raise RequestError(
            f"input {name!r} holds {found}; expected {datatype} elements", hint="match 'data' to 'datatype'"
        )
    if arr.size and "INT" in datatype:
        info = np.iinfo(datatype.lower())
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
    tensor = _to_tensor(arr.reshape(shape), spec)
    return DecodedRequest(tensor, Protocol.V2, request_id=request_id, outputs=outputs)


def _decode_npy(raw: bytes | bytearray, spec: InputSpec) -> DecodedRequest:
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:  # untrusted bytes: any parser failure is the client's, never a 500
        raise RequestError(
            f"the body starts like an npy file but cannot be read: {exc}",
            hint="send the bytes numpy.save writes, with a numeric dtype (no object arrays)",
        ) from None
    if arr.dtype.kind not in "biuf":
        raise RequestError(f"npy array has dtype {arr.dtype}; expected a numeric one", hint="cast to float32")
    if arr.ndim == len(spec.shape):
        arr = arr[None]  # one instance without its batch axis
    if arr.ndim != len(spec.shape) + 1 or not _shape_ok(arr.shape[1:], spec.shape):
        raise RequestError(
            f"npy array has shape {arr.shape}; expected one instance {_fmt(spec.shape)} or a batch (n, ...)",
            hint="reshape the array before numpy.save",
        )
    _check_count(len(arr), spec)
    if not (arr.flags.writeable and arr.flags.c_contiguous and arr.dtype.isnative):
        # np.load on a buffer gives a read-only view, which torch.from_numpy warns about
        arr = np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C")
    return DecodedRequest(_to_tensor(arr, spec), Protocol.NPY)


def _parse_json(raw: bytes | bytearray | str, media: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are ValueErrors
        if not raw.strip():
            if media == FORM_TYPE:
                # TorchServe's frontend decodes such a body as HTML form fields: JSON sent that way
                # reaches the worker as the name of an empty field, never as the body.
                raise UnsupportedMediaTypeError(
                    f"the body was sent as {FORM_TYPE} (the default of curl -d and urllib), which the "
                    "server reads as form fields: no JSON or npy reached the model",
                    hint="send it with Content-Type: application/json (or application/x-npy)",
                ) from None
            raise RequestError("the request body is empty; expected JSON or npy", hint=_HINT_V1) from None
        if isinstance(exc, json.JSONDecodeError):
            where = f"line {exc.lineno} column {exc.colno} (char {exc.pos})"
            raise RequestError(f"malformed JSON at {where}: {exc.msg}", hint="send valid JSON") from None
        raise RequestError(f"the body is neither npy nor JSON text: {exc}", hint="send UTF-8 JSON") from None


def _media_kind(media: str) -> Literal["json", "npy", "sniff"]:
    """What a body of this media type may hold; a foreign type is refused before any parsing."""
    if media in _JSON_TYPES or media.endswith("+json"):
        return "json"
    if media == NPY_TYPE:
        return "npy"
    if media in _SNIFFED_TYPES:
        return "sniff"
    raise UnsupportedMediaTypeError(
        f"content type {media!r} is not supported; expected {_ACCEPTED_TEXT}",
        hint="send the tensor as JSON or as numpy.save bytes, with its content type",
    )


def max_body_bytes(spec: InputSpec) -> int | None:
    """The largest raw body ``spec`` can need (JSON is the wordiest format); None when an axis is free."""
    if any(d < 0 for d in spec.shape):
        return None
    return spec.max_instances * math.prod(spec.shape) * BYTES_PER_ELEMENT + BODY_SLACK_BYTES


def _check_size(size: int, spec: InputSpec) -> None:
    limit = max_body_bytes(spec)
    if limit is not None and size > limit:
        raise PayloadTooLargeError(
            f"the body has {size} bytes; {spec.max_instances} instances of shape {_fmt(spec.shape)} "
            f"need at most {limit} bytes (max_instances x elements x {BYTES_PER_ELEMENT} + "
            f"{BODY_SLACK_BYTES // 1024} KiB)",
            hint="send fewer instances per request, as compact JSON or npy",
        )


def decode_request(
    body: bytes | bytearray | str | dict | list | None, content_type: str | None, spec: InputSpec
) -> DecodedRequest:
    """Turn one request body (raw, or already parsed by TorchServe's worker) into a checked batch."""
    try:
        return _decode(body, (content_type or "").split(";", 1)[0].strip().lower(), spec)
    except RecursionError:  # json, numpy and the error-path walkers all recurse on hostile nesting
        raise RequestError(
            "the JSON nests too deeply; expected lists as deep as the instance shape", hint=_HINT_V1
        ) from None


def _decode(body: Any, media: str, spec: InputSpec) -> DecodedRequest:
    if body is None:
        body = b""
    if isinstance(body, (bytes, bytearray, str)):
        kind = _media_kind(media)
        _check_size(len(body), spec)  # str: characters, a lower bound of its bytes
        # npy magic is never JSON: such a body is read as npy whatever JSON type it came with
        is_npy = (body[:6] if isinstance(body, (bytes, bytearray)) else b"") == _NPY_MAGIC
        if kind == "npy" and not is_npy:
            raise RequestError(
                "the body is not an npy file: it does not start with the npy magic b'\\x93NUMPY'",
                hint="send the bytes numpy.save writes",
            )
        if is_npy:
            return _decode_npy(body, spec)
        body = _parse_json(body, media)
    if isinstance(body, list):
        return _decode_v1(body, spec)
    if isinstance(body, dict):
        if "inputs" in body and "instances" in body:
            raise RequestError("the body has both 'instances' and 'inputs'; expected one", hint=_HINT_V1)
        if "inputs" in body:
            return _decode_v2(body, spec)
        if "instances" in body:
            return _decode_v1(body["instances"], spec)
        raise RequestError(
            f"the JSON object lacks 'instances' (KServe v1) or 'inputs' (OIP v2); found {sorted(body)[:10]}",
            hint=_HINT_V1,
        )
    raise RequestError(
        f"the JSON body is a {type(body).__name__}; expected an object or a list of instances", hint=_HINT_V1
    )


def _nonfinite_as_text(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if obj != obj else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, list):
        return [_nonfinite_as_text(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _nonfinite_as_text(v) for k, v in obj.items()}
    return obj


# Built once: json.dumps with options builds a new encoder on every call (a quarter of its cost here).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _dumps(obj: Any) -> bytes:
    try:
        return _ENCODER.encode(obj).encode()
    except ValueError:
        # Strict JSON has no NaN/Infinity and many clients reject the bare literals; a model may still
        # emit -inf logits. Spell them as the strings proto3's JSON mapping uses (slow path only).
        return _ENCODER.encode(_nonfinite_as_text(obj)).encode()


def _v2_output(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    datatype = _V2_OF_TORCH.get(tensor.dtype)
    if datatype is None:
        tensor, datatype = tensor.float(), "FP32"
    return dict(name=name, shape=list(tensor.shape), datatype=datatype, data=tensor.reshape(-1).tolist())


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
    outputs = outputs.detach().cpu()
    n = len(request.instances)
    if outputs.ndim == 0 or outputs.shape[0] != n:
        raise CkptServeError(
            f"the model returned shape {tuple(outputs.shape)} for {n} instances; expected ({n}, ...)",
            hint="the model's forward must keep the batch dimension first",
        )
    if post.kind != "raw" and outputs.ndim != 2:
        raise ConfigError(
            f"post-processing {post.kind!r} needs (n, classes) outputs; the model gave {list(outputs.shape)}",
            hint="set the handler's post-processing to 'raw' for this model",
        )
    values = outputs if post.kind == "raw" or ranked is not None else outputs.float().softmax(dim=-1)
    if post.kind == "topk":
        # sorted, highest first
        scores, indices = ranked if ranked is not None else values.topk(min(post.k, values.shape[-1]), dim=-1)
        labels = post.labels or ()
        if request.protocol is not Protocol.V2:
            preds = [
                [
                    {"index": i, "label": labels[i] if i < len(labels) else str(i), "score": s}
                    for i, s in zip(row_i, row_s, strict=True)
                ]
                for row_i, row_s in zip(indices.tolist(), scores.tolist(), strict=True)
            ]
            return _dumps({"predictions": preds}), JSON_TYPE
        outs = [_v2_output("topk_indices", indices), _v2_output("topk_scores", scores)]
        if post.labels:
            flat = [labels[i] if i < len(labels) else str(i) for i in indices.reshape(-1).tolist()]
            outs.append(
                {"name": "topk_labels", "shape": list(indices.shape), "datatype": "BYTES", "data": flat}
            )
    elif request.protocol is Protocol.NPY:
        buf = io.BytesIO()
        array = (values.float() if values.dtype == torch.bfloat16 else values).numpy()  # npy has no bf16
        np.save(buf, array, allow_pickle=False)
        return buf.getvalue(), NPY_TYPE
    elif request.protocol is Protocol.V1:
        return _dumps({"predictions": values.tolist()}), JSON_TYPE
    else:
        outs = [_v2_output(post.output_name, values)]
    if request.outputs is not None:
        have = {o["name"]: o for o in outs}
        unknown = [name for name in request.outputs if name not in have]
        if unknown:
            raise RequestError(
                f"requested outputs {unknown} do not exist; this model has {list(have)}",
                hint="ask for existing outputs, or leave 'outputs' out to get all",
            )
        outs = [have[name] for name in request.outputs]
    body: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        body["model_version"] = model_version
    if request.request_id is not None:
        body["id"] = request.request_id
    body["outputs"] = outs
    return _dumps(body), JSON_TYPE


def encode_error(error: CkptServeError, protocol: Protocol | None = None) -> bytes:
    """The JSON error body; one shape for every protocol, since v1 and OIP v2 both read its "error" string."""
    del protocol  # kept in the signature so a protocol-specific body can come without changing callers
    return _dumps(error.to_dict())


def load_labels(path: str | Path) -> tuple[str, ...]:
    """Read an index_to_name.json ({"0": "cat", ...}, {"0": ["n0", "cat"]} or a list) ordered by index."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {p}: {exc.strerror}", hint="check the path") from None
    except ValueError as exc:
        raise ConfigError(f"labels file {p} is not valid JSON: {exc}", hint="fix the file") from None
    if isinstance(doc, list):
        items = list(enumerate(doc))
    elif isinstance(doc, dict):
        try:
            items = sorted(((int(key), value) for key, value in doc.items()), key=lambda kv: kv[0])
        except ValueError:
            raise ConfigError(
                f"labels file {p} has a key that is not an integer index: {list(doc)[:5]}",
                hint='use keys "0", "1", ...',
            ) from None
        indices = [i for i, _ in items]
        if indices != list(range(len(items))):
            raise ConfigError(
                f"labels file {p} has indices {indices[:10]}; expected 0..{len(items) - 1}, once each",
                hint="number the classes from 0 without gaps",
            )
    else:
        raise ConfigError(
            f"labels file {p} holds a {type(doc).__name__}; expected an object or a list", hint=_HINT_LABELS
        )
    if not items:
        raise ConfigError(f"labels file {p} is empty; expected one label per class", hint=_HINT_LABELS)
    labels = []
    for i, value in items:
        # TorchServe's ImageNet files map to [wordnet id, name]: the readable name is last
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[-1]
        if not isinstance(value, str):
            raise ConfigError(
                f"labels file {p}: entry {i} is {value!r}; expected a string", hint=_HINT_LABELS
            )
        labels.append(value)
    return tuple(labels)
