"""The gateway's cached npy headers write what numpy.save writes and read what numpy.load reads."""

from __future__ import annotations

import io

import numpy as np
import pytest

from serving.protos import grpc_predict_v2_pb2 as pb
from serving.torchserve.gateway.npy_frames import npy_body, npy_header, read_npy
from serving.torchserve.gateway.oip_gateway import _npy_input

ARRAYS = [
    np.arange(64, dtype="<f4").reshape(1, 1, 8, 8),
    np.arange(6, dtype="<i8").reshape(2, 3),
    np.array([True, False]),
    np.arange(3, dtype="<f2"),
    np.arange(4, dtype=">i4").reshape(2, 2),  # big-endian: its own header
    np.float32(1.5).reshape(()),  # no axes at all
    np.zeros((0, 3), dtype="<f8"),
    np.zeros((1,) * 40, dtype="u1"),  # a long shape: the header grows past 64 bytes
]


def _saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{list(a.shape)}")
def test_header_and_body_are_what_numpy_save_writes(array: np.ndarray) -> None:
    for _ in range(2):  # written, then from the cache
        assert npy_body(array) == _saved(array)
        assert npy_header(array.dtype, array.shape) == _saved(array)[: -array.nbytes or None]


def test_a_fortran_ordered_array_is_written_in_c_order() -> None:
    array = np.asfortranarray(np.arange(6, dtype="<f4").reshape(2, 3))
    np.testing.assert_array_equal(np.load(io.BytesIO(npy_body(array))), array)


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{list(a.shape)}")
def test_read_gives_what_numpy_load_gives_first_and_cached(array: np.ndarray) -> None:
    body = _saved(array)
    for _ in range(2):
        read = read_npy(body)
        assert read.dtype == array.dtype and read.shape == array.shape
        np.testing.assert_array_equal(read, array)


def test_a_fortran_ordered_answer_is_read_in_its_order() -> None:
    array = np.asfortranarray(np.arange(6, dtype="<f4").reshape(2, 3))
    for _ in range(2):
        np.testing.assert_array_equal(read_npy(_saved(array)), array)


def test_a_cached_header_with_the_wrong_amount_of_data_is_refused() -> None:
    body = _saved(np.arange(10, dtype="<f4").reshape(1, 10))
    read_npy(body)  # now cached
    for damaged in (body[:-4], body + b"\0\0\0\0", body[:-1]):
        with pytest.raises(ValueError):
            read_npy(damaged)


def test_object_arrays_and_damaged_headers_are_refused() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([b"x", 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        read_npy(buffer.getvalue())
    good = _saved(np.arange(3, dtype="<f4"))
    with pytest.raises(ValueError):
        read_npy(good[:12] + b"{'descr': 'nonsense" + good[31:])


Tensor = pb.ModelInferRequest.InferInputTensor


def test_raw_contents_travel_as_they_came_and_typed_ones_as_numpy_saves_them() -> None:
    array = np.arange(64, dtype="<f4").reshape(1, 1, 8, 8)
    raw = pb.ModelInferRequest(
        inputs=[Tensor(name="x", datatype="FP32", shape=[1, 1, 8, 8])], raw_input_contents=[array.tobytes()]
    )
    assert _npy_input(raw, array) == _saved(array)
    typed = pb.ModelInferRequest(inputs=[Tensor(name="x", datatype="FP32", shape=[1, 1, 8, 8])])
    assert _npy_input(typed, array) == _saved(array)


def test_bf16_raw_contents_go_as_the_widened_array_not_as_their_bits() -> None:
    widened = np.array([[1.0, 2.0]], dtype=np.float32)  # what to_numpy makes of BF16 bits 0x3F80, 0x4000
    request = pb.ModelInferRequest(
        inputs=[Tensor(name="x", datatype="BF16", shape=[1, 2])],
        raw_input_contents=[np.array([0x3F80, 0x4000], dtype="<u2").tobytes()],
    )
    assert _npy_input(request, widened) == _saved(widened)
