"""OIP v2 tensors: typed contents and raw bytes to numpy and back, and the errors a bad tensor gets."""

from __future__ import annotations

import numpy as np
import pytest

from serving.codecs.datatypes import datatype_of
from serving.codecs.oip_grpc import bf16_bits, fill, pack_bytes, to_numpy, unpack_bytes
from serving.errors import RequestError
from serving.protos import grpc_predict_v2_pb2 as pb

Tensor = pb.ModelInferRequest.InferInputTensor


@pytest.mark.parametrize(
    "dtype",
    ["bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64"],
)
@pytest.mark.parametrize("raw", [True, False])
def test_every_numeric_datatype_round_trips(dtype: str, raw: bool) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    tensor = Tensor()
    data = fill(tensor, "x", array, raw=raw)
    assert (data is not None) == raw
    assert list(tensor.shape) == [2, 3, 4] and tensor.datatype == datatype_of(array.dtype)
    back = to_numpy(pb.ModelInferRequest.InferInputTensor.FromString(tensor.SerializeToString()), data)
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_raw_contents_are_little_endian_whatever_the_array() -> None:
    big = np.array([1.5, -2.0], dtype=">f4")
    data = fill(Tensor(), "x", big, raw=True)
    assert data == np.array([1.5, -2.0], dtype="<f4").tobytes()


def test_fp16_travels_raw_only() -> None:
    array = np.array([[0.5, 2.0]], dtype=np.float16)
    tensor = Tensor()
    data = fill(tensor, "x", array, raw=True)
    assert tensor.datatype == "FP16" and np.array_equal(to_numpy(tensor, data), array)
    with pytest.raises(RequestError, match="raw"):
        fill(Tensor(), "x", array, raw=False)
    with pytest.raises(RequestError, match="no typed contents field"):
        to_numpy(Tensor(name="x", datatype="FP16", shape=[1]), None)


def test_bf16_bits_widen_to_float32() -> None:
    values = np.array([1.0, -3.5, 0.15625, 65280.0], dtype=np.float32)  # exact in bfloat16
    tensor = Tensor(name="x", datatype="BF16", shape=[4])
    back = to_numpy(tensor, bf16_bits(values).tobytes())
    assert back.dtype == np.float32 and np.array_equal(back, values)


def test_bytes_elements_are_length_prefixed() -> None:
    items = [b"cat", b"", b"\x00dog"]
    raw = pack_bytes(items)
    assert raw[:4] == b"\x03\x00\x00\x00" and unpack_bytes(raw, "x") == items
    tensor = Tensor()
    data = fill(tensor, "labels", np.array(items, dtype=object), raw=True)
    assert tensor.datatype == "BYTES" and to_numpy(tensor, data).tolist() == items
    with pytest.raises(RequestError, match="past the end"):
        unpack_bytes(b"\x09\x00\x00\x00abc", "x")


BAD = {
    "unknown datatype": (Tensor(name="x", datatype="FLOAT32", shape=[1]), None, "FLOAT32"),
    "negative dimension": (Tensor(name="x", datatype="FP32", shape=[-1, 2]), None, "negative"),
    "too few elements": (
        Tensor(
            name="x", datatype="FP32", shape=[2, 2], contents=pb.InferTensorContents(fp32_contents=[1, 2, 3])
        ),
        None,
        "needs 4",
    ),
    "raw byte count": (Tensor(name="x", datatype="INT64", shape=[3]), b"\x00" * 16, "needs 24"),
    "both contents and raw": (
        Tensor(name="x", datatype="FP32", shape=[1], contents=pb.InferTensorContents(fp32_contents=[1])),
        b"\x00" * 4,
        "both",
    ),
    "int8 out of range": (
        Tensor(name="x", datatype="INT8", shape=[2], contents=pb.InferTensorContents(int_contents=[1, 300])),
        None,
        "outside INT8",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tensors_are_request_errors_that_name_the_tensor(case: str) -> None:
    tensor, raw, fragment = BAD[case]
    with pytest.raises(RequestError, match=fragment) as caught:
        to_numpy(tensor, raw)
    assert "'x'" in str(caught.value) and caught.value.grpc_code == "INVALID_ARGUMENT"
