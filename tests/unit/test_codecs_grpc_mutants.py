"""OIP protobuf tensors and the datatype table, where a changed line went unnoticed: limits, hints."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from serving.codecs.datatypes import DataType, _numeric, datatype_of, json_dtype
from serving.codecs.oip_grpc import bf16_bits, fill, pack_bytes, to_numpy, unpack_bytes
from serving.codecs.torch_dtypes import torch_name
from serving.errors import RequestError
from serving.protos import grpc_predict_v2_pb2 as pb

Tensor = pb.ModelInferRequest.InferInputTensor


def _refusal(tensor: Tensor, raw: bytes | None) -> RequestError:
    """The error a bad tensor gets: it names the tensor, and its hint says what to do."""
    with pytest.raises(RequestError) as info:
        to_numpy(tensor, raw)
    assert info.value.message.startswith("tensor 'x'")
    return info.value


def _typed(datatype: str, shape: list[int], **contents: Any) -> Tensor:
    return Tensor(name="x", datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))


# --- every refusal's message and hint (the hint is its own field of the error body) ----------------


@pytest.mark.parametrize(
    "tensor, raw, message, hint",
    [
        (
            Tensor(name="x", datatype="FLOAT32", shape=[1]),
            None,
            "tensor 'x' has datatype 'FLOAT32'; expected one of BOOL, UINT8,",
            "use an Open Inference Protocol datatype name",
        ),
        (
            _typed("FP32", [1], fp32_contents=[1.0]),
            b"\x00" * 4,
            "tensor 'x' has both contents and raw_input_contents; expected one",
            "send the elements one way only",
        ),
        (
            Tensor(name="x", datatype="BYTES", shape=[2]),
            pack_bytes([b"cat"]),
            "tensor 'x' has 1 BYTES elements in its raw contents; its shape [2] needs 2",
            "make the shape match the data",
        ),
        (
            Tensor(name="x", datatype="INT64", shape=[3]),
            b"\x00" * 16,
            "tensor 'x' has 16 raw bytes; shape [3] of INT64 needs 24",
            "send row-major, little-endian elements without padding",
        ),
        (
            Tensor(name="x", datatype="FP16", shape=[1]),
            None,
            "tensor 'x' is FP16, which has no typed contents field",
            "send it in raw_input_contents (tritonclient does)",
        ),
        (
            _typed("FP32", [2, 2], fp32_contents=[1.0, 2.0, 3.0]),
            None,
            "tensor 'x' has 3 elements in contents.fp32_contents; its shape [2, 2] needs 4",
            "make the shape match the data",
        ),
        (
            _typed("INT16", [1], int_contents=[40000]),
            None,
            "tensor 'x' holds values outside INT16's range [-32768, 32767]",
            "use a wider datatype",
        ),
    ],
    ids=["datatype", "both", "bytes count", "raw count", "fp16 typed", "typed count", "range"],
)
def test_each_refusal_names_the_tensor_and_says_what_to_do(
    tensor: Tensor, raw: bytes | None, message: str, hint: str
) -> None:
    error = _refusal(tensor, raw)
    assert error.message.startswith(message) and error.hint == hint


# --- shapes: zero-size dimensions are fine, the element limit is 2**40 --------------------------------


@pytest.mark.parametrize("raw", [None, b""])
def test_a_zero_size_dimension_is_an_empty_tensor_not_a_refusal(raw: bytes | None) -> None:
    array = to_numpy(Tensor(name="x", datatype="FP32", shape=[0, 3]), raw)
    assert array.shape == (0, 3) and array.dtype == np.float32


def test_more_than_2_40_elements_is_refused_for_its_size_even_beside_a_zero_dimension() -> None:
    for shape in ([2**40 + 1], [0, 2**20, 2**20 + 1]):
        error = _refusal(Tensor(name="x", datatype="FP32", shape=shape), None)
        assert error.message == f"tensor 'x' has shape {shape}: more elements than any array can hold"
        assert error.hint == "send the tensor's real shape"
    # exactly 2**40 is within the limit: refused only because the data is missing
    error = _refusal(Tensor(name="x", datatype="FP32", shape=[2**40]), None)
    expected = f"tensor 'x' has 0 elements in contents.fp32_contents; its shape [{2**40}] needs {2**40}"
    assert error.message == expected


# --- integers carried in a wider proto field: the narrow type's whole range, and nothing past it ----


@pytest.mark.parametrize(
    "datatype, field, low, high",
    [
        ("INT8", "int_contents", -(2**7), 2**7 - 1),
        ("INT16", "int_contents", -(2**15), 2**15 - 1),
        ("UINT8", "uint_contents", 0, 2**8 - 1),
        ("UINT16", "uint_contents", 0, 2**16 - 1),
    ],
)
def test_narrow_integers_take_their_whole_range_and_refuse_what_would_wrap(
    datatype: str, field: str, low: int, high: int
) -> None:
    array = to_numpy(_typed(datatype, [2], **{field: [low, high]}), None)
    assert array.dtype == np.dtype(datatype.lower()) and array.tolist() == [low, high]
    outside = [high + 1] if low == 0 else [low - 1, high + 1]  # uint_contents cannot hold a negative
    for value in outside:
        error = _refusal(_typed(datatype, [1], **{field: [value]}), None)
        assert error.message == f"tensor 'x' holds values outside {datatype}'s range [{low}, {high}]"


# --- raw BYTES: length prefixes read as unsigned, an empty last element, a cut prefix ----------------


def test_raw_bytes_elements_may_be_empty_even_the_last_one() -> None:
    items = [b"a", b""]
    assert unpack_bytes(pack_bytes(items), "x") == items
    assert unpack_bytes(pack_bytes([b""]), "x") == [b""]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x01\x00", "tensor 'x': raw BYTES contents end inside a length prefix"),
        (pack_bytes([b"ab"]) + b"\x01", "tensor 'x': raw BYTES contents end inside a length prefix"),
        # 0xffffffff is 4 GiB as the unsigned length it is; read signed it would be -1
        (b"\xff\xff\xff\xffab", "tensor 'x': a raw BYTES element runs past the end of the contents"),
    ],
)
def test_broken_raw_bytes_are_refused_naming_the_tensor(raw: bytes, message: str) -> None:
    with pytest.raises(RequestError) as info:
        to_numpy(Tensor(name="x", datatype="BYTES", shape=[1]), raw)
    assert info.value.message == message


# --- fill: texts become UTF-8 bytes element by element, in row-major order --------------------------


@pytest.mark.parametrize("raw", [True, False])
def test_text_outputs_are_sent_as_utf8_bytes_in_row_major_order(raw: bool) -> None:
    labels = np.array([["cat", "émeu"], ["dog", "7"]], dtype=object)
    tensor = pb.ModelInferResponse.InferOutputTensor()
    data = fill(tensor, "labels", labels, raw=raw)
    expected = [b"cat", "émeu".encode(), b"dog", b"7"]
    assert tensor.datatype == "BYTES" and list(tensor.shape) == [2, 2]
    assert (data is not None) == raw
    sent = unpack_bytes(data, "labels") if data is not None else list(tensor.contents.bytes_contents)
    assert sent == expected


def test_fp16_asked_as_typed_contents_is_refused_naming_the_tensor() -> None:
    with pytest.raises(RequestError) as info:
        fill(Tensor(), "x", np.array([0.5], dtype=np.float16), raw=False)
    assert info.value.message == "tensor 'x' is FP16, which travels only as raw contents"
    assert info.value.hint == "use raw"


# --- bf16_bits: round to nearest, ties to even, whatever float type the values come in -------------


def test_bf16_bits_round_ties_to_even_both_ways() -> None:
    f32 = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF], dtype=np.uint32).view(np.float32)
    # even upper half stays, odd rounds up; just above a tie rounds up, just below stays
    assert bf16_bits(f32).tolist() == [0x3F80, 0x3F82, 0x3F81, 0x3F81]


def test_bf16_bits_take_float64_values_as_float32() -> None:
    bits = bf16_bits(np.array([1.0, -2.0], dtype=np.float64))
    assert bits.dtype == np.uint16 and bits.tolist() == [0x3F80, 0xC000]


# --- the datatype table's factory and look-ups --------------------------------------------------------


def test_numeric_entries_keep_the_wire_byte_order_and_decode_to_native_values() -> None:
    assert _numeric("INT16", ">i2", "int16", "int_contents") == DataType(
        "INT16", np.dtype(">i2"), np.dtype("=i2"), "int16", "int_contents", 2
    )
    bf16 = _numeric("BF16", "<u2", "bfloat16", None, values="<f4")
    assert bf16 == DataType("BF16", np.dtype("<u2"), np.dtype("float32"), "bfloat16", None, 2)
    assert bf16.values.isnative and bf16.wire.byteorder in "<="


def test_a_numpy_dtype_without_an_oip_datatype_is_refused_with_a_hint() -> None:
    with pytest.raises(RequestError) as info:
        datatype_of(np.dtype(np.complex64))
    assert info.value.message == "numpy dtype complex64 has no Open Inference Protocol datatype"
    assert info.value.hint == "cast it"


def test_json_dtype_is_left_to_numpy_for_bytes_and_unknown_names() -> None:
    assert json_dtype("BYTES") is None and json_dtype("FLOAT32") is None
    assert json_dtype("BF16") == np.dtype(np.float32) and json_dtype("UINT16") == np.dtype(np.uint16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_torch_name_is_the_config_name(dtype: torch.dtype) -> None:
    assert torch_name(dtype) == str(dtype).split(".")[1] and getattr(torch, torch_name(dtype)) is dtype
