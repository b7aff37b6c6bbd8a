"""Open Inference Protocol v2 tensors in protobuf (typed contents or raw bytes) to numpy and back."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from serving.codecs.datatypes import DATATYPES, TYPES, datatype_of
from serving.errors import RequestError
from serving.protos import grpc_predict_v2_pb2 as pb

_MAX_ELEMENTS = 2**40  # far beyond any request a server accepts, far below numpy's 2**63 bytes

Tensor = TypeVar("Tensor", pb.ModelInferRequest.InferInputTensor, pb.ModelInferResponse.InferOutputTensor)


def has_typed_contents(datatype: str) -> bool:
    """Whether a datatype can travel in InferTensorContents (FP16 and BF16 only as raw bytes)."""
    return datatype in TYPES and TYPES[datatype].field is not None


def to_numpy(tensor: pb.ModelInferRequest.InferInputTensor | Any, raw: bytes | None) -> np.ndarray:
    """The tensor's elements as an array of its shape; ``raw`` is its raw_*_contents entry, if any.

    Every mismatch (unknown datatype, negative dimension, element or byte count that disagrees with
    the shape) is a RequestError that names the tensor.
    """
    name, datatype = tensor.name, tensor.datatype
    if datatype not in DATATYPES:
        raise RequestError(
            f"tensor {name!r} has datatype {datatype!r}; expected one of {', '.join(DATATYPES)}",
            hint="use an Open Inference Protocol datatype name",
        )
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise RequestError(f"tensor {name!r} has shape {list(shape)}; dimensions cannot be negative")
    count = math.prod(shape)
    if math.prod(d for d in shape if d) > _MAX_ELEMENTS:
        # numpy refuses such a shape even with a zero dimension elsewhere ("array is too big")
        raise RequestError(
            f"tensor {name!r} has shape {list(shape)}: more elements than any array can hold",
            hint="send the tensor's real shape",
        )
    if raw is not None:
        if tensor.HasField("contents"):
            raise RequestError(
                f"tensor {name!r} has both contents and raw_input_contents; expected one",
                hint="send the elements one way only",
            )
        if datatype == "BYTES":
            items = unpack_bytes(raw, name)
            if len(items) != count:
                raise RequestError(
                    f"tensor {name!r} has {len(items)} BYTES elements in its raw contents; its shape "
                    f"{list(shape)} needs {count}",
                    hint="make the shape match the data",
                )
            array = np.array(items, dtype=object)
        else:
            dtype = TYPES[datatype].wire
            if len(raw) != count * dtype.itemsize:
                raise RequestError(
                    f"tensor {name!r} has {len(raw)} raw bytes; shape {list(shape)} of {datatype} needs "
                    f"{count * dtype.itemsize}",
                    hint="send row-major, little-endian elements without padding",
                )
            array = np.frombuffer(raw, dtype=dtype)
    else:
        field = TYPES[datatype].field
        if field is None:
            raise RequestError(
                f"tensor {name!r} is {datatype}, which has no typed contents field",
                hint="send it in raw_input_contents (tritonclient does)",
            )
        values = getattr(tensor.contents, field)
        if len(values) != count:
            raise RequestError(
                f"tensor {name!r} has {len(values)} elements in contents.{field}; its shape {list(shape)} "
                f"needs {count}",
                hint="make the shape match the data",
            )
        if datatype == "BYTES":
            array = np.array(list(values), dtype=object)
        else:
            dtype = TYPES[datatype].wire
            if datatype in ("INT8", "INT16", "UINT8", "UINT16"):  # carried in a wider proto field
                wide = np.array(values, dtype=np.int64)
                info = np.iinfo(dtype)
                if wide.size and (wide.min() < info.min or wide.max() > info.max):
                    raise RequestError(
                        f"tensor {name!r} holds values outside {datatype}'s range [{info.min}, {info.max}]",
                        hint="use a wider datatype",
                    )
                array = wide.astype(dtype)
            else:
                array = np.array(values, dtype=dtype)
    if datatype == "BF16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.reshape(shape)


def fill(tensor: Tensor, name: str, array: np.ndarray, *, raw: bool) -> bytes | None:
    """Set ``tensor``'s name, datatype, shape and contents, or return its raw bytes when ``raw``."""
    datatype = datatype_of(array.dtype)
    tensor.name, tensor.datatype = name, datatype
    tensor.shape.extend(array.shape)
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist()]
        if raw:
            return pack_bytes(items)
        tensor.contents.bytes_contents.extend(items)
        return None
    if raw:
        return np.ascontiguousarray(array, dtype=TYPES[datatype].wire).tobytes()
    field = TYPES[datatype].field
    if field is None:
        raise RequestError(f"tensor {name!r} is FP16, which travels only as raw contents", hint="use raw")
    getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
    return None


def pack_bytes(items: Sequence[bytes]) -> bytes:
    """BYTES elements as raw contents: each one a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def unpack_bytes(raw: bytes, name: str) -> list[bytes]:
    items, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise RequestError(f"tensor {name!r}: raw BYTES contents end inside a length prefix")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise RequestError(f"tensor {name!r}: a raw BYTES element runs past the end of the contents")
        items.append(raw[pos : pos + size])
        pos += size
    return items


def bf16_bits(array: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (round to nearest even), for clients sending BF16."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
