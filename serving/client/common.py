"""What every client shares: request bodies, answers and OIP results."""

from __future__ import annotations

import io
import json
import math
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.codecs.datatypes import datatype_of, json_dtype
from serving.codecs.oip_grpc import bf16_bits
from serving.error_codes import MODEL_NOT_FOUND_HINT, TORCHSERVE_NOT_FOUND, error_from_body, error_from_http
from serving.errors import CkptServeError, ModelNotFoundError, RequestError
from serving.wire import JSON_TYPE, NPY_MAGIC, NPY_TYPE

Tensors = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def as_array(value: Any) -> np.ndarray:
    """A numpy array from an array, a torch tensor (without importing torch) or nested lists."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def encode_instances(instances: Any) -> tuple[bytes, str]:
    """A /predictions body: npy for arrays and tensors (binary both ways), else KServe v1 JSON."""
    if isinstance(instances, np.ndarray) or hasattr(instances, "detach"):
        buffer = io.BytesIO()
        np.save(buffer, as_array(instances), allow_pickle=False)
        return buffer.getvalue(), NPY_TYPE
    if isinstance(instances, (bytes, bytearray)):
        return bytes(instances), NPY_TYPE if instances[:6] == NPY_MAGIC else JSON_TYPE
    return json.dumps({"instances": list(instances)}).encode(), JSON_TYPE


def decode_answer(body: bytes) -> Any:
    """The handler's answer: an array for npy, parsed JSON otherwise; its error bodies raise typed errors."""
    if body[:6] == NPY_MAGIC:
        try:
            return np.load(io.BytesIO(body), allow_pickle=False)  # never run code an answer carries
        except ValueError as exc:  # an object array, or bytes that are not a whole npy file
            raise CkptServeError(
                f"the server answered an npy body that cannot be read: {exc}",
                hint="check that the URL is a ckptserve server; its npy answers hold numbers only",
            ) from None
    err = error_from_body(body)
    if err is not None:
        raise err
    try:
        return json.loads(body)
    except ValueError:
        raise CkptServeError(f"the server answered neither npy nor JSON: {body[:80]!r}") from None


def parse_error_body(data: bytes) -> Any:
    """An error answer's body: parsed JSON, else its text."""
    try:
        return json.loads(data) if data else None
    except ValueError:
        return data.decode("utf-8", "replace")


def error_document(status: int, parsed: Any) -> dict[str, Any]:
    """An error answer as ckptserve's JSON error body ``{"code", "type", "error", "hint"}``.

    The handler's bodies already have that shape. TorchServe's frontend answers some errors itself
    (an unknown model's 404, no worker's 503) with ``{"code", "type", "message"}`` and no hint: those
    get the same shape, and the hint where we know the fix.
    """
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return parsed
    if isinstance(parsed, dict):
        message, kind = str(parsed.get("message") or parsed), parsed.get("type")
    else:
        message, kind = str(parsed or f"HTTP status {status}"), None
    if status == 404 and kind in TORCHSERVE_NOT_FOUND:
        err: CkptServeError = ModelNotFoundError(f"{message.rstrip('.')}.", hint=MODEL_NOT_FOUND_HINT)
    else:
        err = error_from_http(status, message)
    return {**err.to_dict(), "code": status}


def predictions(answer: Any) -> Any:
    """``predictions`` of a KServe v1 answer; an npy answer (an array) stays as it is."""
    if isinstance(answer, dict) and "predictions" in answer:
        return answer["predictions"]
    return answer


def named_arrays(tensors: Tensors) -> list[tuple[str, np.ndarray]]:
    """Inputs as (name, array): from {"name": array-like} or from OIP JSON input objects."""
    if isinstance(tensors, Mapping):
        return [(str(name), as_array(value)) for name, value in tensors.items()]
    pairs = []
    for spec in tensors:
        try:
            dtype = json_dtype(spec["datatype"])
            array = np.asarray(spec["data"], dtype=dtype).reshape(spec["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RequestError(
                f"input {spec.get('name')!r} is not an OIP tensor ({exc})",
                hint='give {"name", "shape", "datatype", "data"}, or a mapping of name to array',
            ) from None
        pairs.append((str(spec["name"]), array))
    return pairs


def json_inputs(tensors: Tensors) -> list[dict[str, Any]]:
    """Inputs as OIP JSON objects for the HTTP API (which takes JSON only)."""
    if not isinstance(tensors, Mapping):
        return [dict(t) for t in tensors]
    inputs = []
    for name, array in named_arrays(tensors):
        datatype = datatype_of(array.dtype)
        inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "data": array.reshape(-1).tolist(),
            }
        )
    return inputs


def raw_input(array: np.ndarray, datatype: str | None = None) -> tuple[str, np.ndarray]:
    """The datatype and the array to send raw; BF16 needs its bits computed."""
    if datatype == "BF16":
        return "BF16", bf16_bits(array)
    return datatype or datatype_of(array.dtype), array


@dataclass
class InferResult:
    """An OIP v2 answer: ``outputs`` maps names to arrays.

    ``result["outputs"]`` and the other keys read the answer as the OIP JSON document (what
    ``HttpClient.infer`` used to return), whichever protocol carried it.
    """

    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    datatypes: dict[str, str] = field(default_factory=dict)

    def as_numpy(self, name: str) -> np.ndarray:
        try:
            return self.outputs[name]
        except KeyError:
            raise RequestError(f"no output {name!r}; the answer has {list(self.outputs)}") from None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"model_name": self.model_name}
        if self.model_version:
            doc["model_version"] = self.model_version
        if self.id:
            doc["id"] = self.id
        doc["outputs"] = [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": self.datatypes.get(name) or datatype_of(array.dtype),
                "data": [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()],
            }
            for name, array in self.outputs.items()
        ]
        return doc

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> InferResult:
        outputs, datatypes = {}, {}
        for out in doc.get("outputs", []):
            datatype = out.get("datatype", "FP32")
            if datatype == "BYTES":
                array = np.array([str(v).encode() for v in out["data"]], dtype=object)
            else:
                array = np.asarray(out["data"], dtype=json_dtype(datatype))
            outputs[out["name"]] = (
                array.reshape(out["shape"]) if math.prod(out["shape"]) == array.size else array
            )
            datatypes[out["name"]] = datatype
        return cls(
            str(doc.get("model_name", "")),
            str(doc.get("model_version", "")),
            str(doc.get("id", "")),
            outputs,
            datatypes,
        )


def host_and_port(base_url: str) -> tuple[str, int]:
    """``http(s)://host:port`` -> (host, port), with a typed error for anything else."""
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise RequestError(f"Expected an http://host:port or https://host:port URL, got {base_url!r}.")
    return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
