"""The one Open Inference Protocol datatype table: name, numpy and torch dtypes, proto field, size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.errors import RequestError

# No torch here: the gRPC gateway and the clients read this table without paying for torch
# (serving.codecs.torch_dtypes resolves the torch names).


@dataclass(frozen=True)
class DataType:
    """One OIP datatype and what it is called everywhere else."""

    name: str  # the OIP name: "FP32"
    wire: np.dtype  # raw contents, little-endian whatever the machine (OIP spec); object for BYTES
    values: np.dtype  # the elements once decoded: BF16 widens to float32 (numpy has no bfloat16)
    torch: str | None  # the torch dtype's name ("float32"); None for BYTES
    field: str | None  # the InferTensorContents field; None: raw contents only (FP16, BF16)
    size: int | None  # bytes per element; None for BYTES (each element carries its length)


def _numeric(name: str, wire: str, torch: str, field: str | None, values: str | None = None) -> DataType:
    dtype = np.dtype(wire)
    return DataType(name, dtype, np.dtype(values or wire).newbyteorder("="), torch, field, dtype.itemsize)


# Ordered as every "expected one of ..." message lists them.
TYPES: dict[str, DataType] = {
    t.name: t
    for t in (
        _numeric("BOOL", "?", "bool", "bool_contents"),
        _numeric("UINT8", "u1", "uint8", "uint_contents"),
        _numeric("UINT16", "<u2", "uint16", "uint_contents"),
        _numeric("UINT32", "<u4", "uint32", "uint_contents"),
        _numeric("UINT64", "<u8", "uint64", "uint64_contents"),
        _numeric("INT8", "i1", "int8", "int_contents"),
        _numeric("INT16", "<i2", "int16", "int_contents"),
        _numeric("INT32", "<i4", "int32", "int_contents"),
        _numeric("INT64", "<i8", "int64", "int64_contents"),
        _numeric("FP16", "<f2", "float16", None),
        _numeric("FP32", "<f4", "float32", "fp32_contents"),
        _numeric("FP64", "<f8", "float64", "fp64_contents"),
        _numeric("BF16", "<u2", "bfloat16", None, values="<f4"),  # the bits travel as uint16
        DataType("BYTES", np.dtype(object), np.dtype(object), None, "bytes_contents", None),
    )
}
DATATYPES = tuple(TYPES)
NUMERIC = tuple(name for name, t in TYPES.items() if t.size is not None)
_OF_KIND = {(t.wire.kind, t.wire.itemsize): t.name for t in TYPES.values() if t.size and t.name != "BF16"}
_OIP_OF_TORCH_NAME = {t.torch: t.name for t in TYPES.values() if t.torch is not None}


def datatype_of(dtype: np.dtype) -> str:
    """The OIP datatype name of a numpy dtype (strings and bytes are BYTES)."""
    if dtype.kind in "SUO":
        return "BYTES"
    name = _OF_KIND.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise RequestError(f"numpy dtype {dtype} has no Open Inference Protocol datatype", hint="cast it")
    return name


def oip_of_torch_name(name: str) -> str | None:
    """The OIP name of a torch dtype name ("float32", as describe() writes it); None when OIP has none."""
    return _OIP_OF_TORCH_NAME.get(name)


def json_dtype(name: str) -> np.dtype | None:
    """The numpy dtype of a JSON tensor's "data"; None (numpy infers) for BYTES and unknown names."""
    datatype = TYPES.get(name)
    return datatype.values if datatype is not None and datatype.size is not None else None
